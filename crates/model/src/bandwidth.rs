//! A memory read-bandwidth probe: the denominator of "decode as a fraction of the bandwidth bound".
//!
//! It reads a buffer far larger than the last-level cache with every pool thread, using wide SIMD
//! loads and several independent accumulators (so the loop is bound by memory, not by adds), and
//! reports the best of several passes. Each thread streams two long contiguous ranges with
//! software prefetch, the access pattern the decode kernels use, so the probe measures what the
//! memory system can deliver to them rather than a weaker pattern.

use std::time::Instant;

use crate::ops::pool;

/// Result of a probe.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    /// Best read bandwidth over the passes, in GB/s (10⁹ bytes per second).
    pub best_gb_s: f64,
    pub buffer_bytes: usize,
    pub threads: usize,
}

/// Reads `buffer_bytes` (≥ 8× L3 is sensible; 512 MiB by default) `passes` times.
pub fn measure_read_bandwidth(buffer_bytes: usize, passes: usize) -> Bandwidth {
    ReadProbe::new(buffer_bytes).measure(passes)
}

/// A probe buffer kept for repeated measurements: probes taken between the steps of a decode
/// (see `pagoda bench latency`) reuse its pages instead of touching a fresh buffer each time.
pub struct ReadProbe {
    buf: Vec<f32>,
}

impl ReadProbe {
    /// Allocates and writes `buffer_bytes` (rounded down to whole f32 values).
    pub fn new(buffer_bytes: usize) -> Self {
        let len = buffer_bytes / 4;
        // Backed like the weights (huge pages where available) and written with non-zero values
        // so every page is really there.
        let mut buf = crate::hugepages::huge_vec(len);
        buf.extend((0..len).map(|i| (i & 7) as f32));
        Self { buf }
    }

    /// Reads the whole buffer `passes` times (at least once) with every pool thread; the best
    /// pass counts.
    pub fn measure(&self, passes: usize) -> Bandwidth {
        let (buf, len) = (&self.buf, self.buf.len());
        let threads = pool::global().threads();
        // Two long contiguous ranges per thread: one sequential stream each, as the decode
        // kernels read weights (more, shorter ranges read measurably slower here).
        let chunk = (len.div_ceil(threads * 2).div_ceil(64) * 64).max(64);
        let mut best = f64::INFINITY;
        let mut sink = 0f32;
        for _ in 0..passes.max(1) {
            let start = Instant::now();
            let tasks = len.div_ceil(chunk);
            let sums: Vec<std::sync::atomic::AtomicU32> =
                (0..tasks).map(|_| Default::default()).collect();
            pool::global().parallel_for(tasks, &|t| {
                let part = &buf[t * chunk..((t + 1) * chunk).min(len)];
                sums[t].store(
                    sum_chunk(part).to_bits(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            });
            sink += sums
                .iter()
                .map(|s| f32::from_bits(s.load(std::sync::atomic::Ordering::Relaxed)))
                .sum::<f32>();
            best = best.min(start.elapsed().as_secs_f64());
        }
        std::hint::black_box(sink);
        Bandwidth {
            best_gb_s: (len * 4) as f64 / best / 1e9,
            buffer_bytes: len * 4,
            threads,
        }
    }
}

/// Round trip of one cache line between two threads pinned to the first two CPUs this process
/// may use, in nanoseconds: the median over 5 rounds of 2,000 exchanges. `None` with fewer than
/// two CPUs, off Linux, or when the rounds take over a second in all (threads that do not get
/// their CPUs: the number would not be a core-to-core latency).
///
/// It tells apart the placements of a small VM's vCPUs, which decide both how fast memory is
/// and what every exchange between the kernel threads costs. On the 2-vCPU AMD EPYC this project
/// is measured on: ≈ 60–170 ns with both vCPUs on one CCD (whose link to memory caps the probe
/// at ≈ 30–38 GB/s on the Zen 4 host, ≈ 40–51 GB/s on the Zen 5 one), ≈ 300–630 ns on two CCDs
/// (two links: ≈ 45–69 GB/s on Zen 4, ≈ 60–92 GB/s on Zen 5; each exchange dearer).
pub fn measure_core_round_trip_ns() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        round_trip::measure(std::time::Duration::from_secs(1))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Above this round trip (ns) the two threads sit on two CCDs; see [`MemoryState`].
pub const TWO_CCD_ROUND_TRIP_NS: f64 = 200.0;

/// Which of the project's VM's two placements a round trip shows: both vCPUs on one CCD (one
/// link to memory, cheap exchanges) or on two (both links, dear exchanges). The placement changes
/// within seconds to minutes, and the bandwidth with it (by up to 2×), so a decode is best set
/// against a probe taken in the same state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryState {
    OneCcd,
    TwoCcd,
}

impl MemoryState {
    pub const ALL: [MemoryState; 2] = [MemoryState::OneCcd, MemoryState::TwoCcd];

    pub fn from_round_trip_ns(ns: f64) -> Self {
        if ns > TWO_CCD_ROUND_TRIP_NS {
            MemoryState::TwoCcd
        } else {
            MemoryState::OneCcd
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MemoryState::OneCcd => "one_ccd",
            MemoryState::TwoCcd => "two_ccd",
        }
    }
}

#[cfg(target_os = "linux")]
mod round_trip {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    const EXCHANGES: u32 = 2_000;
    const ROUNDS: usize = 5;

    /// The flag the two threads hand back and forth, alone on its cache line.
    #[repr(align(64))]
    struct Line(AtomicU32);

    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: `set` is a plain bit mask the call fills; pid 0 is this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// Pins the calling thread to `cpu`; `false` when the OS refuses.
    fn pin(cpu: usize) -> bool {
        // SAFETY: as above; the set names one CPU this process may use.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// Written by the initiator when it gives up, so that the responder stops waiting.
    const ABORT: u32 = u32::MAX;

    /// Waits for `value`; `false` when the initiator gave up instead.
    fn wait_for(line: &Line, value: u32) -> bool {
        loop {
            match line.0.load(Ordering::Acquire) {
                v if v == value => return true,
                ABORT => return false,
                _ => std::hint::spin_loop(),
            }
        }
    }

    /// The rounds completed within `limit`, median; see [`super::measure_core_round_trip_ns`].
    pub(super) fn measure(limit: Duration) -> Option<f64> {
        let cpus = allowed_cpus();
        let (&first, &second) = (cpus.first()?, cpus.get(1)?);
        // Let the kernel pool's workers (spinning for a while after their last job) go to
        // sleep, so the pinned threads get their CPUs to themselves.
        std::thread::sleep(Duration::from_millis(60));
        let line = Line(AtomicU32::new(0));
        let mut rounds: Vec<f64> = std::thread::scope(|s| {
            let responder = s.spawn(|| {
                let pinned = pin(second);
                for i in 0..EXCHANGES * ROUNDS as u32 {
                    if !wait_for(&line, 2 * i + 1) {
                        break;
                    }
                    line.0.store(2 * i + 2, Ordering::Release);
                }
                pinned
            });
            let initiator = s.spawn(|| {
                let pinned = pin(first);
                let began = Instant::now();
                let mut times = Vec::with_capacity(ROUNDS);
                'rounds: for round in 0..ROUNDS as u32 {
                    let start = Instant::now();
                    for i in round * EXCHANGES..(round + 1) * EXCHANGES {
                        if began.elapsed() > limit {
                            times.clear();
                            break 'rounds;
                        }
                        line.0.store(2 * i + 1, Ordering::Release);
                        wait_for(&line, 2 * i + 2);
                    }
                    times.push(start.elapsed().as_secs_f64() * 1e9 / EXCHANGES as f64);
                }
                line.0.store(ABORT, Ordering::Release);
                (pinned, times)
            });
            let (pinned_first, times) = initiator.join().unwrap_or((false, Vec::new()));
            let pinned_second = responder.join().unwrap_or(false);
            if pinned_first && pinned_second {
                times
            } else {
                Vec::new()
            }
        });
        rounds.sort_by(f64::total_cmp);
        rounds.get(rounds.len() / 2).copied()
    }
}

fn sum_chunk(data: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { sum_avx512(data) };
        }
    }
    let mut acc = [0f32; 16];
    for c in data.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(data: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 8];
    let blocks = data.len() / 128;
    let p = data.as_ptr();
    for b in 0..blocks {
        // 512 bytes per iteration; ask for the lines 2 KiB ahead (a hint, never faults).
        for l in 0..8 {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(b * 128 + 512 + l * 16) as *const i8);
        }
        for (l, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_ps(*a, _mm512_loadu_ps(p.add(b * 128 + l * 16)));
        }
    }
    let mut total = 0f32;
    for a in acc {
        total += _mm512_reduce_add_ps(a);
    }
    total + data[blocks * 128..].iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With two CPUs the exchanges complete (the limit is generous: tests run side by side) and
    /// take a plausible time; the responder stops when the initiator gives up.
    #[cfg(target_os = "linux")]
    #[test]
    fn core_round_trip_is_measured_where_two_cpus_exist() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match round_trip::measure(std::time::Duration::from_secs(120)) {
            Some(ns) => assert!(ns > 1.0 && ns < 1e7, "{ns} ns"),
            None => assert!(cpus < 2, "{cpus} CPUs but no round trip"),
        }
        // A limit already spent: nothing measured, and no thread left waiting.
        assert_eq!(round_trip::measure(std::time::Duration::ZERO), None);
    }

    #[test]
    fn sums_are_exact_and_probe_reports_positive_bandwidth() {
        let data: Vec<f32> = (0..1000).map(|i| (i % 3) as f32).collect();
        assert_eq!(sum_chunk(&data), data.iter().sum::<f32>());
        let bw = measure_read_bandwidth(8 << 20, 2);
        assert!(bw.best_gb_s > 0.1 && bw.best_gb_s.is_finite());
    }
}
