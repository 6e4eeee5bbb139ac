//! Plays cases against a running gateway over TCP, `concurrency` connections at a time.
//!
//! One case is one connection: connect from a loopback source address (cases whose login may fail come
//! from their own addresses, so the gateway's back-off for failed passwords never delays the others), write
//! the CONNECT, wait for the CONNACK if the case says so, write the rest, wait for the replies a clean case
//! is owed, write its DISCONNECT if any, then half-close the socket and read until the gateway closes its
//! side. Every step waits on what the gateway sends or on its end of the connection; `bound` only caps a
//! wait. A case that reaches a bound waiting for the gateway to close (after it has seen our end of the
//! stream) is *stuck*: the gateway left a connection hanging.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Case, Generator};

/// Where and how to play.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub concurrency: usize,
    /// The longest one wait may take (connect, a write, the CONNACK, the replies, the close).
    pub bound: Duration,
}

/// The source address of a case: one of 127.0.0.1 and 127.0.1.1-7 for logins that are right, one of
/// 127.0.0.2-9 for cases that may fail theirs. Several of each spread the closed connections' TIME_WAIT
/// ports, so a long run does not run out of them.
pub fn source(case: &Case) -> Ipv4Addr {
    let k = (case.index % 8) as u8;
    match (case.hostile, k) {
        (true, _) => Ipv4Addr::new(127, 0, 0, 2 + k),
        (false, 0) => Ipv4Addr::LOCALHOST,
        (false, _) => Ipv4Addr::new(127, 0, 1, k),
    }
}

/// What one case saw.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub connected: bool,
    /// The CONNACK's return (3.1.1) or reason (5) code, if one came.
    pub connack: Option<u8>,
    /// Publishes on `…/accepted` or `…/rejected` received.
    pub replies: usize,
    /// The gateway ended the connection before we ended our side.
    pub closed_by_gateway: bool,
    /// Which wait reached its bound: "connect", "write", "CONNACK", "close". (The replies' wait is not
    /// one: a reply can be lost to a session takeover by a concurrent case with the same client id.)
    pub stuck: Option<&'static str>,
    pub bytes: usize,
}

/// What a run saw, in sum.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub cases: u64,
    pub connections: u64,
    pub accepted: u64,
    pub refused: u64,
    pub closed_by_gateway: u64,
    pub replies_owed: u64,
    pub replies: u64,
    pub bytes: u64,
    /// Cases whose wait reached its bound, with the wait.
    pub stuck: Vec<(u64, &'static str)>,
    /// Cases per `who/how`.
    pub kinds: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Stats {
    fn add(&mut self, case: &Case, outcome: &Outcome) {
        self.cases += 1;
        self.connections += u64::from(outcome.connected);
        match outcome.connack {
            Some(0) => self.accepted += 1,
            Some(_) => self.refused += 1,
            None => {}
        }
        self.closed_by_gateway += u64::from(outcome.closed_by_gateway);
        self.replies_owed += case.replies as u64;
        self.replies += outcome.replies.min(case.replies) as u64;
        self.bytes += outcome.bytes as u64;
        if let Some(wait) = outcome.stuck {
            self.stuck.push((case.index, wait));
        }
        *self.kinds.entry(case.label()).or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        self.cases += other.cases;
        self.connections += other.connections;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.closed_by_gateway += other.closed_by_gateway;
        self.replies_owed += other.replies_owed;
        self.replies += other.replies;
        self.bytes += other.bytes;
        self.stuck.extend(other.stuck);
        for (kind, n) in other.kinds {
            *self.kinds.entry(kind).or_default() += n;
        }
    }

    /// A few lines for the test's output.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "{} cases in {:.1} s: {} connections, CONNACK accepted {} refused {}, closed by the gateway {}, \
             replies {} of {} owed, {:.1} MB sent, stuck {:?}\n  kinds: {}",
            self.cases,
            self.elapsed.as_secs_f64(),
            self.connections,
            self.accepted,
            self.refused,
            self.closed_by_gateway,
            self.replies,
            self.replies_owed,
            self.bytes as f64 / 1e6,
            self.stuck,
            kinds.join(", ")
        )
    }
}

/// Plays cases `indices` of `generator`, `options.concurrency` at a time.
pub async fn run(generator: Arc<Generator>, indices: Range<u64>, options: &Options) -> Stats {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(indices.start));
    let mut workers = JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (generator, next, options) = (generator.clone(), next.clone(), options.clone());
        let end = indices.end;
        workers.spawn(async move {
            let mut stats = Stats::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= end {
                    return stats;
                }
                let case = generator.case(index);
                let outcome = play(&case, &options).await;
                stats.add(&case, &outcome);
            }
        });
    }
    let mut stats = Stats::default();
    while let Some(worker) = workers.join_next().await {
        stats.merge(worker.expect("a fuzz worker panicked"));
    }
    stats.stuck.sort_unstable();
    stats.elapsed = started.elapsed();
    stats
}

/// Plays one case.
pub async fn play(case: &Case, options: &Options) -> Outcome {
    let mut outcome = Outcome::default();
    let bound = options.bound;
    let socket = TcpSocket::new_v4().expect("a socket");
    if socket
        .bind(SocketAddr::new(source(case).into(), 0))
        .is_err()
    {
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind a loopback address");
    }
    let stream = match tokio::time::timeout(bound, socket.connect(options.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => return outcome,
        Err(_) => {
            outcome.stuck = Some("connect");
            return outcome;
        }
    };
    outcome.connected = true;
    let (read, mut write) = stream.into_split();
    let (tx, mut events) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_events(read, tx));
    let mut seen = Seen::default();

    let mut open = send(&mut write, &case.connect, bound, &mut outcome).await;
    if open && case.wait_connack && !seen.wait(&mut events, bound, |s| s.connack.is_some()).await {
        outcome.stuck = Some("CONNACK");
        open = false;
    }
    if open && (!case.wait_connack || seen.connack == Some(0)) {
        for chunk in &case.chunks {
            if !send(&mut write, chunk, bound, &mut outcome).await {
                open = false;
                break;
            }
        }
        if open && case.replies > 0 {
            let owed = case.replies;
            seen.replies_acked(&mut events, &mut write, bound, owed)
                .await;
        }
        if open && !seen.eof && !case.tail.is_empty() {
            send(&mut write, &case.tail, bound, &mut outcome).await;
        }
    }
    seen.drain(&mut events);
    outcome.closed_by_gateway = seen.eof;
    // Our end of the stream: the gateway must now close its side.
    let _ = tokio::time::timeout(bound, write.shutdown()).await;
    if !seen.wait(&mut events, bound, |_| false).await && outcome.stuck.is_none() {
        outcome.stuck = Some("close");
    }
    reader.abort();
    outcome.connack = seen.connack;
    outcome.replies = seen.replies;
    outcome
}

/// Writes `bytes`; false if the gateway has closed the connection. A write that cannot finish within
/// `bound` marks the case stuck.
async fn send(
    write: &mut OwnedWriteHalf,
    bytes: &[u8],
    bound: Duration,
    outcome: &mut Outcome,
) -> bool {
    match tokio::time::timeout(bound, write.write_all(bytes)).await {
        Ok(Ok(())) => {
            outcome.bytes += bytes.len();
            true
        }
        Ok(Err(_)) => false,
        Err(_) => {
            outcome.stuck.get_or_insert("write");
            false
        }
    }
}

/// What the gateway sent.
#[derive(Debug)]
enum Event {
    ConnAck(u8),
    /// A PUBLISH: whether on `…/accepted` or `…/rejected`, and its packet id if it wants a PUBACK.
    Publish {
        reply: bool,
        pkid: Option<u16>,
    },
    Other,
    /// The gateway closed (or reset) the connection.
    End,
}

#[derive(Debug, Default)]
struct Seen {
    connack: Option<u8>,
    replies: usize,
    eof: bool,
}

impl Seen {
    fn apply(&mut self, event: Event) {
        match event {
            Event::ConnAck(code) => self.connack = self.connack.or(Some(code)),
            Event::Publish { reply, .. } => self.replies += usize::from(reply),
            Event::Other => {}
            Event::End => self.eof = true,
        }
    }

    /// Takes events until `done` holds or the connection has ended (true), or `bound` passes (false).
    async fn wait(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        bound: Duration,
        done: impl Fn(&Seen) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        while !done(self) && !self.eof {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => self.eof = true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Takes events until `owed` replies came, the connection ended or `bound` passed, acknowledging
    /// QoS 1 publishes as a client must (the gateway sends no more than the client's receive maximum, or
    /// its own `max_inflight_count`, unacknowledged).
    async fn replies_acked(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        write: &mut OwnedWriteHalf,
        bound: Duration,
        owed: usize,
    ) {
        let deadline = tokio::time::Instant::now() + bound;
        while self.replies < owed && !self.eof {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Publish { reply, pkid })) => {
                    self.replies += usize::from(reply);
                    if let Some(pkid) = pkid {
                        let [hi, lo] = pkid.to_be_bytes();
                        let puback = [0x40, 0x02, hi, lo];
                        let written = tokio::time::timeout_at(deadline, write.write_all(&puback));
                        if !matches!(written.await, Ok(Ok(()))) {
                            return;
                        }
                    }
                }
                Ok(Some(event)) => self.apply(event),
                Ok(None) => self.eof = true,
                Err(_) => return,
            }
        }
    }

    /// Takes the events already received.
    fn drain(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        while let Ok(event) = events.try_recv() {
            self.apply(event);
        }
    }
}

/// Reads the gateway's packets and reports them until the connection ends.
async fn read_events(mut read: OwnedReadHalf, events: mpsc::UnboundedSender<Event>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = events.send(Event::End);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut at = 0;
        while let Some((header, body)) = frame(&buf[at..]) {
            let used = body.end;
            let body = &buf[at..][body];
            let event = match header >> 4 {
                2 => Event::ConnAck(body.get(1).copied().unwrap_or(0xff)),
                3 => Event::Publish {
                    reply: is_reply(body),
                    pkid: packet_id(header, body),
                },
                _ => Event::Other,
            };
            let _ = events.send(event);
            at += used;
        }
        buf.drain(..at);
    }
}

/// The fixed header byte and the body's range of the first whole packet of `buf`.
fn frame(buf: &[u8]) -> Option<(u8, Range<usize>)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let start = 2 + i;
            return (buf.len() >= start + len).then_some((buf[0], start..start + len));
        }
    }
    // Not a length a server writes: take the rest as one packet.
    Some((buf[0], 1..buf.len()))
}

/// The packet id of a QoS 1 PUBLISH (the one a client acknowledges with a PUBACK).
fn packet_id(header: u8, body: &[u8]) -> Option<u16> {
    if (header >> 1) & 3 != 1 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let id = body.get(2 + len..4 + len)?;
    Some(u16::from_be_bytes([id[0], id[1]]))
}

/// Whether a PUBLISH body's topic ends in `/accepted` or `/rejected`.
fn is_reply(body: &[u8]) -> bool {
    let Some(len) = body
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return false;
    };
    body.get(2..2 + len)
        .is_some_and(|topic| topic.ends_with(b"/accepted") || topic.ends_with(b"/rejected"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::packet;

    #[test]
    fn frames_and_replies_are_recognised() {
        let mut body = vec![0, 24];
        body.extend(b"$aws/things/a/jobs/get/accepted".get(..24).unwrap());
        let mut reply = vec![0, 31];
        reply.extend(b"$aws/things/a/jobs/get/accepted");
        reply.extend(b"{}");
        assert!(is_reply(&reply));
        assert!(!is_reply(&body));
        let stream = [packet(0x20, &[0, 0]), packet(0x30, &reply)].concat();
        let (header, range) = frame(&stream).unwrap();
        assert_eq!((header, range), (0x20, 2..4));
        assert!(
            frame(&stream[4..stream.len() - 1]).is_none(),
            "a partial packet"
        );
        assert_eq!(packet_id(0x30, &reply), None);
        assert_eq!(
            packet_id(0x32, &reply),
            Some(u16::from_be_bytes([b'{', b'}']))
        );
    }

    #[test]
    fn hostile_cases_come_from_their_own_addresses() {
        let generator = Generator::new(
            1,
            super::super::Identities {
                operator: super::super::Credential {
                    username: "o".into(),
                    password: "p".into(),
                },
                scoped_operator: None,
                device: super::super::Credential {
                    username: "d".into(),
                    password: "p".into(),
                },
            },
        );
        for i in 0..200 {
            let case = generator.case(i);
            let ip = source(&case);
            assert!(ip.is_loopback());
            assert_eq!(
                case.hostile,
                ip.octets()[2] == 0 && ip.octets()[3] >= 2,
                "{ip}"
            );
        }
    }
}
