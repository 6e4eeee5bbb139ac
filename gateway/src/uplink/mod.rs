//! The fleet uplink: one MQTT connection out to the fleet's broker ([`link`]), owned here with what
//! travels on it. Down come control requests on `{prefix}/control/{Operation}`, answered through the
//! same [`control::Requests`] as the local listener's, the uplink acting as an operator with the
//! configured grants and its own request rate, and the `in` topics of `[[uplink.topics]]`, published on
//! the local broker ([`bridge`]). Up go the engine's [`StatusChange`]s and the broker's presence events
//! under `{prefix}/events/...` and what local clients publish on the `out` topics, all through the
//! durable [`spool`] (an `out` publish is on disk before the client's PUBACK), sent in order from the
//! spool's cursor with a bounded [`window`] in flight; and `{prefix}/status` (retained; the connection's
//! will says offline). The uplink only reads the jobs store, never writes it. The connection (`link`)
//! reconnects by itself with exponential backoff and jitter ([`backoff`]) on a task of its own, so a dead
//! fleet broker never holds up local traffic.

pub mod backoff;
pub mod bridge;
pub mod events;
pub mod link;
pub mod spool;
pub mod window;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{LastWill, Login, QoS};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::auth::Operator;
use crate::broker::{Broker, InternalSender};
use crate::config::UplinkUrl;
use crate::control;
use crate::jobs::clock::now_ms;
use crate::jobs::StatusChange;
use backoff::Backoff;
use bridge::Bridge;
use link::{Client, LinkEvent};
use spool::{Record, Spool, SpoolHandle};
use window::Window;

/// Where the system's CA certificates usually are, when `ca_file` is not given.
const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Local `out` publishes the uplink may be behind by before their publishers wait.
const COPY_QUEUE: usize = 1024;
/// Records the uplink reads from the spool at once when it is behind (see `Uplink::next_records`).
const READ_AHEAD: usize = 500;
/// Events of the link handled before the spool's cursor moves (see `Uplink::run`): at most a window's worth.
const LINK_BURST: usize = 100;

/// The uplink's settings, built by the daemon from `[uplink]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: UplinkUrl,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub alpn: Vec<String>,
    pub prefix: String,
    /// Who the fleet is to the control API.
    pub operator: Arc<Operator>,
    pub reconnect_max: Duration,
    pub keep_alive: Duration,
    /// Where the spool's files are (`{data_dir}/uplink`).
    pub spool_dir: PathBuf,
    /// The bound of the spool's files, in bytes (`spool_mb`).
    pub spool_bytes: u64,
    /// `[[uplink.topics]]`.
    pub bridge: Bridge,
}

/// Why the uplink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink: cannot read {key} {path}: {source}")]
    File {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "uplink: mqtts:// needs CA certificates: set uplink.ca_file (none of {} exists or holds one)",
        SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoCa,
    #[error("uplink.{key}: {path}: {reason}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("uplink: cannot open the spool in {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("uplink: TLS: {0}")]
    Tls(String),
    #[error("uplink: the local broker refused the uplink's client: {0}")]
    Broker(#[from] crate::broker::BrokerError),
}

/// How long the connection to the fleet broker, its TLS handshake, its CONNACK and each write may take.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection's options for `settings`: identity, will, TLS (files read now).
pub fn link_options(settings: &Settings) -> Result<link::Options, UplinkError> {
    let url = &settings.url;
    let (topic, offline) = events::status(&settings.prefix, &settings.client_id, false, now_ms());
    let login = settings.username.as_ref().map(|username| {
        Login::new(
            username.clone(),
            settings.password.clone().unwrap_or_default(),
        )
    });
    Ok(link::Options {
        client_id: settings.client_id.clone(),
        host: url.host.clone(),
        port: url.port,
        keep_alive: settings.keep_alive,
        login,
        will: LastWill::new(topic, offline, QoS::AtLeastOnce, true),
        tls: if url.tls { Some(tls(settings)?) } else { None },
        inflight: window::WINDOW,
        max_packet: 1 << 20,
        timeout: LINK_TIMEOUT,
    })
}

/// The TLS client configuration of `settings`: its CA (or the system's), its client certificate, ALPN.
fn tls(settings: &Settings) -> Result<link::Tls, UplinkError> {
    let read = |key: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| UplinkError::File {
            key,
            path: path.clone(),
            source,
        })
    };
    let roots = match &settings.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("ca_file", path, &read("ca_file", path)?)? {
                roots.add(cert).map_err(|e| UplinkError::Pem {
                    key: "ca_file",
                    path: path.clone(),
                    reason: format!("a certificate is not a usable CA ({e})"),
                })?;
            }
            roots
        }
        None => system_roots()?,
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let (cert, key) = (read("cert_file", cert_path)?, read("key_file", key_path)?);
            let chain = certificates("cert_file", cert_path, &cert)?;
            let key = private_key(key_path, &key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| UplinkError::Pem {
                    key: "key_file",
                    path: key_path.clone(),
                    reason: format!("does not go with cert_file ({e})"),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    let server_name = ServerName::try_from(settings.url.host.clone())
        .map_err(|e| UplinkError::Tls(format!("{}: {e}", settings.url.host)))?;
    Ok(link::Tls {
        config: Arc::new(config),
        server_name,
    })
}

/// The system's CA bundle, the first of [`SYSTEM_CA_BUNDLES`] there is. The distribution's bundle is taken
/// as rustls can use it (as rumqttc took it): a certificate it cannot use is skipped, not fatal.
fn system_roots() -> Result<RootCertStore, UplinkError> {
    let pem = SYSTEM_CA_BUNDLES
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .ok_or(UplinkError::NoCa)?;
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    if roots.is_empty() {
        return Err(UplinkError::NoCa);
    }
    Ok(roots)
}

/// The certificates of a PEM file; refuses one without certificates or with one that does not parse, so
/// that a bad file stops the start, not every connection later, far from the cause.
fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    let bad = |reason: String| UplinkError::Pem {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("a certificate does not parse ({e})")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The private key of a key file (PKCS#8, RSA or SEC1 EC, in PEM).
fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, UplinkError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| UplinkError::Pem {
        key: "key_file",
        path: path.to_owned(),
        reason: format!("holds no PEM private key ({e})"),
    })
}

/// Starts the uplink: opens the spool, has the broker copy the `out` topics to it (from the first client
/// on, so call this before clients are let in), and runs until `shutdown` turns true; then it says
/// offline on `{prefix}/status` and disconnects.
pub async fn start(
    settings: Settings,
    options: link::Options,
    requests: control::Requests,
    changes: mpsc::UnboundedReceiver<StatusChange>,
    broker: &Broker,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, UplinkError> {
    let (dir, bound) = (settings.spool_dir.clone(), settings.spool_bytes);
    let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, bound)).await;
    let spool_error = |source| UplinkError::Spool {
        path: settings.spool_dir.clone(),
        source,
    };
    // The `out` topics' copies go straight to the spool's thread.
    let (copies_tx, copies) = mpsc::channel(COPY_QUEUE);
    let copies = spool::Copies {
        queue: copies,
        bridge: settings.bridge.clone(),
    };
    let spool = opened
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .and_then(|spool| spool::spawn(spool, Some(copies)))
        .map_err(spool_error)?;
    for filter in settings.bridge.local_filters() {
        broker.copy_routed(&filter, copies_tx.clone());
    }
    let (local, _) = broker.internal_client("uplink").await?.split();
    let sources = Sources {
        changes,
        presence: broker.presence_events(),
    };
    let (replies_tx, replies) = mpsc::channel(CLIENT_REPLIES);
    let uplink = Uplink {
        window: Window::default(),
        client: None,
        spool,
        local,
        requests: Arc::new(requests),
        replies: replies_tx,
        settings,
        ahead: VecDeque::new(),
    };
    Ok(tokio::spawn(
        uplink.run(options, sources, replies, shutdown),
    ))
}

/// Control replies waiting to be handed to the connection.
const CLIENT_REPLIES: usize = 256;

/// What the uplink listens to locally.
struct Sources {
    changes: mpsc::UnboundedReceiver<StatusChange>,
    presence: broadcast::Receiver<(String, Bytes)>,
}

/// The uplink's state, owned by its task.
struct Uplink {
    settings: Settings,
    spool: SpoolHandle,
    window: Window,
    /// The connected client; `None` while the link is down.
    client: Option<Client>,
    /// Publishes the `in` topics on the local broker.
    local: InternalSender,
    requests: Arc<control::Requests>,
    replies: mpsc::Sender<(String, Bytes)>,
    /// Records read from the spool beyond what the window took (see [`Uplink::next_records`]).
    ahead: VecDeque<(u64, Record)>,
}

impl Uplink {
    async fn run(
        mut self,
        options: link::Options,
        mut sources: Sources,
        mut replies: mpsc::Receiver<(String, Bytes)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (link_tx, mut link) = mpsc::channel(256);
        let backoff = Backoff::new(self.settings.reconnect_max);
        let driver = tokio::spawn(link::drive(
            options,
            self.settings.url.clone(),
            backoff,
            link_tx,
        ));
        let mut position = self.spool.position();
        loop {
            tokio::select! {
                // (The guard `wait_for` returns is dropped here: it may not live across an await.)
                _ = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => break,
                event = link.recv() => match event {
                    Some(event) => {
                        let spool_cursor = position.borrow().acked;
                        let mut cursor = self.on_link(event, spool_cursor).await;
                        // Acknowledgements come in bursts: those already here move the spool's cursor
                        // once (one write of it), not once each.
                        for _ in 0..LINK_BURST {
                            let Ok(event) = link.try_recv() else { break };
                            cursor = cursor.max(self.on_link(event, spool_cursor).await);
                        }
                        if let Some(cursor) = cursor {
                            self.acknowledge(cursor).await;
                        }
                    }
                    None => break,
                },
                // New records in the spool: sent below if the window has room.
                Ok(()) = position.changed() => {}
                Some(change) = sources.changes.recv() => {
                    let (topic, payload) = events::status_change(&self.settings.prefix, &change);
                    self.spool_event(topic, payload).await;
                }
                presence = sources.presence.recv() => match presence {
                    Ok((topic, body)) => {
                        if let Some(topic) = events::presence(&self.settings.prefix, &topic) {
                            self.spool_event(topic, body).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "uplink: presence events missed (the uplink fell behind)");
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                Some((topic, body)) = replies.recv() => self.publish_own(topic, body, false),
            }
            let spooled = position.borrow_and_update().next_seq;
            self.fill_window(spooled).await;
        }
        self.say_offline_and_disconnect(driver, link).await;
    }

    /// The link's state in the metrics (`sprig_connections` of kind `uplink`, by the fleet broker's URL).
    fn count_link(&self, up: bool) {
        let url = &self.settings.url;
        let scheme = if url.tls { "mqtts" } else { "mqtt" };
        let listener = format!("{scheme}://{}:{}", url.host, url.port);
        crate::metrics::get().uplink_link(&listener, up);
    }

    /// Handles one event of the link; returns the spool's new cursor when the event moved it.
    async fn on_link(&mut self, event: LinkEvent, spool_cursor: u64) -> Option<u64> {
        match event {
            LinkEvent::Connected(client) => {
                self.count_link(true);
                // Resent from the cursor: what the last connection had in flight may come twice.
                self.window.reset(self.window.cursor().max(spool_cursor));
                self.client = Some(client);
                self.on_connect();
            }
            LinkEvent::Lost => {
                self.count_link(false);
                self.client = None;
            }
            LinkEvent::Message(topic, payload) => self.on_message(topic, payload).await,
            LinkEvent::Done(records) => return self.window.done(records),
        }
        None
    }

    /// On each connection: take control requests and the `in` topics, say online (retained).
    fn on_connect(&mut self) {
        let Some(client) = &self.client else { return };
        let mut filters = vec![(format!("{}/control/+", self.settings.prefix), 1)];
        filters.extend(self.settings.bridge.remote_filters());
        if let Err(e) = client.try_subscribe(filters) {
            tracing::warn!(error = %e, "uplink: cannot subscribe to control requests");
        }
        let (topic, online) = events::status(
            &self.settings.prefix,
            &self.settings.client_id,
            true,
            now_ms(),
        );
        self.publish_own(topic, online, true);
    }

    /// A message from the fleet: a control request, answered on its own task, or an `in` topic.
    async fn on_message(&mut self, topic: String, payload: Bytes) {
        if let Some(operation) = events::control_operation(&self.settings.prefix, &topic) {
            let (requests, replies) = (self.requests.clone(), self.replies.clone());
            let operator = self.settings.operator.clone();
            let caller = self.settings.client_id.clone();
            let operation = operation.to_owned();
            tokio::spawn(async move {
                let reply = requests
                    .answer(Some(operator), &caller, &operation, &payload)
                    .await;
                let suffix = if reply.accepted {
                    "accepted"
                } else {
                    "rejected"
                };
                let _ = replies
                    .send((format!("{topic}/{suffix}"), reply.body))
                    .await;
            });
            return;
        }
        match self.settings.bridge.incoming(&topic) {
            Some(local) => {
                if let Err(e) = self.local.publish(&local, payload).await {
                    tracing::warn!(topic = local, error = %e, "uplink: cannot publish locally");
                }
            }
            None => tracing::debug!(topic, "uplink: a message on no bridged topic, ignored"),
        }
    }

    /// An event for the fleet, into the spool (QoS 1, not retained).
    async fn spool_event(&mut self, topic: String, payload: Bytes) {
        let record = Record {
            topic,
            payload,
            qos: 1,
            retain: false,
        };
        if self.spool.push(record, None).await.is_err() {
            tracing::warn!("uplink: the spool stopped; an event for the fleet is lost");
        }
    }

    async fn acknowledge(&mut self, cursor: u64) {
        if self.spool.acknowledge(cursor).await.is_err() {
            tracing::warn!("uplink: the spool stopped; its cursor cannot move");
        }
    }

    /// Hands spooled records to the connection while the window has room (a batch of it: see
    /// [`window::REFILL`]).
    async fn fill_window(&mut self, spooled: u64) {
        let room = self.window.refill();
        if self.client.is_none() || room == 0 || self.window.next() >= spooled {
            return;
        }
        let records = self.next_records(room).await;
        let Some(client) = &self.client else { return };
        for (seq, record) in records {
            let Record {
                topic,
                payload,
                qos,
                retain,
            } = record;
            let sent = client.try_publish(topic, qos, retain, payload, Some(seq));
            if let Err(e) = sent {
                tracing::debug!(error = %e, "uplink: the connection takes no more now");
                break;
            }
            self.window.handed(seq, qos);
        }
    }

    /// Up to `room` records from the window's next on. A backlog (after an outage) is read from the spool's
    /// files [`READ_AHEAD`] records at a time, not a refill's worth per round trip to the spool's thread;
    /// what was read ahead is dropped when the window starts elsewhere (a new connection resends from the
    /// cursor).
    async fn next_records(&mut self, room: usize) -> Vec<(u64, Record)> {
        let next = self.window.next();
        if self.ahead.front().map(|(seq, _)| *seq) != Some(next) {
            self.ahead.clear();
        }
        if self.ahead.len() < room {
            let from = next + self.ahead.len() as u64;
            match self.spool.read(from, READ_AHEAD.max(room)).await {
                Ok(records) => self.ahead.extend(records),
                Err(_) => return Vec::new(),
            }
        }
        let taken = room.min(self.ahead.len());
        self.ahead.drain(..taken).collect()
    }

    /// One of the uplink's own messages (status, control replies): QoS 1, not spooled.
    fn publish_own(&mut self, topic: String, body: Bytes, retain: bool) {
        let Some(client) = &self.client else {
            tracing::debug!(
                topic,
                "uplink: not connected; a reply to the fleet is dropped"
            );
            return;
        };
        match client.try_publish(topic, 1, retain, body, None) {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "uplink: could not queue a message to the fleet"),
        }
    }

    async fn say_offline_and_disconnect(
        self,
        driver: tokio::task::JoinHandle<()>,
        mut link: mpsc::Receiver<LinkEvent>,
    ) {
        if let Some(client) = &self.client {
            let (topic, offline) = events::status(
                &self.settings.prefix,
                &self.settings.client_id,
                false,
                now_ms(),
            );
            let _ = client.try_publish(topic, 1, true, offline, None);
            let _ = client.try_disconnect();
        }
        drop(self);
        // The eventloop sends both, then ends the connection (and the driver); a dead link leaves it to
        // the will.
        let drain = async { while link.recv().await.is_some() {} };
        let abort = driver.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), async {
            tokio::join!(driver, drain)
        })
        .await
        .is_err()
        {
            abort.abort();
            tracing::info!("uplink: the fleet broker did not take the offline status within 2 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_bundle_gives_the_roots_it_can_or_says_to_set_ca_file() {
        let bundle = SYSTEM_CA_BUNDLES.iter().find(|p| Path::new(p).exists());
        match (bundle, system_roots()) {
            (Some(_), Ok(roots)) => assert!(!roots.is_empty()),
            (None, Err(UplinkError::NoCa)) => {}
            (bundle, roots) => panic!("bundle {bundle:?}: {:?}", roots.map(|r| r.len())),
        }
    }
}
