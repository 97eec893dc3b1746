//! gRPC's length-prefixed messages: a flag byte (1: compressed with the call's
//! `grpc-encoding`), a 4-byte big-endian length, the message. Compressed
//! messages are read through `gzip` (the one encoding every gRPC library
//! offers), never past a size limit.

use std::io::Read;

/// The bytes before each message.
pub const PREFIX: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the message's flag byte is {0}, neither 0 nor 1")]
    BadFlag(u8),
    #[error("the message is {length} bytes, more than the {limit} allowed")]
    TooLarge { length: usize, limit: usize },
    #[error("the message is compressed with {0:?}, which the gateway cannot read")]
    UnsupportedEncoding(String),
    #[error("the message is compressed, but the call names no grpc-encoding")]
    NoEncoding,
    #[error("the compressed message does not decompress: {0}")]
    Corrupt(String),
}

/// The head of a message: whether it is compressed and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub compressed: bool,
    pub length: usize,
}

/// Reads a message head from the first [`PREFIX`] bytes; `Ok(None)` when fewer
/// have arrived.
pub fn head(bytes: &[u8], limit: usize) -> Result<Option<Head>, FrameError> {
    let Some(prefix) = bytes.get(..PREFIX) else {
        return Ok(None);
    };
    let compressed = match prefix[0] {
        0 => false,
        1 => true,
        flag => return Err(FrameError::BadFlag(flag)),
    };
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if length > limit {
        return Err(FrameError::TooLarge { length, limit });
    }
    Ok(Some(Head { compressed, length }))
}

/// The message as protobuf bytes: itself, or decompressed by `encoding` (the
/// call's `grpc-encoding`), at most `limit` bytes.
pub fn decoded<'a>(
    head: Head,
    message: &'a [u8],
    encoding: Option<&str>,
    limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, FrameError> {
    if !head.compressed {
        return Ok(std::borrow::Cow::Borrowed(message));
    }
    match encoding {
        Some("gzip") => {
            let mut out = Vec::new();
            let read = flate2::read::GzDecoder::new(message)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| FrameError::Corrupt(e.to_string()))?;
            if read > limit {
                return Err(FrameError::TooLarge {
                    length: read,
                    limit,
                });
            }
            Ok(std::borrow::Cow::Owned(out))
        }
        Some(other) => Err(FrameError::UnsupportedEncoding(other.to_string())),
        None => Err(FrameError::NoEncoding),
    }
}

/// `message` framed, uncompressed.
pub fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn heads_are_read_once_whole_and_checked() {
        let message = framed(b"abc");
        assert_eq!(head(&message[..4], 100), Ok(None));
        assert_eq!(
            head(&message, 100),
            Ok(Some(Head {
                compressed: false,
                length: 3
            }))
        );
        assert_eq!(
            head(&message, 2),
            Err(FrameError::TooLarge {
                length: 3,
                limit: 2
            })
        );
        assert_eq!(head(&[7, 0, 0, 0, 0], 100), Err(FrameError::BadFlag(7)));
    }

    #[test]
    fn gzip_messages_are_decompressed_within_the_limit() {
        let compressed = gzip(b"hello model");
        let head = Head {
            compressed: true,
            length: compressed.len(),
        };
        let plain = decoded(head, &compressed, Some("gzip"), 100).unwrap();
        assert_eq!(&*plain, b"hello model");
        assert!(matches!(
            decoded(head, &compressed, Some("gzip"), 5),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decoded(head, &compressed, Some("snappy"), 100),
            Err(FrameError::UnsupportedEncoding(_))
        ));
        assert_eq!(
            decoded(head, &compressed, None, 100),
            Err(FrameError::NoEncoding)
        );
        assert!(matches!(
            decoded(head, b"not gzip", Some("gzip"), 100),
            Err(FrameError::Corrupt(_))
        ));
        // A bomb: a megabyte of zeros stops at the limit.
        let bomb = gzip(&vec![0; 1 << 20]);
        let head = Head {
            compressed: true,
            length: bomb.len(),
        };
        assert!(matches!(
            decoded(head, &bomb, Some("gzip"), 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
