//! AWS IoT's HTTP API for the jobs operations, so that the real `aws iot` CLI and boto3 work against the
//! gateway: hyper's HTTP/1.1 server on the `[api]` listeners (plain and TLS). Each request is
//! authenticated (AWS Signature Version 4, by the caller the daemon gives: an operator's access key),
//! turned into a control API request by its REST path ([`routes`]), answered by the same
//! [`control::Requests`] as the MQTT control API (one place for the semantics, the grants and the request
//! rate), and the answer is written as botocore reads AWS's ([`reply`]). The module owns the listeners,
//! the connections and the translation; it never touches the engine directly.

pub mod reply;
pub mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::auth::{sigv4, Authenticator, Operator};
use crate::config::ApiConfig;
use crate::control::{self, MAX_REQUEST_BYTES};
use reply::HttpReply;
use routes::RouteError;

/// Connections served at once, all listeners together; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for requests in progress.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Why a request is not let in: AWS's exception code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

/// Who sent a request (its SigV4 signature's operator), given its head and its body.
pub type Authenticate =
    Arc<dyn Fn(&Parts, &[u8]) -> Result<Arc<Operator>, Refusal> + Send + Sync + 'static>;

/// Requests signed with AWS Signature Version 4 by an operator's access key (`auth::sigv4`), checked
/// against the clock now.
pub fn sigv4_authenticator(auth: Arc<Authenticator>) -> Authenticate {
    Arc::new(move |parts: &Parts, body: &[u8]| {
        let request = sigv4::RequestParts::from_http(parts);
        let keys = auth.access_keys();
        sigv4::verify(
            &request,
            sigv4::Payload::Bytes(body),
            keys,
            SystemTime::now(),
        )
        .map_err(|e| Refusal {
            code: e.code().to_owned(),
            message: e.message(),
        })
    })
}

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}: {1}")]
    Tls(String, String),
}

/// The API's listeners, bound: [`Api::serve`] accepts on them.
pub struct Api {
    plain: Vec<TcpListener>,
    tls: Vec<(TcpListener, TlsAcceptor)>,
    service: Arc<Service>,
}

/// What every request goes through.
struct Service {
    requests: Arc<control::Requests>,
    authenticate: Authenticate,
    next_request: AtomicU64,
}

impl Api {
    /// Binds the `[api]` listeners (a port in use refuses the start) and reads the TLS files.
    pub async fn bind(
        config: &ApiConfig,
        requests: Arc<control::Requests>,
        authenticate: Authenticate,
    ) -> Result<Api, ApiError> {
        let mut plain = Vec::new();
        for addr in &config.listen {
            plain.push(bind("listen", *addr).await?);
        }
        let mut tls = Vec::new();
        if !config.tls_listen.is_empty() {
            let (cert, key) = (config.tls_cert.as_deref(), config.tls_key.as_deref());
            let (Some(cert), Some(key)) = (cert, key) else {
                return Err(ApiError::Tls(
                    "api.tls_cert".into(),
                    "required with api.tls_listen".into(),
                ));
            };
            let server = crate::broker::tls::server_config_for("api", cert, key)
                .map_err(|(key, reason)| ApiError::Tls(key, reason))?;
            let acceptor = TlsAcceptor::from(server);
            for addr in &config.tls_listen {
                tls.push((bind("tls_listen", *addr).await?, acceptor.clone()));
            }
        }
        let service = Arc::new(Service {
            requests,
            authenticate,
            next_request: AtomicU64::new(1),
        });
        Ok(Api {
            plain,
            tls,
            service,
        })
    }

    /// The plain listeners' addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.plain
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The TLS listeners' addresses.
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.tls
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves every listener until `shutdown` turns true.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        let listeners = self.plain.into_iter().map(|l| (l, None));
        let tls = self
            .tls
            .into_iter()
            .map(|(l, acceptor)| (l, Some(acceptor)));
        serve_listeners(listeners.chain(tls).collect(), self.service, shutdown).await;
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { key, addr, source })
}

/// What answers the requests of a server run by [`serve_listeners`].
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send;
}

/// Serves HTTP/1.1 (keep-alive) on `listeners` (TLS where an acceptor is given) with `handler`, at most
/// `MAX_CONNECTIONS` (256) connections at once, request headers within `HEADER_TIMEOUT` (10 s), until
/// `shutdown` turns true (requests in progress get `SHUTDOWN_WAIT`, 2 s). The HTTP API's and the metrics'
/// listeners.
pub async fn serve_listeners<H: Handler>(
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, tls) in listeners {
        let (handler, slots, shutdown) = (handler.clone(), slots.clone(), shutdown.clone());
        tasks.spawn(accept(listener, tls, handler, slots, shutdown));
    }
    while tasks.join_next().await.is_some() {}
}

/// Accepts connections on one listener until shutdown, each served on a task of its own.
async fn accept<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "http: accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "http: too many connections; closed");
            continue;
        };
        let (handler, tls, shutdown) = (handler.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, handler, shutdown).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => serve_connection(stream, handler, shutdown).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "http: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "http: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one connection's requests (HTTP/1.1, keep-alive) until it closes or the gateway stops.
async fn serve_connection<S, H>(stream: S, handler: Arc<H>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let service = hyper::service::service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "http: connection ended");
            }
        }
        _ = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, connection).await;
        }
    }
}

/// Returns once the gateway stops (the guard `wait_for` gives may not live across an await point).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl Handler for Service {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = request.into_parts();
        let reply = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
            Ok(body) => self.answer(&parts, &body.to_bytes()).await,
            Err(_) => HttpReply::error(
                "InvalidRequestException",
                &format!("the request body is over {MAX_REQUEST_BYTES} bytes, or was cut short"),
            ),
        };
        if let Some(code) = &reply.error_type {
            tracing::debug!(method = %parts.method, path = parts.uri.path(), code, "api: request refused");
        }
        response(reply, id)
    }
}

impl Service {
    /// Authenticates, routes and answers one request.
    async fn answer(&self, parts: &Parts, body: &[u8]) -> HttpReply {
        let operator = match (self.authenticate)(parts, body) {
            Ok(operator) => operator,
            Err(refusal) => return HttpReply::error(&refusal.code, &refusal.message),
        };
        let path = parts.uri.path();
        let routed = match routes::route(parts.method.as_str(), path, parts.uri.query(), body) {
            Ok(routed) => routed,
            Err(RouteError::Invalid(message)) => {
                return HttpReply::error("InvalidRequestException", &message)
            }
            Err(unknown @ RouteError::Unknown { .. }) => {
                return HttpReply::error("UnknownOperationException", &unknown.to_string())
            }
        };
        let payload = serde_json::to_vec(&routed.body).unwrap_or_default();
        let caller = operator.username.clone();
        let reply = self
            .requests
            .answer(Some(operator), &caller, routed.operation, &payload)
            .await;
        HttpReply::from_control(reply.accepted, &reply.body)
    }
}

fn response(reply: HttpReply, id: u64) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(&format!("sprig-{id:016x}")) {
        headers.insert("x-amzn-RequestId", id);
    }
    if let Some(code) = reply
        .error_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        headers.insert("x-amzn-ErrorType", code);
    }
    response
}
