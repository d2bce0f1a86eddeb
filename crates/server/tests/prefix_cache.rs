//! Prefix caching through the HTTP API: `usage.prompt_tokens_details.cached_tokens`, the
//! `pagoda:prefix_cache_*` metrics, tenant isolation by API key, `cache_salt`, and n > 1
//! (parallel samples sharing the prompt's blocks, copied on write).

mod common;

use common::{metric, start, TestServer};
use pagoda_engine::engine::EngineConfig;
use pagoda_server::ServerConfig;
use serde_json::{json, Value};

/// 100 prompt tokens: with 16-token blocks, 6 full blocks (96 tokens) can come from the cache.
fn prompt() -> Vec<u32> {
    (0..100).map(|i| 40 + (i * 7) % 200).collect()
}

async fn complete(s: &TestServer, key: &str, body: &Value) -> Value {
    let r = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn hits(s: &TestServer) -> (f64, f64) {
    let text = s.metrics().await;
    (
        metric(&text, "pagoda:prefix_cache_hits_total"),
        metric(&text, "pagoda:prefix_cache_queries_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_hit_each_others_blocks_and_a_tenant_hits_its_own() {
    let config = ServerConfig {
        api_keys: vec!["sk-tenant-a".into(), "sk-tenant-b".into()],
        ..ServerConfig::default()
    };
    let s = start(config, EngineConfig::default()).await;
    let body = json!({"prompt": prompt(), "max_tokens": 4, "temperature": 0, "ignore_eos": true});
    let cached = |r: &Value| r["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();

    let first = complete(&s, "sk-tenant-a", &body).await;
    assert_eq!(cached(&first), Some(0));
    let (h0, q0) = hits(&s).await;

    // Tenant b sends the same prompt: no block of tenant a may be reused.
    let other = complete(&s, "sk-tenant-b", &body).await;
    assert_eq!(cached(&other), Some(0), "{other}");
    let (h1, q1) = hits(&s).await;
    assert_eq!(h1, h0, "no hits across keys");
    assert_eq!(q1, q0 + 100.0, "the lookup itself is counted");

    // Tenant a again: its 6 full blocks are reused, and the output is the same.
    let again = complete(&s, "sk-tenant-a", &body).await;
    assert_eq!(cached(&again), Some(96), "{again}");
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
    let (h2, _) = hits(&s).await;
    assert_eq!(h2, h1 + 96.0);
    let text = s.metrics().await;
    assert!(metric(&text, "pagoda:prompt_tokens_cached_total") >= 96.0);

    // A client salt partitions a tenant's own cache.
    let mut salted = body.clone();
    salted["cache_salt"] = json!("conversation-1");
    assert_eq!(cached(&complete(&s, "sk-tenant-a", &salted).await), Some(0));
    assert_eq!(
        cached(&complete(&s, "sk-tenant-a", &salted).await),
        Some(96)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_samples_share_the_prompt_and_caching_changes_no_token() {
    let body = json!({"prompt": prompt(), "max_tokens": 8, "n": 4, "temperature": 0.8, "seed": 3, "ignore_eos": true});
    let texts = |r: &Value| -> Vec<String> {
        let mut choices = r["choices"].as_array().unwrap().clone();
        choices.sort_by_key(|c| c["index"].as_u64());
        choices
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    };
    let mut outputs = Vec::new();
    for caching in [true, false] {
        let engine = EngineConfig {
            enable_prefix_caching: caching,
            ..EngineConfig::default()
        };
        let s = start(ServerConfig::default(), engine).await;
        let (h0, q0) = hits(&s).await;
        let (status, r) = s.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        let (h, q) = hits(&s).await;
        // The 4 samples compute the prompt once (one lookup, nothing cached yet) and fork.
        assert_eq!(h - h0, 0.0);
        assert_eq!(q - q0, if caching { 100.0 } else { 0.0 });
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(r["usage"]["prompt_tokens"], 100, "prompt counted once");
        // 100 % 16 != 0: the samples' first tokens land in the shared partial block, so three
        // of the four copy it on write (the last writer keeps it).
        assert_eq!(s.state.engine.stats().num_cow_copies, 3);
        outputs.push(texts(&r));
        s.stop().await;
    }
    assert_eq!(outputs[0], outputs[1], "caching changed the samples");
}
