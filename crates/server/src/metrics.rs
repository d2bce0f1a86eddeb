//! Prometheus metrics with vLLM's names and semantics under a `pagoda:` prefix, so existing
//! dashboards port by a rename. Gauges (running, waiting, KV usage) and the engine's counters
//! (preemptions, prefix-cache queries and hits, cached prompt tokens) are read from the engine at
//! scrape time; per-request histograms are observed when a request
//! ends; iteration sizes are observed by the engine thread after every step.

use std::sync::Mutex;
use std::time::Duration;

use pagoda_engine::handle::EngineHandle;
use pagoda_engine::output::{RequestTimings, StepRecord};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const ITERATION_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    running: IntGauge,
    waiting: IntGauge,
    kv_cache_usage: Gauge,
    preemptions: MirroredCounter,
    prefix_cache_queries: MirroredCounter,
    prefix_cache_hits: MirroredCounter,
    prompt_tokens_cached: MirroredCounter,
    spec_draft_tokens: MirroredCounter,
    spec_accepted_tokens: MirroredCounter,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub request_success: IntCounterVec,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    e2e_latency: Histogram,
    queue_time: Histogram,
    prefill_time: Histogram,
    decode_time: Histogram,
    iteration_tokens: Histogram,
    pub http_requests: IntCounterVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("invariant: static histogram options are valid");
    registry
        .register(Box::new(h.clone()))
        .expect("invariant: metric names are unique");
    h
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("invariant: static counter options are valid");
    registry
        .register(Box::new(c.clone()))
        .expect("invariant: metric names are unique");
    c
}

/// A Prometheus counter that follows a counter kept by the engine (advanced at scrape time).
struct MirroredCounter {
    counter: IntCounter,
    seen: Mutex<u64>,
}

impl MirroredCounter {
    fn new(registry: &Registry, name: &str, help: &str) -> Self {
        Self {
            counter: counter(registry, name, help),
            seen: Mutex::new(0),
        }
    }

    fn sync(&self, now: u64) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now > *seen {
            self.counter.inc_by(now - *seen);
            *seen = now;
        }
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])
        .expect("invariant: static counter options are valid");
    registry
        .register(Box::new(c.clone()))
        .expect("invariant: metric names are unique");
    c
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        let registry = Registry::new_custom(
            None,
            Some(std::iter::once(("model_name".to_string(), model_name.to_string())).collect()),
        )
        .expect("invariant: static registry options are valid");
        let running = IntGauge::new(
            "pagoda:num_requests_running",
            "Requests in model execution batches.",
        )
        .expect("invariant: static gauge options are valid");
        let waiting = IntGauge::new(
            "pagoda:num_requests_waiting",
            "Requests waiting to be processed.",
        )
        .expect("invariant: static gauge options are valid");
        let kv_cache_usage = Gauge::new(
            "pagoda:kv_cache_usage_perc",
            "KV-cache usage: 1 means 100 percent of the blocks are in use.",
        )
        .expect("invariant: static gauge options are valid");
        for g in [&running, &waiting] {
            registry
                .register(Box::new(g.clone()))
                .expect("invariant: metric names are unique");
        }
        registry
            .register(Box::new(kv_cache_usage.clone()))
            .expect("invariant: metric names are unique");
        Self {
            running,
            waiting,
            kv_cache_usage,
            preemptions: MirroredCounter::new(
                &registry,
                "pagoda:num_preemptions_total",
                "Cumulative number of preemptions.",
            ),
            prefix_cache_queries: MirroredCounter::new(
                &registry,
                "pagoda:prefix_cache_queries_total",
                "Prefix-cache queries, in tokens (every scheduling of a waiting request).",
            ),
            prefix_cache_hits: MirroredCounter::new(
                &registry,
                "pagoda:prefix_cache_hits_total",
                "Prefix-cache hits, in tokens.",
            ),
            prompt_tokens_cached: MirroredCounter::new(
                &registry,
                "pagoda:prompt_tokens_cached_total",
                "Prompt tokens served from the prefix cache (at each request's first scheduling).",
            ),
            spec_draft_tokens: MirroredCounter::new(
                &registry,
                "pagoda:spec_decode_num_draft_tokens_total",
                "Draft tokens verified by speculative decoding.",
            ),
            spec_accepted_tokens: MirroredCounter::new(
                &registry,
                "pagoda:spec_decode_num_accepted_tokens_total",
                "Draft tokens accepted (kept as output) by speculative decoding.",
            ),
            prompt_tokens: counter(
                &registry,
                "pagoda:prompt_tokens_total",
                "Prefill tokens processed.",
            ),
            generation_tokens: counter(
                &registry,
                "pagoda:generation_tokens_total",
                "Generation tokens produced.",
            ),
            request_success: counter_vec(
                &registry,
                "pagoda:request_success_total",
                "Finished requests by finish reason.",
                "finished_reason",
            ),
            time_to_first_token: histogram(
                &registry,
                "pagoda:time_to_first_token_seconds",
                "Time to first token in seconds.",
                TTFT_BUCKETS,
            ),
            inter_token_latency: histogram(
                &registry,
                "pagoda:inter_token_latency_seconds",
                "Time between successive output tokens in seconds.",
                ITL_BUCKETS,
            ),
            e2e_latency: histogram(
                &registry,
                "pagoda:e2e_request_latency_seconds",
                "End-to-end request latency in seconds.",
                LATENCY_BUCKETS,
            ),
            queue_time: histogram(
                &registry,
                "pagoda:request_queue_time_seconds",
                "Time spent waiting before the first scheduled step, in seconds.",
                LATENCY_BUCKETS,
            ),
            prefill_time: histogram(
                &registry,
                "pagoda:request_prefill_time_seconds",
                "First scheduled step to first token, in seconds.",
                LATENCY_BUCKETS,
            ),
            decode_time: histogram(
                &registry,
                "pagoda:request_decode_time_seconds",
                "First token to finish, in seconds.",
                LATENCY_BUCKETS,
            ),
            iteration_tokens: histogram(
                &registry,
                "pagoda:iteration_tokens_total",
                "Tokens computed per engine step.",
                ITERATION_BUCKETS,
            ),
            http_requests: counter_vec(
                &registry,
                "pagoda:http_requests_total",
                "HTTP responses by status code.",
                "status",
            ),
            registry,
        }
    }

    /// Observes one engine step (called on the engine thread).
    pub fn observe_step(&self, step: &StepRecord) {
        self.iteration_tokens.observe(step.num_tokens as f64);
    }

    /// Observes a finished request's timings and finish reason.
    pub fn observe_finished(&self, timings: &RequestTimings, finish_reason: &str) {
        self.request_success
            .with_label_values(&[finish_reason])
            .inc();
        let observe = |h: &Histogram, d: Option<Duration>| {
            if let Some(d) = d {
                h.observe(d.as_secs_f64());
            }
        };
        observe(&self.e2e_latency, timings.e2e_latency());
        observe(&self.queue_time, timings.queue_time());
        observe(&self.prefill_time, timings.prefill_time());
        observe(&self.decode_time, timings.decode_time());
    }

    /// The Prometheus text exposition, with gauges refreshed from the engine.
    pub fn render(&self, engine: &EngineHandle) -> String {
        let stats = engine.stats();
        self.running.set(stats.num_running as i64);
        self.waiting.set(stats.num_waiting as i64);
        self.kv_cache_usage.set(stats.kv_cache_usage());
        self.preemptions.sync(stats.num_preemptions as u64);
        self.prefix_cache_queries.sync(stats.prefix_cache_queries);
        self.prefix_cache_hits.sync(stats.prefix_cache_hits);
        self.prompt_tokens_cached.sync(stats.prompt_tokens_cached);
        self.spec_draft_tokens.sync(stats.num_draft_tokens);
        self.spec_accepted_tokens.sync(stats.num_accepted_tokens);
        let mut buffer = Vec::new();
        // Encoding into memory cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}
