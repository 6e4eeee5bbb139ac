//! One connection to the fleet broker, from CONNECT to its end: one task reads the broker's packets,
//! takes the uplink's requests and writes, a batch of each at a time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4};
use rumqttc::{
    Connect, ConnectReturnCode, Disconnect, Packet, PingReq, PubAck, PubComp, PubRec, Publish, QoS,
    Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{LinkError, LinkEvent, Options, Request};

/// Requests taken from the uplink before the connection writes, at most.
const REQUEST_BATCH: usize = 128;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why [`Connection::run`] stopped.
enum Stop {
    Failed(LinkError),
    /// The uplink is gone, or asked for the end.
    Done,
}

impl<E: Into<LinkError>> From<E> for Stop {
    fn from(error: E) -> Stop {
        Stop::Failed(error.into())
    }
}

/// A connection the broker accepted.
pub(super) struct Connection {
    stream: Box<dyn Stream>,
    read: BytesMut,
    write: BytesMut,
    keep_alive: Duration,
    timeout: Duration,
    max_packet: usize,
    inflight: usize,
    next_pkid: u16,
    /// Packet ids of publishes and subscriptions sent and not acknowledged, with their publishes' tags.
    outstanding: HashMap<u16, Option<u64>>,
    /// Tags of QoS 0 publishes encoded and not yet written: done once they are.
    written_unreported: Vec<u64>,
    /// Packet ids of the broker's QoS 2 publishes taken, until their PUBREL.
    incoming_qos2: HashSet<u16>,
    last_write: Instant,
    ping_sent: Option<Instant>,
}

impl Connection {
    /// Connects (TCP, TLS if configured), logs in and waits for the broker's CONNACK.
    pub(super) async fn open(options: &Options) -> Result<Connection, LinkError> {
        let limit = options.timeout;
        let address = (options.host.as_str(), options.port);
        let tcp = within(limit, TcpStream::connect(address)).await??;
        // Writes are batched here; Nagle's wait would only add the broker's delayed ACK to each batch.
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &options.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                let name = tls.server_name.clone();
                Box::new(within(limit, connector.connect(name, tcp)).await??)
            }
        };
        let mut connection = Connection {
            stream,
            read: BytesMut::with_capacity(16 * 1024),
            write: BytesMut::with_capacity(16 * 1024),
            keep_alive: options.keep_alive,
            timeout: limit,
            max_packet: options.max_packet,
            inflight: options.inflight.max(1),
            next_pkid: 0,
            outstanding: HashMap::new(),
            written_unreported: Vec::new(),
            incoming_qos2: HashSet::new(),
            last_write: Instant::now(),
            ping_sent: None,
        };
        connection.encode(|buf| connect_packet(options).write(buf))?;
        connection.flush().await?;
        match within(limit, connection.next_packet()).await?? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(connection),
            Packet::ConnAck(ack) => Err(LinkError::Refused(ack.code)),
            other => Err(LinkError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            ))),
        }
    }

    /// Serves the connection until it fails (`Some`), or until the uplink disconnects or is gone.
    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        link: &mpsc::Sender<LinkEvent>,
    ) -> Option<LinkError> {
        match self.serve(&mut requests, link).await {
            Stop::Failed(error) => Some(error),
            Stop::Done => None,
        }
    }

    async fn serve(
        &mut self,
        requests: &mut mpsc::Receiver<Request>,
        link: &mpsc::Sender<LinkEvent>,
    ) -> Stop {
        // Set once per keep-alive period, not at each write: it looks at the last write when it fires.
        let pinging = !self.keep_alive.is_zero();
        let timer = tokio::time::sleep(self.keep_alive);
        tokio::pin!(timer);
        loop {
            let room = self.outstanding.len() < self.inflight;
            let step = tokio::select! {
                read = self.stream.read_buf(&mut self.read) => match read {
                    Ok(0) => Err(Stop::Failed(LinkError::Closed)),
                    Ok(_) => self.take_packets(link).await,
                    Err(e) => Err(e.into()),
                },
                request = requests.recv(), if room => match request {
                    Some(request) => self.take_requests(request, requests).await,
                    None => Err(Stop::Done),
                },
                () = &mut timer, if pinging => {
                    let next = self.keep_alive_due();
                    next.map(|next| timer.as_mut().reset(next))
                }
            };
            if let Err(stop) = step {
                return stop;
            }
            if let Err(e) = self.flush().await {
                return e.into();
            }
            if !self.written_unreported.is_empty() {
                let done = std::mem::take(&mut self.written_unreported);
                if link.send(LinkEvent::Done(done)).await.is_err() {
                    return Stop::Done;
                }
            }
        }
    }

    /// Handles every whole packet read so far; the publishes they acknowledge are reported together.
    async fn take_packets(&mut self, link: &mpsc::Sender<LinkEvent>) -> Result<(), Stop> {
        let mut done = Vec::new();
        let result = loop {
            match v4::read(&mut self.read, self.max_packet) {
                Ok(packet) => {
                    if let Err(stop) = self.on_packet(packet, &mut done, link).await {
                        break Err(stop);
                    }
                }
                Err(mqttbytes::Error::InsufficientBytes(_)) => break Ok(()),
                Err(e) => break Err(LinkError::Protocol(e.to_string()).into()),
            }
        };
        if !done.is_empty() && link.send(LinkEvent::Done(done)).await.is_err() {
            return Err(Stop::Done);
        }
        result
    }

    async fn on_packet(
        &mut self,
        packet: Packet,
        done: &mut Vec<u64>,
        link: &mpsc::Sender<LinkEvent>,
    ) -> Result<(), Stop> {
        let event = match packet {
            Packet::Publish(publish) => {
                let pkid = publish.pkid;
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.encode(|buf| PubAck::new(pkid).write(buf))?,
                    QoS::ExactlyOnce => {
                        self.encode(|buf| PubRec::new(pkid).write(buf))?;
                        // A publish sent again before its PUBREL was taken already: once only.
                        if !self.incoming_qos2.insert(pkid) {
                            return Ok(());
                        }
                    }
                }
                LinkEvent::Message(publish.topic, publish.payload)
            }
            Packet::PubAck(ack) => {
                done.extend(self.outstanding.remove(&ack.pkid).flatten());
                return Ok(());
            }
            Packet::PubRel(rel) => {
                self.incoming_qos2.remove(&rel.pkid);
                return Ok(self.encode(|buf| PubComp::new(rel.pkid).write(buf))?);
            }
            Packet::SubAck(ack) => {
                self.outstanding.remove(&ack.pkid);
                if ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure))
                {
                    tracing::warn!(
                        codes = ?ack.return_codes,
                        "uplink: the fleet broker refused a subscription (control requests or an \
                         `in` topic)"
                    );
                }
                return Ok(());
            }
            Packet::PingResp => {
                self.ping_sent = None;
                return Ok(());
            }
            other => {
                tracing::debug!(packet = ?other, "uplink: a packet from the fleet broker ignored");
                return Ok(());
            }
        };
        link.send(event).await.map_err(|_| Stop::Done)
    }

    /// Encodes `first` and the requests queued behind it (while the window has room); the tags of QoS 0
    /// publishes are reported once written.
    async fn take_requests(
        &mut self,
        first: Request,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Result<(), Stop> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(request) = next.take() {
            match request {
                Request::Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    tag,
                } => {
                    let pkid = if qos == 0 {
                        self.written_unreported.extend(tag);
                        0
                    } else {
                        self.allocate_pkid(tag)
                    };
                    let publish = Publish {
                        dup: false,
                        qos: qos_of(qos),
                        retain,
                        topic,
                        pkid,
                        payload,
                    };
                    self.encode(|buf| publish.write(buf))?;
                }
                Request::Subscribe(filters) => {
                    let pkid = self.allocate_pkid(None);
                    let filters = filters
                        .into_iter()
                        .map(|(filter, qos)| SubscribeFilter::new(filter, qos_of(qos)));
                    let mut subscribe = Subscribe::new_many(filters);
                    subscribe.pkid = pkid;
                    self.encode(|buf| subscribe.write(buf))?;
                }
                Request::Disconnect => {
                    self.encode(|buf| Disconnect.write(buf))?;
                    self.flush().await?;
                    let _ = self.stream.shutdown().await;
                    return Err(Stop::Done);
                }
            }
            taken += 1;
            if taken < REQUEST_BATCH && self.outstanding.len() < self.inflight {
                next = requests.try_recv().ok();
            }
        }
        Ok(())
    }

    /// The keep-alive timer fired: pings if nothing was written for a keep-alive; fails if the last ping
    /// went unanswered for one. Returns when to look again.
    fn keep_alive_due(&mut self) -> Result<Instant, Stop> {
        let now = Instant::now();
        match self.ping_sent {
            Some(sent) if now >= sent + self.keep_alive => {
                return Err(LinkError::PingTimeout.into())
            }
            None if now >= self.last_write + self.keep_alive => {
                self.encode(|buf| PingReq.write(buf))?;
                self.ping_sent = Some(now);
            }
            _ => {}
        }
        Ok(match self.ping_sent {
            Some(sent) => sent + self.keep_alive,
            None => self.last_write + self.keep_alive,
        })
    }

    /// A packet id not in use (MQTT's run from 1 to 65535), now outstanding with `tag`.
    fn allocate_pkid(&mut self, tag: Option<u64>) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if let std::collections::hash_map::Entry::Vacant(free) =
                self.outstanding.entry(self.next_pkid)
            {
                free.insert(tag);
                return self.next_pkid;
            }
        }
    }

    fn encode(
        &mut self,
        write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
    ) -> Result<(), LinkError> {
        write(&mut self.write)
            .map(drop)
            .map_err(|e| LinkError::Protocol(format!("cannot encode a packet: {e}")))
    }

    /// Writes what was encoded, in one go.
    async fn flush(&mut self) -> Result<(), LinkError> {
        if self.write.is_empty() {
            return Ok(());
        }
        let (stream, write) = (&mut self.stream, &self.write);
        within(self.timeout, async {
            stream.write_all(write).await?;
            stream.flush().await
        })
        .await??;
        self.write.clear();
        self.last_write = Instant::now();
        Ok(())
    }

    /// The next packet from the broker (the CONNACK).
    async fn next_packet(&mut self) -> Result<Packet, LinkError> {
        loop {
            match v4::read(&mut self.read, self.max_packet) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    if self.stream.read_buf(&mut self.read).await? == 0 {
                        return Err(LinkError::Closed);
                    }
                }
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            }
        }
    }
}

/// The QoS the uplink asks for: 0, or 1 for anything above (`[[uplink.topics]] qos` is at most 1, and
/// the connection runs no QoS 2 exchange of its own).
fn qos_of(qos: u8) -> QoS {
    if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn connect_packet(options: &Options) -> Connect {
    let mut connect = Connect::new(options.client_id.clone());
    connect.keep_alive = options.keep_alive.as_secs().min(u16::MAX.into()) as u16;
    connect.clean_session = true;
    connect.last_will = Some(options.will.clone());
    connect.login = options.login.clone();
    connect
}

/// `future`, or [`LinkError::Timeout`] after `limit`.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Result<T, LinkError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| LinkError::Timeout(limit))
}
