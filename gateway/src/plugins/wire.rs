//! The pipe protocol between the gateway and a plugin host: length-prefixed frames, one place that
//! builds and takes them apart (no I/O here but the two frame readers).
//!
//! ```text
//! frame    = length: u32 LE, body: length bytes          (length ≤ MAX_FRAME)
//! request  = 'C' config JSON                             create the instance (once per host)
//!          | 'R' context JSON                            one recover call
//! reply    = 'H' descriptor JSON                         the library loaded (the host's first frame)
//!          | 'L' text                                    the library was refused (the host's last frame)
//!          | 'A' status: i32 LE, bytes                   the ABI call's status and its out buffer
//!          | 'G' text                                    the plugin broke the ABI (null buffer, null instance)
//!          | 'E' text                                    the host cannot serve the request
//!          | 'M' level: u32 LE, text                     a line the plugin logged (unsolicited)
//!          | 'D' count: u64 LE                           lines the host dropped over the rate (unsolicited)
//! ```
//!
//! The gateway writes one request and reads one reply at a time. Log frames ('M', 'D') come at any time,
//! also between calls (from threads of the plugin's own): the gateway reads the host's output all the
//! time, logs them, and hands the other replies to the call waiting for them. The host passes the plugin's status and
//! bytes through untouched: interpreting them (UTF-8, JSON, a valid `Recovery`) is the gateway's, with the
//! same code as in-process calls, so both isolations judge an answer alike.

use std::io::{self, Read};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::PluginDescriptor;

/// The largest frame either side accepts: far above any job document (AWS allows 32 KB) or answer, far
/// below what a confused peer could make the other allocate.
pub const MAX_FRAME: usize = 16 << 20;

/// What the gateway asks a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Create the instance from its config (JSON).
    Create(&'a [u8]),
    /// One recover call with its context (JSON).
    Recover(&'a [u8]),
}

/// What a host answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The library loaded and its descriptor was accepted.
    Ready(PluginDescriptor),
    /// The library was refused (the loader's message); the host exits.
    LoadFailed(String),
    /// The plugin function returned `status` and `bytes` (empty for a successful create).
    Answer { status: i32, bytes: Vec<u8> },
    /// The plugin broke the ABI: what it did.
    Garbage(String),
    /// The host cannot serve the request (a protocol error on the gateway's side).
    Refused(String),
    /// A line the plugin logged, at an ABI level (`sprig_sdk::abi::LOG_*`); bounded by the host.
    Log { level: u32, message: Vec<u8> },
    /// The host dropped this many of the plugin's log lines (over the rate).
    LogsDropped(u64),
}

/// A frame that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct WireError(String);

impl Request<'_> {
    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, payload) = match self {
            Request::Create(config) => (b'C', config),
            Request::Recover(context) => (b'R', context),
        };
        frame(tag, &[payload])
    }

    /// A frame's body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Request<'_>, WireError> {
        match body.split_first() {
            Some((b'C', config)) => Ok(Request::Create(config)),
            Some((b'R', context)) => Ok(Request::Recover(context)),
            Some((tag, _)) => Err(WireError(format!("unknown request tag {tag:#04x}"))),
            None => Err(WireError("an empty request".into())),
        }
    }
}

impl Reply {
    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Ready(descriptor) => frame(
                b'H',
                &[&serde_json::to_vec(descriptor).expect("a descriptor serializes")],
            ),
            Reply::LoadFailed(text) => frame(b'L', &[text.as_bytes()]),
            Reply::Answer { status, bytes } => frame(b'A', &[&status.to_le_bytes(), bytes]),
            Reply::Garbage(text) => frame(b'G', &[text.as_bytes()]),
            Reply::Refused(text) => frame(b'E', &[text.as_bytes()]),
            Reply::Log { level, message } => frame(b'M', &[&level.to_le_bytes(), message]),
            Reply::LogsDropped(count) => frame(b'D', &[&count.to_le_bytes()]),
        }
    }

    /// A frame's body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Reply, WireError> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match body.split_first() {
            Some((b'H', json)) => serde_json::from_slice(json)
                .map(Reply::Ready)
                .map_err(|e| WireError(format!("a descriptor that is not one ({e})"))),
            Some((b'L', message)) => Ok(Reply::LoadFailed(text(message))),
            Some((b'A', rest)) if rest.len() >= 4 => {
                let (status, bytes) = rest.split_at(4);
                Ok(Reply::Answer {
                    status: i32::from_le_bytes(status.try_into().expect("4 bytes")),
                    bytes: bytes.to_vec(),
                })
            }
            Some((b'A', _)) => Err(WireError("an answer without its status".into())),
            Some((b'G', detail)) => Ok(Reply::Garbage(text(detail))),
            Some((b'E', message)) => Ok(Reply::Refused(text(message))),
            Some((b'M', rest)) if rest.len() >= 4 => {
                let (level, message) = rest.split_at(4);
                Ok(Reply::Log {
                    level: u32::from_le_bytes(level.try_into().expect("4 bytes")),
                    message: message.to_vec(),
                })
            }
            Some((b'M', _)) => Err(WireError("a log line without its level".into())),
            Some((b'D', count)) => match <[u8; 8]>::try_from(count) {
                Ok(count) => Ok(Reply::LogsDropped(u64::from_le_bytes(count))),
                Err(_) => Err(WireError("a dropped-lines count of the wrong size".into())),
            },
            Some((tag, _)) => Err(WireError(format!("unknown reply tag {tag:#04x}"))),
            None => Err(WireError("an empty reply".into())),
        }
    }
}

/// Length prefix, tag, then the parts, in one buffer (written with one `write`).
fn frame(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(tag);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// The body length a prefix announces, refused above [`MAX_FRAME`].
fn body_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    Ok(len)
}

/// Reads one frame's body into `body` (blocking, for the host). `Ok(false)`: the stream ended cleanly
/// before a frame began.
pub fn read_frame(input: &mut impl Read, body: &mut Vec<u8>) -> io::Result<bool> {
    let mut prefix = [0; 4];
    match input.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    body.resize(body_len(prefix)?, 0);
    input.read_exact(body)?;
    Ok(true)
}

/// Reads one frame's body into `body` (async, for the gateway). A stream that ends, even before a frame
/// began, is an error: the gateway reads only when it expects a reply.
pub async fn read_frame_async(
    input: &mut (impl AsyncRead + Unpin),
    body: &mut Vec<u8>,
) -> io::Result<()> {
    let mut prefix = [0; 4];
    input.read_exact(&mut prefix).await?;
    body.resize(body_len(prefix)?, 0);
    input.read_exact(body).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "sprig-plugin-reset".into(),
            version: "0.1.0".into(),
            sdk_version: "0.1.0".into(),
            abi_version: 1,
            path: "/opt/plugins/libsprig_plugin_reset.so".into(),
        }
    }

    /// Encodes, reads the frame back through the blocking reader, and decodes.
    fn round_trip_reply(reply: &Reply) -> Reply {
        let encoded = reply.encode();
        let mut body = Vec::new();
        assert!(read_frame(&mut encoded.as_slice(), &mut body).unwrap());
        Reply::decode(&body).unwrap()
    }

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Create(br#"{"topic":"t"}"#),
            Request::Recover(b"{}"),
            Request::Recover(b""),
        ] {
            let encoded = request.encode();
            assert_eq!(
                u32::from_le_bytes(encoded[..4].try_into().unwrap()) as usize,
                encoded.len() - 4
            );
            let mut body = Vec::new();
            assert!(read_frame(&mut encoded.as_slice(), &mut body).unwrap());
            assert_eq!(Request::decode(&body).unwrap(), request);
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ready(descriptor()),
            Reply::LoadFailed("wrong ABI".into()),
            Reply::Answer {
                status: 0,
                bytes: Vec::new(),
            },
            Reply::Answer {
                status: -7,
                bytes: b"\xff\xfe not UTF-8".to_vec(),
            },
            Reply::Garbage("a null pointer with length 3".into()),
            Reply::Refused("recover before create".into()),
            Reply::Log {
                level: 3,
                message: b"rolling back sensor-7".to_vec(),
            },
            Reply::Log {
                level: 99,
                message: Vec::new(),
            },
            Reply::LogsDropped(12_345),
        ] {
            assert_eq!(round_trip_reply(&reply), reply);
        }
    }

    #[test]
    fn frames_follow_each_other_and_a_clean_end_is_not_an_error() {
        let mut stream = Request::Create(b"{}").encode();
        stream.extend(Request::Recover(b"[1]").encode());
        let mut input = stream.as_slice();
        let mut body = Vec::new();
        assert!(read_frame(&mut input, &mut body).unwrap());
        assert_eq!(Request::decode(&body).unwrap(), Request::Create(b"{}"));
        assert!(read_frame(&mut input, &mut body).unwrap());
        assert_eq!(Request::decode(&body).unwrap(), Request::Recover(b"[1]"));
        assert!(!read_frame(&mut input, &mut body).unwrap());
    }

    #[test]
    fn truncated_oversized_and_unknown_frames_are_errors() {
        let encoded = Request::Recover(b"{\"thingName\":\"x\"}").encode();
        let mut body = Vec::new();
        // Cut inside the body, and inside the prefix.
        let error = read_frame(&mut &encoded[..encoded.len() - 1], &mut body).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let error = read_frame(&mut &encoded[..2], &mut body);
        assert!(matches!(error, Ok(false)), "{error:?}");
        // A length beyond the limit is refused before anything is allocated.
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let error = read_frame(&mut &huge[..], &mut body).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("at most"), "{error}");
        // Bodies that are no message.
        assert!(Request::decode(b"").is_err());
        assert!(Request::decode(b"X{}").is_err());
        assert!(Reply::decode(b"").is_err());
        assert!(Reply::decode(b"A\x00\x00").is_err());
        assert!(Reply::decode(b"H{not json").is_err());
        assert!(Reply::decode(b"?").is_err());
        assert!(Reply::decode(b"M\x03").is_err());
        assert!(Reply::decode(b"D\x01\x00").is_err());
    }

    #[tokio::test]
    async fn the_async_reader_reads_what_the_encoder_wrote() {
        let reply = Reply::Answer {
            status: 1,
            bytes: b"misbehave: failing".to_vec(),
        };
        let mut stream = reply.encode();
        stream.extend(Reply::Ready(descriptor()).encode());
        let mut input = stream.as_slice();
        let mut body = Vec::new();
        read_frame_async(&mut input, &mut body).await.unwrap();
        assert_eq!(Reply::decode(&body).unwrap(), reply);
        read_frame_async(&mut input, &mut body).await.unwrap();
        assert_eq!(Reply::decode(&body).unwrap(), Reply::Ready(descriptor()));
        let error = read_frame_async(&mut input, &mut body).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
