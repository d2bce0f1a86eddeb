//! Weight matrices packed for the GEMM kernels.
//!
//! A `[n, k]` row-major matrix is cut into blocks of [`BLOCK_ROWS`] = 16 output rows. Inside a
//! block the reduction dimension is outermost, so one 64-byte line holds one *step* for all 16
//! rows: `k` index `s` of each row in f32 (16 × 4 bytes), or the pair `2s, 2s+1` of each row in
//! bf16 (16 × 2 × 2 bytes, the operand layout of `vdpbf16ps`). A kernel then computes 16 outputs
//! per vector register with one broadcast activation (no horizontal sums), and every thread reads
//! its blocks as one sequential stream. Rows past `n` and the odd `k` of a bf16 pair are zero.
//! The data starts on a 64-byte boundary so every load is one cache line.

use half::bf16;

use crate::hugepages::huge_vec;
use crate::weights::{Linear, WeightData, WeightDtype};

/// Output rows per packed block (one 512-bit register of f32 results).
pub const BLOCK_ROWS: usize = 16;
/// Bytes of one step of one block: a cache line.
pub const STEP_BYTES: usize = 64;

/// Backing storage aligned to a cache line inside a plain vector.
#[derive(Debug, Clone)]
struct Aligned<T> {
    buf: Vec<T>,
    offset: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    fn zeroed(len: usize) -> Self {
        let extra = STEP_BYTES / std::mem::size_of::<T>();
        let mut buf = huge_vec(len + extra);
        buf.resize(len + extra, T::default());
        let misalign = (buf.as_ptr() as usize) % STEP_BYTES;
        let offset = ((STEP_BYTES - misalign) % STEP_BYTES) / std::mem::size_of::<T>();
        Self { buf, offset, len }
    }

    fn as_slice(&self) -> &[T] {
        &self.buf[self.offset..self.offset + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.offset..self.offset + self.len]
    }
}

#[derive(Debug, Clone)]
enum PackedData {
    F32(Aligned<f32>),
    Bf16(Aligned<u16>),
}

/// A weight matrix in the packed block layout (see the module docs).
#[derive(Debug, Clone)]
pub struct PackedLinear {
    /// Output features `n`.
    pub rows: usize,
    /// Input features `k`.
    pub cols: usize,
    data: PackedData,
}

impl PackedLinear {
    /// Packs a row-major matrix, keeping its storage type.
    pub fn pack(w: &Linear) -> Self {
        let (n, k) = (w.rows, w.cols);
        let blocks = n.div_ceil(BLOCK_ROWS);
        let data = match &w.data {
            WeightData::F32(src) => {
                let mut dst = Aligned::<f32>::zeroed(blocks * k * BLOCK_ROWS);
                let block_len = k * BLOCK_ROWS;
                for (b, block) in dst.as_mut_slice().chunks_mut(block_len).enumerate() {
                    for lane in 0..BLOCK_ROWS.min(n - b * BLOCK_ROWS) {
                        let row = &src[(b * BLOCK_ROWS + lane) * k..][..k];
                        for (s, &v) in row.iter().enumerate() {
                            block[s * BLOCK_ROWS + lane] = v;
                        }
                    }
                }
                PackedData::F32(dst)
            }
            WeightData::Bf16(src) => {
                let pairs = k.div_ceil(2);
                let block_len = pairs * BLOCK_ROWS * 2;
                let mut dst = Aligned::<u16>::zeroed(blocks * block_len);
                for (b, block) in dst.as_mut_slice().chunks_mut(block_len).enumerate() {
                    for lane in 0..BLOCK_ROWS.min(n - b * BLOCK_ROWS) {
                        let row = &src[(b * BLOCK_ROWS + lane) * k..][..k];
                        for (i, &v) in row.iter().enumerate() {
                            block[((i / 2) * BLOCK_ROWS + lane) * 2 + i % 2] = v;
                        }
                    }
                }
                PackedData::Bf16(dst)
            }
        };
        Self {
            rows: n,
            cols: k,
            data,
        }
    }

    pub fn dtype(&self) -> WeightDtype {
        match self.data {
            PackedData::F32(_) => WeightDtype::F32,
            PackedData::Bf16(_) => WeightDtype::Bf16,
        }
    }

    /// Bytes of the matrix's values (what one pass over it reads, padding aside).
    pub fn size_bytes(&self) -> usize {
        self.rows * self.cols * self.dtype().size_bytes()
    }

    /// Number of 16-row blocks.
    pub fn blocks(&self) -> usize {
        self.rows.div_ceil(BLOCK_ROWS)
    }

    /// Steps per block: `k` for f32, `k / 2` rounded up for bf16. Each step is [`STEP_BYTES`].
    pub fn steps(&self) -> usize {
        match self.data {
            PackedData::F32(_) => self.cols,
            PackedData::Bf16(_) => self.cols.div_ceil(2),
        }
    }

    /// Distance between consecutive blocks in bytes.
    pub fn block_stride_bytes(&self) -> usize {
        self.steps() * STEP_BYTES
    }

    /// Pointer to the first byte of block 0.
    pub(crate) fn base(&self) -> *const u8 {
        match &self.data {
            PackedData::F32(d) => d.as_slice().as_ptr() as *const u8,
            PackedData::Bf16(d) => d.as_slice().as_ptr() as *const u8,
        }
    }

    /// Writes row `row` as f32 into `out` (embedding lookup from a tied matrix).
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        let (b, lane) = (row / BLOCK_ROWS, row % BLOCK_ROWS);
        let k = self.cols;
        match &self.data {
            PackedData::F32(d) => {
                let block = &d.as_slice()[b * k * BLOCK_ROWS..][..k * BLOCK_ROWS];
                for (s, o) in out[..k].iter_mut().enumerate() {
                    *o = block[s * BLOCK_ROWS + lane];
                }
            }
            PackedData::Bf16(d) => {
                let block_len = self.steps() * BLOCK_ROWS * 2;
                let block = &d.as_slice()[b * block_len..][..block_len];
                for (i, o) in out[..k].iter_mut().enumerate() {
                    let bits = block[((i / 2) * BLOCK_ROWS + lane) * 2 + i % 2];
                    *o = bf16::from_bits(bits).to_f32();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(n: usize, k: usize, bf: bool) -> Linear {
        let vals: Vec<f32> = (0..n * k).map(|i| i as f32 * 0.25 - 7.0).collect();
        let data = if bf {
            WeightData::Bf16(vals.iter().map(|&v| bf16::from_f32(v).to_bits()).collect())
        } else {
            WeightData::F32(vals)
        };
        Linear {
            rows: n,
            cols: k,
            data,
        }
    }

    #[test]
    fn rows_round_trip_and_data_is_line_aligned() {
        for bf in [false, true] {
            for &(n, k) in &[(1, 1), (17, 5), (33, 64), (16, 3)] {
                let w = matrix(n, k, bf);
                let p = PackedLinear::pack(&w);
                assert_eq!(p.base() as usize % STEP_BYTES, 0);
                assert_eq!(p.blocks(), n.div_ceil(16));
                let mut row = vec![0f32; k];
                let mut want = vec![0f32; k];
                for r in 0..n {
                    p.row_to_f32(r, &mut row);
                    w.row_to_f32(r, &mut want);
                    assert_eq!(row, want, "n={n} k={k} bf16={bf} row={r}");
                }
            }
        }
    }
}
