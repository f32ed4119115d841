//! Standard base64 (RFC 4648 §4, with padding), the encoding of every binary field of the
//! protocol. Hand-written so the guest binary carries no extra crate; decoding is strict
//! (canonical padding only, no whitespace) because both ends are ours.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a string is not canonical base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("base64 length {0} is not a multiple of 4")]
    Length(usize),
    #[error("invalid base64 byte 0x{byte:02x} at offset {offset}")]
    Byte { byte: u8, offset: usize },
    #[error("misplaced or non-canonical base64 padding")]
    Padding,
}

/// Encodes `data` as padded standard base64.
pub fn encode(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63]);
        out.push(ALPHABET[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63]
        } else {
            b'='
        });
    }
    // Only ASCII from ALPHABET and '=' was pushed.
    String::from_utf8(out).unwrap_or_default()
}

fn value(byte: u8) -> Option<u32> {
    let v = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes padded standard base64.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return Err(DecodeError::Length(bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (q, quad) in bytes.chunks_exact(4).enumerate() {
        let last = q + 1 == quads;
        let pad = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(DecodeError::Padding);
        }
        let mut n = 0u32;
        for (i, &byte) in quad[..4 - pad].iter().enumerate() {
            let v = value(byte).ok_or(DecodeError::Byte {
                byte,
                offset: q * 4 + i,
            })?;
            n |= v << (18 - 6 * i);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = 3 - pad;
        // Canonical form: the bits below the last kept byte must be zero.
        if decoded[keep..].iter().any(|&b| b != 0) {
            return Err(DecodeError::Padding);
        }
        out.extend_from_slice(&decoded[..keep]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).as_deref(), Ok(plain.as_bytes()));
        }
    }

    #[test]
    fn round_trips_every_length_and_byte() {
        let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for len in 0..data.len() {
            let slice = &data[..len];
            assert_eq!(decode(&encode(slice)).as_deref(), Ok(slice), "len {len}");
        }
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(decode("Zm9"), Err(DecodeError::Length(3)));
        assert_eq!(
            decode("Zm9*"),
            Err(DecodeError::Byte {
                byte: b'*',
                offset: 3
            })
        );
        assert_eq!(decode("Zg==Zg=="), Err(DecodeError::Padding));
        assert_eq!(decode("Z==="), Err(DecodeError::Padding));
        // "Zh==" decodes to 'f' with non-zero trailing bits: not canonical.
        assert_eq!(decode("Zh=="), Err(DecodeError::Padding));
        assert!(decode("Zm9v\n").is_err());
    }
}
