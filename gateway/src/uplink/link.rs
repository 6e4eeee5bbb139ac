//! The connection to the fleet broker: one rumqttc client and eventloop per connection, made again after
//! each loss with exponential backoff and jitter ([`Backoff`]), every failure logged once. A fresh
//! eventloop per connection means nothing is resent behind the uplink's back (rumqttc would replay what it
//! had in flight): what was not acknowledged is resent from the spool's cursor, once.

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet,
};
use tokio::sync::mpsc;

use super::backoff::Backoff;
use crate::config::UplinkUrl;

/// Requests the rumqttc client queues before the eventloop takes them: the window, replies and status.
const CLIENT_QUEUE: usize = 1024;

/// What the connection tells the uplink, in the order it happened.
pub enum LinkEvent {
    /// Connected; publish through this client until [`LinkEvent::Lost`].
    Connected(AsyncClient),
    Lost,
    /// A message from the fleet.
    Message(String, Bytes),
    /// The oldest publish handed to the client went out with this packet id (0 for QoS 0).
    WentOut(u16),
    /// The broker acknowledged this packet id.
    Acknowledged(u16),
}

/// Connects, and connects again, until the uplink is gone or a clean disconnect went out.
pub async fn drive(
    options: MqttOptions,
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
        let (client, mut eventloop) = AsyncClient::new(options.clone(), CLIENT_QUEUE);
        let mut client = Some(client);
        let error = loop {
            let event = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack)))
                    if ack.code == ConnectReturnCode::Success =>
                {
                    backoff.reset();
                    tracing::info!(endpoint, "uplink: connected to the fleet broker");
                    match client.take() {
                        Some(client) => LinkEvent::Connected(client),
                        None => continue,
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    LinkEvent::Message(publish.topic, publish.payload)
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::Acknowledged(ack.pkid),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::WentOut(pkid),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => continue,
                Err(error) => break error,
            };
            if link.send(event).await.is_err() {
                return;
            }
        };
        let was_up = client.is_none();
        let wait = backoff.failed(&mut rand::thread_rng());
        log_failure(&endpoint, url.tls, &error, was_up, wait.as_millis() as u64);
        if was_up && link.send(LinkEvent::Lost).await.is_err() {
            return;
        }
        drop(eventloop);
        tokio::time::sleep(wait).await;
    }
}

/// A TLS failure, or a connection the other side reset or closed before answering (what a broker does
/// with a client certificate it refuses, under TLS 1.3 after the client finished its handshake).
fn tls_trouble(error: &ConnectionError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, InvalidData, UnexpectedEof};
    match error {
        ConnectionError::Tls(_) => true,
        // rustls reports a TLS alert from the broker (UnknownCA, ...) as invalid data.
        ConnectionError::Io(e) => matches!(
            e.kind(),
            ConnectionReset | UnexpectedEof | BrokenPipe | InvalidData
        ),
        _ => false,
    }
}

/// Logs a failed or lost connection once, with what to check.
fn log_failure(endpoint: &str, tls: bool, error: &ConnectionError, was_up: bool, retry_in_ms: u64) {
    match error {
        ConnectionError::ConnectionRefused(code) => tracing::warn!(
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
