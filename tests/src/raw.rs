//! MQTT packets written by hand, for the tests and benchmarks that need the wire itself (a device that
//! stops reading, thousands of minimal clients) rather than an MQTT client library.

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

/// Reads one packet off a blocking stream: (fixed header byte, body). Panics on a read error or timeout.
pub fn read_packet(stream: &mut impl std::io::Read) -> (u8, Vec<u8>) {
    let mut header = [0u8; 1];
    stream.read_exact(&mut header).unwrap();
    let mut len = 0usize;
    for shift in 0..4 {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
        len |= usize::from(byte[0] & 0x7f) << (7 * shift);
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).unwrap();
    (header[0], body)
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
    }
}
