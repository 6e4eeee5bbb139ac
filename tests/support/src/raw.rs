//! MQTT packets written by hand, for the tests and benchmarks that need the wire itself (a device that
//! stops reading, thousands of minimal clients, packets no client library would send) rather than an MQTT
//! client library.

/// Appends an MQTT string: two bytes of length, then the bytes.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet: fixed header byte, remaining length (variable-length encoded), body.
pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(header);
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// An MQTT 3.1.1 CONNECT: clean session, keep-alive 30 s, with a username and password if given.
pub fn connect(client_id: &str, credentials: Option<(&str, &str)>) -> Vec<u8> {
    connect_with(client_id, credentials, true)
}

/// An anonymous MQTT 3.1.1 CONNECT without clean session: the broker keeps the session (subscriptions,
/// and the QoS 1 messages for it) while the client is away. Keep-alive 30 s.
pub fn connect_keeping_session(client_id: &str) -> Vec<u8> {
    connect_with(client_id, None, false)
}

/// An anonymous MQTT 3.1.1 CONNECT with a clean session or not, and a keep-alive of `keep_alive_s`
/// seconds (0: none, the broker never ends the connection for its silence).
pub fn connect_keeping_alive(client_id: &str, clean: bool, keep_alive_s: u16) -> Vec<u8> {
    connect_full(client_id, None, clean, keep_alive_s)
}

fn connect_with(client_id: &str, credentials: Option<(&str, &str)>, clean: bool) -> Vec<u8> {
    connect_full(client_id, credentials, clean, 30)
}

fn connect_full(
    client_id: &str,
    credentials: Option<(&str, &str)>,
    clean: bool,
    keep_alive_s: u16,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4);
    let clean_flag = if clean { 0x02 } else { 0 };
    body.push(if credentials.is_some() {
        clean_flag | 0x80 | 0x40
    } else {
        clean_flag
    });
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some((username, password)) = credentials {
        put_str(&mut body, username.as_bytes());
        put_str(&mut body, password.as_bytes());
    }
    packet(0x10, &body)
}

/// A SUBSCRIBE with packet id `pkid` of every filter at `qos`.
pub fn subscribe<S: AsRef<str>>(pkid: u16, filters: &[S], qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for filter in filters {
        put_str(&mut body, filter.as_ref().as_bytes());
        body.push(qos);
    }
    packet(0x82, &body)
}

/// A PUBLISH (the packet id is written for QoS 1 and 2 only).
pub fn publish(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// Appends an MQTT 5 Variable Byte Integer.
pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            return;
        }
    }
}

/// Appends MQTT 5 properties (already encoded, one after the other) with their length before them.
fn put_properties(out: &mut Vec<u8>, properties: &[u8]) {
    put_varint(out, properties.len());
    out.extend_from_slice(properties);
}

/// An anonymous MQTT 5 CONNECT: clean start, keep-alive 30 s, with these CONNECT properties (encoded,
/// e.g. [`receive_maximum`]).
pub fn connect_v5(client_id: &str, properties: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 30]);
    put_properties(&mut body, properties);
    put_str(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

/// An MQTT 5 PUBLISH with these properties (encoded, e.g. [`topic_alias`]); the packet id is written for
/// QoS 1 and 2 only.
pub fn publish_v5(topic: &str, qos: u8, pkid: u16, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 8);
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    put_properties(&mut body, properties);
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// The MQTT 5 Topic Alias property (PUBLISH).
pub fn topic_alias(alias: u16) -> Vec<u8> {
    let [hi, lo] = alias.to_be_bytes();
    vec![0x23, hi, lo]
}

/// (topic, QoS, packet id, payload) of a PUBLISH's fixed header byte and body; the packet id is 0 for
/// QoS 0. `None` if the body is too short for what the header says.
pub fn parse_publish(header: u8, body: &[u8]) -> Option<(&[u8], u8, u16, &[u8])> {
    let qos = (header >> 1) & 0x03;
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let topic = body.get(2..2 + topic_len)?;
    let mut at = 2 + topic_len;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    Some((topic, qos, pkid, body.get(at..)?))
}

/// Reads one packet off a tokio stream: (fixed header byte, body).
pub async fn read_packet_async<R>(reader: &mut R) -> std::io::Result<(u8, Vec<u8>)>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let header = reader.read_u8().await?;
    let mut len = 0usize;
    for shift in 0..4 {
        let byte = reader.read_u8().await?;
        len |= usize::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            break;
        }
        if shift == 3 {
            return Err(std::io::Error::other("malformed remaining length"));
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok((header, body))
}

/// Reads one packet off a blocking stream: (fixed header byte, body). Panics on a read error or timeout.
pub fn read_packet(stream: &mut impl std::io::Read) -> (u8, Vec<u8>) {
    try_read_packet(stream).expect("read an MQTT packet")
}

/// Reads one packet off a blocking stream: (fixed header byte, body), or the read's error (for a fake
/// server that must notice its client leaving).
pub fn try_read_packet(stream: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 1];
    stream.read_exact(&mut header)?;
    let mut len = 0usize;
    for shift in 0..4 {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        len |= usize::from(byte[0] & 0x7f) << (7 * shift);
        if byte[0] & 0x80 == 0 {
            break;
        }
        if shift == 3 {
            return Err(std::io::Error::other("malformed remaining length"));
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok((header[0], body))
}

/// Reads the MQTT string (two bytes of length, then the bytes) at `*at` in `body`, and moves `*at` past
/// it. Panics if `body` ends first.
pub fn take_str<'a>(body: &'a [u8], at: &mut usize) -> &'a [u8] {
    let len = usize::from(u16::from_be_bytes([body[*at], body[*at + 1]]));
    let value = &body[*at + 2..*at + 2 + len];
    *at += 2 + len;
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_takes_as_many_bytes_as_it_needs() {
        assert_eq!(packet(0xE0, &[]), [0xE0, 0x00]);
        let mut name = Vec::new();
        put_str(&mut name, b"MQTT");
        assert_eq!(name, [0, 4, b'M', b'Q', b'T', b'T']);
        let long = packet(0x30, &[7; 321]);
        assert_eq!(&long[..3], [0x30, 0xC1, 0x02]); // 321 = 0x41 + 2 * 128
        assert_eq!(long.len(), 3 + 321);
        let (header, body) = read_packet(&mut long.as_slice());
        assert_eq!((header, body.len()), (0x30, 321));
        let mut at = 0;
        assert_eq!(take_str(&name, &mut at), b"MQTT");
        assert_eq!(at, name.len());
    }

    #[test]
    fn connect_subscribe_and_publish_are_laid_out_as_mqtt_3_1_1_says() {
        let anonymous = connect("d1", None);
        assert_eq!(anonymous[9], 0x02, "clean session, nothing else");
        assert_eq!(&anonymous[12..], [0, 2, b'd', b'1']);
        let with_password = connect("d1", Some(("u", "p")));
        assert_eq!(with_password[9], 0xC2);
        assert!(with_password.ends_with(&[0, 1, b'u', 0, 1, b'p']));
        assert_eq!(connect_keeping_session("d1")[9], 0x00, "no clean session");
        assert_eq!(
            subscribe(7, &["a", "b"], 1),
            [0x82, 0x0A, 0, 7, 0, 1, b'a', 1, 0, 1, b'b', 1]
        );
        assert_eq!(publish("t", 0, 9, b"x"), [0x30, 0x04, 0, 1, b't', b'x']);
        assert_eq!(
            publish("t", 1, 9, b"x"),
            [0x32, 0x06, 0, 1, b't', 0, 9, b'x']
        );
        assert_eq!(
            parse_publish(0x32, &[0, 1, b't', 0, 9, b'x']),
            Some((&b"t"[..], 1, 9, &b"x"[..]))
        );
        assert_eq!(
            parse_publish(0x30, &[0, 1, b't', b'x']),
            Some((&b"t"[..], 0, 0, &b"x"[..]))
        );
        assert_eq!(parse_publish(0x32, &[0, 1, b't']), None, "no packet id");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = publish("t", 1, 9, b"x");
        let read = runtime.block_on(read_packet_async(&mut bytes.as_slice()));
        assert_eq!(read.unwrap(), (0x32, vec![0, 1, b't', 0, 9, b'x']));
    }
}
