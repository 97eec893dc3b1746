//! The Open Inference Protocol's binary data extension: an answer whose JSON
//! header is followed by raw tensor bytes. `Inference-Header-Content-Length`
//! says where the header ends; each output with `parameters.binary_data_size`
//! takes that many of the bytes after it, in the order of the outputs. [`inline`]
//! turns such an answer into the plain JSON form, each output's bytes decoded by
//! its datatype into a `data` array, so that every mode compares tensors the same
//! way whatever their encoding, and a binary answer compares with a JSON one.
//!
//! Floating-point values that JSON cannot write (NaN, infinities) become `null`.

use serde_json::{Map, Value};

/// The response header that says the body uses the extension.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BinaryError {
    #[error("Inference-Header-Content-Length {0:?} is not a byte count")]
    BadLength(String),
    #[error("Inference-Header-Content-Length {header} is beyond the body's {body} bytes")]
    HeaderBeyondBody { header: usize, body: usize },
    #[error("the JSON header is not a JSON object: {0}")]
    NotJson(String),
    #[error("output {output:?}: binary_data_size {size} is more than the {left} bytes left")]
    Truncated {
        output: String,
        size: usize,
        left: usize,
    },
    #[error("output {output:?}: {detail}")]
    Output { output: String, detail: String },
    #[error("{0} bytes after the last binary output")]
    Trailing(usize),
}

/// The answer `body`, whose JSON header is `header_length` (the header's raw
/// value) bytes long, with every binary output decoded into `data`.
pub fn inline(body: &[u8], header_length: &[u8]) -> Result<Value, BinaryError> {
    let length = parse_length(header_length)?;
    let (header, mut rest) =
        body.split_at_checked(length)
            .ok_or(BinaryError::HeaderBeyondBody {
                header: length,
                body: body.len(),
            })?;
    let mut document: Value =
        serde_json::from_slice(header).map_err(|e| BinaryError::NotJson(e.to_string()))?;
    let outputs = document
        .get_mut("outputs")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut);
    for output in outputs {
        let Some(size) = take_binary_size(output)? else {
            continue;
        };
        let name = output_name(output);
        let data = rest.split_off(..size).ok_or(BinaryError::Truncated {
            output: name.clone(),
            size,
            left: rest.len(),
        })?;
        let datatype = output.get("datatype").and_then(Value::as_str).unwrap_or("");
        let values = decode(datatype, data).map_err(|detail| BinaryError::Output {
            output: name.clone(),
            detail,
        })?;
        check_shape(output.get("shape"), values.len()).map_err(|detail| BinaryError::Output {
            output: name,
            detail,
        })?;
        output.insert("data".into(), Value::Array(values));
    }
    if !rest.is_empty() {
        return Err(BinaryError::Trailing(rest.len()));
    }
    Ok(document)
}

fn parse_length(raw: &[u8]) -> Result<usize, BinaryError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| BinaryError::BadLength(String::from_utf8_lossy(raw).into_owned()))
}

/// Removes `parameters.binary_data_size` (and `parameters`, if that was all of
/// it), returning the size; `None` for an output whose data is JSON.
fn take_binary_size(output: &mut Map<String, Value>) -> Result<Option<usize>, BinaryError> {
    let Some(parameters) = output.get_mut("parameters").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let Some(size) = parameters.remove("binary_data_size") else {
        return Ok(None);
    };
    let emptied = parameters.is_empty();
    if emptied {
        output.remove("parameters");
    }
    let size = size
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| BinaryError::Output {
            output: output_name(output),
            detail: format!("binary_data_size {size} is not a byte count"),
        })?;
    Ok(Some(size))
}

fn output_name(output: &Map<String, Value>) -> String {
    output
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string()
}

/// The elements `data` holds as `datatype`, little-endian as the extension says.
pub(super) fn decode(datatype: &str, data: &[u8]) -> Result<Vec<Value>, String> {
    Ok(match datatype {
        "BOOL" => fixed(data, |[b]: [u8; 1]| Value::Bool(b != 0))?,
        "UINT8" => fixed(data, |b: [u8; 1]| Value::from(u8::from_le_bytes(b)))?,
        "UINT16" => fixed(data, |b: [u8; 2]| Value::from(u16::from_le_bytes(b)))?,
        "UINT32" => fixed(data, |b: [u8; 4]| Value::from(u32::from_le_bytes(b)))?,
        "UINT64" => fixed(data, |b: [u8; 8]| Value::from(u64::from_le_bytes(b)))?,
        "INT8" => fixed(data, |b: [u8; 1]| Value::from(i8::from_le_bytes(b)))?,
        "INT16" => fixed(data, |b: [u8; 2]| Value::from(i16::from_le_bytes(b)))?,
        "INT32" => fixed(data, |b: [u8; 4]| Value::from(i32::from_le_bytes(b)))?,
        "INT64" => fixed(data, |b: [u8; 8]| Value::from(i64::from_le_bytes(b)))?,
        "FP16" => fixed(data, |b: [u8; 2]| float(fp16_to_f64(u16::from_le_bytes(b))))?,
        "BF16" => fixed(data, |b: [u8; 2]| float(bf16_to_f64(u16::from_le_bytes(b))))?,
        "FP32" => fixed(data, |b: [u8; 4]| float(f64::from(f32::from_le_bytes(b))))?,
        "FP64" => fixed(data, |b: [u8; 8]| float(f64::from_le_bytes(b)))?,
        "BYTES" => byte_strings(data)?,
        other => return Err(format!("datatype {other:?} has no binary form")),
    })
}

/// Elements of `N` bytes each.
fn fixed<const N: usize>(
    data: &[u8],
    element: impl Fn([u8; N]) -> Value,
) -> Result<Vec<Value>, String> {
    let chunks = data.chunks_exact(N);
    if !chunks.remainder().is_empty() {
        return Err(format!(
            "{} bytes are not a whole number of {N}-byte elements",
            data.len()
        ));
    }
    Ok(chunks
        .map(|chunk| {
            let mut bytes = [0; N];
            bytes.copy_from_slice(chunk);
            element(bytes)
        })
        .collect())
}

/// `BYTES` elements: each a 4-byte little-endian length and that many bytes.
fn byte_strings(mut data: &[u8]) -> Result<Vec<Value>, String> {
    let mut values = Vec::new();
    while !data.is_empty() {
        let length = data
            .split_off(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("a BYTES element's length is cut short")?;
        let length = usize::try_from(length).map_err(|_| "a BYTES element is too long")?;
        let element = data
            .split_off(..length)
            .ok_or_else(|| format!("a BYTES element of {length} bytes is cut short"))?;
        values.push(Value::String(bytes_text(element)));
    }
    Ok(values)
}

/// Text as it would be written in JSON; bytes that are not UTF-8 as hex, so two
/// different byte strings never read as the same text.
fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

fn float(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

fn check_shape(shape: Option<&Value>, elements: usize) -> Result<(), String> {
    let Some(dims) = shape.and_then(Value::as_array) else {
        return Ok(());
    };
    let expected = dims
        .iter()
        .map(Value::as_u64)
        .try_fold(1u64, |product, dim| product.checked_mul(dim?));
    match expected {
        Some(n) if n == elements as u64 => Ok(()),
        Some(n) => Err(format!(
            "binary data holds {elements} elements, shape {} has {n}",
            Value::Array(dims.clone())
        )),
        None => Err(format!(
            "shape {} is not a list of sizes",
            Value::Array(dims.clone())
        )),
    }
}

/// IEEE 754 half precision.
fn fp16_to_f64(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        0x1f if fraction == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// bfloat16: the upper half of an `f32`.
fn bf16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

#[cfg(test)]
#[path = "binary_tests.rs"]
mod tests;
