//! A gRPC `ModelInferResponse` read as the JSON answer of the Open Inference
//! Protocol's HTTP form, so that every mode compares gRPC answers by the rules of
//! HTTP ones: `model_name` (1), `model_version` (2), `id` (3), and `outputs` (5),
//! each with `name` (1), `datatype` (2), `shape` (3) and its data, from
//! `contents` (5, typed lists) or from `raw_output_contents` (6, one little-endian
//! buffer per output, in order, decoded as the binary extension's are).
//! `parameters` are left out.

use serde_json::{Map, Value};

use super::binary;
use crate::grpc::frame;
use crate::grpc::wire::{self, Value as Wire, WireError};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrpcAnswerError {
    #[error("no gRPC message: {0}")]
    Frame(String),
    #[error("the message is not a ModelInferResponse: {0}")]
    Wire(#[from] WireError),
    #[error("output {output:?}: {detail}")]
    Output { output: String, detail: String },
    #[error("{raw} raw_output_contents for {outputs} outputs")]
    RawCount { raw: usize, outputs: usize },
}

/// The answer `body` (one length-prefixed `ModelInferResponse`; a compressed one
/// is read as gzip, the one encoding the gateway reads) as OIP JSON.
pub fn document(body: &[u8], limit: usize) -> Result<Value, GrpcAnswerError> {
    let head = frame::head(body, limit)
        .map_err(|e| GrpcAnswerError::Frame(e.to_string()))?
        .ok_or_else(|| {
            GrpcAnswerError::Frame("the body is shorter than a message prefix".into())
        })?;
    let message = body
        .get(frame::PREFIX..frame::PREFIX + head.length)
        .ok_or_else(|| GrpcAnswerError::Frame("the message is cut short".into()))?;
    let message = frame::decoded(head, message, Some("gzip"), limit)
        .map_err(|e| GrpcAnswerError::Frame(e.to_string()))?;
    response(&message)
}

fn response(message: &[u8]) -> Result<Value, GrpcAnswerError> {
    let mut document = Map::new();
    let mut outputs = Vec::new();
    let mut raw = Vec::new();
    for field in wire::fields(message) {
        match field? {
            (1, Wire::Bytes(b)) => text_into(&mut document, "model_name", b),
            (2, Wire::Bytes(b)) => text_into(&mut document, "model_version", b),
            (3, Wire::Bytes(b)) => text_into(&mut document, "id", b),
            (5, Wire::Bytes(b)) => outputs.push(output(b)?),
            (6, Wire::Bytes(b)) => raw.push(b),
            _ => {}
        }
    }
    if !raw.is_empty() {
        if raw.len() != outputs.len() {
            return Err(GrpcAnswerError::RawCount {
                raw: raw.len(),
                outputs: outputs.len(),
            });
        }
        for (output, bytes) in outputs.iter_mut().zip(raw) {
            let name = output
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let datatype = output.get("datatype").and_then(Value::as_str).unwrap_or("");
            let data =
                binary::decode(datatype, bytes).map_err(|detail| GrpcAnswerError::Output {
                    output: name,
                    detail,
                })?;
            output.insert("data".into(), Value::Array(data));
        }
    }
    let outputs = outputs.into_iter().map(Value::Object).collect();
    document.insert("outputs".into(), Value::Array(outputs));
    Ok(Value::Object(document))
}

fn text_into(document: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes).into_owned();
    document.insert(key.into(), Value::String(text));
}

/// `InferOutputTensor`.
fn output(message: &[u8]) -> Result<Map<String, Value>, GrpcAnswerError> {
    let mut output = Map::new();
    let mut shape = Vec::new();
    for field in wire::fields(message) {
        match field? {
            (1, Wire::Bytes(b)) => text_into(&mut output, "name", b),
            (2, Wire::Bytes(b)) => text_into(&mut output, "datatype", b),
            (3, Wire::Varint(dim)) => shape.push(Value::from(dim as i64)),
            (3, Wire::Bytes(packed)) => {
                shape.extend(varints(packed)?.map(|d| Value::from(d as i64)))
            }
            (5, Wire::Bytes(contents)) => {
                output.insert("data".into(), Value::Array(tensor_contents(contents)?));
            }
            _ => {}
        }
    }
    output.insert("shape".into(), Value::Array(shape));
    Ok(output)
}

/// `InferTensorContents`: one of its typed lists, packed or not.
fn tensor_contents(message: &[u8]) -> Result<Vec<Value>, GrpcAnswerError> {
    let mut data = Vec::new();
    for field in wire::fields(message) {
        match field? {
            // bool, int32, int64, uint32, uint64: varints.
            (1, Wire::Varint(v)) => data.push(Value::Bool(v != 0)),
            (1, Wire::Bytes(p)) => data.extend(varints(p)?.map(|v| Value::Bool(v != 0))),
            (2 | 3, Wire::Varint(v)) => data.push(Value::from(v as i64)),
            (2 | 3, Wire::Bytes(p)) => data.extend(varints(p)?.map(|v| Value::from(v as i64))),
            (4 | 5, Wire::Varint(v)) => data.push(Value::from(v)),
            (4 | 5, Wire::Bytes(p)) => data.extend(varints(p)?.map(Value::from)),
            (6, Wire::Fixed32(bits)) => data.push(float(f64::from(f32::from_bits(bits)))),
            (6, Wire::Bytes(p)) => data.extend(fixed(p, "FP32")?),
            (7, Wire::Fixed64(bits)) => data.push(float(f64::from_bits(bits))),
            (7, Wire::Bytes(p)) => data.extend(fixed(p, "FP64")?),
            (8, Wire::Bytes(b)) => {
                data.push(Value::String(String::from_utf8_lossy(b).into_owned()))
            }
            _ => {}
        }
    }
    Ok(data)
}

fn varints(mut packed: &[u8]) -> Result<impl Iterator<Item = u64>, GrpcAnswerError> {
    let mut values = Vec::new();
    while !packed.is_empty() {
        values.push(wire::read_varint(&mut packed)?);
    }
    Ok(values.into_iter())
}

fn fixed(packed: &[u8], datatype: &str) -> Result<Vec<Value>, GrpcAnswerError> {
    binary::decode(datatype, packed).map_err(|detail| GrpcAnswerError::Output {
        output: String::new(),
        detail,
    })
}

fn float(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::grpc::wire::Writer;

    fn output_tensor(
        name: &str,
        datatype: &str,
        shape: &[u64],
        contents: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut writer = Writer::new();
        writer.string(1, name).string(2, datatype);
        for dim in shape {
            writer.varint(3, *dim);
        }
        if let Some(contents) = contents {
            writer.bytes(5, contents);
        }
        writer.finish()
    }

    fn answer(outputs: &[Vec<u8>], raw: &[Vec<u8>]) -> Vec<u8> {
        let mut writer = Writer::new();
        writer.string(1, "adder").string(2, "1").string(3, "r1");
        for output in outputs {
            writer.bytes(5, output);
        }
        for buffer in raw {
            writer.bytes(6, buffer);
        }
        frame::framed(&writer.finish())
    }

    #[test]
    fn raw_output_contents_are_decoded_by_datatype() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let body = answer(&[output_tensor("sum", "FP32", &[1, 2], None)], &[raw]);
        assert_eq!(
            document(&body, 1 << 20).unwrap(),
            json!({"model_name": "adder", "model_version": "1", "id": "r1",
                   "outputs": [{"name": "sum", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}]})
        );
    }

    #[test]
    fn typed_contents_packed_or_not_are_read() {
        let mut packed_fp32 = Writer::new();
        let floats: Vec<u8> = [0.5f32, 0.25]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        packed_fp32.bytes(6, &floats);
        let mut ints = Writer::new();
        ints.varint(3, 7).varint(3, u64::MAX); // int64: 7, -1
        let body = answer(
            &[
                output_tensor("p", "FP32", &[2], Some(&packed_fp32.finish())),
                output_tensor("i", "INT64", &[2], Some(&ints.finish())),
            ],
            &[],
        );
        let document = document(&body, 1 << 20).unwrap();
        assert_eq!(document["outputs"][0]["data"], json!([0.5, 0.25]));
        assert_eq!(document["outputs"][1]["data"], json!([7, -1]));
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(matches!(
            document(b"\0\0", 100),
            Err(GrpcAnswerError::Frame(_))
        ));
        let raw = vec![vec![0u8; 4], vec![0u8; 4]];
        let two_raw_one_output = answer(&[output_tensor("y", "FP32", &[1], None)], &raw);
        assert!(matches!(
            document(&two_raw_one_output, 100),
            Err(GrpcAnswerError::RawCount { .. })
        ));
        let mut truncated = answer(&[output_tensor("y", "FP32", &[1], None)], &[vec![0u8; 4]]);
        truncated.truncate(truncated.len() - 1);
        assert!(document(&truncated, 100).is_err());
    }
}
