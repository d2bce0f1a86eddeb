//! End-to-end over real HTTP on 127.0.0.1: the benchmark against the scripted mock server,
//! checking that what it reports matches the script.

use std::path::PathBuf;
use std::time::Duration;

use pagoda_bench::arrivals::ArrivalProcess;
use pagoda_bench::client::{EndpointKind, Target};
use pagoda_bench::metrics::Slo;
use pagoda_bench::mock_server::{MockConfig, MockServer};
use pagoda_bench::run::RunOptions;
use pagoda_bench::serve::{self, ServeConfig};
use pagoda_bench::tokens::TokenSource;
use pagoda_bench::workload::{self, WorkloadSpec};
use pagoda_bench::BenchError;

fn mock(ttft_ms: u64, itl_ms: u64, output_tokens: Option<usize>) -> MockServer {
    let config = MockConfig {
        ttft: Duration::from_millis(ttft_ms),
        itl: Duration::from_millis(itl_ms),
        output_tokens,
        ..MockConfig::default()
    };
    MockServer::start(config, "127.0.0.1:0".parse().unwrap(), 2).unwrap()
}

fn config(
    server: &MockServer,
    endpoint: EndpointKind,
    workload: WorkloadSpec,
    n: usize,
) -> ServeConfig {
    ServeConfig {
        base_url: server.base_url(),
        api_key: None,
        model: None,
        endpoint,
        tokenizer: None,
        workload,
        num_prompts: n,
        seed: 0,
        temperature: 0.0,
        extra_body: Default::default(),
        request_timeout: Duration::from_secs(30),
        slo: Slo::default(),
    }
}

fn options(rate: f64, max_concurrency: Option<usize>) -> RunOptions {
    RunOptions {
        arrivals: ArrivalProcess::new(rate, 1.0).unwrap(),
        max_concurrency,
        num_warmups: 0,
        duration: None,
        seed: 0,
        progress: false,
        handle_ctrl_c: false,
    }
}

fn random(input_len: usize, output_len: usize) -> WorkloadSpec {
    WorkloadSpec::Random {
        input_len,
        output_len,
        range_ratio: 0.0,
    }
}

fn assert_close(what: &str, actual_ms: f64, expected_ms: f64) {
    let rel = (actual_ms - expected_ms).abs() / expected_ms;
    assert!(
        rel <= 0.05,
        "{what}: {actual_ms:.2} ms, expected {expected_ms} ms ± 5%"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn scripted_delays_are_reported_within_five_percent() {
    let server = mock(200, 20, None);
    for endpoint in [EndpointKind::Completions, EndpointKind::Chat] {
        let mut cfg = config(&server, endpoint, random(16, 10), 8);
        cfg.slo = Slo::parse(&["ttft:300", "tpot:25"]).unwrap();
        let prepared = serve::prepare(&cfg).await.unwrap();
        assert_eq!(prepared.model, "mock-model");
        let result = serve::execute(&prepared, &cfg, &options(f64::INFINITY, Some(8)))
            .await
            .unwrap();
        let m = &result.metrics;
        assert_eq!((m.completed, m.failed), (8, 0), "{endpoint:?}");
        assert_eq!(m.total_output, 80);
        // Mock prompt tokens are words: 16 random tokens decode to 16 words.
        assert_eq!(m.total_input, 8 * 16);
        assert_close("mean TTFT", m.ttft.mean * 1e3, 200.0);
        assert_close("p99 TTFT", m.ttft.p99 * 1e3, 200.0);
        assert_close("mean TPOT", m.tpot.mean * 1e3, 20.0);
        assert_close("mean ITL", m.itl.mean * 1e3, 20.0);
        assert_close("median ITL", m.itl.median * 1e3, 20.0);
        assert_close("mean E2E", m.e2el.mean * 1e3, 380.0);
        assert!(result.run.outcomes.iter().all(|o| o.itl.len() == 9));
        assert_eq!(m.request_goodput, Some(m.request_throughput));
        assert_eq!(m.peak_concurrency, 8);
        let json = result.json();
        assert_eq!(json["completed"], 8);
        assert_eq!(json["backend"], endpoint.backend_name());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rate_limit_spreads_requests_and_duration_stops_sending() {
    let server = mock(0, 0, Some(4));
    let cfg = config(&server, EndpointKind::Completions, random(8, 4), 200);
    let prepared = serve::prepare(&cfg).await.unwrap();
    let mut opts = options(50.0, None);
    opts.duration = Some(Duration::from_millis(300));
    let result = serve::execute(&prepared, &cfg, &opts).await.unwrap();
    let sent = result.run.outcomes.len();
    // 50 req/s for 0.3 s: about 15 sent (Poisson, rescaled to 200 / 50 = 4 s in all).
    assert!((5..=30).contains(&sent), "sent {sent}");
    assert_eq!(result.run.not_completed, 200 - sent);
    let starts: Vec<f64> = result.run.outcomes.iter().map(|o| o.start).collect();
    assert!(starts.iter().all(|&s| s < 0.35), "{starts:?}");
    assert!(
        starts.last().unwrap() > &0.1,
        "requests are spread: {starts:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn failed_requests_carry_the_server_message() {
    let server = mock(0, 0, None);
    let mut cfg = config(&server, EndpointKind::Chat, random(8, 4), 2);
    cfg.model = Some("no-such-model".into());
    match serve::prepare(&cfg).await {
        // The mock's /tokenize ignores the model, so preparing works; the first request fails.
        Ok(prepared) => {
            let err = serve::execute(&prepared, &cfg, &options(f64::INFINITY, None))
                .await
                .unwrap_err();
            assert!(matches!(err, BenchError::FirstRequestFailed(_)), "{err}");
            assert!(err.to_string().contains("HTTP 404"), "{err}");
            assert!(err.to_string().contains("no-such-model"), "{err}");
        }
        Err(e) => panic!("prepare failed: {e}"),
    }
    // A server that is not there: the request fails with the connection error.
    let target = Target::new(
        "http://127.0.0.1:9",
        EndpointKind::Chat,
        Duration::from_secs(2),
    )
    .unwrap();
    let err = target.first_model().await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn workloads_build_from_the_servers_tokenizer() {
    let server = mock(0, 0, None);
    let target = Target::new(
        &server.base_url(),
        EndpointKind::Completions,
        Duration::from_secs(5),
    )
    .unwrap();
    let tokens = TokenSource::remote(&target, "mock-model").await.unwrap();

    let spec = WorkloadSpec::Random {
        input_len: 100,
        output_len: 20,
        range_ratio: 0.5,
    };
    let prompts = workload::build(&spec, 50, 7, &tokens).await.unwrap();
    assert_eq!(prompts.len(), 50);
    assert!(prompts.iter().all(|p| (50..=150).contains(&p.prompt_len)));
    assert!(prompts
        .iter()
        .all(|p| (10..=30).contains(&p.output_len) && p.ignore_eos));
    assert!(prompts
        .iter()
        .all(|p| p.text.split_whitespace().count() == p.prompt_len));
    assert_ne!(
        prompts[0].prompt_len, prompts[1].prompt_len,
        "lengths vary with a range ratio"
    );
    assert_eq!(
        prompts,
        workload::build(&spec, 50, 7, &tokens).await.unwrap(),
        "seeded"
    );
    assert_ne!(
        prompts,
        workload::build(&spec, 50, 8, &tokens).await.unwrap()
    );

    let spec = WorkloadSpec::SharedPrefix {
        prefix_len: 30,
        num_prefixes: 2,
        input_len: 5,
        output_len: 3,
        range_ratio: 0.0,
    };
    let prompts = workload::build(&spec, 6, 1, &tokens).await.unwrap();
    let prefix = |i: usize| {
        prompts[i]
            .text
            .split_whitespace()
            .take(30)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(prefix(0), prefix(2));
    assert_eq!(prefix(1), prefix(5));
    assert_ne!(prefix(0), prefix(1));
    assert_ne!(prompts[0].text, prompts[2].text, "suffixes differ");
    assert!(prompts.iter().all(|p| p.prompt_len == 35));

    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sharegpt_tiny.json");
    let spec = WorkloadSpec::ShareGpt {
        path: fixture.clone(),
        output_len: None,
        ignore_eos: false,
    };
    let prompts = workload::build(&spec, 3, 0, &tokens).await.unwrap();
    let mut got: Vec<(String, usize)> = prompts
        .iter()
        .map(|p| (p.text.clone(), p.output_len))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("Name three primary colours, please.".to_string(), 9),
            ("Translate 'good morning' into German.".to_string(), 2),
            ("What is the capital of France?".to_string(), 6),
        ]
    );
    let spec = WorkloadSpec::ShareGpt {
        path: fixture,
        output_len: Some(5),
        ignore_eos: true,
    };
    let prompts = workload::build(&spec, 5, 0, &tokens).await.unwrap();
    assert_eq!(
        prompts.len(),
        5,
        "cycles when the dataset is smaller than --num-prompts"
    );
    assert!(prompts.iter().all(|p| p.output_len == 5 && p.ignore_eos));
}
