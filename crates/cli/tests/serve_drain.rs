//! `pagoda serve` as a process: SIGTERM during 20 in-flight streams lets all 20 finish, answers
//! new requests and readiness with 503 meanwhile, and exits with code 0.

mod support;

use std::time::Duration;

use support::ServerProcess;

#[test]
fn sigterm_drains_in_flight_streams_then_exits_cleanly() {
    let mut server = ServerProcess::start(&["--drain-timeout", "60"]);
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": true, "temperature": 0.8, "stream": true}"#;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = server.addr;
            let started = started_tx.clone();
            std::thread::spawn(move || {
                // A streaming request read to its end (Connection: close).
                use std::io::{Read, Write};
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                write!(
                    stream,
                    "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                let mut first = [0u8; 256];
                let n = stream.read(&mut first).unwrap();
                started.send(()).unwrap();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).unwrap();
                let mut all = first[..n].to_vec();
                all.extend(rest);
                String::from_utf8_lossy(&all).into_owned()
            })
        })
        .collect();
    for _ in 0..20 {
        started_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    server.terminate();
    // New work is refused while the streams drain.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.post("/v1/completions", r#"{"prompt": "x", "max_tokens": 2}"#);
        if status == 503 {
            assert!(body.contains("\"error\""), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "never started draining"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.get("/ready").0, 503);
    assert_eq!(server.get("/health").0, 200);
    for client in clients {
        let response = client.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response:.200}");
        assert!(
            response.contains("data: [DONE]"),
            "stream cut short: …{}",
            &response[response.len().saturating_sub(300)..]
        );
        assert!(response.contains("\"finish_reason\":\"length\""));
    }
    assert_eq!(server.wait(Duration::from_secs(30)), Some(0));
    // Once gone, nothing listens.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}
