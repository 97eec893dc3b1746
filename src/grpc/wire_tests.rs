use proptest::prelude::*;

use super::*;

/// `ModelInferRequest`: model_name = 1, model_version = 2, id = 3,
/// raw_input_contents = 7 (repeated bytes).
fn request(fields: &[(u64, &[u8])]) -> Vec<u8> {
    let mut writer = Writer::new();
    for (number, value) in fields {
        writer.bytes(*number, value);
    }
    writer.finish()
}

#[test]
fn the_model_name_is_read_in_any_field_order_past_unknown_fields() {
    let message = request(&[(3, b"req-1"), (2, b"7"), (99, b"unknown"), (1, b"adder")]);
    assert_eq!(last_string(&message, 1), Ok(Some("adder")));
    assert_eq!(last_string(&message, 2), Ok(Some("7")));
    assert_eq!(last_string(&message, 4), Ok(None));
}

#[test]
fn a_repeated_string_field_reads_as_its_last_value() {
    let message = request(&[(1, b"first"), (1, b"second")]);
    assert_eq!(last_string(&message, 1), Ok(Some("second")));
}

#[test]
fn varints_fixed_fields_and_ten_megabytes_of_tensor_data_are_skipped() {
    let tensor = vec![7u8; 10 * 1024 * 1024];
    let mut writer = Writer::new();
    writer.varint(8, 300).bytes(7, &tensor).string(1, "big");
    let mut message = writer.finish();
    // A fixed64 (field 9) and a fixed32 (field 10) at the end.
    message.extend_from_slice(&[
        (9 << 3) | 1,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        (10 << 3) | 5,
        1,
        2,
        3,
        4,
    ]);
    assert_eq!(last_string(&message, 1), Ok(Some("big")));
    let kinds: Vec<u64> = fields(&message).map(|f| f.unwrap().0).collect();
    assert_eq!(kinds, [8, 7, 1, 9, 10]);
}

#[test]
fn malformed_messages_are_errors() {
    // A varint that never ends.
    assert_eq!(
        last_string(&[0x0a, 0xff, 0xff, 0xff], 1),
        Err(WireError::Truncated)
    );
    let endless: Vec<u8> = [0x10].into_iter().chain([0x80; 11]).collect();
    assert_eq!(last_string(&endless, 1), Err(WireError::VarintTooLong));
    // A length past the end.
    assert_eq!(
        last_string(&[0x0a, 0x05, b'a'], 1),
        Err(WireError::Truncated)
    );
    // Field number 0, and a group (wire type 3).
    assert_eq!(last_string(&[0x02, 0x00], 1), Err(WireError::FieldZero));
    assert!(matches!(
        last_string(&[0x0b], 1),
        Err(WireError::UnsupportedWireType {
            field: 1,
            wire_type: 3
        })
    ));
    // The model name as a number, and as bytes that are not text.
    assert!(matches!(
        last_string(&[0x08, 0x01], 1),
        Err(WireError::WrongType { field: 1, .. })
    ));
    assert_eq!(
        last_string(&[0x0a, 0x01, 0xff], 1),
        Err(WireError::NotText { field: 1 })
    );
}

#[test]
fn varints_round_trip_at_their_boundaries() {
    for value in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let message = Writer::new().varint(5, value).finish();
        assert_eq!(
            fields(&message).next(),
            Some(Ok((5, Value::Varint(value)))),
            "{value}"
        );
    }
}

#[test]
fn a_string_field_is_replaced_and_the_rest_kept() {
    let message = request(&[(1, b"adder"), (2, b"1"), (7, b"tensor"), (2, b"1")]);
    let repinned = with_string(&message, 2, "3").unwrap();
    assert_eq!(last_string(&repinned, 2), Ok(Some("3")));
    assert_eq!(last_string(&repinned, 1), Ok(Some("adder")));
    let kinds: Vec<u64> = fields(&repinned).map(|f| f.unwrap().0).collect();
    assert_eq!(kinds, [1, 7, 2]);
}

proptest! {
    /// Any bytes: reading returns a value or an error, never panics or loops.
    #[test]
    fn arbitrary_bytes_never_panic(message in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = last_string(&message, 1);
        prop_assert!(fields(&message).count() <= message.len());
    }

    /// Whatever else a request holds, and in whatever order, its model name is
    /// the last field 1 written.
    #[test]
    fn the_model_name_survives_any_other_fields(
        name in "[a-z0-9_-]{1,20}",
        others in prop::collection::vec((2u64..50, prop::collection::vec(any::<u8>(), 0..40)), 0..8),
        at in any::<prop::sample::Index>(),
    ) {
        let mut fields_in_order: Vec<(u64, Vec<u8>)> = others;
        let position = at.index(fields_in_order.len() + 1);
        fields_in_order.insert(position, (1, name.clone().into_bytes()));
        let borrowed: Vec<(u64, &[u8])> = fields_in_order.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let message = request(&borrowed);
        prop_assert_eq!(last_string(&message, 1), Ok(Some(name.as_str())));
    }
}
