//! Where the time goes around the pool's parallel jobs, for `pagoda bench latency --timeline`:
//! how long the jobs took from publication to join, how long the calling thread spent between
//! them on its own (norms, RoPE, quantizing activations, sampling: the forward's time outside
//! parallel kernels), and how long the workers sat idle inside jobs (before their first task,
//! after their last one). Off unless [`KernelPool::timeline_start`] turned it on; then each job
//! costs one relaxed load more.
//!
//! [`KernelPool::timeline_start`]: super::KernelPool::timeline_start

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Totals over the jobs between `timeline_start` and `timeline_stop`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JobTimeline {
    /// Parallel jobs (calls that ran on one thread are not jobs: their time is outside jobs).
    pub jobs: u64,
    /// From each job's publication to its join.
    pub inside_jobs: Duration,
    /// From each job's join to the next job's publication.
    pub between_jobs: Duration,
    /// Summed over workers: inside jobs but before the worker's first task or after its last
    /// one (the whole job for a worker that ran none).
    pub workers_idle: Duration,
    /// Workers (threads besides the caller).
    pub workers: usize,
}

/// One worker's first and last task of the job it last worked on, on a line of its own.
#[repr(align(64))]
#[derive(Default)]
struct WorkerStamps {
    generation: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// The switch, alone on its cache line: while off, every thread keeps a read-only copy and a job's
/// check costs no transfer between cores.
#[repr(align(64))]
struct Switch(AtomicBool);

/// The pool's timeline state: written by the submitting thread (under the pool's submit lock)
/// and, for their own stamps, by the workers.
pub(super) struct Timeline {
    on: Switch,
    epoch: Instant,
    workers: Vec<WorkerStamps>,
    jobs: AtomicU64,
    inside_ns: AtomicU64,
    between_ns: AtomicU64,
    idle_ns: AtomicU64,
    last_join_ns: AtomicU64,
}

impl Timeline {
    pub fn new(workers: usize) -> Self {
        Self {
            on: Switch(AtomicBool::new(false)),
            epoch: Instant::now(),
            workers: (0..workers).map(|_| WorkerStamps::default()).collect(),
            jobs: AtomicU64::new(0),
            inside_ns: AtomicU64::new(0),
            between_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            last_join_ns: AtomicU64::new(0),
        }
    }

    /// Whether jobs are being timed.
    #[inline(always)]
    pub fn on(&self) -> bool {
        self.on.0.load(Ordering::Relaxed)
    }

    /// Nanoseconds since the pool started (never 0: 0 marks "no join yet").
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    pub fn start(&self) {
        for total in [&self.jobs, &self.inside_ns, &self.between_ns, &self.idle_ns] {
            total.store(0, Ordering::Relaxed);
        }
        self.last_join_ns.store(0, Ordering::Relaxed);
        self.on.0.store(true, Ordering::Relaxed);
    }

    pub fn stop(&self) -> JobTimeline {
        self.on.0.store(false, Ordering::Relaxed);
        let ns = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        JobTimeline {
            jobs: self.jobs.load(Ordering::Relaxed),
            inside_jobs: ns(&self.inside_ns),
            between_jobs: ns(&self.between_ns),
            workers_idle: ns(&self.idle_ns),
            workers: self.workers.len(),
        }
    }

    /// Worker `w` ran a task of job `generation` from `start_ns` until now.
    pub fn task_done(&self, w: usize, generation: u64, start_ns: u64) {
        let Some(stamps) = self.workers.get(w) else {
            return;
        };
        if stamps.generation.load(Ordering::Relaxed) != generation {
            stamps.first_ns.store(start_ns, Ordering::Relaxed);
            stamps.generation.store(generation, Ordering::Relaxed);
        }
        stamps.last_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// Job `generation`, published at `published_ns`, has joined: adds it to the totals. The
    /// workers' stamps are visible here because each finished task was counted with a release
    /// store that the join acquired.
    pub fn job_joined(&self, generation: u64, published_ns: u64) {
        let joined = self.now_ns();
        let add = |a: &AtomicU64, v: u64| {
            a.fetch_add(v, Ordering::Relaxed);
        };
        add(&self.jobs, 1);
        add(&self.inside_ns, joined.saturating_sub(published_ns));
        let last_join = self.last_join_ns.swap(joined, Ordering::Relaxed);
        if last_join != 0 {
            add(&self.between_ns, published_ns.saturating_sub(last_join));
        }
        for stamps in &self.workers {
            let idle = if stamps.generation.load(Ordering::Relaxed) == generation {
                let first = stamps.first_ns.load(Ordering::Relaxed);
                let last = stamps.last_ns.load(Ordering::Relaxed);
                first.saturating_sub(published_ns) + joined.saturating_sub(last)
            } else {
                joined.saturating_sub(published_ns)
            };
            add(&self.idle_ns, idle);
        }
    }
}
