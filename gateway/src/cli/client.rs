//! One control request over MQTT (CONTRACT section 4), as a short-lived operator client.
//!
//! The exchange, step by step:
//! 1. CONNECT as `sprig-cli-{pid}-{random hex}` (clean session, keep-alive 30 s, username/password);
//! 2. on CONNACK, SUBSCRIBE (QoS 1) to `$sprig/control/{clientId}/{Operation}/accepted` and `/rejected`;
//! 3. on SUBACK (and only then, so the reply cannot be missed), PUBLISH (QoS 1) the request body plus a
//!    random `clientToken` to `$sprig/control/{clientId}/{Operation}`;
//! 4. wait for the reply carrying our `clientToken`: `/accepted` gives the response (the token is
//!    stripped), `/rejected` gives `{code, message}`, a service error;
//! 5. DISCONNECT politely.
//!
//! The whole exchange runs under one deadline, so a silent gateway costs at most `--timeout-secs`; every
//! way it can fail maps to one [`Failure`] line, never a panic or a hang. A [`Session`] does the same for
//! many requests over one connection (`--wait` asks again and again, and logs in once), each request
//! under its own deadline.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, Publish, QoS, StateError, SubscribeFilter, SubscribeReasonCode,
};
use serde_json::Value;

use super::connect::Target;
use super::input::Request;
use super::operations::Operation;
use super::Failure;

/// Responses can be long lists: accept packets far larger than rumqttc's 10 KiB default.
const MAX_PACKET_SIZE: usize = 64 << 20;

/// Sends `request` as operation `op` and returns the response body (without `clientToken`).
pub async fn call(
    target: &Target,
    op: &Operation,
    request: Request,
    timeout: Duration,
) -> Result<Value, Failure> {
    let exchange = Exchange::new(new_client_id(), op, request);
    let (client, mut events) = connect(target, &exchange.client_id, timeout);
    let outcome = tokio::time::timeout(timeout, exchange.run(target, &client, &mut events)).await;
    match outcome {
        Ok(result) => {
            if result.is_ok() || matches!(result, Err(Failure::Service { .. })) {
                disconnect(&client, &mut events).await;
            }
            result
        }
        Err(_elapsed) => Err(no_reply(timeout)),
    }
}

/// `sprig-cli-{pid}-{random hex}`.
fn new_client_id() -> String {
    format!(
        "sprig-cli-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn no_reply(timeout: Duration) -> Failure {
    Failure::Other(format!(
        "no reply from the gateway within {} s",
        timeout.as_secs()
    ))
}

/// One operator connection for requests sent one after another.
pub struct Session<'t> {
    target: &'t Target,
    client_id: String,
    client: AsyncClient,
    events: EventLoop,
    timeout: Duration,
    /// The operations whose reply topics are subscribed to.
    subscribed: Vec<&'static str>,
}

impl<'t> Session<'t> {
    /// Connects and logs in (within `timeout`).
    pub async fn connect(target: &'t Target, timeout: Duration) -> Result<Session<'t>, Failure> {
        let client_id = new_client_id();
        let (client, mut events) = connect(target, &client_id, timeout);
        let connected = async {
            loop {
                let event = events
                    .poll()
                    .await
                    .map_err(|e| connection_failure(e, target, false))?;
                if let Event::Incoming(Packet::ConnAck(_)) = event {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(timeout, connected)
            .await
            .map_err(|_| no_reply(timeout))??;
        Ok(Session {
            target,
            client_id,
            client,
            events,
            timeout,
            subscribed: Vec::new(),
        })
    }

    /// Sends `request` as operation `op` and returns the response body (without `clientToken`).
    pub async fn call(
        &mut self,
        op: &'static Operation,
        request: Request,
    ) -> Result<Value, Failure> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.exchange(op, request))
            .await
            .map_err(|_| no_reply(timeout))?
    }

    async fn exchange(
        &mut self,
        op: &'static Operation,
        request: Request,
    ) -> Result<Value, Failure> {
        let exchange = Exchange::new(self.client_id.clone(), op, request);
        if !self.subscribed.contains(&op.name) {
            let filters = exchange
                .reply_topics()
                .map(|topic| SubscribeFilter::new(topic, QoS::AtLeastOnce));
            self.client
                .try_subscribe_many(filters)
                .map_err(client_failure)?;
            loop {
                if let Event::Incoming(Packet::SubAck(ack)) = self.poll().await? {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        return Err(Failure::Other(format!(
                            "the gateway refused the subscription to {}/accepted|rejected",
                            exchange.request_topic
                        )));
                    }
                    break;
                }
            }
            self.subscribed.push(op.name);
        }
        self.client
            .try_publish(
                &exchange.request_topic,
                QoS::AtLeastOnce,
                false,
                exchange.body.clone(),
            )
            .map_err(client_failure)?;
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = self.poll().await? {
                if let Some(reply) = exchange.reply(&publish) {
                    return reply;
                }
            }
        }
    }

    async fn poll(&mut self) -> Result<Event, Failure> {
        self.events
            .poll()
            .await
            .map_err(|e| connection_failure(e, self.target, true))
    }

    /// Says goodbye (DISCONNECT).
    pub async fn close(mut self) {
        disconnect(&self.client, &mut self.events).await;
    }
}

fn connect(target: &Target, client_id: &str, timeout: Duration) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(client_id, &target.endpoint.host, target.endpoint.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_credentials(&target.credentials.username, &target.credentials.password)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
    let (client, mut events) = AsyncClient::new(options, 10);
    // Let our own deadline, not rumqttc's 5 s connect timeout, decide when to give up.
    let mut network = events.network_options();
    network.set_connection_timeout(timeout.as_secs().saturating_add(1));
    events.set_network_options(network);
    (client, events)
}

/// The state of one request/reply exchange.
struct Exchange<'a> {
    op: &'a Operation,
    client_id: String,
    request_topic: String,
    client_token: String,
    body: Vec<u8>,
}

impl<'a> Exchange<'a> {
    fn new(client_id: String, op: &'a Operation, mut request: Request) -> Exchange<'a> {
        let client_token = format!("{:016x}", rand::random::<u64>());
        request.insert(
            "clientToken".to_owned(),
            Value::String(client_token.clone()),
        );
        Exchange {
            op,
            request_topic: format!("$sprig/control/{client_id}/{}", op.name),
            client_id,
            client_token,
            body: serde_json::to_vec(&request).expect("a JSON map serializes"),
        }
    }

    fn reply_topics(&self) -> [String; 2] {
        [
            format!("{}/accepted", self.request_topic),
            format!("{}/rejected", self.request_topic),
        ]
    }

    async fn run(
        &self,
        target: &Target,
        client: &AsyncClient,
        events: &mut EventLoop,
    ) -> Result<Value, Failure> {
        let mut connected = false;
        loop {
            let event = events
                .poll()
                .await
                .map_err(|e| connection_failure(e, target, connected))?;
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    connected = true;
                    let filters = self
                        .reply_topics()
                        .map(|topic| SubscribeFilter::new(topic, QoS::AtLeastOnce));
                    client.try_subscribe_many(filters).map_err(client_failure)?;
                }
                Event::Incoming(Packet::SubAck(ack)) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        return Err(Failure::Other(format!(
                            "the gateway refused the subscription to {}/accepted|rejected",
                            self.request_topic
                        )));
                    }
                    client
                        .try_publish(
                            &self.request_topic,
                            QoS::AtLeastOnce,
                            false,
                            self.body.clone(),
                        )
                        .map_err(client_failure)?;
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    if let Some(reply) = self.reply(&publish) {
                        return reply;
                    }
                }
                _ => {}
            }
        }
    }

    /// The outcome carried by `publish`, or `None` when it is not the reply to our request.
    fn reply(&self, publish: &Publish) -> Option<Result<Value, Failure>> {
        let kind = publish
            .topic
            .strip_prefix(self.request_topic.as_str())?
            .strip_prefix('/')?;
        if kind != "accepted" && kind != "rejected" {
            return None;
        }
        let body: Value = match serde_json::from_slice(&publish.payload) {
            Ok(body) => body,
            Err(e) => {
                return Some(Err(Failure::Other(format!(
                    "the gateway sent an unreadable reply on {}: {e}",
                    publish.topic
                ))))
            }
        };
        let Value::Object(mut body) = body else {
            return Some(Err(Failure::Other(format!(
                "the gateway sent a reply that is not a JSON object on {}",
                publish.topic
            ))));
        };
        if body.get("clientToken").and_then(Value::as_str) != Some(self.client_token.as_str()) {
            return None;
        }
        body.remove("clientToken");
        if kind == "accepted" {
            return Some(Ok(Value::Object(body)));
        }
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(Err(Failure::Service {
            operation: self.op.name,
            code: text("code").unwrap_or_else(|| "Unknown".to_owned()),
            message: text("message").unwrap_or_default(),
        }))
    }
}

fn connection_failure(error: ConnectionError, target: &Target, connected: bool) -> Failure {
    use std::io::ErrorKind;
    let endpoint = &target.endpoint;
    let io_error = match &error {
        ConnectionError::Io(e) | ConnectionError::MqttState(StateError::Io(e)) => Some(e),
        _ => None,
    };
    let text = match (&error, io_error) {
        (
            ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
            ),
            _,
        ) => "the gateway refused the credentials".to_owned(),
        (ConnectionError::ConnectionRefused(code), _) => {
            format!("the gateway refused the connection ({code:?})")
        }
        (_, Some(e)) if connected => format!("the gateway closed the connection: {e}"),
        (_, Some(e)) => match e.kind() {
            ErrorKind::ConnectionRefused => {
                format!("Could not connect to the endpoint {endpoint}: connection refused")
            }
            // A broker that checks credentials may hang up instead of answering CONNACK 4/5.
            ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::UnexpectedEof => {
                format!("the gateway at {endpoint} closed the connection before accepting it (are the credentials right?)")
            }
            _ => format!("Could not connect to the endpoint {endpoint}: {e}"),
        },
        (ConnectionError::NetworkTimeout, None) if !connected => {
            format!("Could not connect to the endpoint {endpoint}: timed out")
        }
        (e, None) if connected => format!("the gateway closed the connection: {e}"),
        (e, None) => format!("Could not connect to the endpoint {endpoint}: {e}"),
    };
    Failure::Other(text)
}

fn client_failure(error: rumqttc::ClientError) -> Failure {
    Failure::Other(format!("the MQTT client failed: {error}"))
}

/// Sends DISCONNECT and gives it a moment to leave, so the gateway logs a clean goodbye.
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let flushed = async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), flushed).await;
}
