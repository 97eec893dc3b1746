//! Comparator tests: each mode's rules, tolerance boundaries, ignored paths, and
//! property tests (identical answers always match; reordered keys never matter).

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::vocab::PathPattern;
use crate::vocab::path::Display;

fn comparator(mode: CompareMode, edit: impl FnOnce(&mut ComparePolicy)) -> Comparator {
    let mut policy = ComparePolicy {
        mode,
        ..ComparePolicy::default()
    };
    edit(&mut policy);
    Comparator::new(&policy)
}

fn pattern(text: &str) -> PathPattern {
    PathPattern::parse(text).unwrap()
}

fn verdict(c: &Comparator, a: &Value, b: &Value) -> Verdict {
    let (a, b) = (a.to_string(), b.to_string());
    c.compare(
        Answer::plain(200, a.as_bytes()),
        Answer::plain(200, b.as_bytes()),
    )
}

fn paths(v: &Verdict) -> Vec<String> {
    v.differences
        .iter()
        .map(|d| Display(&d.path).to_string())
        .collect()
}

#[test]
fn json_reports_missing_extra_type_and_length_changes_by_path() {
    let c = comparator(CompareMode::Json, |_| {});
    let a = json!({ "predictions": [0.5, 0.25], "label": "fraud", "meta": { "a": 1 } });
    let b = json!({ "predictions": [0.5, 0.25, 0.1], "label": 1, "meta": { "b": 1 } });
    let v = verdict(&c, &a, &b);
    assert!(!v.matched);
    assert_eq!(paths(&v), ["label", "meta.a", "meta.b", "predictions"]);
    assert_eq!(v.differences[0].detail, "type changed: string vs number");
    assert_eq!(v.differences[1].detail, "missing in the shadow answer");
    assert_eq!(v.differences[2].detail, "extra in the shadow answer");
    assert_eq!(v.differences[3].detail, "array length 2 vs 3");
}

#[test]
fn tolerance_boundaries() {
    let abs = comparator(CompareMode::Json, |p| {
        p.abs_tol = 0.01;
        p.rel_tol = 0.0;
    });
    assert!(verdict(&abs, &json!([1.0]), &json!([1.01])).matched);
    assert!(!verdict(&abs, &json!([1.0]), &json!([1.0101])).matched);
    let rel = comparator(CompareMode::Json, |p| {
        p.abs_tol = 0.0;
        p.rel_tol = 0.1;
    });
    assert!(verdict(&rel, &json!([100.0]), &json!([110.0])).matched);
    // Relative to the larger magnitude: 11 of 111 is within 10%, 12 of 112 is not.
    assert!(verdict(&rel, &json!([100.0]), &json!([111.0])).matched);
    assert!(!verdict(&rel, &json!([100.0]), &json!([112.0])).matched);
    assert!(
        verdict(&rel, &json!([0]), &json!([0.0])).matched,
        "integers and floats compare as numbers"
    );
}

#[test]
fn ignored_paths_and_their_children_are_skipped() {
    let c = comparator(CompareMode::Json, |p| {
        p.ignore = vec![pattern("id"), pattern("outputs[*].parameters")]
    });
    let a = json!({ "id": "a", "outputs": [{ "data": [1], "parameters": { "ts": 1 } }] });
    let b = json!({ "id": "b", "outputs": [{ "data": [1], "parameters": { "ts": 2, "x": 0 } }] });
    assert!(verdict(&c, &a, &b).matched);
    let missing_ignored = json!({ "outputs": [{ "data": [1] }] });
    assert!(verdict(&c, &a, &missing_ignored).matched);
}

#[test]
fn integers_are_compared_exactly() {
    let c = comparator(CompareMode::Json, |p| p.rel_tol = 0.01);
    assert!(!verdict(&c, &json!({ "class": 1000 }), &json!({ "class": 1001 })).matched);
    assert!(
        !verdict(
            &c,
            &json!([9007199254740993u64]),
            &json!([9007199254740992u64])
        )
        .matched
    );
    assert!(
        verdict(&c, &json!([1000.0]), &json!([1001.0])).matched,
        "floats keep their tolerance"
    );
}

#[test]
fn oip_mode_compares_answers_without_outputs_as_json() {
    let c = comparator(CompareMode::Oip, |_| {});
    assert!(
        !verdict(
            &c,
            &json!({ "error": "no model" }),
            &json!({ "error": "no model", "x": null })
        )
        .matched
    );
    let same_metadata = verdict(
        &c,
        &json!({ "name": "m", "ready": true }),
        &json!({ "ready": true, "name": "m" }),
    );
    assert!(same_metadata.matched, "{same_metadata:?}");
}

#[test]
fn status_codes_are_always_compared() {
    let c = comparator(CompareMode::Json, |_| {});
    let v = c.compare(Answer::plain(200, b"{}"), Answer::plain(500, b"{}"));
    assert!(!v.matched);
    assert_eq!(v.differences[0].detail, "status 200 vs 500");
    let status_only = comparator(CompareMode::Status, |_| {});
    assert!(
        status_only
            .compare(Answer::plain(200, b"a"), Answer::plain(200, b"b"))
            .matched
    );
}

#[test]
fn non_json_bodies_fall_back_to_bytes() {
    let c = comparator(CompareMode::Json, |_| {});
    assert!(
        c.compare(Answer::plain(200, b"ok"), Answer::plain(200, b"ok"))
            .matched
    );
    let v = c.compare(Answer::plain(200, b"ok"), Answer::plain(200, b"no"));
    assert_eq!(paths(&v), ["$body"]);
    let bytes = comparator(CompareMode::Bytes, |_| {});
    assert!(
        !bytes
            .compare(
                Answer::plain(200, b"{\"a\":1}"),
                Answer::plain(200, b"{\"a\": 1}")
            )
            .matched
    );
}

fn oip(outputs: Value) -> Value {
    json!({ "model_name": "m", "model_version": "2", "id": "r1", "outputs": outputs })
}

#[test]
fn oip_matches_outputs_by_name_and_checks_shape_datatype_and_data() {
    let c = comparator(CompareMode::Oip, |p| p.rel_tol = 0.01);
    let base = oip(json!([
        { "name": "score", "shape": [2], "datatype": "FP32", "data": [0.5, 0.25] },
        { "name": "label", "shape": [2], "datatype": "BYTES", "data": ["a", "b"] },
    ]));
    let reordered = json!({ "outputs": [
        { "name": "label", "shape": [2], "datatype": "BYTES", "data": ["a", "b"] },
        { "name": "score", "shape": [2], "datatype": "FP32", "data": [0.501, 0.25] },
    ], "model_version": "3" });
    assert!(
        verdict(&c, &base, &reordered).matched,
        "{:?}",
        verdict(&c, &base, &reordered)
    );

    let changed = oip(json!([
        { "name": "score", "shape": [1, 2], "datatype": "FP64", "data": [[0.5, 0.3]] },
        { "name": "extra", "shape": [1], "datatype": "FP32", "data": [1] },
    ]));
    let v = verdict(&c, &base, &changed);
    assert_eq!(
        paths(&v),
        [
            "outputs.score.shape",
            "outputs.score.datatype",
            "outputs.score.data[1]",
            "outputs.label",
            "outputs.extra"
        ]
    );
    let not_oip = verdict(&c, &base, &json!({ "predictions": [1] }));
    assert!(
        not_oip.differences[0]
            .detail
            .contains("no Open Inference Protocol")
    );
}

#[test]
fn labels_count_agreement_per_item_with_argmax_of_scores() {
    let c = comparator(CompareMode::Label, |p| {
        p.label_path = pattern("predictions[*]")
    });
    let a = json!({ "predictions": ["cat", "dog", "cat", [0.1, 0.9], [0.7, 0.3]] });
    let b = json!({ "predictions": ["cat", "cat", "cat", [0.2, 0.8], [0.4, 0.6]] });
    let v = verdict(&c, &a, &b);
    assert_eq!(v.labels, Some((3, 5)));
    assert!(!v.matched);
    assert_eq!(paths(&v), ["predictions[1]", "predictions[4]"]);
    assert_eq!(v.differences[1].detail, "label argmax 0 vs argmax 1");

    let shorter = verdict(&c, &a, &json!({ "predictions": ["cat"] }));
    assert_eq!(shorter.labels, Some((1, 5)));
    // Answers with no labels on either side (errors, metadata) fall back to a JSON
    // diff and stay out of the label agreement.
    let nothing = verdict(&c, &json!({ "error": "x" }), &json!({ "error": "x" }));
    assert!(nothing.matched);
    assert_eq!(nothing.labels, Some((0, 0)));
    let other_error = verdict(&c, &json!({ "error": "x" }), &json!({ "error": "y" }));
    assert_eq!(
        (other_error.matched, other_error.labels),
        (false, Some((0, 0)))
    );
}

#[test]
fn differences_are_capped_but_counted() {
    let c = comparator(CompareMode::Json, |_| {});
    let a = Value::Array((0..100).map(|i| json!(i)).collect());
    let b = Value::Array((0..100).map(|i| json!(i + 1000)).collect());
    let v = verdict(&c, &a, &b);
    assert_eq!(
        (v.differences.len(), v.difference_count),
        (MAX_DIFFERENCES, 100)
    );
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        any::<i32>().prop_map(|i| json!(i)),
        "[a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn reversed_keys(value: &Value) -> String {
    // serde_json sorts keys, so write objects by hand in reverse order.
    match value {
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), reversed_keys(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(reversed_keys)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

proptest! {
    #[test]
    fn identical_answers_always_match_in_every_mode(value in arb_json()) {
        let body = value.to_string();
        for mode in [CompareMode::Json, CompareMode::Oip, CompareMode::Label, CompareMode::Status, CompareMode::Bytes] {
            let c = comparator(mode, |_| {});
            let v = c.compare(Answer::plain(200, body.as_bytes()), Answer::plain(200, body.as_bytes()));
            prop_assert!(v.matched, "{mode}: {v:?}");
        }
    }

    #[test]
    fn key_order_never_matters(value in arb_json()) {
        let c = comparator(CompareMode::Json, |_| {});
        let (a, b) = (value.to_string(), reversed_keys(&value));
        let v = c.compare(Answer::plain(200, a.as_bytes()), Answer::plain(200, b.as_bytes()));
        prop_assert!(v.matched, "{v:?}");
    }

    #[test]
    fn numbers_within_tolerance_match_and_beyond_it_do_not(x in -1e6f64..1e6, bump in 0.0f64..2.0) {
        let c = comparator(CompareMode::Json, |p| { p.abs_tol = 0.5; p.rel_tol = 0.0; });
        let v = verdict(&c, &json!({ "y": x }), &json!({ "y": x + bump }));
        let diff = (x - (x + bump)).abs();
        prop_assert_eq!(v.matched, diff <= 0.5 + 4.0 * f64::EPSILON * x.abs().max((x + bump).abs()));
    }

    #[test]
    fn oip_data_changes_beyond_tolerance_are_found(data in prop::collection::vec(-100.0f64..100.0, 1..20), index in 0usize..20) {
        let c = comparator(CompareMode::Oip, |p| { p.abs_tol = 1e-6; p.rel_tol = 1e-6; });
        let index = index % data.len();
        let mut changed = data.clone();
        changed[index] += 1.0;
        let answer = |d: &Vec<f64>| oip(json!([{ "name": "y", "shape": [d.len()], "datatype": "FP64", "data": d }]));
        prop_assert!(verdict(&c, &answer(&data), &answer(&data)).matched);
        let v = verdict(&c, &answer(&data), &answer(&changed));
        prop_assert_eq!(paths(&v), vec![format!("outputs.y.data[{index}]")]);
    }

    #[test]
    fn label_agreement_counts_equal_positions(labels in prop::collection::vec(0u8..3, 1..30), flips in prop::collection::vec(any::<bool>(), 30)) {
        let c = comparator(CompareMode::Label, |p| p.label_path = pattern("predictions[*]"));
        let other: Vec<u8> = labels.iter().zip(&flips).map(|(l, f)| if *f { (l + 1) % 3 } else { *l }).collect();
        let v = verdict(&c, &json!({ "predictions": labels }), &json!({ "predictions": other }));
        let expected = labels.iter().zip(&other).filter(|(a, b)| a == b).count() as u64;
        prop_assert_eq!(v.labels, Some((expected, labels.len() as u64)));
        prop_assert_eq!(v.matched, expected == labels.len() as u64);
    }
}

/// An answer in the binary data extension: FP32 output `sum` with `values`.
fn binary_answer(model_version: &str, values: &[f32]) -> (Vec<u8>, String) {
    let data: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
    let header = json!({"id": "1", "model_name": "adder", "model_version": model_version,
        "outputs": [{"name": "sum", "datatype": "FP32", "shape": [1, values.len()],
                     "parameters": {"binary_data_size": data.len()}}]});
    let mut body = serde_json::to_vec(&header).unwrap();
    let length = body.len().to_string();
    body.extend_from_slice(&data);
    (body, length)
}

fn binary<'a>(answer: &'a (Vec<u8>, String)) -> Answer<'a> {
    Answer {
        status: 200,
        body: &answer.0,
        binary_header: Some(answer.1.as_bytes()),
        grpc: false,
    }
}

#[test]
fn binary_tensors_compare_as_tensors_not_bytes() {
    let c = comparator(CompareMode::Oip, |_| {});
    let production = binary_answer("1", &[1.5, 2.5, 3.0]);
    let same = binary_answer("2", &[1.5, 2.5, 3.0]);
    let v = c.compare(binary(&production), binary(&same));
    assert!(v.matched, "same tensors, other model_version: {v:?}");

    let drifted = binary_answer("2", &[1.5, 2.5, 3.5]);
    let v = c.compare(binary(&production), binary(&drifted));
    assert!(!v.matched);
    assert_eq!(paths(&v), ["outputs.sum.data[2]"]);
}

#[test]
fn a_binary_answer_compares_with_a_json_one() {
    let c = comparator(CompareMode::Oip, |_| {});
    let production = binary_answer("1", &[1.5, 2.5]);
    let json_answer = oip(json!([{"name": "sum", "datatype": "FP32", "shape": [1, 2],
                                  "data": [1.5, 2.5]}]))
    .to_string();
    let v = c.compare(
        binary(&production),
        Answer::plain(200, json_answer.as_bytes()),
    );
    assert!(v.matched, "{v:?}");
}

#[test]
fn json_mode_reads_binary_answers_and_ignores_by_its_rules() {
    let production = binary_answer("1", &[1.0]);
    let candidate = binary_answer("2", &[1.0]);
    let strict = comparator(CompareMode::Json, |_| {});
    let v = strict.compare(binary(&production), binary(&candidate));
    assert_eq!(paths(&v), ["model_version"]);
    let ignoring = comparator(CompareMode::Json, |p| {
        p.ignore = vec![pattern("model_version")]
    });
    let v = ignoring.compare(binary(&production), binary(&candidate));
    assert!(v.matched, "{v:?}");
}

#[test]
fn a_malformed_binary_answer_is_a_difference_on_its_side() {
    let c = comparator(CompareMode::Oip, |_| {});
    let production = binary_answer("1", &[1.0]);
    let mut cut = binary_answer("1", &[1.0]);
    cut.0.truncate(cut.0.len() - 2);
    let v = c.compare(binary(&production), binary(&cut));
    assert!(!v.matched);
    assert_eq!(paths(&v), ["$body"]);
    assert!(v.differences[0].detail.starts_with("shadow: "), "{v:?}");
}

#[test]
fn grpc_answers_compare_as_tensors_and_trailers_only_errors_by_status() {
    use crate::grpc::frame::framed;
    use crate::grpc::wire::Writer;
    let answer = |version: &str, value: f32| {
        let output = Writer::new()
            .string(1, "sum")
            .string(2, "FP32")
            .varint(3, 1)
            .finish();
        let message = Writer::new()
            .string(2, version)
            .bytes(5, &output)
            .bytes(6, &value.to_le_bytes())
            .finish();
        framed(&message)
    };
    let c = comparator(CompareMode::Oip, |_| {});
    let (production, same, drifted) = (answer("1", 1.5), answer("2", 1.5), answer("2", 2.5));
    assert!(
        c.compare(Answer::grpc(200, &production), Answer::grpc(200, &same))
            .matched
    );
    let v = c.compare(Answer::grpc(200, &production), Answer::grpc(200, &drifted));
    assert_eq!(paths(&v), ["outputs.sum.data[0]"]);
    // Trailers-only errors have no message; their statuses decide.
    assert!(
        c.compare(Answer::grpc(400, b""), Answer::grpc(400, b""))
            .matched
    );
    let v = c.compare(Answer::grpc(400, b""), Answer::grpc(500, b""));
    assert_eq!(paths(&v), ["$status"]);
}
