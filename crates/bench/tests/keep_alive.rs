//! A server that closes a kept-alive connection instead of answering its next request (what
//! llama-server does between requests): the benchmark re-sends once on a new connection
//! instead of counting a failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pagoda_bench::client::{EndpointKind, PreparedRequest, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}\n\ndata: [DONE]\n\n";

/// Reads one request (headers and a Content-Length body); false when the peer sent nothing.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return false;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return true;
            }
        }
    }
}

/// Answers the first request of every connection; on a second one, reads it and hangs up.
async fn one_answer_per_connection(listener: TcpListener, accepted: Arc<AtomicUsize>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if !read_request(&mut stream).await {
                return;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                BODY.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(BODY.as_bytes()).await;
            // The client keeps the connection; its next request is read, then the socket closed.
            read_request(&mut stream).await;
        });
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_on_a_connection_the_server_closed_is_sent_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(one_answer_per_connection(listener, accepted.clone()));

    let target = Target::new(&base, EndpointKind::Completions, Duration::from_secs(10)).unwrap();
    let request = PreparedRequest {
        body: Bytes::from_static(b"{\"prompt\":\"x\",\"stream\":true}"),
        prompt_len: 1,
        expected_output_len: 2,
    };
    let start = Instant::now();
    for i in 0..3 {
        let outcome = target.send(&request, start).await;
        assert!(outcome.success, "request {i}: {:?}", outcome.error);
        assert_eq!(outcome.output_tokens, 2);
        assert_eq!(outcome.generated_text, "ab");
    }
    // Each request after the first found its pooled connection closed and used a new one.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
