//! MQTT 3.1.1 and 5 packets as a client writes them, drawn at random: CONNECT with a will, username,
//! password and properties; PUBLISH at QoS 0, 1, 2 with properties; SUBSCRIBE with options; UNSUBSCRIBE;
//! the acknowledgements; PINGREQ; DISCONNECT; and the packets a client must never send. MQTT 5 properties
//! are mostly those the packet may carry, sometimes one it may not, one twice, or an identifier that
//! does not exist.

use super::Rng;
use crate::raw::{packet, put_str};

/// The protocol level of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    V311,
    V5,
}

impl Level {
    pub fn byte(self) -> u8 {
        match self {
            Level::V311 => 4,
            Level::V5 => 5,
        }
    }
}

pub const PINGREQ: [u8; 2] = [0xc0, 0x00];

/// Appends a variable byte integer (1 to 4 bytes; larger values are cut to 28 bits).
pub fn put_varint(out: &mut Vec<u8>, n: u32) {
    crate::raw::put_varint(out, (n & 0x0fff_ffff) as usize);
}

/// Appends MQTT binary data: two bytes of length, then the bytes (cut to 65,535).
fn put_bin(out: &mut Vec<u8>, data: &[u8]) {
    put_str(out, &data[..data.len().min(0xffff)]);
}

/// MQTT 5 property identifiers.
mod id {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0b;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const AUTH_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RESPONSE_INFO: u8 = 0x1a;
    pub const SERVER_REFERENCE: u8 = 0x1c;
    pub const REASON_STRING: u8 = 0x1f;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_AVAILABLE: u8 = 0x28;
}

/// The type of an MQTT 5 property's value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

fn kind_of(property: u8) -> Kind {
    use id::*;
    match property {
        PAYLOAD_FORMAT
        | REQUEST_PROBLEM_INFO
        | REQUEST_RESPONSE_INFO
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_AVAILABLE
        | 0x29
        | 0x2a => Kind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::U16,
        MESSAGE_EXPIRY | SESSION_EXPIRY | WILL_DELAY | MAXIMUM_PACKET_SIZE => Kind::U32,
        SUBSCRIPTION_ID => Kind::VarInt,
        CORRELATION_DATA | AUTH_DATA => Kind::Bin,
        USER_PROPERTY => Kind::Pair,
        _ => Kind::Str,
    }
}

/// Which properties a packet may carry (MQTT 5, 2.2.2.2).
#[derive(Debug, Clone, Copy)]
pub enum PropsOf {
    Connect,
    Will,
    Publish,
    Subscribe,
    /// UNSUBSCRIBE: user properties only.
    Unsubscribe,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP: a reason string and user properties.
    Ack,
    Disconnect,
}

fn allowed(of: PropsOf) -> &'static [u8] {
    use id::*;
    match of {
        PropsOf::Connect => &[
            SESSION_EXPIRY,
            RECEIVE_MAXIMUM,
            MAXIMUM_PACKET_SIZE,
            TOPIC_ALIAS_MAXIMUM,
            REQUEST_RESPONSE_INFO,
            REQUEST_PROBLEM_INFO,
            USER_PROPERTY,
            AUTH_METHOD,
            AUTH_DATA,
        ],
        PropsOf::Will => &[
            WILL_DELAY,
            PAYLOAD_FORMAT,
            MESSAGE_EXPIRY,
            CONTENT_TYPE,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            USER_PROPERTY,
        ],
        PropsOf::Publish => &[
            PAYLOAD_FORMAT,
            MESSAGE_EXPIRY,
            TOPIC_ALIAS,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            USER_PROPERTY,
            SUBSCRIPTION_ID,
            CONTENT_TYPE,
        ],
        PropsOf::Subscribe => &[SUBSCRIPTION_ID, USER_PROPERTY],
        PropsOf::Unsubscribe => &[USER_PROPERTY],
        PropsOf::Ack => &[REASON_STRING, USER_PROPERTY],
        PropsOf::Disconnect => &[
            SESSION_EXPIRY,
            REASON_STRING,
            USER_PROPERTY,
            SERVER_REFERENCE,
        ],
    }
}

/// Properties a client would seldom send: these make a server close the connection (an authentication
/// method it does not support, a topic alias it never allowed, a subscription identifier on a PUBLISH),
/// so they are rarer than the others.
fn rare(property: u8) -> bool {
    matches!(
        property,
        id::AUTH_METHOD | id::AUTH_DATA | id::TOPIC_ALIAS | id::SUBSCRIPTION_ID
    )
}

/// A property list with its length, for a packet of kind `of`: usually empty or a few allowed
/// properties with plausible values. Unless `strict`: sometimes extreme values, a property the packet may
/// not carry or one the server never allowed, one twice, or an unknown identifier.
pub fn properties(rng: &mut Rng, of: PropsOf, strict: bool) -> Vec<u8> {
    let mut list = Vec::new();
    if !rng.percent(45) {
        for _ in 0..rng.range(1, 4) {
            let property = match rng.below(20) {
                0 if !strict => *rng.pick(&[
                    id::ASSIGNED_CLIENT_ID,
                    id::SERVER_KEEP_ALIVE,
                    id::RESPONSE_INFO,
                    id::MAXIMUM_QOS,
                    id::RETAIN_AVAILABLE,
                    id::WILDCARD_AVAILABLE,
                    0x29,
                    0x2a,
                ]),
                1 if !strict && rng.percent(20) => rng.byte(),
                _ => loop {
                    let property = *rng.pick(allowed(of));
                    if !rare(property) || (!strict && rng.percent(10)) {
                        break property;
                    }
                },
            };
            put_property(rng, &mut list, property, of, strict);
            if (!strict || property == id::USER_PROPERTY) && rng.percent(5) {
                // The same again: only user properties may repeat.
                put_property(rng, &mut list, property, of, strict);
            }
        }
    }
    let mut out = Vec::new();
    put_varint(&mut out, list.len() as u32);
    out.extend(list);
    out
}

fn put_property(rng: &mut Rng, out: &mut Vec<u8>, property: u8, of: PropsOf, strict: bool) {
    out.push(property);
    let extreme = !strict && rng.percent(8);
    match kind_of(property) {
        Kind::Byte => out.push(if extreme {
            rng.byte()
        } else {
            rng.below(2) as u8
        }),
        Kind::U16 => {
            let v = if extreme {
                *rng.pick(&[0, 1, 0xffff])
            } else {
                rng.range(1, 100) as u16
            };
            out.extend(v.to_be_bytes());
        }
        Kind::U32 => {
            let v = match (extreme, property, of) {
                (true, _, _) => *rng.pick(&[0, 1, u32::MAX, 0x7fff_ffff]),
                (_, id::SESSION_EXPIRY, _) => *rng.pick(&[0, 1, 5, 60, 3600]),
                (_, id::MAXIMUM_PACKET_SIZE, _) if strict => 4 << 20,
                (_, id::MAXIMUM_PACKET_SIZE, _) => *rng.pick(&[128, 1024, 65536, 1 << 20]),
                _ => rng.range(0, 120) as u32,
            };
            out.extend(v.to_be_bytes());
        }
        Kind::VarInt => put_varint(
            out,
            if extreme {
                *rng.pick(&[0, 0x0fff_ffff])
            } else {
                rng.range(1, 1000) as u32
            },
        ),
        Kind::Str => {
            let s = text(rng, extreme);
            put_bin(out, &s);
        }
        Kind::Bin => {
            let n = rng.size(if extreme { 4096 } else { 32 });
            let data = rng.bytes(n);
            put_bin(out, &data);
        }
        Kind::Pair => {
            let (k, v) = (text(rng, extreme), text(rng, extreme));
            put_bin(out, &k);
            put_bin(out, &v);
        }
    }
}

/// A short text for a string property; `extreme`: long, empty, or not UTF-8.
fn text(rng: &mut Rng, extreme: bool) -> Vec<u8> {
    if !extreme {
        return rng
            .pick(&["a", "fuzz", "application/json", "$aws/things/x/r", "k"])
            .as_bytes()
            .to_vec();
    }
    match rng.below(4) {
        0 => Vec::new(),
        1 => vec![b'x'; rng.range(256, 8192)],
        2 => vec![0xff, 0xfe, 0xc0, 0x80],
        _ => b"a\0b".to_vec(),
    }
}

/// A username with the usage metrics AWS's device SDKs append: `{username}?SDK=…&Version=…`.
pub fn sdk_metrics(rng: &mut Rng, username: &str) -> String {
    let sdk = rng.pick(&[
        "IoTDeviceSDK/Python&Version=1.31.0&Platform=CPython",
        "AWSIoTDeviceSDK-Embedded-C&Version=4.0.0",
        "IoTDeviceSDK/Java&Version=1.0",
        "",
    ]);
    format!("{username}?SDK={sdk}")
}

/// Writes one client's packets at its protocol level, with its packet ids. A `strict` writer keeps to the
/// protocol: properties the packet may carry with sensible values, valid subscription options, packet ids
/// that are not 0, no acknowledgement of a packet never received. Otherwise it strays now and then.
pub struct Writer {
    pub level: Level,
    pub strict: bool,
    next_pkid: u16,
}

impl Writer {
    pub fn new(rng: &mut Rng, level: Level, strict: bool) -> Writer {
        Writer {
            level,
            strict,
            // Sometimes near the end, so the ids wrap.
            next_pkid: if rng.percent(20) {
                0xfff0
            } else {
                rng.range(1, 100) as u16
            },
        }
    }

    /// The next packet id (0 when it wraps, unless strict).
    pub fn pkid(&mut self) -> u16 {
        if self.strict && self.next_pkid == 0 {
            self.next_pkid = 1;
        }
        let id = self.next_pkid;
        self.next_pkid = self.next_pkid.wrapping_add(1);
        id
    }

    /// A property list for this client's packet of kind `of`; nothing at MQTT 3.1.1.
    pub fn properties(&self, rng: &mut Rng, of: PropsOf) -> Vec<u8> {
        match self.level {
            Level::V5 => properties(rng, of, self.strict),
            Level::V311 => Vec::new(),
        }
    }

    /// A CONNECT as `client_id` that the gateway accepts when the login is right: clean or persistent,
    /// a keep-alive, often a will on `will_topic`, properties.
    pub fn connect(
        &self,
        rng: &mut Rng,
        client_id: &str,
        username: Option<Vec<u8>>,
        password: Option<Vec<u8>>,
        will_topic: &[u8],
    ) -> Vec<u8> {
        let will = rng.percent(30).then(|| Will {
            topic: will_topic.to_vec(),
            payload: {
                let n = rng.size(256);
                rng.bytes(n)
            },
            qos: rng.below(3) as u8,
            retain: rng.percent(20),
            properties: properties(rng, PropsOf::Will, self.strict),
        });
        // A short keep-alive could end a strict client's session while it waits for its replies.
        let keep_alive = if self.strict {
            *rng.pick(&[0, 30, 60, 0xffff])
        } else {
            *rng.pick(&[0, 1, 5, 30, 60, 0xffff])
        };
        Connect {
            level: self.level,
            client_id: client_id.as_bytes().to_vec(),
            clean: rng.percent(80),
            keep_alive,
            username,
            password,
            will,
            properties: properties(rng, PropsOf::Connect, self.strict),
        }
        .encode()
    }

    /// A PUBLISH of `payload` to `topic` at `qos`, sometimes retained or marked dup, with properties.
    pub fn publish(&mut self, rng: &mut Rng, topic: &str, qos: u8, payload: &[u8]) -> Vec<u8> {
        let retain = rng.percent(5);
        let dup = qos > 0 && rng.percent(5);
        let pkid = (qos > 0).then(|| self.pkid());
        let properties = self.properties(rng, PropsOf::Publish);
        publish(
            topic.as_bytes(),
            qos,
            retain,
            dup,
            pkid,
            &properties,
            payload,
        )
    }

    /// A SUBSCRIBE to `filters` with random options: QoS 0-2, and at MQTT 5 no-local,
    /// retain-as-published and retain handling (sometimes reserved values, unless strict).
    pub fn subscribe(&mut self, rng: &mut Rng, filters: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(self.pkid().to_be_bytes());
        body.extend(self.properties(rng, PropsOf::Subscribe));
        for filter in filters {
            put_bin(&mut body, filter);
            let mut options = rng.below(3) as u8;
            if self.level == Level::V5 {
                let retain_handling = rng.below(if self.strict { 3 } else { 4 }) as u8;
                options |= (rng.below(4) as u8) << 2 | retain_handling << 4;
            }
            if !self.strict && rng.percent(3) {
                options = rng.byte();
            }
            body.push(options);
        }
        packet(0x82, &body)
    }

    pub fn unsubscribe(&mut self, rng: &mut Rng, filters: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(self.pkid().to_be_bytes());
        body.extend(self.properties(rng, PropsOf::Unsubscribe));
        for filter in filters {
            put_bin(&mut body, filter);
        }
        packet(0xa2, &body)
    }

    /// A PUBACK, PUBREC, PUBREL or PUBCOMP for a recent packet id, with a reason code and properties at
    /// MQTT 5 (sometimes). A strict client acknowledges nothing it did not receive: a PINGREQ instead.
    pub fn ack(&mut self, rng: &mut Rng) -> Vec<u8> {
        if self.strict {
            return PINGREQ.to_vec();
        }
        let header = *rng.pick(&[0x40, 0x50, 0x62, 0x70]);
        let pkid = self.next_pkid.wrapping_sub(rng.range(0, 4) as u16);
        let mut body = pkid.to_be_bytes().to_vec();
        if self.level == Level::V5 && rng.percent(50) {
            body.push(*rng.pick(&[0x00, 0x10, 0x80, 0x83, 0x87, 0x92, 0x97, 0xff]));
            if rng.percent(60) {
                body.extend(properties(rng, PropsOf::Ack, false));
            }
        }
        packet(header, &body)
    }

    /// A DISCONNECT; at MQTT 5 with a reason code and properties (a session expiry, sometimes).
    pub fn disconnect(&self, rng: &mut Rng) -> Vec<u8> {
        let mut body = Vec::new();
        if self.level == Level::V5 && rng.percent(60) {
            body.push(if self.strict {
                *rng.pick(&[0x00, 0x04, 0x80, 0x83])
            } else {
                *rng.pick(&[0x00, 0x04, 0x80, 0x81, 0x8d, 0xff])
            });
            if rng.percent(60) {
                body.extend(properties(rng, PropsOf::Disconnect, self.strict));
            }
        }
        packet(0xe0, &body)
    }
}

/// A CONNECT's fields.
#[derive(Debug, Clone)]
pub struct Connect {
    pub level: Level,
    pub client_id: Vec<u8>,
    pub clean: bool,
    pub keep_alive: u16,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    /// MQTT 5: the encoded property list (with its length).
    pub properties: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub properties: Vec<u8>,
}

impl Connect {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(self.level.byte());
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos & 3) << 3 | u8::from(will.retain) << 5;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        if self.level == Level::V5 {
            body.extend(&self.properties);
        }
        put_bin(&mut body, &self.client_id);
        if let Some(will) = &self.will {
            if self.level == Level::V5 {
                body.extend(&will.properties);
            }
            put_bin(&mut body, &will.topic);
            put_bin(&mut body, &will.payload);
        }
        if let Some(username) = &self.username {
            put_bin(&mut body, username);
        }
        if let Some(password) = &self.password {
            put_bin(&mut body, password);
        }
        packet(0x10, &body)
    }
}

/// A CONNECT that is not MQTT 3.1.1 or 5: MQTT 3.1's `MQIsdp`, another level, another protocol name,
/// reserved flags, a password without a username.
pub fn odd_connect(rng: &mut Rng, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let (name, level): (&[u8], u8) = *rng.pick(&[
        (&b"MQIsdp"[..], 3),
        (b"MQTT", 3),
        (b"MQTT", 6),
        (b"MQTT", 0),
        (b"MQTT", 0x84),
        (b"MQTX", 4),
        (b"", 5),
        (b"MQTT", 4),
        (b"MQTT", 5),
    ]);
    put_str(&mut body, name);
    body.push(level);
    body.push(*rng.pick(&[0x01, 0x03, 0x42, 0x3e, 0xff, 0x18]));
    body.extend(60u16.to_be_bytes());
    if level == 5 {
        body.extend(properties(rng, PropsOf::Connect, false));
    }
    put_str(&mut body, client_id.as_bytes());
    if rng.percent(50) {
        put_str(&mut body, b"pw");
    }
    packet(0x10, &body)
}

/// A PUBLISH as given: `properties` (with their length) only at MQTT 5, so empty at 3.1.1.
pub fn publish(
    topic: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: Option<u16>,
    properties: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let header = 0x30 | u8::from(dup) << 3 | (qos & 3) << 1 | u8::from(retain);
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 8);
    put_bin(&mut body, topic);
    if let Some(pkid) = pkid {
        body.extend(pkid.to_be_bytes());
    }
    body.extend(properties);
    body.extend(payload);
    packet(header, &body)
}

/// A packet a client must never send after its CONNECT: CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH, a
/// reserved type, a second CONNECT, wrong fixed-header flags, PUBLISH at QoS 3.
pub fn never_from_client(rng: &mut Rng, level: Level) -> Vec<u8> {
    let v5 = level == Level::V5;
    match rng.below(10) {
        0 => packet(0x20, if v5 { &[0, 0, 0] } else { &[0, 0] }),
        1 => packet(0x90, if v5 { &[0, 1, 0, 1] } else { &[0, 1, 1] }),
        2 => packet(0xb0, if v5 { &[0, 1, 0, 0] } else { &[0, 1] }),
        3 => packet(0xd0, &[]),
        4 => packet(0xf0, &[0x18, 0]),
        5 => packet(0x00, &[]),
        6 => Writer::new(rng, level, false).connect(rng, "fuzz-0", None, None, b"x"),
        7 => packet(
            *rng.pick(&[0x41, 0x51, 0x60, 0x63, 0x71, 0x80, 0xa0, 0xc1, 0xe1]),
            &[0, 1],
        ),
        8 => publish(
            b"$aws/things/fuzz-0/x",
            3,
            false,
            false,
            Some(1),
            &[],
            b"{}",
        ),
        _ => {
            let n = rng.size(64);
            packet(0x10 | rng.below(16) as u8, &rng.bytes(n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::read_packet;

    #[test]
    fn a_connect_has_its_fields_in_order() {
        let connect = Connect {
            level: Level::V5,
            client_id: b"fuzz-1".to_vec(),
            clean: true,
            keep_alive: 30,
            username: Some(b"u".to_vec()),
            password: Some(b"p".to_vec()),
            will: Some(Will {
                topic: b"w".to_vec(),
                payload: b"bye".to_vec(),
                qos: 1,
                retain: true,
                properties: vec![0],
            }),
            properties: vec![5, 0x11, 0, 0, 0, 60],
        }
        .encode();
        let (header, body) = read_packet(&mut connect.as_slice());
        assert_eq!(header, 0x10);
        let mut expected = vec![
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            5,
            0x02 | 0x04 | 0x08 | 0x20 | 0xc0,
        ];
        expected.extend([0, 30, 5, 0x11, 0, 0, 0, 60]);
        expected.extend([0, 6]);
        expected.extend(b"fuzz-1");
        expected.extend([0, 0, 1, b'w', 0, 3, b'b', b'y', b'e']);
        expected.extend([0, 1, b'u', 0, 1, b'p']);
        assert_eq!(body, expected);
    }

    #[test]
    fn properties_are_a_length_then_that_many_bytes() {
        let mut rng = Rng::new(3);
        for of in [
            PropsOf::Connect,
            PropsOf::Will,
            PropsOf::Publish,
            PropsOf::Subscribe,
            PropsOf::Unsubscribe,
            PropsOf::Ack,
            PropsOf::Disconnect,
        ] {
            for _ in 0..200 {
                let strict = rng.percent(50);
                let props = properties(&mut rng, of, strict);
                let (mut len, mut at) = (0usize, 0);
                loop {
                    let b = props[at];
                    len |= usize::from(b & 0x7f) << (7 * at);
                    at += 1;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                assert_eq!(props.len() - at, len, "{props:?}");
            }
        }
        let mut out = Vec::new();
        put_varint(&mut out, 321);
        assert_eq!(out, [0xc1, 0x02]);
    }

    #[test]
    fn publishes_and_subscribes_are_framed() {
        let mut rng = Rng::new(4);
        let mut writer = Writer::new(&mut rng, Level::V311, true);
        let p = writer.publish(&mut rng, "a/b", 1, b"{}");
        let (header, body) = read_packet(&mut p.as_slice());
        assert_eq!(header & 0xf6, 0x32);
        assert_eq!(&body[..5], [0, 3, b'a', b'/', b'b']);
        assert!(body.ends_with(b"{}"));
        let s = writer.subscribe(&mut rng, &[b"x/#".to_vec()]);
        let (header, body) = read_packet(&mut s.as_slice());
        assert_eq!(header, 0x82);
        assert_eq!(&body[2..7], [0, 3, b'x', b'/', b'#']);
        assert_ne!(&body[..2], [0, 0]);
        for _ in 0..50 {
            let bad = never_from_client(&mut rng, Level::V5);
            let (header, _) = read_packet(&mut bad.as_slice());
            assert!(
                ![0x30, 0x32, 0x34, 0x40, 0x50, 0x62, 0x70, 0x82, 0xa2, 0xc0, 0xe0]
                    .contains(&header),
                "{header:#x} is a client's packet"
            );
        }
    }
}
