//! CPU kernels of the forward pass. Each is tested against a naive reference beside it.

pub mod activation;
pub mod attention;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod rope;
pub(crate) mod simd;
