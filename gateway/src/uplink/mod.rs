//! The fleet uplink: one MQTT connection out to the fleet's broker (rumqttc), owned here with what
//! travels on it. Down come control requests on `{prefix}/control/{Operation}`, answered through the
//! same [`control::Requests`] as the local listener's, the uplink acting as an operator with the
//! configured grants and its own request rate; up go the engine's [`StatusChange`]s and the broker's
//! presence events under `{prefix}/events/...`, and `{prefix}/status` (retained; the connection's will
//! says offline). The uplink only reads: it never writes the jobs store. The link reconnects by itself
//! with exponential backoff and jitter ([`backoff`]) on a task of its own, so a dead fleet broker never
//! holds up local traffic: what goes up while the link is down waits in memory, bounded by `spool_mb`,
//! oldest dropped first (the durable spool is not built yet: README, Uplink).

pub mod backoff;
pub mod events;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{broadcast, mpsc, watch};

use crate::auth::Operator;
use crate::config::UplinkUrl;
use crate::control;
use crate::jobs::clock::now_ms;
use crate::jobs::StatusChange;
use backoff::Backoff;

/// Where the system's CA certificates usually are, when `ca_file` is not given.
const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Requests the rumqttc client queues before the eventloop takes them.
const CLIENT_QUEUE: usize = 1024;

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
    /// Bytes (topics and payloads) waiting to go up that are kept while the link is down.
    pub queue_bytes: usize,
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
        "uplink: mqtts:// needs CA certificates: set uplink.ca_file (none of {} exists)",
        SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoCa,
}

/// The rumqttc options for `settings`: identity, will, TLS (files read now).
pub fn mqtt_options(settings: &Settings) -> Result<MqttOptions, UplinkError> {
    let url = &settings.url;
    let mut options = MqttOptions::new(&settings.client_id, &url.host, url.port);
    options.set_keep_alive(settings.keep_alive);
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(username) = &settings.username {
        options.set_credentials(username, settings.password.as_deref().unwrap_or(""));
    }
    let (topic, offline) = events::status(&settings.prefix, &settings.client_id, false, now_ms());
    options.set_last_will(LastWill::new(topic, offline, QoS::AtLeastOnce, true));
    if url.tls {
        let read = |key: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| UplinkError::File {
                key,
                path: path.clone(),
                source,
            })
        };
        let ca = match &settings.ca_file {
            Some(path) => read("ca_file", path)?,
            None => SYSTEM_CA_BUNDLES
                .iter()
                .find_map(|path| std::fs::read(path).ok())
                .ok_or(UplinkError::NoCa)?,
        };
        let client_auth = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => Some((read("cert_file", cert)?, read("key_file", key)?)),
            _ => None,
        };
        let alpn = (!settings.alpn.is_empty()).then(|| {
            settings
                .alpn
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        });
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn,
            client_auth,
        }));
    }
    Ok(options)
}

/// What the uplink listens to locally.
pub struct Sources {
    pub changes: mpsc::UnboundedReceiver<StatusChange>,
    pub presence: broadcast::Receiver<(String, Bytes)>,
}

/// Runs the uplink until `shutdown` turns true; then it says offline on `{prefix}/status` and disconnects.
pub async fn run(
    settings: Settings,
    options: MqttOptions,
    requests: control::Requests,
    mut sources: Sources,
    mut shutdown: watch::Receiver<bool>,
) {
    let (client, eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
    let (link_tx, mut link) = mpsc::channel(64);
    let driver = tokio::spawn(drive(
        eventloop,
        settings.url.clone(),
        Backoff::new(settings.reconnect_max),
        link_tx,
    ));
    let requests = Arc::new(requests);
    let mut outbox = Outbox::new(settings.queue_bytes);
    let mut connected = false;
    // A client queue found full is tried again on this tick.
    let mut retry = tokio::time::interval(Duration::from_millis(100));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = retry.tick(), if connected && !outbox.messages.is_empty() => {}
            event = link.recv() => match event {
                None => break,
                Some(LinkEvent::Connected) => {
                    connected = true;
                    on_connect(&settings, &client);
                }
                Some(LinkEvent::Lost) => connected = false,
                Some(LinkEvent::Request(topic, payload)) => {
                    if let Some(operation) = events::control_operation(&settings.prefix, &topic) {
                        let (client, requests) = (client.clone(), requests.clone());
                        let operator = settings.operator.clone();
                        let caller = settings.client_id.clone();
                        let operation = operation.to_owned();
                        tokio::spawn(async move {
                            let reply = requests.answer(Some(operator), &caller, &operation, &payload).await;
                            let suffix = if reply.accepted { "accepted" } else { "rejected" };
                            let topic = format!("{topic}/{suffix}");
                            if let Err(e) = client.publish_bytes(topic, QoS::AtLeastOnce, false, reply.body).await {
                                tracing::warn!(operation, error = %e, "uplink: could not queue a control reply");
                            }
                        });
                    }
                }
            },
            change = sources.changes.recv() => match change {
                Some(change) => outbox.push(events::status_change(&settings.prefix, &change)),
                None => break,
            },
            presence = sources.presence.recv() => match presence {
                Ok((topic, body)) => {
                    if let Some(topic) = events::presence(&settings.prefix, &topic) {
                        outbox.push((topic, body));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "uplink: presence events missed (the uplink fell behind)");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
        if connected {
            outbox.hand_to(&client);
        }
    }
    let (topic, offline) = events::status(&settings.prefix, &settings.client_id, false, now_ms());
    let _ = client.try_publish(topic, QoS::AtLeastOnce, true, offline.to_vec());
    let _ = client.try_disconnect();
    // The eventloop sends both, then ends the connection; a dead link leaves it to the will.
    if tokio::time::timeout(Duration::from_secs(2), driver)
        .await
        .is_err()
    {
        tracing::info!("uplink: the fleet broker did not take the offline status within 2 s");
    }
}

/// On each (re)connection: take control requests, say online (retained).
fn on_connect(settings: &Settings, client: &AsyncClient) {
    let filter = format!("{}/control/+", settings.prefix);
    if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
        tracing::warn!(error = %e, "uplink: cannot subscribe to control requests");
    }
    let (topic, online) = events::status(&settings.prefix, &settings.client_id, true, now_ms());
    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, true, online.to_vec()) {
        tracing::warn!(error = %e, "uplink: cannot publish the online status");
    }
}

/// What the connection's driver tells the uplink.
enum LinkEvent {
    Connected,
    Lost,
    Request(String, Bytes),
}

/// Polls the rumqttc eventloop, which reconnects on the poll after an error; waits the backoff between
/// attempts, logging each failure once. Ends after a clean disconnect or when the uplink is gone.
async fn drive(
    mut eventloop: EventLoop,
    url: UplinkUrl,
    mut backoff: Backoff,
    link: mpsc::Sender<LinkEvent>,
) {
    let endpoint = format!(
        "{}://{}:{}",
        if url.tls { "mqtts" } else { "mqtt" },
        url.host,
        url.port
    );
    let mut up = false;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                backoff.reset();
                up = true;
                tracing::info!(endpoint, "uplink: connected to the fleet broker");
                LinkEvent::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                LinkEvent::Request(publish.topic, publish.payload)
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(error) => {
                let wait = backoff.failed(&mut rand::thread_rng());
                let retry_in_ms = wait.as_millis() as u64;
                match &error {
                    ConnectionError::ConnectionRefused(code) => tracing::warn!(
                        endpoint,
                        refused = ?code,
                        retry_in_ms,
                        "uplink: the fleet broker refused the login; check uplink.client_id, \
                         username/password or the client certificate"
                    ),
                    _ if up => {
                        tracing::warn!(endpoint, error = %error, retry_in_ms, "uplink: lost the fleet broker")
                    }
                    _ => {
                        tracing::warn!(endpoint, error = %error, retry_in_ms, "uplink: cannot reach the fleet broker")
                    }
                }
                if up && link.send(LinkEvent::Lost).await.is_err() {
                    return;
                }
                up = false;
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if link.send(event).await.is_err() {
            return;
        }
    }
}

/// What waits to go up while the link is down (or the client's queue is full): in memory, bounded in
/// bytes, oldest dropped first.
struct Outbox {
    messages: VecDeque<(String, Bytes)>,
    bytes: usize,
    limit: usize,
    dropped: u64,
}

impl Outbox {
    fn new(limit: usize) -> Outbox {
        Outbox {
            messages: VecDeque::new(),
            bytes: 0,
            limit,
            dropped: 0,
        }
    }

    fn push(&mut self, message: (String, Bytes)) {
        self.bytes += message.0.len() + message.1.len();
        self.messages.push_back(message);
        while self.bytes > self.limit {
            let Some((topic, body)) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= topic.len() + body.len();
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    limit_bytes = self.limit,
                    "uplink: the queue of messages to the fleet is full; dropped the oldest"
                );
            }
        }
    }

    /// Hands messages to the client, in order, until its queue is full.
    fn hand_to(&mut self, client: &AsyncClient) {
        while let Some((topic, body)) = self.messages.pop_front() {
            let size = topic.len() + body.len();
            match client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, body.to_vec()) {
                Ok(()) => self.bytes -= size,
                Err(_) => {
                    self.messages.push_front((topic, body));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_drops_the_oldest_beyond_its_bound() {
        let mut outbox = Outbox::new(30);
        for i in 0..4 {
            outbox.push((format!("t/{i}"), Bytes::from_static(b"0123456789")));
        }
        let topics: Vec<&str> = outbox.messages.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, ["t/2", "t/3"]);
        assert_eq!((outbox.dropped, outbox.bytes), (2, 26));
    }
}
