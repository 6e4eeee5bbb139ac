//! What is done to a well-formed stream. On its packets: one duplicated, dropped, moved, spliced in from
//! another session, given a remaining length that lies or a header of another type. On its bytes: bits
//! flipped, bytes inserted, deleted or overwritten with values that sit on boundaries, a range copied
//! elsewhere, the stream cut short. And how it is written: in one piece, in a few, or byte by byte.

use super::mqtt::{self, Level};
use super::Rng;

/// Bytes that sit on boundaries: lengths, flags and packet types are made of them.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x7f, 0x80, 0xc0, 0xfe, 0xff, 0x10, 0x30, 0xe0,
];

/// The length of the first packet of `stream` (fixed header included), if its remaining length reads.
pub fn first_packet_len(stream: &[u8]) -> Option<usize> {
    let (len, header) = remaining_length(stream)?;
    Some(header + len)
}

/// A packet's remaining length and the size of its fixed header, if the length is well-formed.
fn remaining_length(packet: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *packet.get(1 + i)?;
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((len, 2 + i));
        }
    }
    None
}

/// One structural mutation of `packets`; `donors` are packets of another session to splice in.
pub fn packets(rng: &mut Rng, packets: &mut Vec<Vec<u8>>, donors: &[Vec<u8>], level: Level) {
    if packets.is_empty() {
        packets.push(mqtt::PINGREQ.to_vec());
    }
    let i = rng.below(packets.len());
    match rng.below(8) {
        0 => duplicate(rng, packets),
        1 => {
            packets.remove(i);
        }
        2 => {
            let j = rng.below(packets.len());
            packets.swap(i, j);
        }
        3 if !donors.is_empty() => {
            let donor = rng.pick(donors).clone();
            packets.insert(i, donor);
        }
        4 => lie_about_length(rng, &mut packets[i]),
        5 => {
            // Another packet type, or other flags, with the same body.
            let old = packets[i].first().copied().unwrap_or_default();
            let new = match rng.below(3) {
                0 => (old & 0x0f) | (rng.below(16) as u8) << 4,
                1 => (old & 0xf0) | rng.below(16) as u8,
                _ => *rng.pick(INTERESTING),
            };
            match packets[i].first_mut() {
                Some(first) => *first = new,
                None => packets[i].push(new),
            }
        }
        6 => packets.insert(i, mqtt::never_from_client(rng, level)),
        _ => {
            // Cut a packet short: the next one's bytes complete it.
            let packet = &mut packets[i];
            let cut = rng.below(packet.len().max(1));
            packet.truncate(cut);
        }
    }
}

/// Repeats one of `packets` (2 to 50 times, usually few).
pub fn duplicate(rng: &mut Rng, packets: &mut Vec<Vec<u8>>) {
    if packets.is_empty() {
        return;
    }
    let i = rng.below(packets.len());
    let times = 1 + rng.size(49);
    let copy = packets[i].clone();
    for _ in 0..times {
        packets.insert(i, copy.clone());
    }
}

/// Rewrites a packet's remaining length: longer or shorter than its body, the most MQTT allows, encoded
/// with more bytes than needed, or five bytes long (malformed).
pub fn lie_about_length(rng: &mut Rng, packet: &mut Vec<u8>) {
    let Some((len, header)) = remaining_length(packet) else {
        return;
    };
    let mut encoded = Vec::new();
    match rng.below(6) {
        0 => mqtt::put_varint(&mut encoded, (len + rng.range(1, 1000)) as u32),
        1 => mqtt::put_varint(
            &mut encoded,
            len.saturating_sub(rng.range(1, len.max(1))) as u32,
        ),
        2 => mqtt::put_varint(&mut encoded, 268_435_455),
        3 => mqtt::put_varint(&mut encoded, *rng.pick(&[2_097_152, 2_097_153, 1 << 24])),
        4 => {
            // Not the shortest encoding: MQTT requires it to be.
            mqtt::put_varint(&mut encoded, len as u32);
            let last = encoded.len() - 1;
            encoded[last] |= 0x80;
            encoded.push(0);
        }
        _ => encoded.extend([0xff, 0xff, 0xff, 0xff, 0x7f]),
    }
    packet.splice(1..header, encoded);
}

/// One byte-level mutation anywhere in `data`.
pub fn bytes(rng: &mut Rng, data: &mut Vec<u8>) {
    let len = data.len();
    bytes_within(rng, data, len.max(1));
}

/// One byte-level mutation whose position is in the first `within` bytes of `data` (the CONNECT, say).
pub fn bytes_within(rng: &mut Rng, data: &mut Vec<u8>, within: usize) {
    if data.is_empty() {
        data.push(rng.byte());
        return;
    }
    let at = rng.below(within.min(data.len()));
    match rng.below(8) {
        0 | 1 => {
            for _ in 0..rng.range(1, 4) {
                let at = rng.below(within.min(data.len()));
                data[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            let n = rng.range(1, 16);
            let inserted = if rng.percent(50) {
                rng.bytes(n)
            } else {
                vec![*rng.pick(INTERESTING); n]
            };
            data.splice(at..at, inserted);
        }
        3 => {
            let end = (at + rng.range(1, 16)).min(data.len());
            data.drain(at..end);
        }
        4 => data[at] = *rng.pick(INTERESTING),
        5 => {
            // Two bytes (a length, a packet id) set to a boundary value.
            let value: u16 = *rng.pick(&[0, 1, 0x7fff, 0x8000, 0xffff]);
            for (k, b) in value.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = data.get_mut(at + k) {
                    *slot = b;
                }
            }
        }
        6 => {
            // A range copied over another place (or inserted there).
            let from = rng.below(data.len());
            let end = (from + rng.range(1, 64)).min(data.len());
            let piece = data[from..end].to_vec();
            if rng.percent(50) {
                data.splice(at..at, piece);
            } else {
                let end = (at + piece.len()).min(data.len());
                data.splice(at..end, piece);
            }
        }
        _ => data.truncate(at),
    }
}

/// Splits `data` into the writes it is sent in: usually one, sometimes a few, sometimes (when short)
/// one byte each.
pub fn chunks(rng: &mut Rng, data: Vec<u8>) -> Vec<Vec<u8>> {
    if data.is_empty() {
        return Vec::new();
    }
    match rng.below(10) {
        0..=5 => vec![data],
        6 if data.len() <= 256 => data.iter().map(|b| vec![*b]).collect(),
        _ => {
            let mut cuts: Vec<usize> = (0..rng.range(1, 6))
                .map(|_| rng.below(data.len()))
                .collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            cuts.dedup();
            cuts.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::packet;

    #[test]
    fn remaining_lengths_are_read_and_rewritten() {
        let p = packet(0x30, &[7; 200]);
        assert_eq!(first_packet_len(&p), Some(203));
        assert_eq!(first_packet_len(&[0x30, 0xff, 0xff, 0xff, 0xff]), None);
        let mut rng = Rng::new(5);
        let mut changed = 0;
        for _ in 0..100 {
            let mut lied = p.clone();
            lie_about_length(&mut rng, &mut lied);
            assert_eq!(&lied[lied.len() - 200..], &[7; 200][..], "the body is kept");
            changed += usize::from(first_packet_len(&lied) != Some(lied.len()));
        }
        assert!(changed > 70, "{changed}");
    }

    #[test]
    fn chunks_put_together_are_the_stream() {
        let mut rng = Rng::new(6);
        for n in [1, 10, 300, 5000] {
            let data = rng.bytes(n);
            for _ in 0..20 {
                assert_eq!(chunks(&mut rng, data.clone()).concat(), data);
            }
        }
    }

    #[test]
    fn mutations_change_the_stream_and_never_panic() {
        let mut rng = Rng::new(7);
        let base: Vec<Vec<u8>> = vec![packet(0x82, &[0, 1, 0, 1, b'a', 0]), mqtt::PINGREQ.to_vec()];
        let mut changed = 0;
        for _ in 0..500 {
            let mut ps = base.clone();
            packets(&mut rng, &mut ps, &base, Level::V5);
            let mut flat = ps.concat();
            bytes(&mut rng, &mut flat);
            changed += usize::from(flat != base.concat());
        }
        assert!(changed > 450, "{changed}");
        let mut empty = Vec::new();
        bytes(&mut rng, &mut empty);
        assert_eq!(empty.len(), 1);
    }
}
