//! The cost of routing an OpenAI-style request by its body: finding `model`
//! (and `user`, `stream`) in a ~4 KB chat request, with `model` after the
//! messages as the `openai` SDK sends it, and rewriting it to a served name.
//! Compared with decoding the whole body with `serde_json`.
//!
//! Run: `cargo bench --bench llm`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use stagegate::llm::{Rewrite, rewrite, scan};

/// A chat request of about 4 KB: ten turns with line breaks in them, and
/// quoted words when `quotes` (each escaped quote costs the scan a search).
fn chat_request(quotes: bool) -> Vec<u8> {
    let regions = if quotes { "\"regions\"" } else { "regions" };
    let turn = format!(
        "Summarise the quarterly report in three bullet points,\nkeeping the \
         figures exact and naming the {regions} that grew.\n"
    );
    let messages: Vec<Value> = (0..10)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({ "role": role, "content": turn.repeat(3) })
        })
        .collect();
    let body = json!({
        "messages": messages,
        "model": "chat",
        "temperature": 0,
        "max_tokens": 256,
        "stream": true,
        "user": "user-1234",
    });
    body.to_string().into_bytes()
}

fn body_routing(c: &mut Criterion) {
    for quotes in [false, true] {
        scan_and_rewrite(c, &chat_request(quotes), quotes);
    }
}

fn scan_and_rewrite(c: &mut Criterion, body: &[u8], quotes: bool) {
    assert!((3_500..5_000).contains(&body.len()), "{} bytes", body.len());
    let quoted = if quotes { ", 60 quotes" } else { "" };
    let mut group = c.benchmark_group(format!("llm body of {} bytes{quoted}", body.len()));
    group.bench_function("scan for model, user, stream", |b| {
        b.iter(|| scan(black_box(body)).map(|f| f.model_span.len()))
    });
    group.bench_function("scan and rewrite model", |b| {
        b.iter(|| {
            let fields = scan(black_box(body)).ok()?;
            let to = Rewrite {
                model: Some("meta-llama/Llama-3.1-8B-Instruct"),
                request_usage: false,
            };
            rewrite(body, &fields, to).map(|(out, _)| out.len())
        })
    });
    group.bench_function("serde_json decode (for comparison)", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(body)).map(|v| v["model"].is_string()))
    });
    group.finish();
}

criterion_group!(benches, body_routing);
criterion_main!(benches);
