//! Protobuf's wire format, read and written by hand for the few fields the
//! gateway needs (which model a call names, the server-level answers it gives
//! itself). Reading walks a message's top-level fields and skips every other
//! field by its length, so tensors (`raw_input_contents`, megabytes) are never
//! decoded or copied.

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the message ends inside a field")]
    Truncated,
    #[error("a varint is longer than 10 bytes")]
    VarintTooLong,
    #[error("field {field} has wire type {wire_type}, which proto3 does not use")]
    UnsupportedWireType { field: u64, wire_type: u8 },
    #[error("field number 0 is not a field")]
    FieldZero,
    #[error("field {field} should be {expected}")]
    WrongType { field: u64, expected: &'static str },
    #[error("field {field} is not UTF-8 text")]
    NotText { field: u64 },
}

/// A field's value as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The top-level fields of a message, in the order they are written.
pub struct Fields<'a> {
    rest: &'a [u8],
}

pub fn fields(message: &[u8]) -> Fields<'_> {
    Fields { rest: message }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = read_field(&mut self.rest);
        if field.is_err() {
            // Nothing after a malformed field can be read.
            self.rest = &[];
        }
        Some(field)
    }
}

fn read_field<'a>(rest: &mut &'a [u8]) -> Result<(u64, Value<'a>), WireError> {
    let key = read_varint(rest)?;
    let (field, wire_type) = (key >> 3, (key & 7) as u8);
    if field == 0 {
        return Err(WireError::FieldZero);
    }
    let value = match wire_type {
        0 => Value::Varint(read_varint(rest)?),
        1 => Value::Fixed64(u64::from_le_bytes(take_array(rest)?)),
        2 => {
            let length = usize::try_from(read_varint(rest)?).map_err(|_| WireError::Truncated)?;
            Value::Bytes(rest.split_off(..length).ok_or(WireError::Truncated)?)
        }
        5 => Value::Fixed32(u32::from_le_bytes(take_array(rest)?)),
        wire_type => return Err(WireError::UnsupportedWireType { field, wire_type }),
    };
    Ok((field, value))
}

fn take_array<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], WireError> {
    let bytes = rest.split_off(..N).ok_or(WireError::Truncated)?;
    let mut array = [0; N];
    array.copy_from_slice(bytes);
    Ok(array)
}

pub fn read_varint(rest: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, tail) = rest.split_first().ok_or(WireError::Truncated)?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

/// The last value of string field `number` (protobuf: a repeated scalar field's
/// last value wins), or `None` if the message has none.
pub fn last_string(message: &[u8], number: u64) -> Result<Option<&str>, WireError> {
    let mut found = None;
    for field in fields(message) {
        match field? {
            (n, Value::Bytes(bytes)) if n == number => {
                let text =
                    std::str::from_utf8(bytes).map_err(|_| WireError::NotText { field: n })?;
                found = Some(text);
            }
            (n, _) if n == number => {
                return Err(WireError::WrongType {
                    field: n,
                    expected: "a string",
                });
            }
            _ => {}
        }
    }
    Ok(found)
}

/// `message` with every value of field `number` replaced by one string `value`
/// (written last; the other fields keep their bytes and order).
pub fn with_string(message: &[u8], number: u64, value: &str) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(message.len() + value.len() + 8);
    let mut rest = message;
    while !rest.is_empty() {
        let before = rest;
        let (field, _) = read_field(&mut rest)?;
        if field != number {
            out.extend_from_slice(&before[..before.len() - rest.len()]);
        }
    }
    let mut writer = Writer { bytes: out };
    writer.string(number, value);
    Ok(writer.finish())
}

/// Writes messages: fields appended in the order they are put.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    pub fn varint(&mut self, number: u64, value: u64) -> &mut Writer {
        self.key(number, 0);
        put_varint(&mut self.bytes, value);
        self
    }

    pub fn bool(&mut self, number: u64, value: bool) -> &mut Writer {
        self.varint(number, u64::from(value))
    }

    pub fn bytes(&mut self, number: u64, value: &[u8]) -> &mut Writer {
        self.key(number, 2);
        put_varint(&mut self.bytes, value.len() as u64);
        self.bytes.extend_from_slice(value);
        self
    }

    pub fn string(&mut self, number: u64, value: &str) -> &mut Writer {
        self.bytes(number, value.as_bytes())
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    fn key(&mut self, number: u64, wire_type: u64) {
        put_varint(&mut self.bytes, (number << 3) | wire_type);
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
