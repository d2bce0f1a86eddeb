//! The timed load loop: requests leave on the arrival schedule, at most `max_concurrency` in
//! flight, until every request was sent or `duration` passed; then the run waits for the
//! requests in flight (each bounded by the client's request timeout). Ctrl-C stops sending,
//! drops what is in flight and returns what finished, so a partial report can be printed.
//!
//! Designed to run on a single-threaded runtime: one task per request, results collected as
//! they finish so memory stays bounded by the concurrency, not the number of requests.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::arrivals::ArrivalProcess;
use crate::client::{PreparedRequest, RequestOutcome, Target};
use crate::cpu::process_cpu_time;
use crate::error::{BenchError, Result};

/// How the load is applied.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub arrivals: ArrivalProcess,
    pub max_concurrency: Option<usize>,
    /// Requests sent (with the first prompt) before the timed run; not measured.
    pub num_warmups: usize,
    /// No request is sent after this long from the start.
    pub duration: Option<Duration>,
    pub seed: u64,
    /// A progress bar on stderr (drawn only when stderr is a terminal).
    pub progress: bool,
    /// Stop at Ctrl-C and return what finished.
    pub handle_ctrl_c: bool,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    /// Finished or failed requests, in the order they were sent.
    pub outcomes: Vec<RequestOutcome>,
    /// Seconds from the start until the last request finished.
    pub duration: f64,
    /// User + system CPU seconds this process used during the run.
    pub cpu_seconds: f64,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// Requests not sent (duration reached or interrupted) or dropped in flight by Ctrl-C.
    pub not_completed: usize,
}

impl RunOutput {
    /// Cores' worth of CPU the client used: CPU seconds over wall seconds.
    pub fn client_cpu_cores(&self) -> f64 {
        if self.duration > 0.0 {
            self.cpu_seconds / self.duration
        } else {
            0.0
        }
    }
}

fn progress_bar(len: usize, visible: bool) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len as u64), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40.cyan/blue} {pos}/{len} requests [{elapsed_precise} < {eta_precise}] {per_sec}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// A watch that turns true at Ctrl-C (never, when not asked to listen).
fn stop_signal(listen: bool) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    if listen {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(true);
            }
            // Keep the sender alive so receivers do not see a closed channel as a stop.
            std::future::pending::<()>().await;
        });
    }
    // Without a listener the sender is dropped: `stopped` treats a closed channel as "never".
    rx
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type Finished = std::result::Result<(usize, RequestOutcome), JoinError>;

/// Sends the first request alone (a clear error beats thousands of identical failures), then
/// the warm-ups, then the timed run.
pub async fn run(
    target: &Target,
    requests: &[PreparedRequest],
    options: &RunOptions,
) -> Result<RunOutput> {
    let first = requests
        .first()
        .ok_or_else(|| BenchError::invalid("no requests to send"))?;
    let probe = target.send(first, std::time::Instant::now()).await;
    if let Some(error) = probe.error {
        return Err(BenchError::FirstRequestFailed(error));
    }
    if options.num_warmups > 0 {
        let parallel = options
            .max_concurrency
            .unwrap_or(options.num_warmups)
            .max(1);
        stream::iter(0..options.num_warmups)
            .map(|_| target.send(first, std::time::Instant::now()))
            .buffer_unordered(parallel)
            .collect::<Vec<_>>()
            .await;
    }
    timed_run(target, requests, options).await
}

/// The measured part: schedule, concurrency cap, duration bound, Ctrl-C.
pub async fn timed_run(
    target: &Target,
    requests: &[PreparedRequest],
    options: &RunOptions,
) -> Result<RunOutput> {
    let schedule = options.arrivals.schedule(requests.len(), options.seed)?;
    let mut stop = stop_signal(options.handle_ctrl_c);
    let bar = progress_bar(requests.len(), options.progress);
    let permits = options
        .max_concurrency
        .unwrap_or(Semaphore::MAX_PERMITS)
        .clamp(1, Semaphore::MAX_PERMITS);
    let semaphore = Arc::new(Semaphore::new(permits));
    let target = Arc::new(target.clone());
    let mut outcomes: Vec<Option<RequestOutcome>> = vec![None; requests.len()];
    let mut tasks: JoinSet<(usize, RequestOutcome)> = JoinSet::new();
    let record = |finished: Finished, outcomes: &mut Vec<Option<RequestOutcome>>| {
        // A panicked task is a bug of ours; a cancelled one was dropped by Ctrl-C.
        if let Ok((index, outcome)) = finished {
            outcomes[index] = Some(outcome);
            bar.inc(1);
        }
    };

    let cpu_start = process_cpu_time();
    let start = Instant::now();
    let std_start = std::time::Instant::now();
    let deadline = options.duration.map(|d| start + d);
    let mut interrupted = false;
    'dispatch: for (index, offset) in schedule.iter().enumerate() {
        let send_at = start + Duration::from_secs_f64(*offset);
        if deadline.is_some_and(|d| send_at >= d) {
            break;
        }
        while send_at > Instant::now() {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => { interrupted = true; break 'dispatch; }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => record(done, &mut outcomes),
                _ = tokio::time::sleep_until(send_at) => break,
            }
        }
        let permit = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => { interrupted = true; break 'dispatch; }
                permit = Arc::clone(&semaphore).acquire_owned() => match permit {
                    Ok(p) => break p,
                    Err(_) => break 'dispatch,
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => record(done, &mut outcomes),
            }
        };
        let (target, request) = (Arc::clone(&target), requests[index].clone());
        tasks.spawn(async move {
            let outcome = target.send(&request, std_start).await;
            drop(permit);
            (index, outcome)
        });
        // Collect whatever already finished without waiting, keeping the set small.
        while let Some(done) = tasks.try_join_next() {
            record(done, &mut outcomes);
        }
    }
    while !tasks.is_empty() {
        tokio::select! {
            biased;
            _ = stopped(&mut stop), if !interrupted => {
                interrupted = true;
                tasks.abort_all();
            }
            Some(done) = tasks.join_next() => record(done, &mut outcomes),
        }
    }
    let duration = start.elapsed().as_secs_f64();
    let cpu_seconds = (process_cpu_time() - cpu_start).as_secs_f64();
    bar.finish_and_clear();
    let outcomes: Vec<RequestOutcome> = outcomes.into_iter().flatten().collect();
    Ok(RunOutput {
        not_completed: requests.len() - outcomes.len(),
        outcomes,
        duration,
        cpu_seconds,
        interrupted,
    })
}
