//! The Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.

/// A payload that is not in the wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer than 5 bytes.
    #[error("payload of {0} bytes is too short for the wire format (needs 5)")]
    TooShort(usize),
    /// First byte is not 0.
    #[error("unknown magic byte {0:#04x} (expected 0x00)")]
    BadMagic(u8),
}

/// Prepends the 5-byte header for `id` to `avro`.
pub fn encode(id: u32, avro: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + avro.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(avro);
    out
}

/// Writes the header for `id` into `out` (cleared first).
pub fn header_into(id: u32, out: &mut Vec<u8>) {
    out.clear();
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Splits a payload into its schema id and Avro body.
pub fn decode(payload: &[u8]) -> Result<(u32, &[u8]), WireError> {
    let Some((head, body)) = payload.split_first_chunk::<5>() else {
        return Err(WireError::TooShort(payload.len()));
    };
    let [magic, id @ ..] = *head;
    if magic != 0 {
        return Err(WireError::BadMagic(magic));
    }
    Ok((u32::from_be_bytes(id), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = encode(258, b"abc");
        assert_eq!(p, vec![0, 0, 0, 1, 2, b'a', b'b', b'c']);
        assert_eq!(decode(&p).unwrap(), (258, &b"abc"[..]));
    }

    #[test]
    fn short_and_bad_magic_are_errors_not_panics() {
        for n in 0..5 {
            assert_eq!(decode(&vec![0; n]), Err(WireError::TooShort(n)));
        }
        assert_eq!(decode(&[1, 0, 0, 0, 0]), Err(WireError::BadMagic(1)));
    }
}
