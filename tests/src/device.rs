//! A device for end-to-end tests: a real rumqttc client (MQTT 3.1.1 or 5) connected with client id = thing
//! name, speaking the AWS IoT Jobs device topics the way device SDKs do — subscribe to a request's
//! `/accepted` and `/rejected` topics, publish the request with a `clientToken`, match the reply by token.
//!
//! A background task polls the client's event loop and hands publishes and SUBACKs to the [`Device`];
//! publishes nobody has asked for yet wait in an inbox, so a test can look for a notification after
//! making requests.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The MQTT protocol version a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

/// The QoS of a message a device publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

/// How a device logs in: its client id (the thing name for devices) and an optional username/password.
#[derive(Debug, Clone)]
pub struct Login {
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub protocol: Protocol,
    /// `None`: a clean session. `Some(expiry)`: a persistent one (MQTT 3.1.1 `clean_session = false`; MQTT 5
    /// `clean_start = false` with this Session Expiry Interval in seconds).
    pub persistent: Option<u32>,
}

impl Login {
    /// An anonymous device (allowed on loopback listeners by the default config).
    pub fn anonymous(thing: &str, protocol: Protocol) -> Login {
        Login {
            client_id: thing.to_owned(),
            credentials: None,
            protocol,
            persistent: None,
        }
    }

    /// The same login with a persistent session whose MQTT 5 Session Expiry Interval is `expiry_s`.
    pub fn persistent(mut self, expiry_s: u32) -> Login {
        self.persistent = Some(expiry_s);
        self
    }

    /// The same login with `username` and `password`.
    pub fn with_credentials(mut self, username: &str, password: &str) -> Login {
        self.credentials = Some((username.to_owned(), password.to_owned()));
        self
    }
}

/// What the event loop task passes on.
enum Received {
    Publish(String, Vec<u8>),
    SubAck(Vec<u8>),
}

enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// A connected device. Dropping it closes the connection abruptly (no DISCONNECT).
pub struct Device {
    /// The thing name (= client id) whose `$aws/things/{thing}/jobs/` topics it uses.
    pub thing: String,
    client: Client,
    events: mpsc::UnboundedReceiver<Received>,
    inbox: VecDeque<(String, Vec<u8>)>,
    subscribed: HashSet<String>,
    poller: JoinHandle<()>,
    /// The CONNACK's session-present flag.
    pub session_present: bool,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Device {
    /// Connects anonymously as `thing`; panics if refused.
    pub async fn connect(addr: SocketAddr, thing: &str, protocol: Protocol) -> Device {
        Device::connect_with(addr, Login::anonymous(thing, protocol))
            .await
            .unwrap_or_else(|e| panic!("device {thing} could not connect: {e}"))
    }

    /// Connects; `Err` (the refusal) if the gateway does not accept the connection within 10 s.
    pub async fn connect_with(addr: SocketAddr, login: Login) -> Result<Device, String> {
        let (tx, events) = mpsc::unbounded_channel();
        let host = addr.ip().to_string();
        let (client, poller, session_present) = match login.protocol {
            Protocol::V311 => {
                let mut options = rumqttc::MqttOptions::new(&login.client_id, host, addr.port());
                options.set_keep_alive(Duration::from_secs(30));
                if let Some((user, password)) = &login.credentials {
                    options.set_credentials(user, password);
                }
                options.set_clean_session(login.persistent.is_none());
                let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
                let present = within_10s(connack_v311(&mut eventloop)).await?;
                let poller = tokio::spawn(poll_v311(eventloop, tx));
                (Client::V311(client), poller, present)
            }
            Protocol::V5 => {
                let mut options = v5::MqttOptions::new(&login.client_id, host, addr.port());
                options.set_keep_alive(Duration::from_secs(30));
                if let Some((user, password)) = &login.credentials {
                    options.set_credentials(user, password);
                }
                options.set_clean_start(login.persistent.is_none());
                let mut properties = v5::mqttbytes::v5::ConnectProperties::new();
                properties.session_expiry_interval = login.persistent;
                options.set_connect_properties(properties);
                let (client, mut eventloop) = v5::AsyncClient::new(options, 64);
                let present = within_10s(connack_v5(&mut eventloop)).await?;
                let poller = tokio::spawn(poll_v5(eventloop, tx));
                (Client::V5(client), poller, present)
            }
        };
        Ok(Device {
            thing: login.client_id,
            client,
            events,
            inbox: VecDeque::new(),
            subscribed: HashSet::new(),
            poller,
            session_present,
        })
    }

    /// `$aws/things/{thing}/jobs/{suffix}`.
    pub fn jobs_topic(&self, suffix: &str) -> String {
        format!("$aws/things/{}/jobs/{suffix}", self.thing)
    }

    /// Subscribes to `filters` (QoS 1) in one SUBSCRIBE and returns the SUBACK's return codes
    /// (0-2 granted QoS, 0x80 and up refused).
    pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        match &self.client {
            Client::V311(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    rumqttc::SubscribeFilter::new(f.to_string(), rumqttc::QoS::AtLeastOnce)
                }))
                .await
                .expect("subscribe"),
            Client::V5(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    v5::mqttbytes::v5::Filter::new(f.to_string(), v5::mqttbytes::QoS::AtLeastOnce)
                }))
                .await
                .expect("subscribe"),
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.receive_until(deadline).await {
                Some(Received::SubAck(codes)) => {
                    for (filter, code) in filters.iter().zip(&codes) {
                        if *code < 0x80 {
                            self.subscribed.insert(filter.to_string());
                        }
                    }
                    return codes;
                }
                Some(Received::Publish(topic, payload)) => self.inbox.push_back((topic, payload)),
                None => panic!("{}: no SUBACK within {REPLY_TIMEOUT:?}", self.thing),
            }
        }
    }

    /// Publishes `payload` on `topic` (any topic: for testing what the gateway refuses) at QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(Qos::AtLeastOnce, topic, payload).await
    }

    /// Publishes `payload` on `topic` at `qos`. Over MQTT 5, a QoS 1 publish the gateway refuses ends this
    /// device's connection: rumqttc takes PUBACK 0x87 (not authorized) as a fatal error.
    pub async fn publish_with(&self, qos: Qos, topic: &str, payload: impl Into<Vec<u8>>) {
        let payload = payload.into();
        match &self.client {
            Client::V311(c) => {
                let qos = match qos {
                    Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
                    Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                };
                c.publish(topic, qos, false, payload)
                    .await
                    .expect("publish")
            }
            Client::V5(c) => {
                let qos = match qos {
                    Qos::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
                    Qos::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
                };
                c.publish(topic, qos, false, payload)
                    .await
                    .expect("publish")
            }
        }
    }

    /// Sends a Jobs request on `$aws/things/{thing}/jobs/{suffix}` and waits for its reply:
    /// (accepted?, reply body). A `clientToken` is added unless `body` has one; the reply is matched by it.
    pub async fn request(&mut self, suffix: &str, mut body: Value) -> (bool, Value) {
        static TOKENS: AtomicU64 = AtomicU64::new(1);
        let token = match body.get("clientToken").and_then(Value::as_str) {
            Some(token) => token.to_owned(),
            None => {
                let token = format!("{}-{}", self.thing, TOKENS.fetch_add(1, Ordering::SeqCst));
                body["clientToken"] = json!(token);
                token
            }
        };
        let payload = serde_json::to_vec(&body).unwrap();
        self.request_raw(suffix, payload, Some(&token)).await
    }

    /// Sends `payload` as is and waits for the reply carrying `token` (or for any reply if `None`).
    pub async fn request_raw(
        &mut self,
        suffix: &str,
        payload: impl Into<Vec<u8>>,
        token: Option<&str>,
    ) -> (bool, Value) {
        let topic = self.jobs_topic(suffix);
        let (accepted, rejected) = (format!("{topic}/accepted"), format!("{topic}/rejected"));
        let missing: Vec<&str> = [accepted.as_str(), rejected.as_str()]
            .into_iter()
            .filter(|f| !self.subscribed.contains(*f))
            .collect();
        if !missing.is_empty() {
            let codes = self.subscribe(&missing).await;
            assert!(
                codes.iter().all(|c| *c < 0x80),
                "{missing:?} refused: {codes:?}"
            );
        }
        self.publish(&topic, payload).await;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let wanted = |t: &str, body: &Value| {
            (t == accepted || t == rejected)
                && token.is_none_or(|token| body["clientToken"] == json!(token))
        };
        let (reply_topic, body) = self
            .take_matching(deadline, wanted)
            .await
            .unwrap_or_else(|| panic!("no reply to {topic} within {REPLY_TIMEOUT:?}"));
        (reply_topic == accepted, body)
    }

    /// Waits up to `timeout` for a publish on exactly `topic` (already received ones first); its JSON body.
    pub async fn expect_message(&mut self, topic: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        match self.take_matching(deadline, |t, _| t == topic).await {
            Some((_, body)) => body,
            None => panic!("{}: no message on {topic} within {timeout:?}", self.thing),
        }
    }

    /// Asserts that nothing matching `filter` (MQTT wildcards allowed) arrives for `duration`, counting
    /// what was already received and not yet taken.
    pub async fn expect_no_message(&mut self, filter: &str, duration: Duration) {
        let deadline = Instant::now() + duration;
        if let Some((topic, body)) = self
            .take_matching(deadline, |t, _| topic_matches(filter, t))
            .await
        {
            panic!("{}: unexpected message on {topic}: {body}", self.thing);
        }
    }

    /// Sends DISCONNECT and waits for the connection to close.
    pub async fn disconnect(mut self) {
        let _ = match &self.client {
            Client::V311(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
        let _ = tokio::time::timeout(REPLY_TIMEOUT, &mut self.poller).await;
    }

    /// The first publish (inbox first, then new ones until `deadline`) for which `wanted(topic, json)`
    /// holds; others are kept in the inbox. Non-JSON payloads are seen as a JSON string.
    async fn take_matching(
        &mut self,
        deadline: Instant,
        wanted: impl Fn(&str, &Value) -> bool,
    ) -> Option<(String, Value)> {
        let position = self
            .inbox
            .iter()
            .position(|(topic, payload)| wanted(topic, &as_json(payload)));
        if let Some((topic, payload)) = position.and_then(|i| self.inbox.remove(i)) {
            return Some((topic, as_json(&payload)));
        }
        loop {
            match self.receive_until(deadline).await? {
                Received::Publish(topic, payload) => {
                    let body = as_json(&payload);
                    if wanted(&topic, &body) {
                        return Some((topic, body));
                    }
                    self.inbox.push_back((topic, payload));
                }
                Received::SubAck(codes) => panic!("{}: unexpected SUBACK {codes:?}", self.thing),
            }
        }
    }

    async fn receive_until(&mut self, deadline: Instant) -> Option<Received> {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some(received)) => Some(received),
            Ok(None) => panic!("{}: the connection to the gateway closed", self.thing),
            Err(_) => None,
        }
    }
}

fn as_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (p, Some(l)) if p == l => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

async fn within_10s<T>(
    connecting: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| "no CONNACK within 10 s".to_owned())?
}

/// Waits for the CONNACK: its session-present flag, or the refusal.
async fn connack_v311(eventloop: &mut rumqttc::EventLoop) -> Result<bool, String> {
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                return match ack.code {
                    rumqttc::ConnectReturnCode::Success => Ok(ack.session_present),
                    code => Err(format!("{code:?}")),
                }
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn connack_v5(eventloop: &mut v5::EventLoop) -> Result<bool, String> {
    use v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    loop {
        match eventloop.poll().await {
            Ok(v5::Event::Incoming(Packet::ConnAck(ack))) => {
                return match ack.code {
                    ConnectReturnCode::Success => Ok(ack.session_present),
                    code => Err(format!("{code:?}")),
                }
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Forwards publishes and SUBACKs until the connection ends (no reconnect: a test sees the close).
async fn poll_v311(mut eventloop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Received>) {
    use rumqttc::{Event, Packet, SubscribeReasonCode};
    while let Ok(event) = eventloop.poll().await {
        let received = match event {
            Event::Incoming(Packet::Publish(p)) => Received::Publish(p.topic, p.payload.to_vec()),
            Event::Incoming(Packet::SubAck(ack)) => Received::SubAck(
                ack.return_codes
                    .iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(qos) => *qos as u8,
                        SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect(),
            ),
            _ => continue,
        };
        if tx.send(received).is_err() {
            return;
        }
    }
}

async fn poll_v5(mut eventloop: v5::EventLoop, tx: mpsc::UnboundedSender<Received>) {
    use v5::mqttbytes::v5::{Packet, SubscribeReasonCode as Code};
    while let Ok(event) = eventloop.poll().await {
        let received = match event {
            v5::Event::Incoming(Packet::Publish(p)) => Received::Publish(
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.to_vec(),
            ),
            v5::Event::Incoming(Packet::SubAck(ack)) => Received::SubAck(
                ack.return_codes
                    .iter()
                    .map(|c| match c {
                        Code::Success(qos) => *qos as u8,
                        Code::Failure | Code::Unspecified => 0x80,
                        Code::ImplementationSpecific => 0x83,
                        Code::NotAuthorized => 0x87,
                        Code::TopicFilterInvalid => 0x8F,
                        Code::PkidInUse => 0x91,
                        Code::QuotaExceeded => 0x97,
                        Code::SharedSubscriptionsNotSupported => 0x9E,
                        Code::SubscriptionIdNotSupported => 0xA1,
                        Code::WildcardSubscriptionsNotSupported => 0xA2,
                    })
                    .collect(),
            ),
            _ => continue,
        };
        if tx.send(received).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches(
            "$aws/things/a/jobs/#",
            "$aws/things/a/jobs/notify"
        ));
        assert!(topic_matches(
            "$aws/things/+/jobs/notify",
            "$aws/things/b/jobs/notify"
        ));
        assert!(topic_matches("a/#", "a"));
        assert!(!topic_matches(
            "$aws/things/a/jobs/+",
            "$aws/things/a/jobs/j1/get"
        ));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
