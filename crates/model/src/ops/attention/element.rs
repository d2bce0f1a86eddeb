//! The K/V element types attention reads: f32, bf16, f16, and int8 scaled per token.

use half::{bf16, f16};

/// A stored K/V value.
pub(crate) trait KvElement: Copy + Send + Sync + 'static {
    /// Whether each token's values carry a scale (int8).
    const SCALED: bool;

    fn to_f32(self) -> f32;

    /// The first lanes (per `mask`) of 16 consecutive values, widened to f32.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL; the masked lanes are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self, mask: u16) -> std::arch::x86_64::__m512;
}

impl KvElement for f32 {
    const SCALED: bool = false;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p)
    }
}

impl KvElement for bf16 {
    const SCALED: bool = false;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let bits = _mm256_maskz_loadu_epi16(mask, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }
}

impl KvElement for f16 {
    const SCALED: bool = false;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16))
    }
}

impl KvElement for i8 {
    const SCALED: bool = true;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load16(p: *const Self, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)))
    }
}
