//! The kernels' persistent thread pool: `parallel_for(n, f)` runs `f(0..n)` on the calling thread
//! and the pool's workers, and returns when every task is done.
//!
//! A decode step of a 30-layer model issues ~150 parallel kernels of 20–200 µs each. With a
//! general-purpose pool the helper threads fall asleep between kernels and every kernel pays a
//! wake-up (measured: 2 threads decoded only 1.15× faster than 1). Here workers spin on a
//! generation counter for a while after each job (so back-to-back kernels start at once), then
//! back off to yielding and finally to short sleeps when the engine is idle. The caller never
//! waits for a worker to join a job, only for claimed tasks to finish, so a worker the OS did
//! not schedule (a busy machine) costs nothing but its share of the parallelism.

mod timeline;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use timeline::JobTimeline;
use timeline::Timeline;

/// A job as seen by workers: a type-erased `&(dyn Fn(usize) + Sync)` valid while its generation
/// is current and tasks remain.
#[derive(Clone, Copy)]
struct Job {
    func: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
    generation: u64,
}

// SAFETY: the pointee is Sync and outlives every call made through it (see `parallel_for`).
unsafe impl Send for Job {}

struct Shared {
    /// `generation << 32 | next task index`: a worker claims a task with a compare-and-swap
    /// that also checks the generation, so a worker that wakes up late can never claim (and
    /// call) a task of a job that is over.
    claim: AtomicU64,
    job: Mutex<Option<Job>>,
    /// Tasks of the current job that have finished.
    done: AtomicUsize,
    stop: AtomicBool,
    timeline: Timeline,
}

/// A fixed set of spinning workers plus the calling thread.
pub struct KernelPool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Serializes submitters (the pool runs one job at a time).
    submit: Mutex<()>,
}

/// How long a worker spins after a job before it starts yielding, and yields before sleeping.
const SPIN: Duration = Duration::from_millis(2);
const YIELD: Duration = Duration::from_millis(50);
const TASK_BITS: u64 = 32;
const TASK_MASK: u64 = (1 << TASK_BITS) - 1;

impl KernelPool {
    /// A pool where `threads` threads (the caller included) run each job.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            timeline: Timeline::new(threads.max(1) - 1),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("pagoda-kernel-{i}"))
                    .spawn(move || worker(&shared, i - 1))
                    .expect("invariant: the OS can start kernel threads")
            })
            .collect();
        Self {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// Threads that take part in a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Starts timing the parallel jobs (see [`JobTimeline`]), from zero.
    pub fn timeline_start(&self) {
        self.shared.timeline.start();
    }

    /// Stops timing and returns the totals since [`Self::timeline_start`].
    pub fn timeline_stop(&self) -> JobTimeline {
        self.shared.timeline.stop()
    }

    /// Runs `f(i)` for every `i < n_tasks`, spread over the pool; returns when all are done.
    ///
    /// The caller runs tasks too and waits only for tasks that were claimed, never for a worker
    /// to show up: on a busy machine where a worker is not scheduled, the caller does the work.
    pub fn parallel_for(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if n_tasks == 1 || self.workers.is_empty() {
            (0..n_tasks).for_each(f);
            return;
        }
        assert!(n_tasks as u64 <= TASK_MASK, "too many tasks in one job");
        let _one_job = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        // SAFETY (lifetime erasure): a task is only run after a claim that checked this job's
        // generation, and we return only when every task of this job has finished; after that
        // the generation changes before the next job is published, so no claim can succeed.
        let func: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let generation = (s.claim.load(Ordering::Relaxed) >> TASK_BITS) + 1;
        s.done.store(0, Ordering::Relaxed);
        *s.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(Job {
            func,
            n_tasks,
            generation,
        });
        let published_ns = s.timeline.on().then(|| s.timeline.now_ns());
        s.claim.store(generation << TASK_BITS, Ordering::Release);
        run_tasks(s, f, n_tasks, generation, None);
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != n_tasks {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                // A worker holding a task was descheduled: let it have a core.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Some(published_ns) = published_ns {
            s.timeline.job_joined(generation, published_ns);
        }
    }
}

/// Claims and runs tasks of job `generation` until none remain; `worker` is the worker's index
/// (`None` for the caller).
fn run_tasks(
    s: &Shared,
    f: &(dyn Fn(usize) + Sync),
    n_tasks: usize,
    generation: u64,
    worker: Option<usize>,
) {
    let mut cur = s.claim.load(Ordering::Acquire);
    loop {
        if cur >> TASK_BITS != generation || (cur & TASK_MASK) as usize >= n_tasks {
            return;
        }
        match s
            .claim
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                let timed = worker
                    .filter(|_| s.timeline.on())
                    .map(|w| (w, s.timeline.now_ns()));
                f((cur & TASK_MASK) as usize);
                if let Some((w, start_ns)) = timed {
                    s.timeline.task_done(w, generation, start_ns);
                }
                s.done.fetch_add(1, Ordering::Release);
                cur = s.claim.load(Ordering::Acquire);
            }
            Err(now) => cur = now,
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            let generation = s.claim.load(Ordering::Acquire) >> TASK_BITS;
            if generation != seen {
                break generation;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                let idle = idle_since.elapsed();
                if idle > YIELD {
                    std::thread::sleep(Duration::from_micros(200));
                } else if idle > SPIN {
                    std::thread::yield_now();
                }
            } else {
                std::hint::spin_loop();
            }
        };
        seen = generation;
        let job = *s.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = job.filter(|j| j.generation == generation) {
            // SAFETY: tasks are claimed against `job.generation`; see `parallel_for`.
            let f = unsafe { &*job.func };
            run_tasks(s, f, job.n_tasks, job.generation, Some(index));
        }
    }
}

impl Drop for KernelPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
// SAFETY: users guarantee disjoint writes (each task owns distinct output columns/rows).
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer; a method so closures capture the whole (Sync) wrapper, not the raw field.
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
}

static GLOBAL: OnceLock<KernelPool> = OnceLock::new();

/// Sets the number of kernel threads; only effective before the first kernel runs.
pub fn init_global(threads: usize) -> bool {
    GLOBAL.set(KernelPool::new(threads)).is_ok()
}

/// The process-wide kernel pool (all cores unless [`init_global`] said otherwise).
pub fn global() -> &'static KernelPool {
    GLOBAL.get_or_init(|| {
        KernelPool::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        let pool = KernelPool::new(3);
        for n in [0usize, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            pool.parallel_for(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    fn spin_for(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn the_timeline_counts_jobs_and_the_time_between_them() {
        let pool = KernelPool::new(2);
        pool.parallel_for(2, &|_| {}); // before the start: not counted
        pool.timeline_start();
        for _ in 0..10 {
            pool.parallel_for(2, &|_| spin_for(Duration::from_micros(300)));
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.parallel_for(1, &|_| {}); // one task runs inline: not a job
        let t = pool.timeline_stop();
        pool.parallel_for(2, &|_| {}); // after the stop: not counted
        assert_eq!(t.jobs, 10, "{t:?}");
        assert_eq!(t.workers, 1);
        // Two tasks of 300 µs per job, whoever ran them; 1 ms of sleep between jobs.
        assert!(t.inside_jobs >= Duration::from_micros(3000), "{t:?}");
        assert!(t.between_jobs >= Duration::from_millis(9), "{t:?}");
        // A worker idles at most the whole of each job.
        assert!(t.workers_idle <= t.inside_jobs, "{t:?}");
        assert_eq!(pool.timeline_stop(), t);
    }

    #[test]
    fn concurrent_submitters_are_serialized() {
        let pool = Arc::new(KernelPool::new(2));
        let total = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        pool.parallel_for(10, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 10);
    }
}
