//! The engine on its own thread, behind a cloneable handle.
//!
//! [`EngineHandle::spawn`] moves an [`LlmEngine`] onto a dedicated thread that alternates between
//! draining commands (add, abort) and running steps; it sleeps when there is no work. Each
//! request gets a [`RequestStream`]: a bounded channel sized to the request's own maximum
//! output, so the engine never blocks on a slow reader. Dropping a stream before it finished
//! aborts the request, which frees its KV blocks at the next step; a closed stream found while
//! delivering does the same. Admission is checked on the caller's side (a pure function of the
//! limits), so refusals are immediate. Queue depth is readable at any time without waiting for
//! the engine thread, for admission control in front of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use pagoda_core::{RequestId, SamplingParams, TokenId};
use tokio::sync::mpsc as stream_channel;

use crate::engine::LlmEngine;
use crate::output::{EngineStats, RequestOutput, StepRecord};
use crate::sched::scheduler::AdmissionError;
use crate::sched::SchedulerConfig;

/// Called after every step on the engine thread (keep it cheap).
pub type StepObserver = Box<dyn FnMut(&StepRecord) + Send>;

/// Why a request could not be submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("the engine has stopped")]
    EngineStopped,
    #[error(
        "the queue is full ({waiting_requests} requests with {waiting_tokens} prompt tokens waiting; limits {max_requests} and {max_tokens})"
    )]
    QueueFull {
        waiting_requests: usize,
        waiting_tokens: usize,
        max_requests: usize,
        max_tokens: usize,
    },
}

/// Bounds on the waiting queue for [`EngineHandle::add_request_bounded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_requests: usize,
    pub max_tokens: usize,
}

enum Command {
    /// One request, or (several ids) parallel samples of one prompt.
    Add {
        ids: Vec<RequestId>,
        prompt_ids: Vec<TokenId>,
        params: Vec<SamplingParams>,
        arrival: Instant,
        cache_salt: Option<Arc<str>>,
        outputs: Vec<stream_channel::Sender<RequestOutput>>,
    },
    Abort(RequestId),
}

/// Requests and prompt tokens not yet running (queued in the engine or on their way to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    pub requests: usize,
    pub tokens: usize,
}

#[derive(Default)]
struct Shared {
    stats: Mutex<EngineStats>,
    /// Sent by a handle but not yet taken in by the engine thread.
    in_transit_requests: AtomicUsize,
    in_transit_tokens: AtomicUsize,
    /// Published by the engine thread whenever its queue changes.
    waiting_requests: AtomicUsize,
    waiting_tokens: AtomicUsize,
    stopped: AtomicBool,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    limits: SchedulerConfig,
    next_id: Arc<AtomicU64>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Starts the engine thread. The thread ends when every handle and stream is gone.
    pub fn spawn(engine: LlmEngine, observer: Option<StepObserver>) -> std::io::Result<Self> {
        let (commands, receiver) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let limits = engine.scheduler().config().clone();
        *lock(&shared.stats) = engine.snapshot();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pagoda-engine".into())
            .spawn(move || {
                let _stopped = StoppedOnExit(Arc::clone(&thread_shared));
                EngineLoop {
                    engine,
                    streams: HashMap::new(),
                    shared: thread_shared,
                    observer,
                }
                .run(receiver)
            })?;
        Ok(Self {
            commands,
            shared,
            limits,
            next_id: Arc::new(AtomicU64::new(0)),
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// The limits requests are admitted against (context length, cache size, batch limits).
    pub fn limits(&self) -> &SchedulerConfig {
        &self.limits
    }

    /// Submits a request; its outputs arrive on the returned stream.
    pub fn add_request(
        &self,
        prompt_ids: Vec<TokenId>,
        params: SamplingParams,
    ) -> Result<RequestStream, SubmitError> {
        self.submit(prompt_ids, vec![params], None, None)
            .map(|mut streams| streams.remove(0))
    }

    /// Submits a request unless the waiting queue would pass `limits`. The check reserves its
    /// place before comparing, so concurrent callers can never overshoot the limits together.
    /// Requests with different `cache_salt`s never share cached K/V.
    pub fn add_request_bounded(
        &self,
        prompt_ids: Vec<TokenId>,
        params: SamplingParams,
        limits: QueueLimits,
        cache_salt: Option<Arc<str>>,
    ) -> Result<RequestStream, SubmitError> {
        self.submit(prompt_ids, vec![params], Some(limits), cache_salt)
            .map(|mut streams| streams.remove(0))
    }

    /// Submits parallel samples of one prompt (one stream per entry of `params`, in order): the
    /// prompt is computed once and its blocks shared (see [`LlmEngine::add_request_group`]).
    /// Each sample counts as a waiting request against `limits`, the prompt's tokens once.
    pub fn add_request_group(
        &self,
        prompt_ids: Vec<TokenId>,
        params: Vec<SamplingParams>,
        limits: QueueLimits,
        cache_salt: Option<Arc<str>>,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        self.submit(prompt_ids, params, Some(limits), cache_salt)
    }

    fn submit(
        &self,
        prompt_ids: Vec<TokenId>,
        params: Vec<SamplingParams>,
        limits: Option<QueueLimits>,
        cache_salt: Option<Arc<str>>,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        if self.is_stopped() {
            return Err(SubmitError::EngineStopped);
        }
        for p in &params {
            self.limits
                .check_admission(prompt_ids.len(), p.max_tokens)?;
        }
        let num_tokens = prompt_ids.len();
        let num_requests = params.len();
        let reservation = Reservation::new(&self.shared, num_requests, num_tokens);
        if let Some(limits) = limits {
            let depth = self.queue_depth();
            // The first waiting request is always let in, however long, so that a prompt over
            // the token limit is not refused forever.
            let over_tokens = depth.tokens > limits.max_tokens && depth.requests > num_requests;
            if depth.requests > limits.max_requests || over_tokens {
                return Err(SubmitError::QueueFull {
                    waiting_requests: depth.requests - num_requests,
                    waiting_tokens: depth.tokens - num_tokens,
                    max_requests: limits.max_requests,
                    max_tokens: limits.max_tokens,
                });
            }
        }
        let mut ids = Vec::with_capacity(num_requests);
        let mut senders = Vec::with_capacity(num_requests);
        let mut streams = Vec::with_capacity(num_requests);
        for p in &params {
            let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
            // One slot per possible output: the engine's `try_send` can never find it full.
            let (tx, rx) = stream_channel::channel(p.max_tokens.max(1));
            ids.push(id);
            senders.push(tx);
            streams.push(RequestStream {
                id,
                outputs: rx,
                commands: self.commands.clone(),
                finished: false,
            });
        }
        self.commands
            .send(Command::Add {
                ids,
                prompt_ids,
                params,
                arrival: Instant::now(),
                cache_salt,
                outputs: senders,
            })
            .map_err(|_| SubmitError::EngineStopped)?;
        // The engine thread releases the in-transit counts when it takes the request in.
        std::mem::forget(reservation);
        Ok(streams)
    }

    /// Aborts a request; its blocks are free after the engine's next step.
    pub fn abort(&self, id: RequestId) {
        let _ = self.commands.send(Command::Abort(id));
    }

    /// Requests and prompt tokens waiting to run, including those still on their way in.
    pub fn queue_depth(&self) -> QueueDepth {
        QueueDepth {
            requests: self.shared.in_transit_requests.load(Ordering::SeqCst)
                + self.shared.waiting_requests.load(Ordering::SeqCst),
            tokens: self.shared.in_transit_tokens.load(Ordering::SeqCst)
                + self.shared.waiting_tokens.load(Ordering::SeqCst),
        }
    }

    /// The engine's counters and gauges as of its last step or command.
    pub fn stats(&self) -> EngineStats {
        let mut stats = lock(&self.shared.stats).clone();
        stats.num_waiting += self.shared.in_transit_requests.load(Ordering::SeqCst);
        stats
    }

    /// Whether the engine thread has ended (it only ends when nothing can reach it, or on a bug).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// Drops this handle and waits for the engine thread, once every other handle and stream is
    /// gone too.
    pub fn join(self) {
        let thread = lock(&self.thread).take();
        drop(self);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// One request's outputs, in order; the last one carries `finished`.
pub struct RequestStream {
    id: RequestId,
    outputs: stream_channel::Receiver<RequestOutput>,
    commands: Sender<Command>,
    finished: bool,
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next output; `None` after the final one (or if the engine dropped the request).
    pub async fn next(&mut self) -> Option<RequestOutput> {
        if self.finished {
            return None;
        }
        let output = self.outputs.recv().await;
        self.note(&output);
        output
    }

    /// [`Self::next`] for callers outside an async runtime.
    pub fn blocking_next(&mut self) -> Option<RequestOutput> {
        if self.finished {
            return None;
        }
        let output = self.outputs.blocking_recv();
        self.note(&output);
        output
    }

    fn note(&mut self, output: &Option<RequestOutput>) {
        match output {
            Some(o) if o.finished.is_none() => {}
            _ => self.finished = true,
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

struct EngineLoop {
    engine: LlmEngine,
    streams: HashMap<RequestId, stream_channel::Sender<RequestOutput>>,
    shared: Arc<Shared>,
    observer: Option<StepObserver>,
}

impl EngineLoop {
    fn run(mut self, commands: Receiver<Command>) {
        loop {
            if !self.engine.has_unfinished() {
                match commands.recv() {
                    Ok(command) => self.apply(command),
                    Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(command) => self.apply(command),
                    Err(TryRecvError::Empty) => break,
                    // Nobody can read outputs any more.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.publish();
            let steps_before = self.engine.stats.num_steps;
            let outputs = self.engine.step();
            // Stats first, so a reader that sees its final output also sees the step in them.
            self.publish();
            let mut aborted = false;
            for output in outputs {
                aborted |= !self.deliver(output);
            }
            if aborted {
                self.publish();
            }
            if self.engine.stats.num_steps > steps_before {
                if let (Some(observer), Some(record)) =
                    (self.observer.as_mut(), self.engine.stats.last_step.as_ref())
                {
                    observer(record);
                }
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Add {
                ids,
                prompt_ids,
                params,
                arrival,
                cache_salt,
                outputs,
            } => {
                let num_tokens = prompt_ids.len();
                let num_requests = ids.len();
                // Refusals were decided by the handle; one here just closes the streams.
                let added = self
                    .engine
                    .add_request_group(&ids, prompt_ids, params, arrival, cache_salt);
                if added.is_ok() {
                    self.streams.extend(ids.into_iter().zip(outputs));
                }
                self.shared
                    .in_transit_requests
                    .fetch_sub(num_requests, Ordering::SeqCst);
                self.shared
                    .in_transit_tokens
                    .fetch_sub(num_tokens, Ordering::SeqCst);
            }
            Command::Abort(id) => {
                self.engine.abort(id);
                self.streams.remove(&id);
            }
        }
    }

    /// Sends an output to its stream; false when the reader was gone and the request aborted.
    fn deliver(&mut self, output: RequestOutput) -> bool {
        let id = output.id;
        let finished = output.finished.is_some();
        let Some(stream) = self.streams.get(&id) else {
            return true;
        };
        if stream.try_send(output).is_err() {
            // The reader is gone (or, impossibly, behind by more than max_tokens).
            self.engine.abort(id);
            self.streams.remove(&id);
            return false;
        }
        if finished {
            self.streams.remove(&id);
        }
        true
    }

    fn publish(&self) {
        let stats = self.engine.snapshot();
        self.shared
            .waiting_requests
            .store(stats.num_waiting, Ordering::SeqCst);
        self.shared.waiting_tokens.store(
            self.engine.scheduler().num_waiting_tokens(),
            Ordering::SeqCst,
        );
        *lock(&self.shared.stats) = stats;
    }
}

/// A request counted as in transit; released on drop unless handed to the engine thread.
struct Reservation<'a> {
    shared: &'a Shared,
    num_requests: usize,
    num_tokens: usize,
}

impl<'a> Reservation<'a> {
    fn new(shared: &'a Shared, num_requests: usize, num_tokens: usize) -> Self {
        shared
            .in_transit_requests
            .fetch_add(num_requests, Ordering::SeqCst);
        shared
            .in_transit_tokens
            .fetch_add(num_tokens, Ordering::SeqCst);
        Self {
            shared,
            num_requests,
            num_tokens,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.shared
            .in_transit_requests
            .fetch_sub(self.num_requests, Ordering::SeqCst);
        self.shared
            .in_transit_tokens
            .fetch_sub(self.num_tokens, Ordering::SeqCst);
    }
}

/// Marks the engine stopped when its thread ends, however it ends.
struct StoppedOnExit(Arc<Shared>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}

/// Locks a mutex, recovering the data if a holder panicked (stats stay readable).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
