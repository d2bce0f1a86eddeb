//! `out = x · Wᵀ` for row-major f32 activations `x [m, k]` and a packed weight matrix `W [n, k]`
//! (f32, bf16, Q8_0 or Q4_K, see [`packed`]): every projection of the forward pass.
//!
//! One micro-kernel design serves decode (m = 1…16) and prefill (m in the thousands): a tile of
//! `MR` activation rows × `NV` blocks of 16 weight rows accumulates in registers over the whole
//! reduction, one weight cache line and one broadcast activation per step and row. For m ≤ 4
//! (decode) each thread instead streams its contiguous range of blocks once for all rows (one
//! sequential stream per thread, which the memory system serves fastest; a thread that finishes
//! first takes the rest of another's range from its end, see the `ranges` module); for larger m,
//! tiles of up to 12 rows × 2 blocks (24 accumulators, the weight lines reused from L1 across the
//! rows) over (row block, weight panel chunk) tasks; a panel's first tile also prefetches the
//! task's next panel into L2, so that panel's weights arrive while this one's other tiles compute
//! (batch-16 decode steps took 0.85× the time with it). Every task writes its own output columns
//! of its own rows.
//!
//! bf16 weights are multiplied with activations rounded to bf16 (as PyTorch's bf16 matmul and
//! llama.cpp do), Q8_0 and Q4_K weights with activations quantized to Q8_0 per 32 values (as
//! llama.cpp's `vec_dot_q8_0_q8_0`; its Q4_K dot product uses 256-value groups), with f32
//! accumulation, whatever the batch size: a request's numbers do not depend on which kernel its
//! step happened to use beyond summation order.
//!
//! Kernels are chosen at run time: AVX-512 (with AVX512_BF16's `vdpbf16ps` and AVX512_VNNI's
//! `vpdpbusd` when present), else the portable kernel compiled for AVX2 + FMA, else the portable
//! kernel for the baseline target (both vectorized by the compiler, with tiles small enough for
//! 16 vector registers).

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod packed;
mod portable;
mod ranges;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::sync::OnceLock;

pub use packed::PackedLinear;

use super::pool::{self, SyncPtr};

/// One micro-kernel call: an `MR × 16·NV` output tile over the whole reduction.
///
/// `w` points at the first of `NV` packed blocks, `block_stride` bytes apart; each holds `steps`
/// 64-byte lines. `x` points at the tile's first activation row, rows `x_stride` bytes apart, with
/// 4 bytes per step (an f32, or a bf16 pair). Results go to `out` (row-major, `out_stride` floats
/// between rows); only the first `cols` of the `16·NV` columns are written.
#[derive(Clone, Copy)]
pub(crate) struct TileArgs {
    pub w: *const u8,
    pub block_stride: usize,
    pub x: *const u8,
    pub x_stride: usize,
    pub steps: usize,
    pub out: *mut f32,
    pub out_stride: usize,
    pub cols: usize,
    /// Q8_0 and Q4_K only: the first block's scales (Q4_K: scale records; `scale_stride` bytes
    /// between blocks), and per activation row (`groups` apart) its groups' f32 scales and sums
    /// of quantized values.
    pub scales: *const u8,
    pub scale_stride: usize,
    pub x_scales: *const f32,
    pub x_sums: *const i32,
    /// Q6_K only: per activation row (`2 * groups` apart) the sums of each 16 quantized values.
    pub x_sums16: *const i32,
    pub groups: usize,
    /// AVX-512 f32/bf16/Q8_0 tiles: the first of `next_blocks` packed blocks (laid out as `w`'s)
    /// that the kernel prefetches into L2, line by line as it walks its own, or null for none.
    pub next_panel: *const u8,
    pub next_blocks: usize,
}

/// Storage type of packed weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    F32,
    Bf16,
    /// ggml's Q8_0: int8 with an f16 scale per 32 weights of a row.
    Q8_0,
    /// ggml's Q4_K: 4-bit weights, a 6-bit scale and min per 32 and an f16 `d`, `dmin` per 256.
    Q4K,
    /// ggml's Q6_K: 6-bit weights, an 8-bit scale per 16 and an f16 `d` per 256.
    Q6K,
}

impl WeightKind {
    /// Every kind.
    pub const ALL: [WeightKind; 5] = [
        WeightKind::F32,
        WeightKind::Bf16,
        WeightKind::Q8_0,
        WeightKind::Q4K,
        WeightKind::Q6K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WeightKind::F32 => "f32",
            WeightKind::Bf16 => "bf16",
            WeightKind::Q8_0 => "q8_0",
            WeightKind::Q4K => "q4_k",
            WeightKind::Q6K => "q6_k",
        }
    }

    /// Integer weights (Q8_0, Q4_K, Q6_K), multiplied with activations quantized to Q8_0.
    pub fn is_quantized(self) -> bool {
        matches!(self, WeightKind::Q8_0 | WeightKind::Q4K | WeightKind::Q6K)
    }
}

/// Kernel families, in increasing order of what they need from the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    /// The portable tiles compiled for AVX2 + FMA (x86-64 CPUs without AVX-512).
    Avx2,
    /// AVX-512 F/BW/VL: f32 FMA, bf16 widened to f32.
    Avx512,
    /// AVX-512 with AVX512_BF16: bf16 pairs through `vdpbf16ps`.
    Avx512Bf16,
}

impl Isa {
    /// Whether this family includes AVX-512 F/BW/VL.
    pub fn has_avx512(self) -> bool {
        matches!(self, Isa::Avx512 | Isa::Avx512Bf16)
    }
}

/// The best kernel family this CPU runs.
pub fn best_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl");
            if avx512 && std::arch::is_x86_feature_detected!("avx512bf16") {
                return Isa::Avx512Bf16;
            }
            if avx512 {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// Rows and blocks of a tile for larger `m`.
const MR_MAX: usize = 12;
const MR_MAX_Q8: usize = 6;
const NV_LARGE_M: usize = 2;
/// Tiles of the portable kernel (baseline or AVX2): 16 ymm registers hold 4 rows × 16 lanes.
const MR_MAX_PORTABLE: usize = 4;
const NV_PORTABLE: usize = 1;
/// `m` up to this uses the stream kernels.
const STREAM_M_MAX: usize = 4;
/// Activation rows per task when `m` is large (a tile multiple whose bf16 rows stay in L2).
const ROW_BLOCK: usize = 8 * MR_MAX;

/// Whether the AVX-512 Q8_0 kernels (`vpdpbusd`) run here.
fn has_vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

thread_local! {
    /// The calling thread's split of its current decode product.
    static RANGES: RefCell<ranges::Ranges> = RefCell::new(ranges::Ranges::default());
    /// The calling thread's unpacked copy of a Q6_K panel (see `run`).
    static Q6K_PANEL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's bf16 copy of the activations.
    static BF16_ACTIVATIONS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's Q8_0 activations (see [`Q8Activations`]).
    static Q8_ACTIVATIONS: RefCell<Q8Activations> = const {
        RefCell::new(Q8Activations { q: Vec::new(), scales: Vec::new(), sums: Vec::new(), sums16: Vec::new() })
    };
}

/// `out[i*n + j] = Σ_k x[i*k + k'] · W[j, k']` with `n = w.rows`, `k = w.cols`.
pub fn matmul(x: &[f32], m: usize, w: &PackedLinear, out: &mut [f32]) {
    matmul_with(best_isa(), x, m, w, out)
}

/// [`matmul`] with a chosen kernel family (tests compare them); `isa` must be supported.
pub fn matmul_with(isa: Isa, x: &[f32], m: usize, w: &PackedLinear, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        m * k,
        "matmul: x has {} values, expected {m}×{k}",
        x.len()
    );
    assert_eq!(
        out.len(),
        m * n,
        "matmul: out has {} values, expected {m}×{n}",
        out.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let none = Activations {
        x: std::ptr::null(),
        stride: 0,
        scales: std::ptr::null(),
        sums: std::ptr::null(),
        sums16: std::ptr::null(),
    };
    match w.kind() {
        WeightKind::F32 => run(
            isa,
            Activations {
                x: x.as_ptr() as *const u8,
                stride: k * 4,
                ..none
            },
            m,
            w,
            out,
        ),
        WeightKind::Bf16 => BF16_ACTIVATIONS.with(|buf| {
            let mut buf = buf.borrow_mut();
            let kp = 2 * w.steps();
            buf.resize(m * kp, 0);
            let rows_per_task = rows_per_activation_task(m);
            let bp = SyncPtr(buf.as_mut_ptr());
            pool::global().parallel_for(m.div_ceil(rows_per_task), &|t| {
                for i in t * rows_per_task..((t + 1) * rows_per_task).min(m) {
                    // SAFETY: task t alone writes the rounded rows of its range.
                    let dst = unsafe { std::slice::from_raw_parts_mut(bp.get().add(i * kp), kp) };
                    round_to_bf16(isa, &x[i * k..(i + 1) * k], &mut dst[..k]);
                    dst[k..].fill(0);
                }
            });
            let a = Activations {
                x: buf.as_ptr() as *const u8,
                stride: kp * 2,
                ..none
            };
            run(isa, a, m, w, out)
        }),
        WeightKind::Q8_0 | WeightKind::Q4K | WeightKind::Q6K => Q8_ACTIVATIONS.with(|buf| {
            let Q8Activations {
                q,
                scales,
                sums,
                sums16,
            } = &mut *buf.borrow_mut();
            let groups = w.groups();
            let kp = groups * packed::Q8_GROUP;
            q.resize(m * kp, 0);
            scales.resize(m * groups, 0.0);
            sums.resize(m * groups, 0);
            let halves = if w.kind() == WeightKind::Q6K { 2 } else { 0 };
            sums16.resize(m * groups * halves, 0);
            let (qp, sp, up) = (
                SyncPtr(q.as_mut_ptr()),
                SyncPtr(scales.as_mut_ptr()),
                SyncPtr(sums.as_mut_ptr()),
            );
            let hp = SyncPtr(sums16.as_mut_ptr());
            let rows_per_task = rows_per_activation_task(m);
            let quantize_rows = |t: usize| {
                let rows = t * rows_per_task..((t + 1) * rows_per_task).min(m);
                for i in rows {
                    // SAFETY: task t alone writes the quantized rows of its range.
                    let (q, scales, sums) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(qp.get().add(i * kp), kp),
                            std::slice::from_raw_parts_mut(sp.get().add(i * groups), groups),
                            std::slice::from_raw_parts_mut(up.get().add(i * groups), groups),
                        )
                    };
                    quantize_row_q8(isa, &x[i * k..(i + 1) * k], q, scales, sums);
                    // SAFETY: as above (empty unless the weights are Q6_K).
                    let half_sums = unsafe {
                        std::slice::from_raw_parts_mut(
                            hp.get().add(i * groups * halves),
                            groups * halves,
                        )
                    };
                    for (h, values) in half_sums.iter_mut().zip(q.chunks_exact(16)) {
                        *h = values.iter().map(|&v| v as i32).sum();
                    }
                }
            };
            pool::global().parallel_for(m.div_ceil(rows_per_task), &quantize_rows);
            let a = Activations {
                x: q.as_ptr() as *const u8,
                stride: kp,
                scales: scales.as_ptr(),
                sums: sums.as_ptr(),
                sums16: sums16.as_ptr(),
            };
            run(isa, a, m, w, out)
        }),
    }
}

/// Rows per task when activations are rounded or quantized: all in one below 64 rows (decode:
/// a fork would cost more), else two tasks per thread (a 512-token prefill's rows took 2% of
/// its time serially).
fn rows_per_activation_task(m: usize) -> usize {
    if m >= 64 {
        m.div_ceil(pool::global().threads() * 2)
    } else {
        m
    }
}

/// Activations as the kernels read them (see [`TileArgs`]).
#[derive(Clone, Copy)]
struct Activations {
    x: *const u8,
    stride: usize,
    scales: *const f32,
    sums: *const i32,
    sums16: *const i32,
}

/// The calling thread's Q8_0 activations: quantized values, per group scale and sum, and (for
/// Q6_K weights) per 16 values their sum.
struct Q8Activations {
    q: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    sums16: Vec<i32>,
}

/// Quantizes one activation row to Q8_0 groups (ggml's `quantize_row_q8_0`), padding `k` with
/// zeros to whole groups; also records each group's sum of quantized values (the kernels'
/// correction for storing weights as `q + 128`).
fn quantize_row_q8(isa: Isa, src: &[f32], q: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    let done = if isa.has_avx512() {
        // SAFETY: both AVX-512 families include F and BW; the slices hold whole groups.
        unsafe { avx512::quantize_groups_q8(src, q, scales, sums) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = isa;
        0
    };
    let g0 = done;
    let (q, scales, sums) = (
        &mut q[g0 * packed::Q8_GROUP..],
        &mut scales[g0..],
        &mut sums[g0..],
    );
    let src = &src[(g0 * packed::Q8_GROUP).min(src.len())..];
    for (g, (qg, (scale, sum))) in q
        .chunks_exact_mut(packed::Q8_GROUP)
        .zip(scales.iter_mut().zip(sums.iter_mut()))
        .enumerate()
    {
        let start = (g * packed::Q8_GROUP).min(src.len());
        let xs = &src[start..(start + packed::Q8_GROUP).min(src.len())];
        let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
        // The scale as the kernels will use it: rounded through f16 like the stored weights'.
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        qg.fill(0);
        for (o, &x) in qg.iter_mut().zip(xs) {
            // Nearest, ties to even: what the vector conversion does.
            *o = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        *scale = d;
        *sum = qg.iter().map(|&v| v as i32).sum();
    }
}

fn round_to_bf16(isa: Isa, src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx512() {
        // SAFETY: both AVX-512 families include F and BW.
        return unsafe { avx512::round_to_bf16(src, dst) };
    }
    let _ = isa;
    portable::round_to_bf16(src, dst)
}

/// Splits the product into tasks and runs the kernels.
fn run(isa: Isa, a: Activations, m: usize, w: &PackedLinear, out: &mut [f32]) {
    let n = w.rows;
    let blocks = w.blocks();
    let threads = pool::global().threads();
    // Below ~64k multiply-adds a task costs more than it saves.
    let parallel = threads > 1 && m * n * w.cols >= 65_536;
    let (x, x_stride) = (SyncPtr(a.x as *mut u8), a.stride);
    let (x_scales, x_sums) = (SyncPtr(a.scales as *mut f32), SyncPtr(a.sums as *mut i32));
    let x_sums16 = SyncPtr(a.sums16 as *mut i32);
    let groups = w.groups();
    let scale_base = SyncPtr(w.scales_base() as *mut u8);
    let scale_stride = w.scale_stride_bytes();
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let base = SyncPtr(w.base() as *mut u8);
    let (steps, block_stride) = (w.steps(), w.block_stride_bytes());
    let kind = w.kind();
    let args = |block0: usize, row: usize, cols: usize| TileArgs {
        w: base.get().wrapping_add(block0 * block_stride),
        block_stride,
        x: x.get().wrapping_add(row * x_stride),
        x_stride,
        steps,
        out: out_ptr
            .get()
            .wrapping_add(row * n + block0 * packed::BLOCK_ROWS),
        out_stride: n,
        cols: (n - block0 * packed::BLOCK_ROWS).min(cols),
        scales: scale_base.get().wrapping_add(block0 * scale_stride),
        scale_stride,
        x_scales: x_scales.get().wrapping_add(row * groups),
        x_sums: x_sums.get().wrapping_add(row * groups),
        x_sums16: x_sums16.get().wrapping_add(row * 2 * groups),
        groups,
        next_panel: std::ptr::null(),
        next_blocks: 0,
    };
    let for_tasks = |tasks: usize, task: &(dyn Fn(usize) + Sync)| {
        if tasks == 1 {
            task(0);
        } else {
            pool::global().parallel_for(tasks, task);
        }
    };

    if m <= STREAM_M_MAX {
        // Decode: every weight block is streamed once for all rows.
        let stream = |block0: usize, count: usize| {
            let a = args(block0, 0, count * packed::BLOCK_ROWS);
            // SAFETY: the caller hands each block range to one call only, so it alone writes
            // those output columns of every row; `isa` is supported by the caller's contract.
            unsafe { run_stream(isa, kind, m, count, &a) }
        };
        if !parallel {
            return stream(0, blocks);
        }
        return RANGES.with(|ranges| {
            let mut ranges = ranges.borrow_mut();
            ranges.reset(blocks, threads);
            let ranges = &*ranges;
            pool::global().parallel_for(threads, &|me| ranges.run(me, stream));
        });
    }

    // Larger m: tasks of (row block, chunk of panels), tiles of ≤ `mr_max` rows × `nv_max` blocks.
    // Q6_K on AVX-512 VNNI: a task rebuilds each panel's 6-bit values into bytes once and runs
    // its row tiles on them as on Q8_0 lines (unpacking per tile made them 1.3× slower).
    let q6k_unpacked = kind == WeightKind::Q6K && isa.has_avx512() && has_vnni();
    let (nv_max, mr_max) = if isa.has_avx512() {
        let mr = if kind.is_quantized() {
            MR_MAX_Q8
        } else {
            MR_MAX
        };
        (NV_LARGE_M, mr)
    } else {
        (NV_PORTABLE, MR_MAX_PORTABLE)
    };
    let panels = blocks.div_ceil(nv_max);
    let row_block = if m > 2 * ROW_BLOCK { ROW_BLOCK } else { m };
    let row_blocks = m.div_ceil(row_block);
    let chunks_wanted = if parallel {
        (threads * 4).div_ceil(row_blocks)
    } else {
        1
    };
    let chunk = panels.div_ceil(chunks_wanted);
    let chunks = panels.div_ceil(chunk);
    for_tasks(row_blocks * chunks, &|t| {
        let (rb, c) = (t / chunks, t % chunks);
        let rows = rb * row_block..((rb + 1) * row_block).min(m);
        // Near-equal tiles of at most `mr_max` rows (fewer for Q8_0/Q4_K, which also keep integer
        // accumulators in registers).
        let tiles = rows.len().div_ceil(mr_max);
        let panels_end = ((c + 1) * chunk).min(panels);
        for p in c * chunk..panels_end {
            let block0 = p * nv_max;
            let nv = nv_max.min(blocks - block0);
            let mut row = rows.start;
            let mut run_tiles = |unpacked: Option<*const u8>| {
                for tile in 0..tiles {
                    let mr = (rows.end - row).div_ceil(tiles - tile);
                    let mut a = args(block0, row, nv * packed::BLOCK_ROWS);
                    // The panel's first tile reads it from memory; it also asks for the task's
                    // next panel, which then arrives while this one's tiles compute.
                    if tile == 0 && p + 1 < panels_end {
                        a.next_panel = base.get().wrapping_add((block0 + nv) * block_stride);
                        a.next_blocks = nv_max.min(blocks - block0 - nv);
                    }
                    // SAFETY: the arguments describe this task's own rows and columns inside
                    // `x`, the packed weights (or their unpacked copy) and `out`; `isa` is
                    // supported by the caller's contract.
                    unsafe {
                        match unpacked {
                            Some(w) => {
                                a.w = w;
                                a.block_stride = groups * Q6K_UNPACKED_GROUP_BYTES;
                                run_q6k_unpacked(mr, nv, &a)
                            }
                            None => run_tile(isa, kind, mr, nv, &a),
                        }
                    }
                    row += mr;
                }
            };
            if !q6k_unpacked {
                run_tiles(None);
                continue;
            }
            Q6K_PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.resize(nv * groups * Q6K_UNPACKED_GROUP_BYTES, 0);
                // SAFETY: the panel's blocks lie inside the packed weights, `buf` holds their
                // unpacked lines; `q6k_unpacked` implies AVX-512 BW.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::unpack_q6k(
                        base.get().wrapping_add(block0 * block_stride),
                        block_stride,
                        nv,
                        groups,
                        buf.as_mut_ptr(),
                    )
                };
                run_tiles(Some(buf.as_ptr()));
            });
        }
    })
}

/// Streams `blocks` consecutive blocks for `m ≤ STREAM_M_MAX` rows.
///
/// # Safety
/// As the kernels: `isa` is supported and `t` describes valid memory.
unsafe fn run_stream(isa: Isa, kind: WeightKind, m: usize, blocks: usize, t: &TileArgs) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! by_rows {
            ($kernel:ident) => {
                match m {
                    1 => avx512::$kernel::<1>(t, blocks),
                    2 => avx512::$kernel::<2>(t, blocks),
                    3 => avx512::$kernel::<3>(t, blocks),
                    _ => avx512::$kernel::<4>(t, blocks),
                }
            };
        }
        match (isa, kind) {
            (Isa::Avx512 | Isa::Avx512Bf16, WeightKind::F32) => return by_rows!(stream_f32),
            (Isa::Avx512Bf16, WeightKind::Bf16) => return by_rows!(stream_bf16_dot),
            (Isa::Avx512, WeightKind::Bf16) => return by_rows!(stream_bf16_widen),
            (Isa::Avx512 | Isa::Avx512Bf16, WeightKind::Q8_0) if has_vnni() => {
                return by_rows!(stream_q8)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, WeightKind::Q4K) if has_vnni() => {
                return by_rows!(stream_q4k)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, WeightKind::Q6K) if has_vnni() => {
                return by_rows!(stream_q6k)
            }
            _ => {}
        }
    }
    for b in 0..blocks {
        let block = TileArgs {
            w: t.w.add(b * t.block_stride),
            scales: t.scales.wrapping_add(b * t.scale_stride),
            out: t.out.add(b * packed::BLOCK_ROWS),
            cols: t.cols.saturating_sub(b * packed::BLOCK_ROWS),
            ..*t
        };
        run_tile(isa, kind, m, 1, &block);
    }
}

/// Calls the `mr × nv` instantiation of the chosen kernel.
macro_rules! shapes {
    ($call:ident, $mr:expr, $nv:expr) => {
        match ($nv, $mr) {
            (1, 1) => $call!(1, 1),
            (1, 2) => $call!(2, 1),
            (1, 3) => $call!(3, 1),
            (1, 4) => $call!(4, 1),
            (1, 5) => $call!(5, 1),
            (1, 6) => $call!(6, 1),
            (1, 7) => $call!(7, 1),
            (1, 8) => $call!(8, 1),
            (1, 9) => $call!(9, 1),
            (1, 10) => $call!(10, 1),
            (1, 11) => $call!(11, 1),
            (1, 12) => $call!(12, 1),
            (2, 1) => $call!(1, 2),
            (2, 2) => $call!(2, 2),
            (2, 3) => $call!(3, 2),
            (2, 4) => $call!(4, 2),
            (2, 5) => $call!(5, 2),
            (2, 6) => $call!(6, 2),
            (2, 7) => $call!(7, 2),
            (2, 8) => $call!(8, 2),
            (2, 9) => $call!(9, 2),
            (2, 10) => $call!(10, 2),
            (2, 11) => $call!(11, 2),
            (2, 12) => $call!(12, 2),
            (nv, mr) => unreachable!("no {mr}×{nv} tile"),
        }
    };
}

/// # Safety
/// As the kernels: `isa` is supported and `t` describes valid memory.
unsafe fn run_tile(isa: Isa, kind: WeightKind, mr: usize, nv: usize, t: &TileArgs) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! f32_fma {
            ($mr:literal, $nv:literal) => {
                avx512::tile_f32::<$mr, $nv>(t)
            };
        }
        macro_rules! bf16_dot {
            ($mr:literal, $nv:literal) => {
                avx512::tile_bf16_dot::<$mr, $nv>(t)
            };
        }
        macro_rules! bf16_widen {
            ($mr:literal, $nv:literal) => {
                avx512::tile_bf16_widen::<$mr, $nv>(t)
            };
        }
        macro_rules! q8 {
            ($mr:literal, $nv:literal) => {
                avx512::tile_q8::<$mr, $nv>(t)
            };
        }
        macro_rules! q4k {
            ($mr:literal, $nv:literal) => {
                avx512::tile_q4k::<$mr, $nv>(t)
            };
        }
        macro_rules! avx2 {
            ($mr:literal, $nv:literal) => {
                avx2_tile::<$mr, $nv>(kind, t)
            };
        }
        match (isa, kind) {
            (Isa::Avx2, _) => return shapes!(avx2, mr, nv),
            (Isa::Avx512 | Isa::Avx512Bf16, WeightKind::F32) => return shapes!(f32_fma, mr, nv),
            (Isa::Avx512Bf16, WeightKind::Bf16) => return shapes!(bf16_dot, mr, nv),
            (Isa::Avx512, WeightKind::Bf16) => return shapes!(bf16_widen, mr, nv),
            (Isa::Avx512 | Isa::Avx512Bf16, WeightKind::Q8_0) if has_vnni() => {
                return shapes!(q8, mr, nv)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, WeightKind::Q4K) if has_vnni() => {
                return shapes!(q4k, mr, nv)
            }
            _ => {}
        }
    }
    let _ = isa;
    macro_rules! portable {
        ($mr:literal, $nv:literal) => {
            portable::tile::<$mr, $nv>(kind, t)
        };
    }
    shapes!(portable, mr, nv)
}

/// Bytes of one Q6_K group rebuilt into Q8_0's line order (8 lines).
const Q6K_UNPACKED_GROUP_BYTES: usize = packed::Q8_GROUP / 4 * packed::STEP_BYTES;

/// Calls the `mr × nv` instantiation of the tile over unpacked Q6_K lines.
///
/// # Safety
/// As [`avx512::tile_q6k_unpacked`]; only called where the CPU has AVX-512 VNNI.
unsafe fn run_q6k_unpacked(mr: usize, nv: usize, t: &TileArgs) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! q6k {
            ($mr:literal, $nv:literal) => {
                avx512::tile_q6k_unpacked::<$mr, $nv>(t)
            };
        }
        shapes!(q6k, mr, nv)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (mr, nv, t);
        unreachable!("invariant: Q6_K panels are unpacked only on AVX-512")
    }
}

/// The portable tile compiled for AVX2 + FMA (the compiler vectorizes its 16-lane loops 8 wide).
///
/// # Safety
/// The CPU has AVX2 and FMA; `t` describes valid memory.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile<const MR: usize, const NV: usize>(kind: WeightKind, t: &TileArgs) {
    portable::tile::<MR, NV>(kind, t)
}
