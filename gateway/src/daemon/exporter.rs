//! The `[metrics]` listeners: `GET /metrics` answers [`crate::metrics::encode`] (Prometheus' text
//! format), `GET /healthz` 200 while the jobs store takes writes and 503 with the reason otherwise; anything
//! else is 404. Plain HTTP/1.1, served as the HTTP API's listeners are (`http_api::serve_listeners`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http_api;
use crate::store::Health;

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
    let listeners = listeners.into_iter().map(|l| (l, None)).collect();
    let exporter = Arc::new(Exporter { store });
    http_api::serve_listeners(listeners, exporter, shutdown).await;
}

/// What answers the metrics listeners.
struct Exporter {
    store: watch::Receiver<Health>,
}

impl http_api::Handler for Exporter {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        answer(&request, &self.store)
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
