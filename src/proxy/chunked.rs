//! [`ChunkedBody`]: finds where a chunked request body ends, without keeping it.
//!
//! The grammar is hyper 1's chunked decoder, byte for byte: a size line (hex
//! digits, optional spaces or tabs, optional `;` extensions, CRLF), the data and
//! its CRLF, and after the `0` chunk either CRLF or trailer lines up to an empty
//! line. Agreeing with hyper is the point: where hyper reads the next request,
//! so must [`super::framing`]; where hyper fails the body (and closes the
//! connection), this fails too. Limits hyper applies on top (extension and
//! trailer sizes) are left out: past them hyper closes the connection anyway.

/// A chunked body that does not follow the grammar; hyper refuses it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct MalformedChunk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The first hex digit of a chunk size.
    SizeStart,
    /// More hex digits, or what ends them.
    Size,
    /// Spaces or tabs after the size.
    SizeSpace,
    /// A chunk extension, ignored up to its CR.
    Extension,
    /// The LF of the size line.
    SizeLf,
    /// Chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk's size line: the final CR, or a trailer line.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// Where a chunked body's reader stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedBody {
    step: Step,
    size: u64,
}

impl Default for ChunkedBody {
    fn default() -> ChunkedBody {
        ChunkedBody {
            step: Step::SizeStart,
            size: 0,
        }
    }
}

impl ChunkedBody {
    /// Reads on through `bytes`: `Some(n)` when the body ends after `n` of them,
    /// `None` when all were body and more is to come.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<Option<usize>, MalformedChunk> {
        let mut at = 0;
        while at < bytes.len() {
            if let Step::Data(left) = self.step {
                at += self.skip_data(left, &bytes[at..]);
                continue;
            }
            let byte = bytes[at];
            at += 1;
            match self.next(byte)? {
                Some(step) => self.step = step,
                None => {
                    *self = ChunkedBody::default();
                    return Ok(Some(at));
                }
            }
        }
        Ok(None)
    }

    /// Skips as much chunk data as `bytes` holds; returns how much it skipped.
    fn skip_data(&mut self, left: u64, bytes: &[u8]) -> usize {
        let skipped = usize::try_from(left).map_or(bytes.len(), |left| left.min(bytes.len()));
        let left = left - skipped as u64;
        self.step = if left == 0 {
            Step::DataCr
        } else {
            Step::Data(left)
        };
        skipped
    }

    /// The step after `byte`, or `None` when `byte` ends the body.
    fn next(&mut self, byte: u8) -> Result<Option<Step>, MalformedChunk> {
        let step = match (self.step, byte) {
            (Step::SizeStart, _) => {
                self.size = hex_digit(byte).map(u64::from).ok_or(MalformedChunk)?;
                Step::Size
            }
            (Step::Size, b'\t' | b' ') | (Step::SizeSpace, b'\t' | b' ') => Step::SizeSpace,
            (Step::Size | Step::SizeSpace, b';') => Step::Extension,
            (Step::Size | Step::SizeSpace | Step::Extension, b'\r') => Step::SizeLf,
            (Step::Size, _) => {
                let digit = hex_digit(byte).ok_or(MalformedChunk)?;
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|size| size.checked_add(u64::from(digit)))
                    .ok_or(MalformedChunk)?;
                Step::Size
            }
            // hyper refuses a bare LF in an extension: some peers end lines there.
            (Step::Extension, b'\n') => return Err(MalformedChunk),
            (Step::Extension, _) => Step::Extension,
            (Step::SizeLf, b'\n') if self.size == 0 => Step::EndCr,
            (Step::SizeLf, b'\n') => Step::Data(self.size),
            (Step::DataCr, b'\r') => Step::DataLf,
            (Step::DataLf, b'\n') => Step::SizeStart,
            (Step::EndCr, b'\r') => Step::EndLf,
            (Step::Trailer, b'\r') => Step::TrailerLf,
            (Step::EndCr | Step::Trailer, _) => Step::Trailer,
            (Step::TrailerLf, b'\n') => Step::EndCr,
            (Step::EndLf, b'\n') => return Ok(None),
            _ => return Err(MalformedChunk),
        };
        Ok(Some(step))
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `piece` bytes; where the body ended, if it did.
    fn end_of(bytes: &[u8], piece: usize) -> Result<Option<usize>, MalformedChunk> {
        let mut body = ChunkedBody::default();
        let mut offset = 0;
        for part in bytes.chunks(piece) {
            if let Some(n) = body.advance(part)? {
                return Ok(Some(offset + n));
            }
            offset += part.len();
        }
        Ok(None)
    }

    fn ends_at_every_split(body: &[u8], after: &[u8]) {
        let stream = [body, after].concat();
        for piece in 1..=stream.len() {
            assert_eq!(
                end_of(&stream, piece),
                Ok(Some(body.len())),
                "pieces of {piece}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn plain_chunks_end_after_the_last_crlf() {
        ends_at_every_split(b"2\r\n{}\r\n0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n");
        ends_at_every_split(b"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n", b"")
    }

    #[test]
    fn extensions_spaces_and_upper_case_sizes() {
        ends_at_every_split(
            b"1A ;name=value;x\r\n01234567890123456789012345\r\n0 \t;last\r\n\r\n",
            b"POST",
        );
    }

    #[test]
    fn trailers_end_at_the_empty_line() {
        ends_at_every_split(
            b"3\r\nabc\r\n0\r\nx-checksum: 1\r\nx-other: 2\r\n\r\n",
            b"GET",
        );
    }

    #[test]
    fn data_that_looks_like_framing_is_data() {
        ends_at_every_split(b"5\r\n0\r\n\r\n\r\n0\r\n\r\n", b"");
    }

    #[test]
    fn an_unfinished_body_needs_more() {
        assert_eq!(end_of(b"4\r\nab", 1), Ok(None));
        assert_eq!(end_of(b"0\r\nx-t: 1\r\n", 3), Ok(None));
    }

    #[test]
    fn what_hyper_refuses_is_malformed() {
        let refused: [&[u8]; 8] = [
            b"zz\r\n",
            b"\r\n",
            b"2 3\r\n",
            b"2;ext\n",
            b"2\n{}\r\n",
            b"2\r\n{}x\r\n",
            b"0\r\nx-t: 1\rx",
            b"fffffffffffffffff\r\n",
        ];
        for bytes in refused {
            assert_eq!(
                end_of(bytes, 1),
                Err(MalformedChunk),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_huge_chunk_is_skipped_without_reading_byte_by_byte() {
        let mut body = ChunkedBody::default();
        assert_eq!(body.advance(b"ffffffff\r\n"), Ok(None));
        assert_eq!(body.advance(&vec![0u8; 1 << 20]), Ok(None));
        assert_eq!(body.step, Step::Data(0xffff_ffff - (1 << 20)));
    }
}
