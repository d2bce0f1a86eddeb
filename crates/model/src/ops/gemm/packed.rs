//! Weight matrices packed for the GEMM kernels.
//!
//! A `[n, k]` row-major matrix is cut into blocks of [`BLOCK_ROWS`] = 16 output rows. Inside a
//! block the reduction dimension is outermost, so one 64-byte line holds one *step* for all 16
//! rows: `k` index `s` of each row in f32 (16 × 4 bytes), or the pair `2s, 2s+1` of each row in
//! bf16 (16 × 2 × 2 bytes, the operand layout of `vdpbf16ps`). A kernel then computes 16 outputs
//! per vector register with one broadcast activation (no horizontal sums), and every thread reads
//! its blocks as one sequential stream. Rows past `n` and the odd `k` of a bf16 pair are zero.
//! The data starts on a 64-byte boundary so every load is one cache line.
//!
//! Q8_0 (ggml's format: groups of 32 weights of a row share an f16 scale) keeps the same blocks:
//! a step is 4 consecutive `k` of each of the 16 rows (the operand layout of `vpdpbusd`), stored
//! as `q + 128` (unsigned, so the activations can be the signed operand), 8 steps per group; the
//! 16 scales of a (block, group) sit in a separate array. `k` is padded to a multiple of 32.
//!
//! Q4_K (ggml's `block_q4_K`: super-blocks of 256 weights with an f16 `d` and `dmin`, and per
//! 32-weight sub-block a 6-bit scale and min; weight = `d·sc·q − dmin·m`, `q` in 0..16) keeps the
//! same blocks with 4 steps per 32-weight group: byte `i` of row `r` in step `s` holds `k = 4s + i`
//! in its low nibble and `k = 16 + 4s + i` in its high nibble, so one line unpacks (mask, shift)
//! into two `vpdpbusd` operands. Per (block, super-block) a 320-byte record holds the 16 rows'
//! `d`, then their `dmin` (f16), then the 8 sub-blocks' scales and the 8 mins (one byte per row):
//! exactly the file's numbers, unpacked. `k` must be a multiple of 256.
//!
//! Q6_K extends the Q4_K lines with two lines of high bits per group; see the `q6k` module.

mod q6k;

use std::sync::Arc;

use half::{bf16, f16};
use rayon::prelude::*;

#[cfg(test)]
pub(crate) use q6k::random_q6_k_blocks;
pub use q6k::{Q6K_BLOCK_BYTES, Q6K_META_BYTES, Q6K_SCALES_AT, Q6K_STEPS, Q6K_SUPER};

/// Every row of `p` decodes (`row_to_f32`) to exactly what the file format's dequantizer gives
/// for its `ty` blocks in `bytes`, and `p` reads as many bytes per pass as the file holds.
#[cfg(test)]
pub(crate) fn assert_rows_decode_like_the_file(
    p: &PackedLinear,
    bytes: &[u8],
    ty: crate::gguf::GgmlType,
) {
    assert_eq!(p.size_bytes(), bytes.len());
    let (k, row_bytes) = (p.cols, bytes.len() / p.rows);
    let (mut got, mut want) = (vec![0f32; k], vec![0f32; k]);
    for r in 0..p.rows {
        p.row_to_f32(r, &mut got);
        crate::gguf::quants::dequantize(ty, &bytes[r * row_bytes..][..row_bytes], &mut want)
            .expect("whole blocks");
        assert_eq!(got, want, "{ty} row {r}");
    }
}

use super::WeightKind;
use crate::hugepages::{huge_vec, HugeArena};
use crate::weights::{Linear, WeightData};

/// Weights per Q8_0 group (one scale each).
pub const Q8_GROUP: usize = 32;
/// Bytes of one ggml `block_q8_0`: an f16 scale and 32 signed bytes.
pub const Q8_0_BLOCK_BYTES: usize = 34;

/// Weights per Q4_K super-block (one `d` and `dmin` each).
pub const Q4K_SUPER: usize = 256;
/// Bytes of one ggml `block_q4_K`.
pub const Q4K_BLOCK_BYTES: usize = 144;
/// Bytes of one (block, super-block) record of unpacked Q4_K scales: 16 `d`, 16 `dmin` (f16),
/// 8 × 16 scales and 8 × 16 mins (u8), at these offsets.
pub const Q4K_META_BYTES: usize = 320;
pub const Q4K_DMIN_AT: usize = 32;
pub const Q4K_SCALES_AT: usize = 64;
pub const Q4K_MINS_AT: usize = 192;

/// Output rows per packed block (one 512-bit register of f32 results).
pub const BLOCK_ROWS: usize = 16;
/// Bytes of one step of one block: a cache line.
pub const STEP_BYTES: usize = 64;

/// Backing storage aligned to a cache line: its own vector while the matrix is built, then
/// (see [`PackedLinear::move_into`]) a range of an arena shared with the model's other matrices.
#[derive(Debug, Clone)]
struct Aligned<T> {
    backing: Backing<T>,
    /// Start of the values: in `T`s inside the vector, in bytes inside the arena.
    offset: usize,
    len: usize,
}

#[derive(Debug, Clone)]
enum Backing<T> {
    Own(Vec<T>),
    Arena(Arc<HugeArena>),
}

/// Plain numbers: any bit pattern is a value, so arena bytes can be viewed as them.
trait Plain: Copy + Default {}
impl Plain for f32 {}
impl Plain for u16 {}
impl Plain for u8 {}
impl Plain for f16 {}

impl<T: Plain> Aligned<T> {
    fn zeroed(len: usize) -> Self {
        let extra = STEP_BYTES / std::mem::size_of::<T>();
        let mut buf = huge_vec(len + extra);
        buf.resize(len + extra, T::default());
        let misalign = (buf.as_ptr() as usize) % STEP_BYTES;
        let offset = ((STEP_BYTES - misalign) % STEP_BYTES) / std::mem::size_of::<T>();
        Self {
            backing: Backing::Own(buf),
            offset,
            len,
        }
    }

    fn as_slice(&self) -> &[T] {
        match &self.backing {
            Backing::Own(buf) => &buf[self.offset..self.offset + self.len],
            Backing::Arena(arena) => {
                let bytes = arena.bytes(self.offset, self.len * std::mem::size_of::<T>());
                // SAFETY: the range holds `len` values of T written by `move_into` (any bit
                // pattern is a T) at a cache-line-aligned offset of a huge-page-aligned arena.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, self.len) }
            }
        }
    }

    /// The values, while the matrix is being built (before it moves into an arena).
    fn as_mut_slice(&mut self) -> &mut [T] {
        match &mut self.backing {
            Backing::Own(buf) => &mut buf[self.offset..self.offset + self.len],
            Backing::Arena(_) => unreachable!("invariant: matrices are built before they move"),
        }
    }

    /// Bytes the values take in an arena, rounded up to whole cache lines.
    fn arena_bytes(&self) -> usize {
        (self.len * std::mem::size_of::<T>()).next_multiple_of(STEP_BYTES)
    }

    /// Copies the values into `arena` and frees the old storage; `false` when it is full.
    fn move_into(&mut self, arena: &Arc<HugeArena>) -> bool {
        let values = self.as_slice();
        // SAFETY: T is plain data; viewing its values as bytes reads every byte of them.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values))
        };
        let Some(offset) = arena.append(bytes, STEP_BYTES) else {
            return false;
        };
        self.backing = Backing::Arena(Arc::clone(arena));
        self.offset = offset;
        true
    }
}

#[derive(Debug, Clone)]
enum PackedData {
    F32(Aligned<f32>),
    Bf16(Aligned<u16>),
    /// `q + 128` per weight, and one scale per (block, group, row).
    Q8_0 {
        q: Aligned<u8>,
        scales: Aligned<f16>,
    },
    /// Nibble pairs per weight line, and one [`Q4K_META_BYTES`] record per (block, super-block).
    Q4K {
        q: Aligned<u8>,
        meta: Aligned<u8>,
    },
    /// Nibble lines and high-bit lines, one [`Q6K_META_BYTES`] record per (block, super-block).
    Q6K {
        q: Aligned<u8>,
        meta: Aligned<u8>,
    },
}

/// The frame shared by the k-quant packers: checks that `bytes` holds `rows` rows of `cols / 256`
/// ggml blocks of `block_bytes`, allocates the lines (`group_bytes` per 32-weight group of a
/// 16-row block) and the records (`meta_bytes` per block and super-block), and calls
/// `fill(src, record, lines, lane)` for every row's super-block: `src` its ggml block, `lines`
/// its 8 groups' lines in the row's block, `lane` the row's place in that block.
fn pack_k_quant_blocks(
    (rows, cols, bytes): (usize, usize, &[u8]),
    (block_bytes, meta_bytes, group_bytes): (usize, usize, usize),
    mut fill: impl FnMut(&[u8], &mut [u8], &mut [u8], usize),
) -> Option<(Aligned<u8>, Aligned<u8>)> {
    // Both k-quants (Q4_K, Q6_K) have super-blocks of 256 weights.
    const SUPER: usize = Q4K_SUPER;
    let supers = cols / SUPER;
    if !cols.is_multiple_of(SUPER) || bytes.len() != rows * supers * block_bytes {
        return None;
    }
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let super_lines = SUPER / Q8_GROUP * group_bytes;
    let mut q = Aligned::<u8>::zeroed(blocks * supers * super_lines);
    let mut meta = Aligned::<u8>::zeroed(blocks * supers * meta_bytes);
    let (qs, ms) = (q.as_mut_slice(), meta.as_mut_slice());
    for r in 0..rows {
        let (b, lane) = (r / BLOCK_ROWS, r % BLOCK_ROWS);
        for sb in 0..supers {
            let at = b * supers + sb;
            fill(
                &bytes[(r * supers + sb) * block_bytes..][..block_bytes],
                &mut ms[at * meta_bytes..][..meta_bytes],
                &mut qs[at * super_lines..][..super_lines],
                lane,
            );
        }
    }
    Some((q, meta))
}

/// A value of a packed f32 or bf16 matrix, made from either source type.
trait PackedValue: Plain + Send + Sync {
    fn from_f32(x: f32) -> Self;
    fn from_bf16_bits(bits: u16) -> Self;
}

impl PackedValue for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_bf16_bits(bits: u16) -> Self {
        bf16::from_bits(bits).to_f32()
    }
}

impl PackedValue for u16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x).to_bits()
    }
    fn from_bf16_bits(bits: u16) -> Self {
        bits
    }
}

/// The rows of `parts` stacked in order, packed into 16-row blocks of `block_len` values with
/// column `s` of lane `lane` at `slot(s, lane)`; blocks are packed in parallel.
fn pack_stacked<T: PackedValue>(
    parts: &[Linear],
    block_len: usize,
    slot: impl Fn(usize, usize) -> usize + Sync,
) -> Aligned<T> {
    let k = parts[0].cols;
    let n: usize = parts.iter().map(|p| p.rows).sum();
    // Row r of the stack: the part whose start is the last one ≤ r.
    let starts: Vec<usize> = parts
        .iter()
        .scan(0, |next, p| {
            let start = *next;
            *next += p.rows;
            Some(start)
        })
        .collect();
    let mut dst = Aligned::<T>::zeroed(n.div_ceil(BLOCK_ROWS) * block_len);
    dst.as_mut_slice()
        .par_chunks_mut(block_len)
        .enumerate()
        .for_each(|(b, block)| {
            for lane in 0..BLOCK_ROWS.min(n - b * BLOCK_ROWS) {
                let r = b * BLOCK_ROWS + lane;
                let part = starts.partition_point(|&s| s <= r) - 1;
                let at = (r - starts[part]) * k;
                let mut put = |s: usize, v: T| block[slot(s, lane)] = v;
                match &parts[part].data {
                    WeightData::F32(src) => src[at..at + k]
                        .iter()
                        .enumerate()
                        .for_each(|(s, &x)| put(s, T::from_f32(x))),
                    WeightData::Bf16(src) => src[at..at + k]
                        .iter()
                        .enumerate()
                        .for_each(|(s, &bits)| put(s, T::from_bf16_bits(bits))),
                }
            }
        });
    dst
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
        Self::pack_parts(std::slice::from_ref(w))
    }

    /// Packs the rows of `parts` stacked in order (a fused projection's q, k and v), without
    /// first copying them into one matrix; blocks are packed in parallel. The result has the
    /// first part's type (rows of a part stored otherwise are converted).
    ///
    /// # Panics
    /// When `parts` is empty or the parts' column counts differ.
    pub fn pack_parts(parts: &[Linear]) -> Self {
        let k = parts[0].cols;
        assert!(
            parts.iter().all(|p| p.cols == k),
            "invariant: stacked parts share their columns"
        );
        let n: usize = parts.iter().map(|p| p.rows).sum();
        let data = match &parts[0].data {
            // Column s of a block's lane at s·16 + lane.
            WeightData::F32(_) => {
                PackedData::F32(pack_stacked(parts, k * BLOCK_ROWS, |s, lane| {
                    s * BLOCK_ROWS + lane
                }))
            }
            // Pairs of a row's values adjacent (one u32), 2·16 apart.
            WeightData::Bf16(_) => {
                let block_len = k.div_ceil(2) * BLOCK_ROWS * 2;
                PackedData::Bf16(pack_stacked(parts, block_len, |i, lane| {
                    ((i / 2) * BLOCK_ROWS + lane) * 2 + i % 2
                }))
            }
        };
        Self {
            rows: n,
            cols: k,
            data,
        }
    }

    /// Quantizes a row-major f32 or bf16 matrix to Q8_0 as ggml does (per group of 32:
    /// `d = max|x| / 127`, `q = round(x / d)`, `d` stored as f16).
    pub fn quantize_q8_0(w: &Linear) -> Self {
        let (n, k) = (w.rows, w.cols);
        let kp = k.div_ceil(Q8_GROUP) * Q8_GROUP;
        let mut row = vec![0f32; kp];
        let mut blocks = Vec::with_capacity(n * kp / Q8_GROUP * Q8_0_BLOCK_BYTES);
        for r in 0..n {
            w.row_to_f32(r, &mut row[..k]);
            for group in row.chunks_exact(Q8_GROUP) {
                let amax = group.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                blocks.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                blocks.extend(group.iter().map(|x| (x * inv).round() as i8 as u8));
            }
        }
        let mut packed = Self::from_q8_0_blocks(n, kp, &blocks)
            .expect("invariant: the blocks were made for this shape");
        // The padding columns are zero weights; callers pass `k` activations.
        packed.cols = k;
        packed
    }

    /// This matrix's values as packed f32 (a dequantized copy of a Q8_0 or bf16 matrix).
    pub fn to_f32(&self) -> Self {
        Self::pack(&self.to_row_major_f32())
    }

    /// This matrix quantized to Q8_0 (from its f32 or bf16 values; a Q8_0 matrix is returned as is).
    pub fn to_q8_0(&self) -> Self {
        if self.kind() == WeightKind::Q8_0 {
            return self.clone();
        }
        Self::quantize_q8_0(&self.to_row_major_f32())
    }

    /// Quantizes a row-major matrix to Q4_K as a GGUF file would store it (see
    /// [`crate::gguf::quants::quantize`]); a matrix whose `k` is not a multiple of 256 becomes
    /// Q8_0 instead (as llama.cpp's quantizer falls back for such tensors).
    pub fn quantize_q4_k(w: &Linear) -> Self {
        let (n, k) = (w.rows, w.cols);
        if k == 0 || !k.is_multiple_of(Q4K_SUPER) {
            return Self::quantize_q8_0(w);
        }
        // The least-squares search is slow (~7 M values/s per thread): rows go in parallel.
        let blocks =
            crate::gguf::quants::encode_rows(crate::gguf::GgmlType::Q4K, n, k, |r, row| {
                w.row_to_f32(r, row);
                Ok(())
            })
            .expect("invariant: rows are whole super-blocks");
        Self::from_q4_k_blocks(n, k, &blocks)
            .expect("invariant: the blocks were made for this shape")
    }

    /// This matrix quantized to Q4_K (a Q4_K matrix is returned as is; see
    /// [`Self::quantize_q4_k`] for shapes that become Q8_0).
    pub fn to_q4_k(&self) -> Self {
        if self.kind() == WeightKind::Q4K {
            return self.clone();
        }
        Self::quantize_q4_k(&self.to_row_major_f32())
    }

    /// The values as a row-major f32 matrix.
    fn to_row_major_f32(&self) -> Linear {
        let mut values = vec![0f32; self.rows * self.cols];
        for (r, row) in values.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_to_f32(r, row);
        }
        Linear {
            rows: self.rows,
            cols: self.cols,
            data: WeightData::F32(values),
        }
    }

    /// Packs ggml `block_q8_0` rows (`cols / 32` blocks of 34 bytes per row, row-major), as a GGUF
    /// file stores them. `None` when `cols` is not a multiple of 32 or the bytes do not match.
    pub fn from_q8_0_blocks(rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        let groups = cols / Q8_GROUP;
        if !cols.is_multiple_of(Q8_GROUP) || bytes.len() != rows * groups * Q8_0_BLOCK_BYTES {
            return None;
        }
        let blocks = rows.div_ceil(BLOCK_ROWS);
        let group_bytes = Q8_GROUP * BLOCK_ROWS;
        let mut q = Aligned::<u8>::zeroed(blocks * groups * group_bytes);
        // Padding rows hold q = 0, stored as 128.
        q.as_mut_slice().fill(128);
        let mut scales = Aligned::<f16>::zeroed(blocks * groups * BLOCK_ROWS);
        let (qs, ss) = (q.as_mut_slice(), scales.as_mut_slice());
        for r in 0..rows {
            let (b, lane) = (r / BLOCK_ROWS, r % BLOCK_ROWS);
            for g in 0..groups {
                let src = &bytes[(r * groups + g) * Q8_0_BLOCK_BYTES..][..Q8_0_BLOCK_BYTES];
                ss[(b * groups + g) * BLOCK_ROWS + lane] = f16::from_le_bytes([src[0], src[1]]);
                let base = (b * groups + g) * group_bytes + lane * 4;
                for (step, v) in src[2..].chunks_exact(4).enumerate() {
                    // A step holds k = 4·step..4·step+4 of all 16 rows, 4 bytes per row; the
                    // XOR stores each q as q + 128.
                    let word = u32::from_le_bytes([v[0], v[1], v[2], v[3]]) ^ 0x8080_8080;
                    qs[base + step * 64..][..4].copy_from_slice(&word.to_le_bytes());
                }
            }
        }
        Some(Self {
            rows,
            cols,
            data: PackedData::Q8_0 { q, scales },
        })
    }

    /// Packs ggml `block_q4_K` rows (`cols / 256` blocks of 144 bytes per row, row-major), as a
    /// GGUF file stores them. `None` when `cols` is not a multiple of 256 or the bytes do not match.
    pub fn from_q4_k_blocks(rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        let mut values = [0u8; Q4K_SUPER];
        let (q, meta) = pack_k_quant_blocks(
            (rows, cols, bytes),
            (Q4K_BLOCK_BYTES, Q4K_META_BYTES, Q8_GROUP / 2 * BLOCK_ROWS),
            |src, rec, lines, lane| {
                rec[lane * 2..lane * 2 + 2].copy_from_slice(&src[0..2]);
                rec[Q4K_DMIN_AT + lane * 2..][..2].copy_from_slice(&src[2..4]);
                for j in 0..8 {
                    let (sc, m) = crate::gguf::quants::scale_min_k4(j, &src[4..16]);
                    rec[Q4K_SCALES_AT + j * BLOCK_ROWS + lane] = sc;
                    rec[Q4K_MINS_AT + j * BLOCK_ROWS + lane] = m;
                }
                crate::gguf::quants::q4_k_levels(&src[16..], &mut values);
                for (v, group) in values
                    .chunks_exact(Q8_GROUP)
                    .zip(lines.chunks_exact_mut(Q8_GROUP / 2 * BLOCK_ROWS))
                {
                    for s in 0..4 {
                        for i in 0..4 {
                            group[s * 64 + lane * 4 + i] = v[4 * s + i] | (v[16 + 4 * s + i] << 4);
                        }
                    }
                }
            },
        )?;
        Some(Self {
            rows,
            cols,
            data: PackedData::Q4K { q, meta },
        })
    }

    /// Bytes [`Self::move_into`] takes from an arena.
    pub fn arena_bytes(&self) -> usize {
        match &self.data {
            PackedData::F32(d) => d.arena_bytes(),
            PackedData::Bf16(d) => d.arena_bytes(),
            PackedData::Q8_0 { q, scales } => q.arena_bytes() + scales.arena_bytes(),
            PackedData::Q4K { q, meta } | PackedData::Q6K { q, meta } => {
                q.arena_bytes() + meta.arena_bytes()
            }
        }
    }

    /// Moves the packed values (and Q8_0 scales) into `arena`, freeing their own storage, so that
    /// matrices read one after another share huge pages. `false` (nothing moved) when the arena
    /// lacks room; the matrix stays usable either way.
    pub fn move_into(&mut self, arena: &Arc<HugeArena>) -> bool {
        if arena.len().next_multiple_of(STEP_BYTES) + self.arena_bytes() > arena.capacity() {
            return false;
        }
        match &mut self.data {
            PackedData::F32(d) => d.move_into(arena),
            PackedData::Bf16(d) => d.move_into(arena),
            PackedData::Q8_0 { q, scales } => q.move_into(arena) && scales.move_into(arena),
            PackedData::Q4K { q, meta } | PackedData::Q6K { q, meta } => {
                q.move_into(arena) && meta.move_into(arena)
            }
        }
    }

    /// How the weights are stored.
    pub fn kind(&self) -> WeightKind {
        match self.data {
            PackedData::F32(_) => WeightKind::F32,
            PackedData::Bf16(_) => WeightKind::Bf16,
            PackedData::Q8_0 { .. } => WeightKind::Q8_0,
            PackedData::Q4K { .. } => WeightKind::Q4K,
            PackedData::Q6K { .. } => WeightKind::Q6K,
        }
    }

    /// Bytes one pass over the matrix reads (padding aside).
    pub fn size_bytes(&self) -> usize {
        let values = self.rows * self.cols;
        match self.data {
            PackedData::F32(_) => values * 4,
            PackedData::Bf16(_) => values * 2,
            PackedData::Q8_0 { .. } => values / Q8_GROUP * Q8_0_BLOCK_BYTES,
            PackedData::Q4K { .. } => values / Q4K_SUPER * Q4K_BLOCK_BYTES,
            PackedData::Q6K { .. } => values / Q6K_SUPER * Q6K_BLOCK_BYTES,
        }
    }

    /// Q8_0 or Q4_K groups of 32 weights per row (`k` / 32 rounded up); 0 for other kinds.
    pub fn groups(&self) -> usize {
        match self.data {
            PackedData::Q8_0 { .. } | PackedData::Q4K { .. } | PackedData::Q6K { .. } => {
                self.cols.div_ceil(Q8_GROUP)
            }
            _ => 0,
        }
    }

    /// Pointer to the first Q8_0 scale or Q4_K scale record (null for other kinds).
    pub(crate) fn scales_base(&self) -> *const u8 {
        match &self.data {
            PackedData::Q8_0 { scales, .. } => scales.as_slice().as_ptr() as *const u8,
            PackedData::Q4K { meta, .. } | PackedData::Q6K { meta, .. } => meta.as_slice().as_ptr(),
            _ => std::ptr::null(),
        }
    }

    /// Bytes between consecutive blocks' scales: `groups() * 16` f16 for Q8_0, one
    /// [`Q4K_META_BYTES`] record per super-block for Q4_K; 0 for other kinds.
    pub(crate) fn scale_stride_bytes(&self) -> usize {
        match self.data {
            PackedData::Q8_0 { .. } => self.groups() * BLOCK_ROWS * 2,
            PackedData::Q4K { .. } => self.cols / Q4K_SUPER * Q4K_META_BYTES,
            PackedData::Q6K { .. } => self.cols / Q6K_SUPER * Q6K_META_BYTES,
            _ => 0,
        }
    }

    /// Number of 16-row blocks.
    pub fn blocks(&self) -> usize {
        self.rows.div_ceil(BLOCK_ROWS)
    }

    /// Steps per block: `k` for f32, `k / 2` rounded up for bf16, per 32-weight group 8 for Q8_0,
    /// 4 for Q4_K and 6 for Q6_K. Each
    /// step is [`STEP_BYTES`].
    pub fn steps(&self) -> usize {
        match self.data {
            PackedData::F32(_) => self.cols,
            PackedData::Bf16(_) => self.cols.div_ceil(2),
            PackedData::Q8_0 { .. } => self.groups() * Q8_GROUP / 4,
            PackedData::Q4K { .. } => self.groups() * Q8_GROUP / 8,
            PackedData::Q6K { .. } => self.groups() * Q6K_STEPS,
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
            PackedData::Q8_0 { q, .. } | PackedData::Q4K { q, .. } | PackedData::Q6K { q, .. } => {
                q.as_slice().as_ptr()
            }
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
            PackedData::Q8_0 { q, scales } => {
                let groups = self.groups();
                let (q, scales) = (q.as_slice(), scales.as_slice());
                for (i, o) in out[..k].iter_mut().enumerate() {
                    let g = i / Q8_GROUP;
                    let d = scales[(b * groups + g) * BLOCK_ROWS + lane].to_f32();
                    let at = (b * groups + g) * Q8_GROUP * BLOCK_ROWS
                        + (i % Q8_GROUP / 4) * 64
                        + lane * 4
                        + i % 4;
                    *o = (q[at] as i16 - 128) as f32 * d;
                }
            }
            PackedData::Q4K { q, meta } => {
                let (groups, supers) = (self.groups(), k / Q4K_SUPER);
                let (q, meta) = (q.as_slice(), meta.as_slice());
                let half = |at: usize| f16::from_le_bytes([meta[at], meta[at + 1]]).to_f32();
                for (i, o) in out[..k].iter_mut().enumerate() {
                    let (g, within) = (i / Q8_GROUP, i % Q8_GROUP);
                    let (sb, j) = (g / 8, g % 8);
                    let rec = (b * supers + sb) * Q4K_META_BYTES;
                    let (d, dmin) = (half(rec + lane * 2), half(rec + Q4K_DMIN_AT + lane * 2));
                    let sc = meta[rec + Q4K_SCALES_AT + j * BLOCK_ROWS + lane] as f32;
                    let m = meta[rec + Q4K_MINS_AT + j * BLOCK_ROWS + lane] as f32;
                    let at = (b * groups + g) * Q8_GROUP / 2 * BLOCK_ROWS
                        + (within % 16 / 4) * 64
                        + lane * 4
                        + within % 4;
                    let nibble = if within < 16 {
                        q[at] & 0x0F
                    } else {
                        q[at] >> 4
                    };
                    *o = d * sc * nibble as f32 - dmin * m;
                }
            }
            PackedData::Q6K { q, meta } => {
                let (groups, supers) = (self.groups(), k / Q6K_SUPER);
                let (q, meta) = (q.as_slice(), meta.as_slice());
                for (i, o) in out[..k].iter_mut().enumerate() {
                    *o = q6k::weight(q, meta, (b, lane), (groups, supers), i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
