//! The connection to the fleet broker: an MQTT 3.1.1 client of sprig's own on rumqttc's packet types and
//! codec (`rumqttc::mqttbytes`), made again after each loss with exponential backoff and jitter
//! ([`Backoff`]), every failure logged once. What was not acknowledged when a connection ended is resent
//! from the spool's cursor by the uplink, once: nothing is replayed behind its back.
//!
//! Why not rumqttc's own eventloop: it writes and flushes the socket once per publish, with a timer per
//! request (rumqtt issue 810), and each publish crossed from the uplink's task to the eventloop's and each
//! event back, one at a time; forwarding QoS 1 to the fleet it was the slowest stage. Here one task owns the
//! socket: the uplink's requests queued meanwhile are encoded together and written at once, the broker's
//! packets read at once are handled together, and the keep-alive timer is set once per period.

mod connection;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{ConnectReturnCode, LastWill, Login};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

use super::backoff::Backoff;
use crate::config::UplinkUrl;
use connection::Connection;

/// Requests the uplink may queue before the connection takes them: the window, replies and status.
const CLIENT_QUEUE: usize = 1024;

/// How to connect and who to be: built once from `[uplink]` (files read then).
#[derive(Clone)]
pub struct Options {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    pub login: Option<Login>,
    /// Said by the broker when the connection dies: `{prefix}/status` offline, retained.
    pub will: LastWill,
    /// `mqtts://`: the TLS client configuration (CA, client certificate, ALPN) and the name to verify.
    pub tls: Option<Tls>,
    /// Publishes sent and not acknowledged, at most (the window; AWS IoT Core allows 100).
    pub inflight: usize,
    /// The largest packet taken from the broker.
    pub max_packet: usize,
    /// How long the TCP connection, the TLS handshake, the CONNACK and each write may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("client_id", &self.client_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// TLS to the fleet broker.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// What the connection tells the uplink, in the order it happened.
pub enum LinkEvent {
    /// Connected; publish through this client until [`LinkEvent::Lost`].
    Connected(Client),
    Lost,
    /// A message from the fleet.
    Message(String, Bytes),
    /// These records are done: written (QoS 0) or acknowledged by the broker (QoS 1), by their tags.
    Done(Vec<u64>),
}

/// What the uplink asks of the connection.
#[derive(Debug)]
enum Request {
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
        /// Reported in [`LinkEvent::Done`] once it is; `None`: not reported.
        tag: Option<u64>,
    },
    /// Filters with their QoS.
    Subscribe(Vec<(String, u8)>),
    /// Ends the connection cleanly (the will is not said) after what was asked before.
    Disconnect,
}

/// The uplink's handle on one connection.
#[derive(Debug, Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
}

/// The connection's queue is full, or the connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("the connection to the fleet broker takes no more now")]
pub struct NotTaken;

impl Client {
    /// Queues a publish; with a `tag`, [`LinkEvent::Done`] says when it is done.
    pub fn try_publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        tag: Option<u64>,
    ) -> Result<(), NotTaken> {
        self.try_send(Request::Publish {
            topic,
            payload,
            qos,
            retain,
            tag,
        })
    }

    /// Subscribes to `filters` (filter, QoS); a refusal is logged.
    pub fn try_subscribe(&self, filters: Vec<(String, u8)>) -> Result<(), NotTaken> {
        self.try_send(Request::Subscribe(filters))
    }

    /// Disconnects cleanly once what was queued before is written.
    pub fn try_disconnect(&self) -> Result<(), NotTaken> {
        self.try_send(Request::Disconnect)
    }

    fn try_send(&self, request: Request) -> Result<(), NotTaken> {
        self.requests.try_send(request).map_err(|_| NotTaken)
    }
}

/// Why a connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no PINGRESP within the keep-alive")]
    PingTimeout,
    #[error("the broker broke the protocol: {0}")]
    Protocol(String),
    #[error("the broker closed the connection")]
    Closed,
}

/// Connects, and connects again, until the uplink is gone or a clean disconnect went out.
pub async fn drive(
    options: Options,
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
    loop {
        let (error, was_up) = match Connection::open(&options).await {
            Ok(connection) => {
                backoff.reset();
                tracing::info!(endpoint, "uplink: connected to the fleet broker");
                let (requests, taken) = mpsc::channel(CLIENT_QUEUE);
                if link
                    .send(LinkEvent::Connected(Client { requests }))
                    .await
                    .is_err()
                {
                    return;
                }
                match connection.run(taken, &link).await {
                    // A clean disconnect, or the uplink is gone.
                    None => return,
                    Some(error) => (error, true),
                }
            }
            Err(error) => (error, false),
        };
        let wait = backoff.failed(&mut rand::thread_rng());
        log_failure(&endpoint, url.tls, &error, was_up, wait.as_millis() as u64);
        if was_up && link.send(LinkEvent::Lost).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// A TLS failure, or a connection the other side reset or closed before answering (what a broker does
/// with a client certificate it refuses, under TLS 1.3 after the client finished its handshake).
fn tls_trouble(error: &LinkError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, InvalidData, UnexpectedEof};
    match error {
        // rustls reports a TLS alert from the broker (UnknownCA, ...) as invalid data.
        LinkError::Io(e) => matches!(
            e.kind(),
            ConnectionReset | UnexpectedEof | BrokenPipe | InvalidData
        ),
        LinkError::Closed => true,
        _ => false,
    }
}

/// Logs a failed or lost connection once, with what to check.
fn log_failure(endpoint: &str, tls: bool, error: &LinkError, was_up: bool, retry_in_ms: u64) {
    match error {
        LinkError::Refused(code) => tracing::warn!(
            endpoint,
            refused = ?code,
            retry_in_ms,
            "uplink: the fleet broker refused the login; check uplink.client_id, \
             username/password or the client certificate"
        ),
        _ if tls && !was_up && tls_trouble(error) => tracing::warn!(
            endpoint,
            error = %error,
            retry_in_ms,
            "uplink: cannot reach the fleet broker; the TLS connection failed: check uplink.ca_file \
             (the broker's CA), cert_file and key_file (a broker that does not accept the client \
             certificate ends the connection)"
        ),
        _ if was_up => {
            tracing::warn!(endpoint, error = %error, retry_in_ms, "uplink: lost the fleet broker")
        }
        _ => {
            tracing::warn!(endpoint, error = %error, retry_in_ms, "uplink: cannot reach the fleet broker")
        }
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::QoS;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A broker that accepts the connection, then goes silent: the link pings when it has written
    /// nothing for a keep-alive, and reports the link lost when the ping goes unanswered for another.
    #[tokio::test]
    async fn a_silent_broker_is_pinged_then_given_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keep_alive = Duration::from_secs(1);
        let options = Options {
            client_id: "site-7".into(),
            host: "127.0.0.1".into(),
            port,
            keep_alive,
            login: None,
            will: LastWill::new("s", "offline", QoS::AtLeastOnce, true),
            tls: None,
            inflight: 100,
            max_packet: 1 << 20,
            timeout: Duration::from_secs(5),
        };
        let url = UplinkUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port,
        };
        let (link, mut events) = mpsc::channel(16);
        let driver = tokio::spawn(drive(options, url, Backoff::new(keep_alive), link));

        let (mut broker, _) = listener.accept().await.unwrap();
        let mut connect = [0u8; 256];
        let read = broker.read(&mut connect).await.unwrap();
        assert_eq!(connect[0], 0x10, "CONNECT first: {:?}", &connect[..read]);
        broker.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        let connected = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert!(matches!(connected, Ok(Some(LinkEvent::Connected(_)))));

        let asked = tokio::time::Instant::now();
        let mut ping = [0u8; 2];
        tokio::time::timeout(keep_alive * 3, broker.read_exact(&mut ping))
            .await
            .expect("a PINGREQ within the keep-alive")
            .unwrap();
        assert_eq!(ping, [0xC0, 0x00]);
        let lost = tokio::time::timeout(keep_alive * 3, events.recv()).await;
        assert!(
            matches!(lost, Ok(Some(LinkEvent::Lost))),
            "the link is lost"
        );
        assert!(
            asked.elapsed() >= keep_alive,
            "not before the ping had its keep-alive"
        );
        driver.abort();
    }
}
