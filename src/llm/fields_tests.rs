use super::*;
use crate::llm::rewrite::{Rewrite, rewrite};
use proptest::prelude::*;
use serde_json::{Value, json};

fn fields(body: &str) -> Fields {
    scan(body.as_bytes()).unwrap()
}

#[test]
fn the_model_is_found_wherever_it_is_and_nested_models_are_not_it() {
    let body = r#"{"messages":[{"role":"user","content":"say \"model\": {x}","model":"no"}],
                   "model" : "chat@7", "temperature": 0.5e-1, "n": null, "stop": ["}"]}"#;
    let f = fields(body);
    assert_eq!(f.model.get(body.as_bytes()), "chat@7");
    assert_eq!(&body[f.model_span.clone()], "\"chat@7\"");
    assert!(!f.stream);
    assert_eq!(f.user, None);
}

#[test]
fn user_stream_and_stream_options_are_read() {
    let body = r#"{"model":"m","user":"al\u0069ce","stream":true,"stream_options":{"include_usage":false}}"#;
    let f = fields(body);
    assert_eq!(
        f.user.as_ref().map(|u| u.get(body.as_bytes())),
        Some("alice")
    );
    assert!(f.stream);
    let options = f.stream_options.clone().unwrap();
    assert_eq!(&body[options.clone()], r#"{"include_usage":false}"#);
    assert!(!asks_for_usage(body.as_bytes(), &options));
}

#[test]
fn escaped_keys_are_the_keys_they_spell() {
    let body = r#"{"mod\u0065l":"m"}"#;
    assert_eq!(fields(body).model.get(body.as_bytes()), "m");
}

#[test]
fn refusals_name_the_field() {
    let cases = [
        (r#"{"messages":[]}"#, FieldError::MissingModel),
        (r#"{"model":7}"#, FieldError::NotAString("model")),
        (
            r#"{"model":"a","model":"b"}"#,
            FieldError::Duplicate("model"),
        ),
        (
            r#"{"model":"a","stream":"yes"}"#,
            FieldError::NotABool("stream"),
        ),
        (
            r#"{"model":"a","stream_options":true}"#,
            FieldError::NotAnObjectField("stream_options"),
        ),
        (r#"{"model":"a","user":{}}"#, FieldError::NotAString("user")),
    ];
    for (body, expected) in cases {
        assert_eq!(scan(body.as_bytes()).unwrap_err(), expected, "{body}");
    }
    assert_eq!(FieldError::MissingModel.field(), Some("model"));
}

#[test]
fn what_is_not_one_json_object_is_refused() {
    for body in [
        "",
        "[]",
        "model=chat",
        r#"{"model":"a""#,
        r#"{"model":"a",}"#,
        r#"{"model":"a"} {}"#,
        r#"{"model":"a","x":[1,2}"#,
        r#"{"model":"a","x":tru}"#,
        r#"{"model":"a\"}"#,
        r#"{"model" "a"}"#,
        r#"{"x":0"model","model":"a"}"#,
        "{\"model\":\"a\tb\"}",
    ] {
        assert!(scan(body.as_bytes()).is_err(), "{body:?} was accepted");
    }
}

#[test]
fn the_model_is_rewritten_and_nothing_else_changes() {
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"model":"chat","stream":false}"#;
    let f = fields(body);
    let (out, usage) = rewrite(
        body.as_bytes(),
        &f,
        Rewrite {
            model: Some("meta-llama/Llama-3.1-8B \"Instruct\""),
            request_usage: true,
        },
    )
    .unwrap();
    assert!(!usage, "a request that does not stream gets no usage event");
    let mut expected: Value = serde_json::from_str(body).unwrap();
    expected["model"] = json!("meta-llama/Llama-3.1-8B \"Instruct\"");
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), expected);
    let same = Rewrite {
        model: Some("chat"),
        request_usage: false,
    };
    assert!(rewrite(body.as_bytes(), &f, same).is_none());
}

#[test]
fn a_streamed_request_is_asked_for_usage_once() {
    let ask = Rewrite {
        model: Some("served"),
        request_usage: true,
    };
    for (body, added) in [
        (r#"{"model":"chat","stream":true}"#, true),
        (
            r#"{"model":"chat","stream":true,"stream_options":{}}"#,
            true,
        ),
        (
            r#"{"model":"chat","stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
            true,
        ),
        (
            r#"{"model":"chat","stream":true,"stream_options":{"include_usage":true}}"#,
            false,
        ),
    ] {
        let (out, usage_added) = rewrite(body.as_bytes(), &fields(body), ask).unwrap();
        assert_eq!(usage_added, added, "{body}");
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["model"], "served");
        assert_eq!(out["stream_options"]["include_usage"], true, "{body}");
        assert_eq!(out["stream"], true);
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        // Eighths: exact in binary, so a parse and a print give them back.
        (-8000i32..8000).prop_map(|n| json!(f64::from(n) / 8.0)),
        "[ -~\\\\\"{}\\[\\]é😀]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"{}]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn the_fields_are_what_a_json_parser_reads(
        others in prop::collection::btree_map("[a-z_]{1,8}", arb_value(), 0..6),
        model in "[ -~é]{0,20}",
        user in proptest::option::of("[ -~]{0,10}"),
        stream in proptest::option::of(any::<bool>()),
        pretty: bool,
    ) {
        let mut object = serde_json::Map::new();
        for (key, value) in others {
            if !matches!(key.as_str(), "model" | "user" | "stream" | "stream_options") {
                object.insert(key, value);
            }
        }
        object.insert("model".into(), json!(model));
        if let Some(user) = &user { object.insert("user".into(), json!(user)); }
        if let Some(stream) = stream { object.insert("stream".into(), json!(stream)); }
        let value = Value::Object(object);
        let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
        let f = scan(text.as_bytes()).unwrap();
        prop_assert_eq!(f.model.get(text.as_bytes()), model.as_str());
        prop_assert_eq!(f.user.as_ref().map(|u| u.get(text.as_bytes())), user.as_deref());
        prop_assert_eq!(f.stream, stream.unwrap_or(false));
        let (out, _) = rewrite(text.as_bytes(), &f, Rewrite { model: Some("x@y"), request_usage: false })
            .unwrap_or((bytes::Bytes::from(text.clone()), false));
        let mut expected = value.clone();
        expected["model"] = json!("x@y");
        prop_assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), expected);
    }

    #[test]
    fn any_bytes_are_scanned_without_panicking(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = scan(&body);
    }
}

#[test]
fn unreadable_stream_options_are_left_alone_never_doubled() {
    let body =
        r#"{"model":"chat","stream":true,"stream_options":{"include_usage":true,"x":1e400}}"#;
    let ask = Rewrite {
        model: Some("served"),
        request_usage: true,
    };
    let (out, usage_added) = rewrite(body.as_bytes(), &fields(body), ask).unwrap();
    assert!(!usage_added);
    let out = String::from_utf8(out.to_vec()).unwrap();
    assert_eq!(out.matches("stream_options").count(), 1, "{out}");
    assert_eq!(out, body.replace("\"chat\"", "\"served\""));
}
