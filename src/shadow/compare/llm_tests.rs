use super::*;
use crate::shadow::compare::{Answer, Comparator, Verdict};
use crate::vocab::policy::{CompareMode, ComparePolicy};
use proptest::prelude::*;
use serde_json::{Value, json};

fn comparator(llm: LlmCompare) -> Comparator {
    Comparator::new(&ComparePolicy {
        mode: CompareMode::Llm,
        llm,
        ..ComparePolicy::default()
    })
}

fn verdict(llm: LlmCompare, a: &str, b: &str) -> Verdict {
    comparator(llm).compare(
        Answer::plain(200, a.as_bytes()),
        Answer::plain(200, b.as_bytes()),
    )
}

fn chat(text: &str, finish: &str) -> String {
    json!({ "choices": [{ "message": { "content": text }, "finish_reason": finish }],
            "usage": { "prompt_tokens": 1, "completion_tokens": text.split_whitespace().count() } })
    .to_string()
}

/// The same answer streamed: one event per word.
fn streamed(text: &str, finish: &str) -> String {
    let mut body = String::new();
    for (k, word) in text.split_whitespace().enumerate() {
        let piece = if k == 0 {
            word.to_string()
        } else {
            format!(" {word}")
        };
        let event = json!({ "choices": [{ "delta": { "content": piece } }] });
        body.push_str(&format!("data: {event}\n\n"));
    }
    let last = json!({ "choices": [{ "delta": {}, "finish_reason": finish }] });
    body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    body
}

fn paths(verdict: &Verdict) -> Vec<String> {
    verdict
        .differences
        .iter()
        .map(|d| crate::vocab::path::Display(&d.path).to_string())
        .collect()
}

#[test]
fn a_streamed_answer_agrees_with_the_same_answer_whole() {
    let text = "Paris is the capital of France.";
    let v = verdict(
        LlmCompare::default(),
        &chat(text, "stop"),
        &streamed(text, "stop"),
    );
    assert!(v.matched, "{:?}", v.differences);
    assert_eq!(v.llm.unwrap().similarity, Some(1.0));
    assert_eq!(v.llm.unwrap().primary_tokens, Some(6));
}

#[test]
fn a_few_words_differ_within_similarity_but_not_exactly() {
    let tail = "and mirrors a copy of production traffic to the staging versions for comparison";
    let a =
        format!("Stagegate routes each request by the stage of the model version behind it {tail}");
    let b = format!(
        "Stagegate sends every request by the stage of the model version serving it {tail}"
    );
    let (a, b) = (a.as_str(), b.as_str());
    let similar = verdict(LlmCompare::default(), &chat(a, "stop"), &chat(b, "stop"));
    assert!(similar.matched, "{:?}", similar.differences);
    let similarity = similar.llm.unwrap().similarity.unwrap();
    assert!((0.7..1.0).contains(&similarity), "{similarity}");
    let exact = LlmCompare {
        text: TextMatch::Exact,
        ..LlmCompare::default()
    };
    let v = verdict(exact, &chat(a, "stop"), &chat(b, "stop"));
    assert_eq!(paths(&v), ["$text"]);
    let spaced = verdict(
        exact,
        &chat(a, "stop"),
        &chat(&format!("  {}\n", a.replace(' ', "  ")), "stop"),
    );
    assert!(spaced.matched, "whitespace is normalised");
}

#[test]
fn rambling_fails_the_length_ratio_and_the_similarity_and_finish_reasons_are_compared() {
    let a = "The answer is 42.";
    let b = format!(
        "{a}{}",
        " And there is so much more to say about it.".repeat(6)
    );
    let v = verdict(
        LlmCompare::default(),
        &chat(a, "stop"),
        &streamed(&b, "length"),
    );
    let found = paths(&v);
    for path in ["$finish_reason", "$text", "$length"] {
        assert!(found.iter().any(|p| p == path), "{path} not in {found:?}");
    }
}

#[test]
fn json_outputs_and_tool_arguments_are_compared_as_json() {
    let rules = LlmCompare {
        json_output: true,
        ..LlmCompare::default()
    };
    let same = verdict(
        rules,
        &chat(r#"{"a": 1, "b": [1, 2]}"#, "stop"),
        &chat(r#"{"b":[1,2],"a":1.0000001}"#, "stop"),
    );
    assert!(same.matched, "{:?}", same.differences);
    let differs = verdict(
        rules,
        &chat(r#"{"a": 1}"#, "stop"),
        &chat(r#"{"a": 2}"#, "stop"),
    );
    assert_eq!(paths(&differs), ["$text.a"]);
    let call = |name: &str, args: &str| {
        json!({ "choices": [{ "message": { "content": null, "tool_calls": [
            { "type": "function", "function": { "name": name, "arguments": args } }] },
            "finish_reason": "tool_calls" }] })
        .to_string()
    };
    let args = verdict(
        rules,
        &call("weather", r#"{"city": "Paris"}"#),
        &call("weather", r#"{ "city":"Paris" }"#),
    );
    assert!(args.matched, "{:?}", args.differences);
    let named = verdict(rules, &call("weather", "{}"), &call("news", "{}"));
    assert_eq!(paths(&named), ["$tool_calls"]);
    let argued = verdict(
        rules,
        &call("weather", r#"{"city": "Paris"}"#),
        &call("weather", r#"{"city": "Rome"}"#),
    );
    assert_eq!(paths(&argued), ["$tool_calls[0].arguments.city"]);
}

#[test]
fn embeddings_are_compared_by_cosine() {
    let answer = |vectors: Value| json!({ "object": "list", "data": vectors }).to_string();
    let a = answer(json!([{ "embedding": [1.0, 0.0] }, { "embedding": [0.0, 1.0] }]));
    let close = answer(json!([{ "embedding": [0.999, 0.01] }, { "embedding": [0.0, 2.0] }]));
    let far = answer(json!([{ "embedding": [1.0, 0.0] }, { "embedding": [1.0, 1.0] }]));
    assert!(verdict(LlmCompare::default(), &a, &close).matched);
    let v = verdict(LlmCompare::default(), &a, &far);
    assert_eq!(paths(&v), ["data[1].embedding"]);
    assert!((v.llm.unwrap().similarity.unwrap() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-3);
}

#[test]
fn error_answers_are_compared_by_status() {
    let c = comparator(LlmCompare::default());
    let v = c.compare(Answer::plain(500, b"oops"), Answer::plain(500, b"other"));
    assert!(v.matched);
    let v = c.compare(
        Answer::plain(200, chat("x", "stop").as_bytes()),
        Answer::plain(429, b"{}"),
    );
    assert_eq!(paths(&v), ["$status"]);
}

proptest! {
    #[test]
    fn identical_texts_always_agree(text in "[a-z ,.\n]{0,200}") {
        let v = verdict(LlmCompare { text: TextMatch::Exact, ..LlmCompare::default() }, &chat(&text, "stop"), &streamed(&text, "stop"));
        prop_assert!(v.matched, "{:?}", v.differences);
        prop_assert_eq!(rouge_l(&text, &text), 1.0);
    }

    #[test]
    fn similarity_falls_with_every_word_changed(words in prop::collection::vec("[a-z]{1,6}", 1..40), order in prop::collection::vec(any::<prop::sample::Index>(), 1..40)) {
        let original = words.join(" ");
        let mut edited = words.clone();
        let mut last = 1.0;
        for (k, at) in order.iter().enumerate() {
            // A word found nowhere in the text: it can only break matches.
            edited[at.index(words.len())] = format!("X{k}");
            let now = rouge_l(&original, &edited.join(" "));
            prop_assert!(now <= last + 1e-12, "{now} after {last}");
            prop_assert!((0.0..=1.0).contains(&now));
            last = now;
        }
    }

    #[test]
    fn similarity_is_symmetric(a in "[a-c ]{0,40}", b in "[a-c ]{0,40}") {
        prop_assert!((rouge_l(&a, &b) - rouge_l(&b, &a)).abs() < 1e-12);
    }
}
