//! MQTT framing on one socket: 3.1.1 and 5 on the same port, chosen from the CONNECT's protocol level.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{self, DisconnectProperties, DisconnectReasonCode, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V311,
    V5,
}

/// Why no packet could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("connection closed by the client")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("nothing received within the keep-alive")]
    KeepAlive,
    #[error("malformed packet: {0}")]
    Protocol(protocol::Error),
    /// A packet a client must never send, or reserved header bits set (see [`check_fixed_header`]).
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
}

/// Reads packets off a byte stream, buffering partial frames.
pub(crate) struct PacketReader<R> {
    io: R,
    buf: BytesMut,
    /// How much room each read asks for: doubled while reads fill it (a busy publisher reads many packets
    /// per system call), halved back while they do not. An idle device's buffer is this small.
    chunk: usize,
    /// The size of the buffer's allocation (its `capacity` shrinks as packets are cut off its front).
    allocated: usize,
    max_size: usize,
    /// True once the first packet (the CONNECT) was read: no other may follow.
    connected: bool,
    /// Whether packets are checked as a server must check a client's ([`check_fixed_header`]).
    from_client: bool,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub(crate) fn new(io: R, max_size: usize) -> Self {
        PacketReader {
            io,
            buf: BytesMut::new(),
            chunk: SMALLEST_READ,
            allocated: 0,
            max_size,
            connected: false,
            from_client: true,
        }
    }

    /// A reader of what a server sends (tests that play the client): no client-side checks.
    #[cfg(test)]
    pub(crate) fn of_server(io: R, max_size: usize) -> Self {
        PacketReader {
            from_client: false,
            ..PacketReader::new(io, max_size)
        }
    }

    /// Reads until the CONNECT's protocol level is known and returns the matching version.
    pub(crate) async fn sniff_version(&mut self) -> Result<Version, ReadError> {
        loop {
            match peek_protocol_level(&self.buf) {
                Peek::Level(4) => return Ok(Version::V311),
                Peek::Level(5) => return Ok(Version::V5),
                Peek::Level(level) => return Err(ReadError::UnsupportedLevel(level)),
                Peek::NotConnect => {
                    return Err(ReadError::Protocol(protocol::Error::InvalidProtocol))
                }
                Peek::NeedMore => self.fill(None).await?,
            }
        }
    }

    /// Reads one packet. `idle` bounds the wait for each chunk of bytes (the keep-alive); `None`: no bound.
    pub(crate) async fn read(
        &mut self,
        version: Version,
        idle: Option<Duration>,
    ) -> Result<Packet, ReadError> {
        loop {
            if let Some(packet) = self.parse(version)? {
                return Ok(packet);
            }
            // Not awaited in a `match` on the parse: the pending read would keep room for a packet.
            self.fill(idle).await?;
        }
    }

    /// The next packet in the buffer, if it holds a whole one.
    fn parse(&mut self, version: Version) -> Result<Option<Packet>, ReadError> {
        // Checked before rumqttd's codec sees the packet: its MQTT 5 reader panics on some packets only a
        // server may send (UNSUBACK, CONNACK).
        let checked = self.connected && self.from_client;
        if let Some(&first) = self.buf.first().filter(|_| checked) {
            check_fixed_header(first, version).map_err(ReadError::Violation)?;
        }
        let parsed = match version {
            Version::V311 => V4.read_mut(&mut self.buf, self.max_size),
            Version::V5 => V5.read_mut(&mut self.buf, self.max_size),
        };
        match parsed {
            Ok(packet) => {
                self.connected = true;
                Ok(Some(detached(packet)))
            }
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(ReadError::Protocol(e)),
        }
    }

    /// Resolves when the peer closes the connection (or it fails). What arrives meanwhile is kept for later
    /// reads, up to `most` bytes; beyond that it reads no more (and never resolves).
    pub(crate) async fn until_closed(&mut self, most: usize) {
        while self.buf.len() < most {
            if self.fill(None).await.is_err() {
                return;
            }
        }
        std::future::pending().await
    }

    async fn fill(&mut self, idle: Option<Duration>) -> Result<(), ReadError> {
        self.make_room();
        let room = self.buf.capacity() - self.buf.len();
        let read = match idle {
            Some(limit) => tokio::time::timeout(limit, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| ReadError::KeepAlive)??,
            None => self.io.read_buf(&mut self.buf).await?,
        };
        if read == 0 {
            return Err(ReadError::Closed);
        }
        self.chunk = next_chunk(self.chunk, read, room);
        Ok(())
    }

    /// Room for the next read: a buffer grown for a busy spell or a large packet is given back once empty,
    /// so that thousands of quiet connections hold a few hundred bytes each, not kilobytes.
    fn make_room(&mut self) {
        if self.buf.is_empty() && self.allocated > 2 * self.chunk {
            self.buf = BytesMut::new();
            self.allocated = 0;
        }
        self.buf.reserve(self.chunk);
        self.allocated = self.allocated.max(self.buf.capacity());
    }
}

/// The smallest and the largest room a read asks for (see `PacketReader::chunk`).
const SMALLEST_READ: usize = 256;
const LARGEST_READ: usize = 64 * 1024;

/// The room the next read asks for, after one that took `read` bytes of `room`.
fn next_chunk(chunk: usize, read: usize, room: usize) -> usize {
    if read >= room {
        (chunk * 2).min(LARGEST_READ)
    } else if read < chunk / 4 {
        (chunk / 2).max(SMALLEST_READ)
    } else {
        chunk
    }
}

/// The packet with the messages it carries (a PUBLISH's topic, payload and correlation data, a CONNECT's
/// will) copied out of the read buffer. rumqttd's codec cuts them from the buffer without copying, and a
/// `Bytes` cut from it keeps the whole allocation (4 KiB or more) alive: the router keeps publishes in its
/// log (up to `max_segment_size` x `max_segment_count` of message bytes per filter) long after their
/// connection is gone, so every small request kept there held a buffer, and thousands of devices sending
/// one request each held tens of MiB.
fn detached(packet: Packet) -> Packet {
    let owned = |bytes: &Bytes| Bytes::copy_from_slice(bytes);
    match packet {
        Packet::Publish(mut publish, props) => {
            publish.topic = owned(&publish.topic);
            publish.payload = owned(&publish.payload);
            let props = props.map(|mut p| {
                p.correlation_data = p.correlation_data.as_ref().map(owned);
                p
            });
            Packet::Publish(publish, props)
        }
        Packet::Connect(connect, props, will, will_props, login) => {
            let will = will.map(|mut w| {
                w.topic = owned(&w.topic);
                w.message = owned(&w.message);
                w
            });
            let will_props = will_props.map(|mut p| {
                p.correlation_data = p.correlation_data.as_ref().map(owned);
                p
            });
            Packet::Connect(connect, props, will, will_props, login)
        }
        other => other,
    }
}

/// Checks a packet's first byte, as a server must: only packet types a client may send after CONNECT, with
/// the fixed-header flags the specification requires (MQTT 3.1.1 2.2.2, MQTT 5 2.1.3). A client that sends
/// anything else is closed with a protocol error.
fn check_fixed_header(first: u8, version: Version) -> Result<(), String> {
    let (kind, flags) = (first >> 4, first & 0x0f);
    let expected_flags = match kind {
        3 if flags & 0b0110 == 0b0110 => return Err("PUBLISH with QoS 3".into()),
        3 => return Ok(()),
        4 | 5 | 7 | 12 | 14 => 0b0000,
        6 | 8 | 10 => 0b0010,
        1 => return Err("a second CONNECT".into()),
        2 => return Err("CONNACK: only a server sends it".into()),
        9 => return Err("SUBACK: only a server sends it".into()),
        11 => return Err("UNSUBACK: only a server sends it".into()),
        13 => return Err("PINGRESP: only a server sends it".into()),
        15 if version == Version::V5 => {
            return Err("AUTH: enhanced authentication is not supported".into())
        }
        _ => return Err(format!("packet type {kind} is reserved")),
    };
    if flags != expected_flags {
        return Err(format!(
            "packet type {kind} with fixed-header flags {flags:#06b} (must be {expected_flags:#06b})"
        ));
    }
    Ok(())
}

enum Peek {
    NeedMore,
    NotConnect,
    Level(u8),
}

/// Finds the protocol level byte of a CONNECT at the start of `buf` without consuming anything.
fn peek_protocol_level(buf: &[u8]) -> Peek {
    let Some(&first) = buf.first() else {
        return Peek::NeedMore;
    };
    if first != 0x10 {
        return Peek::NotConnect;
    }
    // Remaining length: a variable byte integer of at most 4 bytes.
    let mut pos = 1;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Peek::NeedMore;
        };
        pos += 1;
        if b & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Peek::NotConnect;
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(pos), buf.get(pos + 1)) else {
        return Peek::NeedMore;
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Peek::NotConnect;
    }
    match buf.get(pos + 2 + name_len) {
        Some(&level) => Peek::Level(level),
        None => Peek::NeedMore,
    }
}

/// What [`PacketWriter::write_or_flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The socket took some of the buffer.
    Wrote,
    /// The buffer was empty, and the stream has passed on all it held.
    Flushed,
}

/// Writes packets in the connection's version.
pub(crate) struct PacketWriter<W> {
    io: W,
    buf: BytesMut,
    version: Version,
    /// How long one write may wait for a client that does not read; `None`: as long as it takes.
    stall: Option<Duration>,
    /// The client's Maximum Packet Size (MQTT 5), if it set one.
    max_packet: Option<usize>,
    /// Server topic aliases (MQTT 5 §3.3.2.3.4): the client's Topic Alias Maximum, and the topics given
    /// one so far, 1 up. The first topics written get one each and keep it; later ones go in full.
    alias_max: u16,
    aliases: std::collections::HashMap<Bytes, u16>,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    pub(crate) fn new(io: W, version: Version) -> Self {
        PacketWriter {
            io,
            buf: BytesMut::new(),
            version,
            stall: None,
            max_packet: None,
            alias_max: 0,
            aliases: std::collections::HashMap::new(),
        }
    }

    /// From now on, PUBLISH topics are sent as aliases, up to `max` of them (the client's Topic Alias
    /// Maximum; 0: none).
    pub(crate) fn set_topic_alias_max(&mut self, max: u16) {
        self.alias_max = if self.version == Version::V5 { max } else { 0 };
    }

    /// `publish` with its topic replaced by its alias, or given one (then returned, to keep once the
    /// packet is written).
    fn alias(
        &self,
        publish: &mut rumqttd::protocol::Publish,
        props: &mut Option<rumqttd::protocol::PublishProperties>,
    ) -> Option<(Bytes, u16)> {
        if self.alias_max == 0 || publish.topic.is_empty() {
            return None;
        }
        if let Some(&alias) = self.aliases.get(&publish.topic) {
            props.get_or_insert_with(Default::default).topic_alias = Some(alias);
            publish.topic = Bytes::new();
            return None;
        }
        let next = u16::try_from(self.aliases.len() + 1).ok()?;
        if next > self.alias_max {
            return None;
        }
        props.get_or_insert_with(Default::default).topic_alias = Some(next);
        Some((publish.topic.clone(), next))
    }

    /// From now on, PUBLISH packets larger than `max` bytes are not written (see
    /// [`PacketWriter::encode_publish`]).
    pub(crate) fn set_max_packet_size(&mut self, max: Option<usize>) {
        self.max_packet = max;
    }

    /// Encodes a PUBLISH, unless it is larger than the client's Maximum Packet Size: MQTT 5 §3.1.2.11.4
    /// says the server must not send it, and drops it as if it had been sent. False when dropped.
    /// Its topic goes as an alias where the client allows them.
    pub(crate) fn encode_publish(&mut self, packet: Packet) -> io::Result<bool> {
        let (packet, new_alias) = match packet {
            Packet::Publish(mut publish, mut props) => {
                let new_alias = self.alias(&mut publish, &mut props);
                (Packet::Publish(publish, props), new_alias)
            }
            other => (other, None),
        };
        let before = self.buf.len();
        self.encode(packet)?;
        if self
            .max_packet
            .is_some_and(|max| self.buf.len() - before > max)
        {
            self.buf.truncate(before);
            return Ok(false);
        }
        if let Some((topic, alias)) = new_alias {
            self.aliases.insert(topic, alias);
        }
        Ok(true)
    }

    /// The same writer, giving up (an error) on a write that waits longer than `stall` for the client.
    pub(crate) fn with_stall_limit(mut self, stall: Duration) -> Self {
        self.stall = Some(stall);
        self
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Encodes one packet into the write buffer (call [`PacketWriter::flush`] to send).
    pub(crate) fn encode(&mut self, packet: Packet) -> io::Result<()> {
        if let Packet::Publish(publish, _) = &packet {
            count_sent(publish.topic.len() + publish.payload.len());
        }
        encode(self.version, packet, &mut self.buf)
    }

    /// Puts `bytes`, the end of a packet the socket took only part of outside this writer (see `wire`),
    /// before anything else this writer writes; called while it holds nothing.
    pub(crate) fn put_first(&mut self, bytes: &[u8]) {
        debug_assert!(
            self.buf.is_empty(),
            "a packet's end goes before everything else"
        );
        let after = self.buf.split();
        self.buf.extend_from_slice(bytes);
        self.buf.unsplit(after);
    }

    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let write = self.io.write_all(&self.buf);
            match self.stall {
                Some(stall) => tokio::time::timeout(stall, write).await.map_err(|_| {
                    let ms = stall.as_millis();
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {ms} ms"),
                    )
                })??,
                None => write.await?,
            }
            self.buf.clear();
            self.give_back_buffer();
        }
        self.io.flush().await
    }

    /// Bytes encoded and not yet taken by the socket.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// How long a write may wait for a client that does not read, if limited.
    pub(crate) fn stall_limit(&self) -> Option<Duration> {
        self.stall
    }

    /// Writes what the socket takes now of the encoded bytes: at least one byte, or an error. Cancel-safe
    /// (a write that has not completed has taken nothing), so the writer loop can wait on it beside its
    /// sources. The buffer's memory is given back once a backlog of a slow client has been written.
    pub(crate) async fn write_some(&mut self) -> io::Result<()> {
        let written = self.io.write(&self.buf).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.buf.advance(written);
        self.give_back_buffer();
        Ok(())
    }

    /// Frees the buffer once everything in it is written: an idle connection holds none, and one write
    /// of a burst or a backlog costs an allocation, not a buffer kept for good.
    fn give_back_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Moves bytes on towards the client: some of the buffer ([`PacketWriter::write_some`]) or, once it
    /// is empty, what the stream itself still holds (TLS records). Cancel-safe.
    pub(crate) async fn write_or_flush(&mut self) -> io::Result<Progress> {
        if self.buf.is_empty() {
            self.io.flush().await?;
            return Ok(Progress::Flushed);
        }
        self.write_some().await?;
        Ok(Progress::Wrote)
    }

    pub(crate) async fn send(&mut self, packet: Packet) -> io::Result<()> {
        self.encode(packet)?;
        self.flush().await
    }

    pub(crate) async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// Encodes one packet in `version` onto the end of `buf`.
pub(crate) fn encode(version: Version, packet: Packet, buf: &mut BytesMut) -> io::Result<()> {
    let result = match version {
        Version::V311 => V4.write(strip_properties(packet), buf),
        Version::V5 => V5.write(complete_disconnect(packet), buf),
    };
    result
        .map(|_| ())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Counts a PUBLISH written to a client, of `bytes` of topic and payload, in the metrics.
pub(crate) fn count_sent(bytes: usize) {
    let metrics = crate::metrics::get();
    metrics.messages_sent.inc();
    metrics.bytes_sent.inc_by(bytes as u64);
}

/// rumqttd 0.20's MQTT 5 writer gets a DISCONNECT with a reason code wrong unless it carries a
/// property: without properties it says one byte long but writes two (the code, and a properties length
/// of 0), so the client reads a stray 0 byte after it, a malformed packet; with empty properties it
/// writes `E0 00`, a normal disconnection, losing the reason. So the reason goes with a Reason String.
fn complete_disconnect(packet: Packet) -> Packet {
    match packet {
        Packet::Disconnect(p, None)
            if p.reason_code != DisconnectReasonCode::NormalDisconnection =>
        {
            let reason = DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(format!("{:?}", p.reason_code)),
                user_properties: Vec::new(),
                server_reference: None,
            };
            Packet::Disconnect(p, Some(reason))
        }
        other => other,
    }
}

/// MQTT 3.1.1 has no properties, and rumqttd's V4 writer panics on a packet that carries some (the router
/// attaches them, e.g. to publishes from MQTT 5 clients): drop them.
fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        Packet::Subscribe(p, _) => Packet::Subscribe(p, None),
        Packet::Unsubscribe(p, _) => Packet::Unsubscribe(p, None),
        Packet::Connect(c, _, will, _, login) => Packet::Connect(c, None, will, None, login),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mqtt5_disconnect_with_a_reason_is_as_long_as_it_says() {
        use rumqttd::protocol::Disconnect;
        let mut writer = PacketWriter::new(Vec::new(), Version::V5);
        let mut taken_over = vec![0xE0, 21, 0x8E, 19, 0x1F, 0, 16];
        taken_over.extend(b"SessionTakenOver");
        for (reason_code, bytes) in [
            (DisconnectReasonCode::SessionTakenOver, &taken_over[..]),
            (DisconnectReasonCode::NormalDisconnection, &[0xE0, 0][..]),
        ] {
            writer.buf.clear();
            writer
                .encode(Packet::Disconnect(Disconnect { reason_code }, None))
                .unwrap();
            assert_eq!(&writer.buf[..], bytes, "{reason_code:?}");
        }
    }

    #[test]
    fn packets_only_a_server_sends_and_reserved_flags_are_refused() {
        for ok in [
            0x30, 0x32, 0x3b, 0x40, 0x50, 0x62, 0x70, 0x82, 0xa2, 0xc0, 0xe0,
        ] {
            assert_eq!(check_fixed_header(ok, Version::V5), Ok(()), "{ok:#x}");
        }
        for bad in [
            0x10, 0x20, 0x90, 0xb0, 0xd0, 0xf0, 0x00, 0x36, 0x41, 0x60, 0x80, 0xa0, 0xc1, 0xe2,
        ] {
            assert!(check_fixed_header(bad, Version::V5).is_err(), "{bad:#x}");
        }
        assert!(check_fixed_header(0xf0, Version::V311).is_err());
    }

    /// What a read returns owns its bytes: the router keeps publishes, and a slice of the read buffer
    /// would keep the whole buffer (found by the fuzzer: RSS grew ~5 KiB per device request).
    #[tokio::test]
    async fn packets_read_do_not_hold_the_read_buffer() {
        let mut stream = Vec::new();
        let connect = [
            0x10, 23, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 60, 0, 1, b'c', 0, 3, b'w', b'/',
            b't', 0, 3, b'b', b'y', b'e',
        ];
        stream.extend(connect);
        for payload in [&b"{}"[..], b"{\"clientToken\":\"x\"}"] {
            let mut body = vec![0, 3, b'a', b'/', b'b'];
            body.extend(payload);
            stream.push(0x30);
            stream.push(body.len() as u8);
            stream.extend(body);
        }
        let mut reader = PacketReader::new(stream.as_slice(), 1 << 20);
        let version = reader.sniff_version().await.unwrap();
        let Packet::Connect(_, _, Some(will), _, _) = reader.read(version, None).await.unwrap()
        else {
            panic!("a CONNECT with a will");
        };
        assert_eq!(
            (&will.topic[..], &will.message[..]),
            (&b"w/t"[..], &b"bye"[..])
        );
        assert!(will.topic.is_unique() && will.message.is_unique());
        for _ in 0..2 {
            let Packet::Publish(publish, _) = reader.read(version, None).await.unwrap() else {
                panic!("a PUBLISH");
            };
            assert_eq!(&publish.topic[..], b"a/b");
            assert!(publish.topic.is_unique() && publish.payload.is_unique());
        }
    }

    #[test]
    fn protocol_level_is_found_in_partial_and_whole_connects() {
        // CONNECT, remaining length 12, "MQTT", level 5.
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60];
        assert!(matches!(peek_protocol_level(&connect), Peek::Level(5)));
        assert!(matches!(peek_protocol_level(&connect[..8]), Peek::NeedMore));
        assert!(matches!(peek_protocol_level(&[]), Peek::NeedMore));
        assert!(matches!(peek_protocol_level(&[0x30, 0]), Peek::NotConnect));
        assert!(matches!(
            peek_protocol_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Peek::NotConnect
        ));
    }
}
