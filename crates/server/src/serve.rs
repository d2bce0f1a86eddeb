//! Starting and stopping: build the state over a loaded model (engine thread, chat template,
//! metrics), warm up, serve until a shutdown signal, then drain.
//!
//! Draining: readiness and new generation requests answer 503 while the listener keeps
//! accepting (so clients get an answer, not a refused connection); in-flight requests run to
//! completion up to the drain timeout; then the server exits.

use axum::serve::ListenerExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pagoda_core::SamplingParams;
use pagoda_engine::engine::{EngineConfig, LlmEngine};
use pagoda_engine::handle::{EngineHandle, StepObserver};
use pagoda_model::LoadedModel;
use tokio::net::TcpListener;

use crate::chat_template::ChatTemplate;
use crate::metrics::Metrics;
use crate::state::{AppState, ServerConfig};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    ChatTemplate(String),
    #[error("cannot start the engine thread: {0}")]
    EngineThread(std::io::Error),
    #[error("warm-up failed: {0}")]
    WarmUp(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What `start` needs besides the model.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    /// A Jinja chat template replacing the model's own (or the fallback).
    pub chat_template: Option<String>,
}

/// Builds the state: engine thread with metrics observer, chat template, tokenizer.
pub fn start(loaded: LoadedModel, options: ServerOptions) -> Result<Arc<AppState>, ServeError> {
    let LoadedModel {
        runner, tokenizer, ..
    } = loaded;
    let template_source = options
        .chat_template
        .clone()
        .or_else(|| tokenizer.chat_template.clone());
    let chat_template = ChatTemplate::new(
        template_source,
        tokenizer.bos_token.clone(),
        tokenizer.eos_token.clone(),
    )
    .map_err(ServeError::ChatTemplate)?;
    if chat_template.is_fallback {
        tracing::warn!(
            "the model has no chat template: /v1/chat/completions uses pagoda's fallback (`role: content` lines); pass --chat-template to set one"
        );
    }
    let metrics = Arc::new(Metrics::new(&options.server.served_model_name));
    let vocab_size = runner.config().vocab_size;
    let engine = LlmEngine::new(runner, Some(tokenizer.clone()), &options.engine);
    let step_metrics = Arc::clone(&metrics);
    let observer: StepObserver = Box::new(move |step| step_metrics.observe_step(step));
    let handle = EngineHandle::spawn(engine, Some(observer)).map_err(ServeError::EngineThread)?;
    Ok(Arc::new(AppState::new(
        handle,
        tokenizer,
        chat_template,
        options.server,
        metrics,
        vocab_size,
    )))
}

/// Runs one short generation through the whole engine path, then marks the server ready.
pub async fn warm_up(state: &AppState) -> Result<(), ServeError> {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(2)
    };
    let mut stream = state
        .engine
        .add_request(vec![1, 2, 3, 4], params)
        .map_err(|e| ServeError::WarmUp(e.to_string()))?;
    loop {
        match stream.next().await {
            Some(o) if o.finished.is_some() => break,
            Some(_) => continue,
            None => return Err(ServeError::WarmUp("the engine dropped the request".into())),
        }
    }
    state.set_ready();
    Ok(())
}

/// Serves on `listener` until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = crate::app(Arc::clone(&state));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = Arc::clone(&state);
    let drain = async move {
        shutdown.await;
        drain_state.start_draining();
        let in_flight = drain_state.num_in_flight();
        tracing::info!(in_flight, "shutting down: draining in-flight requests");
        let timeout = drain_state.config.drain_timeout;
        if tokio::time::timeout(timeout, drain_state.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = drain_state.num_in_flight(),
                "drain timeout reached; exiting with requests in flight"
            );
        }
        let _ = drained_tx.send(());
    };
    // Tokens are small writes: without TCP_NODELAY, Nagle's algorithm can hold one back until
    // the client's delayed ACK (tens of milliseconds of extra TTFT/ITL).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(drain);
    // Graceful shutdown also waits for idle keep-alive connections; once drained, give them a
    // moment and exit regardless.
    let deadline = async {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result?,
        () = deadline => {}
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
