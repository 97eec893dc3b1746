use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// A binary answer: the JSON header, then `data`; and its header length.
fn answer(header: &Value, data: &[u8]) -> (Vec<u8>, String) {
    let mut body = serde_json::to_vec(header).unwrap();
    let length = body.len().to_string();
    body.extend_from_slice(data);
    (body, length)
}

fn output(name: &str, datatype: &str, shape: &[u64], size: usize) -> Value {
    json!({"name": name, "datatype": datatype, "shape": shape,
           "parameters": {"binary_data_size": size}})
}

fn inlined(header: &Value, data: &[u8]) -> Result<Value, BinaryError> {
    let (body, length) = answer(header, data);
    inline(&body, length.as_bytes())
}

#[test]
fn fp32_outputs_are_decoded_into_data_and_the_size_parameter_removed() {
    let data: Vec<u8> = [1.5f32, 2.5, 3.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    let header = json!({"model_name": "adder", "model_version": "1",
                        "outputs": [output("sum", "FP32", &[1, 3], 12)]});
    let document = inlined(&header, &data).unwrap();
    assert_eq!(
        document["outputs"][0],
        json!({"name": "sum", "datatype": "FP32", "shape": [1, 3], "data": [1.5, 2.5, 3.0]})
    );
    assert_eq!(document["model_version"], "1");
}

#[test]
fn every_datatype_decodes() {
    let cases: Vec<(&str, Vec<u8>, Value)> = vec![
        ("BOOL", vec![1, 0], json!([true, false])),
        ("UINT8", vec![255], json!([255])),
        ("UINT16", 65535u16.to_le_bytes().to_vec(), json!([65535])),
        ("UINT32", 7u32.to_le_bytes().to_vec(), json!([7])),
        ("UINT64", u64::MAX.to_le_bytes().to_vec(), json!([u64::MAX])),
        ("INT8", (-3i8).to_le_bytes().to_vec(), json!([-3])),
        ("INT16", (-300i16).to_le_bytes().to_vec(), json!([-300])),
        ("INT32", (-70000i32).to_le_bytes().to_vec(), json!([-70000])),
        ("INT64", i64::MIN.to_le_bytes().to_vec(), json!([i64::MIN])),
        // 1.0, -2.0 and the smallest subnormal in half precision.
        (
            "FP16",
            vec![0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00],
            json!([1.0, -2.0, 2f64.powi(-24)]),
        ),
        ("BF16", vec![0x80, 0x3f, 0x40, 0xc0], json!([1.0, -3.0])),
        ("FP64", 0.1f64.to_le_bytes().to_vec(), json!([0.1])),
    ];
    for (datatype, data, expected) in cases {
        let count = expected.as_array().unwrap().len() as u64;
        let header = json!({"outputs": [output("y", datatype, &[count], data.len())]});
        let document = inlined(&header, &data).unwrap_or_else(|e| panic!("{datatype}: {e}"));
        assert_eq!(document["outputs"][0]["data"], expected, "{datatype}");
    }
}

#[test]
fn bytes_elements_are_length_prefixed_and_non_utf8_shown_as_hex() {
    let mut data = Vec::new();
    for element in [&b"cat"[..], &[0xff, 0x00][..]] {
        data.extend_from_slice(&(element.len() as u32).to_le_bytes());
        data.extend_from_slice(element);
    }
    let header = json!({"outputs": [output("label", "BYTES", &[2], data.len())]});
    let document = inlined(&header, &data).unwrap();
    assert_eq!(document["outputs"][0]["data"], json!(["cat", "0xff00"]));
}

#[test]
fn json_outputs_beside_binary_ones_are_left_alone_and_bytes_go_in_order() {
    let header = json!({"outputs": [
        output("a", "INT32", &[1], 4),
        {"name": "b", "datatype": "INT32", "shape": [1], "data": [9]},
        output("c", "INT32", &[1], 4),
    ]});
    let data: Vec<u8> = [1i32, 2].iter().flat_map(|i| i.to_le_bytes()).collect();
    let document = inlined(&header, &data).unwrap();
    let datas: Vec<&Value> = (0..3).map(|i| &document["outputs"][i]["data"]).collect();
    assert_eq!(datas, [&json!([1]), &json!([9]), &json!([2])]);
}

#[test]
fn malformed_answers_are_errors() {
    let fp32 = |size| json!({"outputs": [output("y", "FP32", &[2], size)]});
    let eight = [0u8; 8];
    assert!(matches!(
        inlined(&fp32(12), &eight),
        Err(BinaryError::Truncated {
            size: 12,
            left: 8,
            ..
        })
    ));
    let one = json!({"outputs": [output("y", "FP32", &[1], 4)]});
    assert_eq!(inlined(&one, &eight), Err(BinaryError::Trailing(4)));
    assert!(
        matches!(inlined(&fp32(6), &[0; 6]), Err(BinaryError::Output { .. })),
        "not whole elements"
    );
    let wrong_shape = json!({"outputs": [output("y", "FP32", &[3], 8)]});
    assert!(matches!(
        inlined(&wrong_shape, &eight),
        Err(BinaryError::Output { .. })
    ));
    let unknown = json!({"outputs": [output("y", "COMPLEX", &[1], 8)]});
    assert!(matches!(
        inlined(&unknown, &eight),
        Err(BinaryError::Output { .. })
    ));

    let (body, _) = answer(&fp32(8), &eight);
    assert!(matches!(
        inline(&body, b"100000"),
        Err(BinaryError::HeaderBeyondBody { .. })
    ));
    assert!(matches!(
        inline(&body, b"ten"),
        Err(BinaryError::BadLength(_))
    ));
    assert!(matches!(inline(&body, b"3"), Err(BinaryError::NotJson(_))));

    let mut cut_bytes = 5u32.to_le_bytes().to_vec();
    cut_bytes.extend_from_slice(b"ab");
    let bytes = json!({"outputs": [output("s", "BYTES", &[1], cut_bytes.len())]});
    assert!(matches!(
        inlined(&bytes, &cut_bytes),
        Err(BinaryError::Output { .. })
    ));
}

proptest! {
    /// Whatever the bytes and the header length say, decoding returns, never
    /// panics.
    #[test]
    fn any_body_and_length_decode_or_fail_cleanly(
        header in prop::sample::select(vec![
            json!({"outputs": [output("y", "FP32", &[2], 8)]}),
            json!({"outputs": [output("y", "BYTES", &[1], 6), output("z", "FP16", &[1], 2)]}),
            json!({"outputs": [output("y", "INT64", &[1], 1 << 40)]}),
        ]),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        length_delta in -8i64..8,
    ) {
        let (body, length) = answer(&header, &tail);
        let length = (length.parse::<i64>().unwrap() + length_delta).max(0).to_string();
        let _ = inline(&body, length.as_bytes());
    }

    /// FP32 tensors come back as written.
    #[test]
    fn fp32_round_trips(values in prop::collection::vec(-1e30f32..1e30, 0..32)) {
        let data: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
        let header = json!({"outputs": [output("y", "FP32", &[values.len() as u64], data.len())]});
        let document = inlined(&header, &data).unwrap();
        let decoded: Vec<f32> = document["outputs"][0]["data"]
            .as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        prop_assert_eq!(decoded, values);
    }
}
