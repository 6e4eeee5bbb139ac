//! A deterministic, structure-aware fuzzer for what the gateway reads off the network: MQTT 3.1.1 and 5
//! packets from devices and operators, and the JSON bodies of the Jobs device API and the control API.
//!
//! - [`Rng`]: SplitMix64. Every case draws from its own generator, seeded by the run's seed and the case's
//!   index, so a case is the same whatever ran before it or beside it: a run is replayed with
//!   `SPRIG_FUZZ_SEED`, one case alone with `SPRIG_FUZZ_FIRST=i SPRIG_FUZZ_CASES=1` (see [`Settings`]).
//! - [`mqtt`]: the packets a client sends (and those it must never send), with MQTT 5 properties.
//! - [`payload`]: Jobs device API and control API request bodies: valid, of the wrong types, at the
//!   extremes, or not JSON at all.
//! - [`mutate`]: what is done to a well-formed stream: packets duplicated, dropped, swapped, spliced in
//!   from another session, remaining lengths that lie; bytes flipped, inserted, deleted, truncated.
//! - [`Generator`]: a case = who connects (an anonymous device, a device with a password, an operator,
//!   nobody in particular), the session it would have, and what is done to it.
//! - [`drive`]: plays cases against a gateway over TCP, several connections at once, waiting on what the
//!   gateway sends (CONNACK, replies, the end of the connection), never on time; time only bounds a wait.

pub mod drive;
pub mod mqtt;
pub mod mutate;
pub mod payload;

use std::fmt;
use std::path::Path;

use mqtt::Level;

use crate::device::topic_matches;
use crate::{hash_password_with, with_setting, Gateway};

/// Log texts that mean something panicked or crashed in the gateway: the standard panic hook's message
/// and its backtrace hint, a stack overflow, an abort.
pub const PANIC_MARKERS: &[&str] = &[
    "panicked",
    "RUST_BACKTRACE",
    "stack backtrace",
    "has overflowed its stack",
    "fatal runtime error",
    "memory allocation of",
];

/// The lines of `log` that carry a [`PANIC_MARKERS`] text.
pub fn panic_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| PANIC_MARKERS.iter().any(|m| line.contains(m)))
        .collect()
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to pick among choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of case `index` of the run seeded with `seed`.
    pub fn for_case(seed: u64, index: u64) -> Rng {
        Rng(mix(seed) ^ mix(index.wrapping_add(0x5851_F42D_4C95_7F2D)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// One of `items`, each as likely as its weight.
    pub fn weighted<T: Copy>(&mut self, items: &[(u32, T)]) -> T {
        let total: u32 = items.iter().map(|(w, _)| w).sum();
        let mut at = self.below(total as usize) as u32;
        for &(weight, item) in items {
            if at < weight {
                return item;
            }
            at -= weight;
        }
        unreachable!("at < total")
    }

    /// A size that is usually small, sometimes large: `0..=most`, skewed towards 0.
    pub fn size(&mut self, most: usize) -> usize {
        let bits = usize::BITS - most.leading_zeros();
        let cap = (1usize << self.below(bits as usize + 1)).min(most + 1);
        self.below(cap)
    }
}

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A run's size and seed, from the environment: `SPRIG_FUZZ_SEED` (decimal or `0x` hex; default: a new
/// one, printed), `SPRIG_FUZZ_FIRST` (default 0), `SPRIG_FUZZ_CASES`, `SPRIG_FUZZ_CONCURRENCY`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub first: u64,
    pub cases: u64,
    pub concurrency: usize,
}

impl Settings {
    pub fn from_env(default_cases: u64, default_concurrency: usize) -> Settings {
        let number = |name: &str| {
            std::env::var(name).ok().map(|v| {
                let v = v.trim();
                let parsed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
            })
        };
        Settings {
            seed: number("SPRIG_FUZZ_SEED").unwrap_or_else(fresh_seed),
            first: number("SPRIG_FUZZ_FIRST").unwrap_or(0),
            cases: number("SPRIG_FUZZ_CASES").unwrap_or(default_cases),
            concurrency: number("SPRIG_FUZZ_CONCURRENCY")
                .map_or(default_concurrency, |n| n.max(1) as usize),
        }
    }

    /// The environment that plays this run again.
    pub fn replay(&self) -> String {
        format!(
            "SPRIG_FUZZ_SEED={:#x} SPRIG_FUZZ_FIRST={} SPRIG_FUZZ_CASES={}",
            self.seed, self.first, self.cases
        )
    }

    pub fn indices(&self) -> std::ops::Range<u64> {
        self.first..self.first + self.cases
    }
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(nanos ^ u64::from(std::process::id()).rotate_left(32))
}

/// A username and password.
#[derive(Debug, Clone)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

/// Who the fuzzer may log in as, besides anonymous devices (`fuzz-0` … on a loopback listener).
#[derive(Debug, Clone)]
pub struct Identities {
    /// An operator granted everything (the local operator).
    pub operator: Credential,
    /// An operator granted some namespaces only, if the gateway has one.
    pub scoped_operator: Option<Credential>,
    /// A device with a password (`[[auth.devices]]`): the username is its thing name.
    pub device: Credential,
}

/// The device with a password.
pub const PASSWORD_THING: &str = "fuzz-pw";
/// The operator granted the first of [`NAMESPACES`] only, and no jobs without a namespace.
pub const SCOPED_OPERATOR: &str = "fuzz-scoped";
/// The password of both.
const PASSWORD: &str = "fuzz-password";

/// Starts `bin` as a gateway the fuzzer reaches everywhere: the default config plus a device with a
/// password ([`PASSWORD_THING`]), an operator granted one namespace ([`SCOPED_OPERATOR`]), a topic rule
/// that lets devices publish and subscribe to a few topics under `fuzz/` (so their messages go through
/// rumqttd's router: subscriptions, retained messages, wills), and an operator request rate high enough
/// that control requests are answered by the engine, not by the throttle. Returns it with the identities
/// to log in as (the local operator is the operator granted everything).
///
/// The topic rule names topics, not wildcards: rumqttd's router keeps every distinct filter it was ever
/// given (each with its own message log, pre-sized for 1,024 messages) and every retained topic for good,
/// so mutated filters and topics under a wildcard grant would make it grow with the number of cases. With
/// a fixed set, what the router keeps is bounded, and memory that keeps growing is a leak to look at.
pub fn start_gateway(bin: &Path) -> (Gateway, Identities) {
    let hash = hash_password_with(bin, PASSWORD);
    let gateway = Gateway::start_bin_with(bin, |config| {
        let config = with_setting(
            &config,
            "requests_per_second = 50",
            "requests_per_second = 100000",
        );
        let config = with_setting(&config, "request_burst = 100", "request_burst = 100000");
        let config = with_setting(&config, "store_cache_mb = 32", "store_cache_mb = 8");
        let config = with_setting(
            &config,
            "max_segment_size = 262144",
            "max_segment_size = 65536",
        );
        let config = with_setting(&config, "max_segment_count = 4", "max_segment_count = 2");
        config
            + &format!(
                r#"
[[auth.operators]]
username = "{SCOPED_OPERATOR}"
password_hash = "{hash}"
namespaces = ["{}"]
standard_jobs = false

[[auth.devices]]
thing_name = "{PASSWORD_THING}"
password_hash = "{hash}"

[[auth.topic_rules]]
publish = ["fuzz/${{thing}}/telemetry", "fuzz/${{thing}}/will", "fuzz/shared"]
subscribe = ["fuzz/${{thing}}/telemetry", "fuzz/${{thing}}/will", "fuzz/shared"]
"#,
                NAMESPACES[0]
            )
    });
    let (username, password) = gateway.local_credential();
    let credential = |username: &str| Credential {
        username: username.to_owned(),
        password: PASSWORD.to_owned(),
    };
    let ids = Identities {
        operator: Credential { username, password },
        scoped_operator: Some(credential(SCOPED_OPERATOR)),
        device: credential(PASSWORD_THING),
    };
    (gateway, ids)
}

/// Anonymous devices' thing names are `fuzz-0` … `fuzz-{THINGS - 1}`: a fixed pool, so sessions, jobs'
/// executions and the broker's per-client memory stay bounded however long the fuzzer runs.
pub const THINGS: usize = 24;
/// Operators' client ids are `fuzz-op-0` … `fuzz-op-{OPERATOR_IDS - 1}` (`fuzz-scoped-…` for the scoped
/// operator).
pub const OPERATOR_IDS: usize = 6;
/// Job ids are mostly `fj-0` … `fj-{JOB_IDS - 1}`.
pub const JOB_IDS: usize = 12;
/// Namespaces the jobs and requests use (the scoped operator is granted the first).
pub const NAMESPACES: &[&str] = &["acme", "aws-gg-deployment", "fuzz"];

/// After a run: a well-behaved device gets a Jobs API reply, and an operator a control reply.
pub async fn still_serves(gateway: &Gateway, thing: &str) {
    use crate::device::{Device, Protocol};
    let mut device = Device::connect(gateway.addr, thing, Protocol::V5).await;
    let (accepted, reply) = device.request("get", serde_json::json!({})).await;
    assert!(accepted, "{reply}");
    device.disconnect().await;
    let mut operator = gateway.operator().await;
    operator
        .request("ListJobs", serde_json::json!({}))
        .await
        .expect("ListJobs is answered");
}

pub fn thing_name(i: usize) -> String {
    format!("fuzz-{i}")
}

/// Who a case logs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    /// An anonymous device (client id = a thing name of the pool).
    Device,
    /// The device with a password.
    PasswordDevice,
    /// The operator granted everything.
    Operator,
    /// The operator granted some namespaces only.
    ScopedOperator,
    /// Nobody: bytes that are not a login.
    Nobody,
}

/// What is done to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum How {
    /// Sent as built: every request is answered.
    Clean,
    /// Mutated after the CONNECT, which is left intact: the login succeeds, what follows is broken.
    Mutated,
    /// Mutated, CONNECT included.
    BadConnect,
    /// A packet only a server sends (or a reserved one) after a good CONNECT.
    ServerPacket,
    /// Packets sent many times over.
    Duplicated,
    /// Not MQTT, or not a CONNECT first.
    Garbage,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for How {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One connection's worth of traffic.
#[derive(Debug, Clone)]
pub struct Case {
    pub index: u64,
    pub who: Who,
    pub how: How,
    pub level: Level,
    /// Sent from an address whose logins may fail (so the gateway's back-off for failed passwords never
    /// slows the good logins down).
    pub hostile: bool,
    /// Written first.
    pub connect: Vec<u8>,
    /// Wait for the CONNACK before writing the rest (a login with a password is checked off the socket:
    /// what a client sends before its CONNACK may be its goodbye).
    pub wait_connack: bool,
    /// Written next, one write each.
    pub chunks: Vec<Vec<u8>>,
    /// Replies (publishes on `…/accepted` or `…/rejected`) owed for the requests in `chunks`: the case
    /// waits for them before `tail`.
    pub replies: usize,
    /// Written last, before the half-close: a DISCONNECT, or nothing.
    pub tail: Vec<u8>,
}

impl Case {
    pub fn label(&self) -> String {
        format!("{}/{}", self.who, self.how)
    }

    pub fn len(&self) -> usize {
        self.connect.len() + self.chunks.iter().map(Vec::len).sum::<usize>() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The case for a failure report: what it is and the first bytes of each part, in hex.
    pub fn describe(&self) -> String {
        let hex = |bytes: &[u8]| {
            let shown: String = bytes.iter().take(96).map(|b| format!("{b:02x}")).collect();
            if bytes.len() > 96 {
                format!("{shown}… ({} bytes)", bytes.len())
            } else {
                shown
            }
        };
        let mut out = format!(
            "case {} {} {:?}{} replies={}\n  connect {}",
            self.index,
            self.label(),
            self.level,
            if self.hostile { " hostile" } else { "" },
            self.replies,
            hex(&self.connect)
        );
        for chunk in &self.chunks {
            out += &format!("\n  chunk {}", hex(chunk));
        }
        if !self.tail.is_empty() {
            out += &format!("\n  tail {}", hex(&self.tail));
        }
        out
    }
}

/// A well-formed session before anything is done to it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub connect: Vec<u8>,
    pub packets: Vec<Vec<u8>>,
    /// Replies owed to the requests among `packets`.
    pub replies: usize,
    /// A DISCONNECT to end with, or nothing.
    pub tail: Vec<u8>,
}

impl Session {
    /// The session of these packets, ending with a DISCONNECT three times in ten.
    fn ending(
        rng: &mut Rng,
        writer: &mqtt::Writer,
        connect: Vec<u8>,
        packets: Vec<Vec<u8>>,
        replies: usize,
    ) -> Session {
        let tail = if rng.percent(30) {
            writer.disconnect(rng)
        } else {
            Vec::new()
        };
        Session {
            connect,
            packets,
            replies,
            tail,
        }
    }
}

/// Makes case `i` of a run from its seed alone.
#[derive(Debug, Clone)]
pub struct Generator {
    seed: u64,
    ids: Identities,
}

impl Generator {
    pub fn new(seed: u64, ids: Identities) -> Generator {
        Generator { seed, ids }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn case(&self, index: u64) -> Case {
        let mut rng = Rng::for_case(self.seed, index);
        let level = if rng.percent(50) {
            Level::V5
        } else {
            Level::V311
        };
        let scoped = if self.ids.scoped_operator.is_some() {
            2
        } else {
            0
        };
        let who = rng.weighted(&[
            (78, Who::Device),
            (3, Who::PasswordDevice),
            (5, Who::Operator),
            (scoped, Who::ScopedOperator),
            (4, Who::Nobody),
        ]);
        if who == Who::Nobody {
            return self.garbage(&mut rng, index, level);
        }
        let how = rng.weighted(&[
            (30, How::Clean),
            (38, How::Mutated),
            (16, How::BadConnect),
            (7, How::ServerPacket),
            (9, How::Duplicated),
        ]);
        let session = self.session(&mut rng, index, who, level, how == How::Clean);
        let with_password = matches!(
            who,
            Who::PasswordDevice | Who::Operator | Who::ScopedOperator
        );
        let mut case = Case {
            index,
            who,
            how,
            level,
            hostile: false,
            connect: session.connect,
            wait_connack: with_password || rng.percent(50),
            chunks: Vec::new(),
            replies: 0,
            tail: Vec::new(),
        };
        let mut packets = session.packets;
        match how {
            How::Clean => {
                case.replies = session.replies;
                case.tail = session.tail;
            }
            How::Mutated => {
                // Packets from another session (maybe of the other MQTT version) to splice in.
                let other = if level == Level::V5 {
                    Level::V311
                } else {
                    Level::V5
                };
                let donor_level = if rng.percent(30) { other } else { level };
                let donors = self
                    .session(&mut rng, index, who, donor_level, false)
                    .packets;
                for _ in 0..rng.range(1, 4) {
                    mutate::packets(&mut rng, &mut packets, &donors, level);
                }
                if rng.percent(60) {
                    let mut flat = packets.concat();
                    for _ in 0..rng.range(1, 3) {
                        mutate::bytes(&mut rng, &mut flat);
                    }
                    packets = vec![flat];
                }
                if rng.percent(30) {
                    packets.push(session.tail);
                }
            }
            How::BadConnect => {
                let mut stream = case.connect.clone();
                for packet in &packets {
                    stream.extend_from_slice(packet);
                }
                if rng.percent(40) {
                    let mut all = vec![std::mem::take(&mut case.connect)];
                    all.extend(packets);
                    mutate::packets(&mut rng, &mut all, &[], level);
                    stream = all.concat();
                }
                // The CONNECT is the first bytes: mutate inside it most of the time.
                let connect_len = mutate::first_packet_len(&stream).unwrap_or(stream.len());
                for _ in 0..rng.range(1, 4) {
                    mutate::bytes_within(&mut rng, &mut stream, connect_len.max(1));
                }
                if stream.is_empty() {
                    stream.push(0x10);
                }
                case.connect = stream;
                case.wait_connack = false;
                case.hostile = true;
                packets = Vec::new();
            }
            How::ServerPacket => {
                let at = rng.below(packets.len() + 1);
                packets.insert(at, mqtt::never_from_client(&mut rng, level));
            }
            How::Duplicated => {
                for _ in 0..rng.range(1, 3) {
                    mutate::duplicate(&mut rng, &mut packets);
                }
                if rng.percent(15) {
                    // A second CONNECT, the same as the first.
                    packets.insert(0, case.connect.clone());
                }
            }
            How::Garbage => unreachable!("chosen above"),
        }
        case.chunks = mutate::chunks(&mut rng, packets.concat());
        case
    }

    /// A well-formed session of `who` at `level` for case `index`; `strict`: one that keeps to the
    /// protocol, so every request in it is answered. Clients are named after the index (`fuzz-{index %
    /// THINGS}`), so the cases played at the same time are mostly of different clients: one that takes
    /// another's session over (which the fuzzer does too, less often) ends the other's connection.
    pub fn session(
        &self,
        rng: &mut Rng,
        index: u64,
        who: Who,
        level: Level,
        strict: bool,
    ) -> Session {
        let at = index as usize;
        match who {
            Who::Device => {
                let thing = thing_name(at % THINGS);
                let username = rng.percent(20).then(|| mqtt::sdk_metrics(rng, ""));
                device_session(rng, level, strict, &thing, username, None)
            }
            Who::PasswordDevice => {
                let cred = &self.ids.device;
                let username = if rng.percent(30) {
                    mqtt::sdk_metrics(rng, &cred.username)
                } else {
                    cred.username.clone()
                };
                let password = Some(cred.password.clone());
                device_session(rng, level, strict, &cred.username, Some(username), password)
            }
            Who::Operator | Who::ScopedOperator => {
                // Each operator its own client ids: a session's client id is refused to another principal.
                let (cred, prefix) = match (who, &self.ids.scoped_operator) {
                    (Who::ScopedOperator, Some(scoped)) => (scoped, "fuzz-scoped"),
                    _ => (&self.ids.operator, "fuzz-op"),
                };
                let client_id = format!("{prefix}-{}", at % OPERATOR_IDS);
                operator_session(rng, level, strict, &client_id, cred)
            }
            Who::Nobody => Session::default(),
        }
    }

    fn garbage(&self, rng: &mut Rng, index: u64, level: Level) -> Case {
        let stream = match rng.below(6) {
            // Random bytes.
            0 => {
                let n = rng.range(1, 2048);
                rng.bytes(n)
            }
            // Other protocols on the MQTT port.
            1 => rng
                .pick(&[
                    &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
                    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
                    b"SSH-2.0-OpenSSH_9.2\r\n",
                    b"\r\n\r\n",
                    b"\x00",
                ])
                .to_vec(),
            // A client packet before any CONNECT.
            2 => {
                let session = device_session(rng, level, false, &thing_name(0), None, None);
                let mut packets = session.packets;
                packets.retain(|p| !p.is_empty());
                packets.concat()
            }
            // A CONNECT with another protocol name or level.
            3 => {
                let thing = thing_name(rng.below(THINGS));
                mqtt::odd_connect(rng, &thing)
            }
            // A CONNECT that claims to be huge, or whose length never ends.
            4 => rng
                .pick(&[
                    &[0x10, 0xff, 0xff, 0xff, 0x7f][..],
                    &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01],
                    &[0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
                    &[0x10, 0x00],
                    &[0x10, 0x02, 0x00, 0x04],
                ])
                .to_vec(),
            // Two sessions of different clients spliced together at random points.
            _ => {
                let a = device_session(rng, level, false, &thing_name(1), None, None);
                let b = device_session(rng, Level::V5, false, &thing_name(2), None, None);
                let a = [a.connect, a.packets.concat()].concat();
                let b = [b.connect, b.packets.concat()].concat();
                let cut_a = rng.below(a.len() + 1);
                let cut_b = rng.below(b.len() + 1);
                [&a[..cut_a], &b[cut_b..]].concat()
            }
        };
        Case {
            index,
            who: Who::Nobody,
            how: How::Garbage,
            level,
            hostile: true,
            connect: stream,
            wait_connack: false,
            chunks: Vec::new(),
            replies: 0,
            tail: Vec::new(),
        }
    }
}

/// A device's session: CONNECT as `thing`, subscriptions to its replies, requests to its Jobs API and a
/// few other packets; `username`/`password` for the CONNECT. `strict`: nothing in it breaks the protocol.
fn device_session(
    rng: &mut Rng,
    level: Level,
    strict: bool,
    thing: &str,
    username: Option<String>,
    password: Option<String>,
) -> Session {
    let mut writer = mqtt::Writer::new(rng, level, strict);
    let will_topic = match rng.below(if strict { 6 } else { 7 }) {
        0..=2 => format!("$aws/things/{thing}/will"),
        3 | 4 => format!("fuzz/{thing}/will"),
        5 => "$aws/things/fuzz-0/will".to_owned(),
        _ => "fuzz/+/will".to_owned(),
    };
    let connect = writer.connect(
        rng,
        thing,
        username.map(String::into_bytes),
        password.map(String::into_bytes),
        will_topic.as_bytes(),
    );
    let mut packets = Vec::new();
    let mut replies = 0;
    let subscribed = rng.percent(85);
    let replies_to: Vec<String> = ["+", "+/+", "+/+/+"]
        .iter()
        .flat_map(|levels| {
            ["accepted", "rejected"].map(|kind| format!("$aws/things/{thing}/jobs/{levels}/{kind}"))
        })
        .filter(|_| subscribed)
        .collect();
    let answered = |topic: &str| {
        payload::is_device_request(topic, thing)
            && (replies_to.iter()).any(|f| topic_matches(f, &format!("{topic}/accepted")))
    };
    if subscribed {
        let mut filters: Vec<Vec<u8>> = replies_to.iter().map(|f| f.clone().into_bytes()).collect();
        if rng.percent(40) {
            filters.push(format!("$aws/things/{thing}/jobs/notify").into_bytes());
            filters.push(format!("$aws/things/{thing}/jobs/notify-next").into_bytes());
        }
        if rng.percent(20) {
            filters.push(format!("fuzz/{thing}/telemetry").into_bytes());
            filters.push(b"fuzz/shared".to_vec());
        }
        packets.push(writer.subscribe(rng, &filters));
    }
    for _ in 0..rng.range(1, 8) {
        match rng.below(10) {
            0..=4 => {
                let (topic, api) = payload::device_topic(rng, thing);
                let body = payload::device_body(rng, api);
                let qos = rng.weighted(&[(5, 0u8), (4, 1), (1, 2)]);
                replies += usize::from(qos < 2 && answered(&topic));
                packets.push(writer.publish(rng, &topic, qos, &body));
            }
            5 => {
                let topic = payload::other_topic(rng, thing, strict);
                let body = payload::device_body(rng, payload::DeviceApi::GetPending);
                // A denied QoS 2 publish ends the connection (MQTT 3.1.1 has no way to refuse it).
                let qos = rng.below(if strict { 2 } else { 3 }) as u8;
                packets.push(writer.publish(rng, &topic, qos, &body));
            }
            6 => {
                let filters: Vec<Vec<u8>> = (0..rng.range(1, 4))
                    .map(|_| payload::any_filter(rng, thing, strict).into_bytes())
                    .collect();
                packets.push(writer.subscribe(rng, &filters));
            }
            7 => {
                let filters: Vec<Vec<u8>> = (0..rng.range(1, 3))
                    .map(|_| payload::any_filter(rng, thing, strict).into_bytes())
                    .collect();
                packets.push(writer.unsubscribe(rng, &filters));
            }
            8 => packets.push(writer.ack(rng)),
            _ => packets.push(mqtt::PINGREQ.to_vec()),
        }
    }
    Session::ending(rng, &writer, connect, packets, replies)
}

/// An operator's session: CONNECT with `cred`, subscriptions to its control replies, control requests.
fn operator_session(
    rng: &mut Rng,
    level: Level,
    strict: bool,
    client_id: &str,
    cred: &Credential,
) -> Session {
    let mut writer = mqtt::Writer::new(rng, level, strict);
    let username = if rng.percent(15) {
        mqtt::sdk_metrics(rng, &cred.username)
    } else {
        cred.username.clone()
    };
    let will_topic = format!("$sprig/control/{client_id}/will");
    let connect = writer.connect(
        rng,
        client_id,
        Some(username.into_bytes()),
        Some(cred.password.clone().into_bytes()),
        will_topic.as_bytes(),
    );
    let mut packets = Vec::new();
    let mut filters: Vec<Vec<u8>> = ["accepted", "rejected"]
        .map(|kind| format!("$sprig/control/{client_id}/+/{kind}").into_bytes())
        .to_vec();
    if rng.percent(20) {
        filters.push(b"$aws/events/presence/#".to_vec());
    }
    packets.push(writer.subscribe(rng, &filters));
    let mut replies = 0;
    // Several requests per connection: an operator's login costs an argon2 check.
    for _ in 0..rng.range(2, 12) {
        match rng.below(12) {
            0..=8 => {
                let operation = payload::operation(rng);
                let body = payload::control_body(rng, &operation);
                let topic = format!("$sprig/control/{client_id}/{operation}");
                let qos = rng.weighted(&[(4, 0u8), (5, 1), (1, 2)]);
                let answered = qos < 2 && payload::is_control_request(&operation);
                replies += usize::from(answered);
                packets.push(writer.publish(rng, &topic, qos, &body));
            }
            9 => {
                // Another client's control topic, or a device's: refused.
                let topic = rng
                    .pick(&[
                        "$sprig/control/fuzz-op-0/ListJobs".to_owned(),
                        format!("$sprig/control/{client_id}"),
                        format!("$aws/things/{}/jobs/get", thing_name(0)),
                        format!("$sprig/control/{client_id}/ListJobs/accepted"),
                    ])
                    .clone();
                let body = payload::control_body(rng, "ListJobs");
                let qos = rng.below(if strict { 2 } else { 3 }) as u8;
                packets.push(writer.publish(rng, &topic, qos, &body));
            }
            10 => packets.push(writer.ack(rng)),
            _ => packets.push(mqtt::PINGREQ.to_vec()),
        }
    }
    Session::ending(rng, &writer, connect, packets, replies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::read_packet;

    fn generator(seed: u64) -> Generator {
        let cred = |u: &str| Credential {
            username: u.into(),
            password: "pw".into(),
        };
        Generator::new(
            seed,
            Identities {
                operator: cred("sprig-local"),
                scoped_operator: Some(cred("scoped")),
                device: cred("fuzz-pw"),
            },
        )
    }

    /// Splits a well-formed stream into (fixed header, body) packets.
    pub(crate) fn packets_of(mut stream: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !stream.is_empty() {
            out.push(read_packet(&mut stream));
        }
        out
    }

    #[test]
    fn the_same_seed_and_index_make_the_same_case() {
        let (a, b) = (generator(7), generator(7));
        for i in [0, 1, 99, 12_345] {
            assert_eq!(a.case(i).describe(), b.case(i).describe());
        }
        assert_ne!(a.case(3).describe(), generator(8).case(3).describe());
    }

    #[test]
    fn cases_cover_every_kind_of_client_and_treatment() {
        let generator = generator(1);
        let mut seen = std::collections::BTreeSet::new();
        let mut levels = std::collections::BTreeSet::new();
        for i in 0..2000 {
            let case = generator.case(i);
            assert!(!case.is_empty(), "{}", case.describe());
            seen.insert((case.who, case.how));
            levels.insert(case.level == Level::V5);
            if case.who != Who::Device && case.who != Who::Nobody && case.how != How::BadConnect {
                assert!(case.wait_connack, "{}", case.describe());
            }
        }
        let hows = [
            How::Clean,
            How::Mutated,
            How::BadConnect,
            How::ServerPacket,
            How::Duplicated,
        ];
        for how in hows {
            assert!(seen.contains(&(Who::Device, how)), "no Device/{how}");
        }
        for who in [Who::PasswordDevice, Who::Operator, Who::ScopedOperator] {
            assert!(seen.contains(&(who, How::Clean)), "no {who}/Clean");
            assert!(seen.contains(&(who, How::Mutated)), "no {who}/Mutated");
        }
        assert!(seen.contains(&(Who::Nobody, How::Garbage)));
        assert_eq!(levels.len(), 2);
    }

    #[test]
    fn clean_cases_are_well_formed_packets_that_owe_replies() {
        let generator = generator(2);
        let mut owed = 0;
        for i in 0..500 {
            let case = generator.case(i);
            if case.how != How::Clean {
                continue;
            }
            let connect = packets_of(&case.connect);
            assert_eq!(connect.len(), 1, "{}", case.describe());
            assert_eq!(connect[0].0, 0x10);
            let level = if case.level == Level::V5 { 5 } else { 4 };
            assert_eq!(&connect[0].1[..7], &[0, 4, b'M', b'Q', b'T', b'T', level]);
            for (header, _) in packets_of(&case.chunks.concat()) {
                assert!(
                    [0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0xa0, 0xc0].contains(&(header & 0xf0)),
                    "{header:#x} in {}",
                    case.describe()
                );
            }
            for (header, _) in packets_of(&case.tail) {
                assert_eq!(header, 0xe0);
            }
            owed += case.replies;
        }
        assert!(owed > 100, "clean cases owe {owed} replies");
    }
}
