//! The `[metrics]` listeners: `GET /metrics` answers [`crate::metrics::encode`] (Prometheus' text
//! format), `GET /healthz` 200 while the jobs store takes writes and 503 with the reason otherwise. Plain
//! HTTP/1.1 with hyper, one task per connection; anything else is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::Health;

/// A client must send a request's headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the listeners now (a port in use refuses the start).
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {addr}: {e}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves `listeners` until `shutdown` turns true; `/healthz` follows `store`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    store: watch::Receiver<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept(listener, store.clone(), shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept(
    listener: TcpListener,
    store: watch::Receiver<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
        };
        let store = store.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(answer(&request, &store)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), handler)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, store: &watch::Receiver<Health>) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, crate::metrics::encode());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => match &*store.borrow() {
            Health::Serving => text(StatusCode::OK, "ok\n".into()),
            Health::Failed(cause) | Health::Fatal(cause) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the jobs store is out of service: {cause}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "/metrics or /healthz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
