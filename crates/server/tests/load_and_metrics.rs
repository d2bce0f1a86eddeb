//! Behaviour under load over real HTTP: disconnecting streams free their KV blocks at once, an
//! overload burst is refused fast while every accepted request completes correctly, and
//! `/metrics` parses as Prometheus text with counters equal to what was sent.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{histogram_count, metric, metric_with, rss_bytes, start};
use futures::StreamExt;
use pagoda_engine::engine::EngineConfig;
use pagoda_server::ServerConfig;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_streams_free_the_cache_promptly() {
    let s = Arc::new(start(ServerConfig::default(), EngineConfig::default()).await);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true,
        "temperature": 0.7, "stream": true});
    let mut responses = Vec::new();
    for _ in 0..50 {
        let r = s
            .client
            .post(format!("{}/v1/completions", s.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        responses.push(r);
    }
    // Read 5 token chunks from each stream.
    let mut streams = Vec::new();
    for r in responses {
        let mut stream = r.bytes_stream();
        let mut seen = 0;
        let mut buffer = String::new();
        while seen < 5 {
            let bytes = stream.next().await.unwrap().unwrap();
            buffer.push_str(&String::from_utf8_lossy(&bytes));
            seen = buffer.matches("data: ").count();
        }
        streams.push(stream);
    }
    let before = s.metrics().await;
    assert!(
        metric(&before, "pagoda:num_requests_running") > 0.0,
        "{before}"
    );
    assert!(metric(&before, "pagoda:kv_cache_usage_perc") > 0.0);
    let closed = Instant::now();
    drop(streams);
    loop {
        let m = s.metrics().await;
        let running = metric(&m, "pagoda:num_requests_running");
        let usage = metric(&m, "pagoda:kv_cache_usage_perc");
        if running == 0.0 && usage == 0.0 && metric(&m, "pagoda:num_requests_waiting") == 0.0 {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(3),
            "after {:?}: running {running}, KV usage {usage}",
            closed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("cache free {:?} after the disconnects", closed.elapsed());
    let m = s.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "pagoda:request_success_total",
            "finished_reason",
            "length"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_client_that_gives_up_aborts_its_request() {
    let s = start(ServerConfig::default(), EngineConfig::default()).await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 1900, "ignore_eos": true});
    let request = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&body)
        .timeout(Duration::from_millis(300))
        .send();
    assert!(
        request.await.is_err(),
        "the request should still be running at 300 ms"
    );
    let gave_up = Instant::now();
    loop {
        let m = s.metrics().await;
        if metric(&m, "pagoda:num_requests_running") == 0.0
            && metric(&m, "pagoda:kv_cache_usage_perc") == 0.0
        {
            // Aborted, not finished: it never reached max_tokens.
            assert_eq!(
                metric_with(
                    &m,
                    "pagoda:request_success_total",
                    "finished_reason",
                    "length"
                ),
                0.0
            );
            break;
        }
        assert!(
            gave_up.elapsed() < Duration::from_secs(3),
            "still running after {:?}",
            gave_up.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_burst_is_refused_fast_and_accepted_requests_complete() {
    let max_waiting = 4;
    let config = ServerConfig {
        max_waiting_requests: max_waiting,
        ..ServerConfig::default()
    };
    let engine = EngineConfig {
        max_num_seqs: 2,
        ..EngineConfig::default()
    };
    let s = Arc::new(start(config, engine).await);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": true, "temperature": 0});
    let (_, solo) = s.post("/v1/completions", &body).await;
    let expected = solo["choices"][0]["text"].as_str().unwrap().to_string();
    let rss_before = rss_bytes();

    let burst = 10 * max_waiting;
    let tasks: Vec<_> = (0..burst)
        .map(|_| {
            let s = Arc::clone(&s);
            let body = body.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let r = s
                    .client
                    .post(format!("{}/v1/completions", s.base))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").is_some();
                let latency = start.elapsed();
                let value: serde_json::Value = r.json().await.unwrap();
                (status, retry_after, latency, value)
            })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, retry_after, latency, value) = t.await.unwrap();
        match status {
            200 => {
                accepted += 1;
                assert_eq!(value["choices"][0]["text"], expected.as_str());
            }
            429 => {
                refused += 1;
                assert!(retry_after, "429 without Retry-After");
                assert!(latency < Duration::from_millis(50), "429 after {latency:?}");
                assert_eq!(value["error"]["type"], "rate_limit_error");
            }
            other => panic!("unexpected status {other}: {value}"),
        }
    }
    eprintln!("burst of {burst}: {accepted} accepted, {refused} refused");
    // At most the queue plus the running slots were let in (a few more only if requests
    // finished during the burst); the queue itself was used.
    assert!(
        accepted >= max_waiting && accepted <= max_waiting + 2 + 2,
        "{accepted}"
    );
    assert_eq!(accepted + refused, burst);
    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        let growth = after.saturating_sub(before);
        assert!(growth < 64 << 20, "RSS grew by {} MiB", growth >> 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_sent() {
    let s = start(ServerConfig::default(), EngineConfig::default()).await;
    let prompts = ["Once upon a time", "The dog ran", "Hello"];
    let mut prompt_tokens = 0;
    for p in prompts {
        let (status, r) = s
            .post(
                "/v1/completions",
                &json!({"prompt": p, "max_tokens": 5, "ignore_eos": true}),
            )
            .await;
        assert_eq!(status, 200);
        prompt_tokens += r["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    // Two prompts × n = 2: prompt tokens count once per prompt, as in usage.
    let (status, r) = s
        .post(
            "/v1/completions",
            &json!({"prompt": ["A dog", "A big cat"], "n": 2, "max_tokens": 3, "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, 200);
    prompt_tokens += r["usage"]["prompt_tokens"].as_u64().unwrap();
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let chunks = common::chunks(&s.stream("/v1/chat/completions", &chat).await);
    prompt_tokens += chunks.last().unwrap()["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    let (status, _) = s
        .post("/v1/completions", &json!({"prompt": "x", "top_p": 7}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = s.post_raw("/v1/completions", "{").await;
    assert_eq!(status, 400);
    let (status, _) = s
        .post("/v1/completions", &json!({"model": "nope", "prompt": "x"}))
        .await;
    assert_eq!(status, 404);

    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "pagoda:prompt_tokens_total"),
        prompt_tokens as f64
    );
    assert_eq!(
        metric(&m, "pagoda:generation_tokens_total"),
        (3 * 5 + 4 * 3 + 4) as f64
    );
    assert_eq!(
        metric_with(
            &m,
            "pagoda:request_success_total",
            "finished_reason",
            "length"
        ),
        8.0
    );
    assert_eq!(
        metric_with(&m, "pagoda:http_requests_total", "status", "200"),
        5.0
    );
    assert_eq!(
        metric_with(&m, "pagoda:http_requests_total", "status", "400"),
        2.0
    );
    assert_eq!(
        metric_with(&m, "pagoda:http_requests_total", "status", "404"),
        1.0
    );
    for h in [
        "pagoda:time_to_first_token_seconds",
        "pagoda:e2e_request_latency_seconds",
        "pagoda:request_queue_time_seconds",
        "pagoda:request_prefill_time_seconds",
        "pagoda:request_decode_time_seconds",
    ] {
        assert_eq!(histogram_count(&m, h), 8, "{h}");
    }
    assert_eq!(
        histogram_count(&m, "pagoda:inter_token_latency_seconds"),
        3 * 4 + 4 * 2 + 3
    );
    assert!(histogram_count(&m, "pagoda:iteration_tokens_total") > 0);
    assert_eq!(metric(&m, "pagoda:num_requests_running"), 0.0);
    assert_eq!(metric(&m, "pagoda:num_requests_waiting"), 0.0);
    assert_eq!(metric(&m, "pagoda:kv_cache_usage_perc"), 0.0);
    assert_eq!(metric(&m, "pagoda:num_preemptions_total"), 0.0);
    s.stop().await;
}
