//! OpenAI-compatible calls through the gateway, against the demo LLM (which
//! answers only for the model name it serves): routing by the body's `model`,
//! pins in the name, the served-name rewrite, OpenAI-shaped refusals, sticky
//! canaries by `user`, streamed answers passed through event by event (held,
//! cancelled, stalled), and mirrors rewritten for the staging version.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{admin, client, send};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use stagegate::demo::llm_model::{DemoLlm, Voice};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A demo LLM on a loopback port, serving `served`.
struct Llm {
    url: String,
    received: Arc<std::sync::Mutex<Vec<Value>>>,
    cancelled: Arc<std::sync::atomic::AtomicUsize>,
    _stop: tokio_util::sync::DropGuard,
}

impl Llm {
    async fn start(model: DemoLlm) -> Llm {
        let stop = CancellationToken::new();
        let (received, cancelled) = (Arc::clone(&model.received), Arc::clone(&model.cancelled));
        let port = stagegate::demo::spawn_model_server(model, stop.clone())
            .await
            .unwrap();
        Llm {
            url: format!("http://127.0.0.1:{port}"),
            received,
            cancelled,
            _stop: stop.drop_guard(),
        }
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

/// Model `chat`: version 1 in production served as `llama-prod`, version 2 in
/// staging served as `llama-next`; `server` and `model` go into `[server]` and
/// after the versions.
fn config(server: &str, production: &Llm, staging: &Llm, model: &str) -> String {
    format!(
        "[server]\n{server}\n[[models]]\nname = \"chat\"\n\
         [[models.versions]]\nversion = \"1\"\nstage = \"production\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-prod\"\n\
         [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-next\"\n{model}\n",
        production.url, staging.url
    )
}

async fn chat(base: &str, body: Value, headers: &[(&str, &str)]) -> common::Answer {
    let url = format!("{base}/v1/chat/completions");
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(&client(), Method::POST, &url, &all, &body.to_string()).await
}

fn ask(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "what does stagegate do" }] })
}

#[tokio::test]
async fn calls_are_routed_by_the_model_they_name_and_sent_with_the_served_name() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Reworded)).await;
    let gateway = common::gateway(&config("", &production, &staging, "")).await;
    let base = format!("http://{}", gateway.data_addr());
    for (name, version) in [
        ("chat", "1"),
        ("chat@production", "1"),
        ("chat@staging", "2"),
        ("chat@2", "2"),
        ("chat@1", "1"),
    ] {
        let answer = chat(&base, ask(name), &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}: {:?}", answer.body);
        assert_eq!(answer.header("x-stagegate-version"), version, "{name}");
        let served = if version == "1" {
            "llama-prod"
        } else {
            "llama-next"
        };
        // The answer keeps the server's own `model`.
        assert_eq!(answer.json()["model"], served, "{name}");
    }
    let sent = production.received();
    assert!(
        sent.iter().all(|body| body["model"] == "llama-prod"),
        "{sent:?}"
    );
    assert_eq!(
        sent[0]["messages"],
        ask("chat")["messages"],
        "the rest of the body is the client's"
    );
    let pinned = chat(&base, ask("chat"), &[("x-stagegate-stage", "staging")]).await;
    assert_eq!(pinned.header("x-stagegate-version"), "2");
    let completion = send(
        &client(),
        Method::POST,
        &format!("{base}/v1/completions"),
        &[],
        &json!({ "model": "chat@staging", "prompt": "hello there" }).to_string(),
    )
    .await;
    assert_eq!(completion.json()["object"], "text_completion");
    assert_eq!(completion.header("x-stagegate-version"), "2");
}

#[tokio::test]
async fn refusals_on_the_openai_paths_are_in_openai_shape_and_name_the_field() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let gateway =
        common::gateway(&config("max_body_bytes = 4096", &production, &staging, "")).await;
    let base = format!("http://{}", gateway.data_addr());
    let url = format!("{base}/v1/chat/completions");
    let post = |body: String| {
        let url = url.clone();
        async move { send(&client(), Method::POST, &url, &[], &body).await }
    };
    let cases = [
        (
            ask("nope").to_string(),
            404,
            "model_not_found",
            Some("model"),
        ),
        (
            ask("chat@9").to_string(),
            404,
            "unknown_version",
            Some("model"),
        ),
        (ask("chat@").to_string(), 400, "invalid_pin", Some("model")),
        (
            ask("chat@archived").to_string(),
            403,
            "archived_version",
            Some("model"),
        ),
        ("model=chat".to_string(), 400, "invalid_body", None),
        (
            json!({ "messages": [] }).to_string(),
            400,
            "invalid_body",
            Some("model"),
        ),
        (
            json!({ "model": 7 }).to_string(),
            400,
            "invalid_body",
            Some("model"),
        ),
        (
            r#"{"model":"chat","model":"x"}"#.to_string(),
            400,
            "invalid_body",
            Some("model"),
        ),
        (
            json!({ "model": "chat", "stream": "yes" }).to_string(),
            400,
            "invalid_body",
            Some("stream"),
        ),
        (
            json!({ "model": "chat", "pad": "x".repeat(5000) }).to_string(),
            413,
            "body_too_large",
            None,
        ),
    ];
    for (body, status, code, param) in cases {
        let answer = post(body.clone()).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{body:.60}: {:?}",
            answer.body
        );
        let error = &answer.json()["error"];
        assert_eq!(error["code"], code, "{body:.60}");
        assert_eq!(error["param"], json!(param), "{body:.60}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error["type"].is_string());
    }
    let conflicting = chat(&base, ask("chat@1"), &[("x-stagegate-version", "2")]).await;
    assert_eq!(conflicting.json()["error"]["code"], "conflicting_pins");
    let get = send(&client(), Method::GET, &url, &[], "").await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.header("allow"), "POST");
    assert!(
        production.received().is_empty(),
        "nothing refused reaches a model server"
    );
    let models = send(
        &client(),
        Method::GET,
        &format!("{base}/v1/models"),
        &[],
        "",
    )
    .await;
    assert_eq!(models.json()["data"][0]["id"], "chat");
}

#[tokio::test]
async fn a_sticky_canary_can_key_on_the_body_user() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let canary = "[models.canary]\nsticky_openai_user = true";
    let gateway = common::gateway(&config("", &production, &staging, canary)).await;
    let answer = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/chat/canary",
        Some(json!({ "version": "2", "weight": 50 })),
    )
    .await;
    assert!(answer.status.is_success(), "{:?}", answer.body);
    let base = format!("http://{}", gateway.data_addr());
    let mut seen = std::collections::BTreeMap::new();
    for user in 0..40 {
        let mut body = ask("chat");
        body["user"] = json!(format!("user-{user}"));
        let first = chat(&base, body.clone(), &[]).await;
        let again = chat(&base, body, &[]).await;
        let version = first.header("x-stagegate-version").to_string();
        assert_eq!(
            version,
            again.header("x-stagegate-version"),
            "user {user} is sticky"
        );
        *seen.entry(version).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both versions answer at 50%: {seen:?}");
    assert!(
        staging
            .received()
            .iter()
            .all(|b| b["model"] == "llama-next")
    );
}

/// Sends a streamed chat call and answers its response, its body unread.
async fn stream(base: &str) -> http::Response<hyper::body::Incoming> {
    let mut body = ask("chat");
    body["stream"] = json!(true);
    let request = Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .expect("an answer head")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
}

/// The next server-sent event's data, read frame by frame.
async fn next_event(body: &mut hyper::body::Incoming, pending: &mut String) -> Option<String> {
    loop {
        if let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            return Some(event.trim().trim_start_matches("data: ").to_string());
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")?
            .ok()?;
        if let Ok(data) = frame.into_data() {
            pending.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test]
async fn events_pass_through_as_they_come_and_a_client_going_away_cancels_the_generation() {
    let hold = Arc::new(Semaphore::new(0));
    let mut model = DemoLlm::new("llama-prod", Voice::Plain);
    model.hold = Some(Arc::clone(&hold));
    let production = Llm::start(model).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let gateway = common::gateway(&config("", &production, &staging, "")).await;
    let base = format!("http://{}", gateway.data_addr());

    let response = stream(&base).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut pending = String::new();
    // The server withholds every event after the first until released.
    let first: Value =
        serde_json::from_str(&next_event(&mut body, &mut pending).await.unwrap()).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    hold.add_permits(1000);
    let mut text = String::new();
    while let Some(event) = next_event(&mut body, &mut pending).await {
        if event == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event).unwrap();
        assert!(
            chunk.get("usage").is_none(),
            "no usage event the client did not ask for"
        );
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    assert!(text.starts_with("Stagegate routes each request"), "{text}");

    // A client that goes away mid-stream: the server's generation is cancelled.
    let held = Arc::new(Semaphore::new(0));
    let mut model = DemoLlm::new("llama-prod", Voice::Plain);
    model.hold = Some(Arc::clone(&held));
    let production = Llm::start(model).await;
    let gateway = common::gateway(&config("", &production, &staging, "")).await;
    let base = format!("http://{}", gateway.data_addr());
    let mut body = stream(&base).await.into_body();
    next_event(&mut body, &mut String::new()).await.unwrap();
    drop(body);
    held.add_permits(1000);
    wait_until(
        || production.cancelled.load(Ordering::SeqCst) == 1,
        "the generation is cancelled",
    )
    .await;
}

#[tokio::test]
async fn a_stream_that_stalls_past_the_idle_timeout_is_reset() {
    let mut model = DemoLlm::new("llama-prod", Voice::Plain);
    // Never released: the stream stalls after its first event.
    model.hold = Some(Arc::new(Semaphore::new(0)));
    let production = Llm::start(model).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let server = "llm_idle_timeout_ms = 200\nrequest_timeout_ms = 60000";
    let gateway = common::gateway(&config(server, &production, &staging, "")).await;
    let base = format!("http://{}", gateway.data_addr());
    let mut body = stream(&base).await.into_body();
    let mut pending = String::new();
    next_event(&mut body, &mut pending).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stall is ended well before request_timeout_ms");
    assert!(
        matches!(end, Some(Err(_))),
        "ended with an error, not a clean end: {end:?}"
    );
    wait_until(
        || production.cancelled.load(Ordering::SeqCst) == 1,
        "the generation is cancelled",
    )
    .await;
}

#[tokio::test]
async fn mirrors_go_to_the_staging_version_with_its_served_name_and_ask_for_usage() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Reworded)).await;
    let shadow = "[models.shadow]\npercent = 100.0";
    let gateway = common::gateway(&config(
        "shadow_cpu_share = 2.0",
        &production,
        &staging,
        shadow,
    ))
    .await;
    let base = format!("http://{}", gateway.data_addr());
    let mut body = stream(&base).await.into_body();
    let mut pending = String::new();
    while let Some(event) = next_event(&mut body, &mut pending).await {
        if event == "[DONE]" {
            break;
        }
    }
    wait_until(|| !staging.received().is_empty(), "the mirror arrives").await;
    let mirrored = &staging.received()[0];
    assert_eq!(mirrored["model"], "llama-next");
    assert_eq!(mirrored["stream_options"]["include_usage"], true);
    assert_eq!(mirrored["messages"], ask("chat")["messages"]);
    let sent = &production.received()[0];
    assert_eq!(sent["model"], "llama-prod");
}

#[tokio::test]
async fn streamed_answers_are_measured_and_the_usage_event_asked_for_is_left_out() {
    let mut model = DemoLlm::new("llama-prod", Voice::Plain);
    model.token_delay = Duration::from_millis(2);
    let production = Llm::start(model).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let gateway = common::gateway(&config("", &production, &staging, "")).await;
    let base = format!("http://{}", gateway.data_addr());
    let mut body = stream(&base).await.into_body();
    let (mut pending, mut events) = (String::new(), Vec::new());
    while let Some(event) = next_event(&mut body, &mut pending).await {
        events.push(event);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "the client did not ask for usage: {events:?}"
    );
    // The gateway asked for it, to count tokens.
    let sent = &production.received()[0];
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let words = DemoLlm::new("llama-prod", Voice::Plain)
        .words("what does stagegate do")
        .len();
    let metrics = common::metrics(&gateway).await;
    let labels = "model=\"chat\",version=\"1\",stage=\"production\"";
    for line in [
        format!("stagegate_llm_time_to_first_token_seconds_count{{{labels}}} 1"),
        format!("stagegate_llm_time_per_output_token_seconds_count{{{labels}}} 1"),
        format!("stagegate_llm_tokens_total{{{labels},direction=\"output\"}} {words}"),
        format!("stagegate_llm_tokens_total{{{labels},direction=\"input\"}} 4"),
        format!("stagegate_llm_finish_reasons_total{{{labels},reason=\"stop\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    // A whole answer counts its tokens and finish reason too.
    let mut limited = ask("chat");
    limited["max_tokens"] = json!(3);
    assert_eq!(chat(&base, limited, &[]).await.status, StatusCode::OK);
    let metrics = common::metrics(&gateway).await;
    let length = format!("stagegate_llm_finish_reasons_total{{{labels},reason=\"length\"}} 1");
    assert!(metrics.contains(&length), "{length} not in:\n{metrics}");
    // The responses API refuses stream_options (its stream ends with usage
    // anyway), so none is added there.
    let url = format!("{base}/v1/responses");
    let asked = json!({ "model": "chat", "input": "hi", "stream": true }).to_string();
    let json = [("content-type", "application/json")];
    assert_eq!(
        send(&client(), Method::POST, &url, &json, &asked)
            .await
            .status,
        StatusCode::OK
    );
    let sent = production.received().last().cloned().unwrap();
    assert_eq!(sent["input"], "hi");
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

/// Polls `done` until it holds, for at most 10 s.
async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_gets_through_the_gateway_what_it_gets_directly() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let gateway = common::gateway(&config("", &production, &staging, "")).await;
    let python = common::child::installed("target/llm-venv/bin/python", "The openai SDK");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llm/sdk_clients.py");
    let (gateway_url, direct_url) = (
        format!("http://{}", gateway.data_addr()),
        production.url.clone(),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(["--gateway", &gateway_url, "--direct", &direct_url])
            .args(["--model", "chat", "--served", "llama-prod"])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "sdk_clients.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The gateway lists the models it routes; everything else is the server's.
    assert_eq!(seen["gateway"]["models"], json!(["chat"]));
    assert_eq!(seen["direct"]["models"], json!(["llama-prod"]));
    seen["gateway"]["models"] = Value::Null;
    seen["direct"]["models"] = Value::Null;
    assert_eq!(seen["gateway"], seen["direct"]);
    let direct = &seen["direct"];
    assert!(
        direct["stream"]["chunks"].as_u64().unwrap() > 10,
        "{direct}"
    );
    assert_eq!(
        direct["stream"]["text"],
        direct["chat"]["choices"][0]["message"]["content"]
    );
    assert_eq!(
        direct["stream_usage"]["completion_tokens"],
        direct["chat"]["usage"]["completion_tokens"]
    );
    assert_eq!(direct["tool_call"]["function"]["name"], "weather");
    assert_eq!(direct["embeddings"]["data"].as_array().unwrap().len(), 2);
    let refusals = &seen["refusals"];
    for (case, class, status, code) in [
        ("unknown_model", "NotFoundError", 404, "model_not_found"),
        ("empty_pin", "BadRequestError", 400, "invalid_pin"),
        (
            "archived_stage",
            "PermissionDeniedError",
            403,
            "archived_version",
        ),
    ] {
        assert_eq!(refusals[case]["class"], class, "{case}: {}", refusals[case]);
        assert_eq!(refusals[case]["status"], status, "{case}");
        assert_eq!(refusals[case]["code"], code, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_report_tells_a_close_streamed_candidate_from_one_that_rambles() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let close = Llm::start(DemoLlm::new("llama-close", Voice::Reworded)).await;
    let mut slow_rambler = DemoLlm::new("llama-long", Voice::Rambling);
    slow_rambler.first_token_delay = Duration::from_millis(20);
    let rambling = Llm::start(slow_rambler).await;
    // Parallel tests keep the cores busy; a share this size drops no mirror.
    let text = format!(
        "[server]\nshadow_cpu_share = 2.0\n[[models]]\nname = \"chat\"\n\
         [[models.versions]]\nversion = \"1\"\nstage = \"production\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-prod\"\n\
         [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-close\"\n\
         [[models.versions]]\nversion = \"3\"\nstage = \"staging\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-long\"\n\
         [models.shadow]\npercent = 100.0\n[models.compare]\nmode = \"llm\"\n",
        production.url, close.url, rambling.url
    );
    let gateway = common::gateway(&text).await;
    let base = format!("http://{}", gateway.data_addr());
    let requests = 5;
    for _ in 0..requests {
        let mut body = stream(&base).await.into_body();
        let mut pending = String::new();
        while next_event(&mut body, &mut pending).await.is_some() {}
    }
    let report = |version: &'static str| {
        let gateway = &gateway;
        async move {
            let answer = admin(gateway, Method::GET, "/api/v1/models/chat/shadow", None).await;
            let versions = answer.json()["versions"].clone();
            versions
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["version"] == version)
                .cloned()
                .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while report("2").await["compared"] != requests || report("3").await["compared"] != requests {
        assert!(
            tokio::time::Instant::now() < deadline,
            "comparisons: {} / {}",
            report("2").await,
            report("3").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let close = report("2").await;
    assert_eq!(close["matched"], requests, "{close}");
    let p50 = close["llm"]["similarity"]["p50"].as_f64().unwrap();
    assert!((0.8..1.0).contains(&p50), "a few words differ: {close}");
    let long = report("3").await;
    assert_eq!(long["matched"], 0, "{long}");
    let paths: Vec<&str> = long["top_mismatch_paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert!(paths.contains(&"$length"), "{long}");
    let tokens = &long["llm"]["output_tokens"];
    assert!(
        tokens["shadow"]["p50"].as_u64() > tokens["primary"]["p50"].as_u64(),
        "{long}"
    );
    let first = &long["llm"]["time_to_first_token_ms"];
    assert!(first["shadow"]["p50"].as_f64().unwrap() >= 20.0, "{long}");
    assert!(first["primary"]["p50"].as_f64().unwrap() < 20.0, "{long}");
    assert!(
        long["llm"]["time_per_output_token_ms"]["shadow"]["p50"].is_number(),
        "{long}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_gated_on_time_to_first_token_rolls_back_a_candidate_slow_to_start() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let mut slow = DemoLlm::new("llama-next", Voice::Plain);
    // Its answer head comes at once; only its first token is late, so only the
    // time-to-first-token gate can see it.
    slow.first_token_delay = Duration::from_millis(40);
    let candidate = Llm::start(slow).await;
    let canary = "[models.canary]\nsticky_openai_user = true";
    let gateway = common::gateway(&config("", &production, &candidate, canary)).await;
    let plan = json!({
        "candidate": "2", "steps": [50, 100], "step_interval_s": 0.3,
        "max_step_duration_s": 25.0, "min_requests": 20,
        "max_error_rate": "off", "max_p99_ratio": "off", "max_latency_increase": "off",
        "max_ttft_p99_ratio": 2.0,
    });
    let started = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/chat/rollout",
        Some(plan),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{:?}", started.body);
    let stop = CancellationToken::new();
    let base = format!("http://{}", gateway.data_addr());
    let clients: Vec<_> = (0..8)
        .map(|client_id| {
            let (stop, base) = (stop.clone(), base.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let mut body = ask("chat");
                    body["stream"] = json!(true);
                    body["user"] = json!(format!("user-{client_id}-{n}"));
                    n += 1;
                    let request = Request::post(format!("{base}/v1/chat/completions"))
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap();
                    if let Ok(response) = client().request(request).await {
                        let _ = response.into_body().collect().await;
                    }
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = admin(&gateway, Method::GET, "/api/v1/models/chat/rollout", None)
            .await
            .json();
        if status["phase"] == "rolled_back" {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never rolled back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        status["rollout"]["failed_gate"]["gate"], "ttft_p99_ratio",
        "{status}"
    );
    assert!(
        status["rollout"]["failed_gate"]["reading"]
            .as_f64()
            .unwrap()
            > 2.0,
        "{status}"
    );
    let model = admin(&gateway, Method::GET, "/api/v1/models/chat", None)
        .await
        .json();
    assert_eq!(model["production"], "1", "production untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_production_shows_its_agreement_with_itself_beside_the_candidate() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Rambling)).await;
    let shadow =
        "[models.shadow]\npercent = 100.0\nreplay_primary = true\n[models.compare]\nmode = \"llm\"";
    // Parallel tests keep the cores busy; a share this size drops no mirror.
    let server = "shadow_cpu_share = 2.0";
    let gateway = common::gateway(&config(server, &production, &staging, shadow)).await;
    let base = format!("http://{}", gateway.data_addr());
    let requests = 4;
    for _ in 0..requests {
        assert_eq!(chat(&base, ask("chat"), &[]).await.status, StatusCode::OK);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = admin(&gateway, Method::GET, "/api/v1/models/chat/shadow", None)
            .await
            .json();
        let done = |v: &Value| v["compared"] == requests;
        if done(&report["production_replay"]) && done(&report["versions"][0]) {
            break report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let replay = &report["production_replay"];
    assert_eq!(replay["replay_of_production"], true);
    assert_eq!(replay["version"], "1");
    assert_eq!(
        replay["matched"], requests,
        "a deterministic production agrees with itself: {replay}"
    );
    assert_eq!(
        report["versions"][0]["matched"], 0,
        "the rambling candidate does not"
    );
    assert_eq!(
        production.received().len(),
        2 * requests as usize,
        "each request reached production twice"
    );
    assert!(
        production
            .received()
            .iter()
            .all(|b| b["model"] == "llama-prod")
    );
    // The replay's series are apart from the candidate's and production's.
    let metrics = common::metrics(&gateway).await;
    let replayed = format!(
        "stagegate_shadow_comparisons_total{{model=\"chat\",version=\"replay:1\",result=\"match\"}} {requests}"
    );
    assert!(metrics.contains(&replayed), "{replayed} not in:\n{metrics}");
}

#[tokio::test]
async fn a_version_registered_with_an_upstream_model_is_sent_its_name() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let third = Llm::start(DemoLlm::new("llama-3", Voice::Plain)).await;
    let gateway = common::gateway(&config("", &production, &staging, "")).await;
    let register = json!({ "version": "3", "endpoints": [third.url], "upstream_model": "llama-3" });
    let answer = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/chat/versions",
        Some(register),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    let base = format!("http://{}", gateway.data_addr());
    let pinned = chat(&base, ask("chat@3"), &[]).await;
    assert_eq!(pinned.status, StatusCode::OK, "{:?}", pinned.body);
    assert_eq!(pinned.json()["model"], "llama-3");
    let model = admin(&gateway, Method::GET, "/api/v1/models/chat", None)
        .await
        .json();
    let three = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "3")
        .cloned();
    assert_eq!(three.unwrap()["upstream_model"], "llama-3");
    let bad = json!({ "version": "4", "endpoints": [third.url], "upstream_model": "" });
    let refused = admin(
        &gateway,
        Method::POST,
        "/api/v1/models/chat/versions",
        Some(bad),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&refused.body).contains("upstream_model"));
}

#[tokio::test]
async fn a_chunked_call_is_rewritten_and_sent_with_its_new_length() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let gateway = common::gateway(&config("", &production, &staging, "")).await;
    let body = ask("chat@staging").to_string();
    let (first, rest) = body.split_at(10);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        first.len(),
        rest.len()
    );
    let (answer, _) = common::raw_exchange(gateway.data_addr(), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("llama-next"), "{answer}");
    assert_eq!(staging.received()[0]["model"], "llama-next");
}

#[tokio::test]
async fn a_mirror_carries_its_own_length_when_production_was_rewritten_and_it_was_not() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    // Staging serves the model under its own name: its mirror is not rewritten.
    let staging = Llm::start(DemoLlm::new("chat", Voice::Plain)).await;
    let text = format!(
        "[server]\nshadow_cpu_share = 2.0\n[[models]]\nname = \"chat\"\n\
         [[models.versions]]\nversion = \"1\"\nstage = \"production\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-prod\"\n\
         [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"{}\"]\n\
         [models.shadow]\npercent = 100.0\n[models.compare]\nmode = \"status\"\n",
        production.url, staging.url
    );
    let gateway = common::gateway(&text).await;
    let base = format!("http://{}", gateway.data_addr());
    assert_eq!(chat(&base, ask("chat"), &[]).await.status, StatusCode::OK);
    wait_until(
        || !staging.received().is_empty(),
        "the mirror arrives whole",
    )
    .await;
    assert_eq!(staging.received()[0]["model"], "chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_generation_may_outlast_the_shadow_timeout_but_not_the_idle_limit() {
    let production = Llm::start(DemoLlm::new("llama-prod", Voice::Plain)).await;
    // Each event 10 ms after the last: the whole answer takes far longer than
    // the shadow's 20 ms `timeout_ms`, each gap far less than the idle limit.
    let mut slow = DemoLlm::new("llama-slow", Voice::Plain);
    slow.token_delay = Duration::from_millis(10);
    let slow = Llm::start(slow).await;
    // Never sends past its first event.
    let mut stalled = DemoLlm::new("llama-stalled", Voice::Plain);
    stalled.hold = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    let stalled = Llm::start(stalled).await;
    let text = format!(
        "[server]\nshadow_cpu_share = 2.0\nllm_idle_timeout_ms = 300\n[[models]]\nname = \"chat\"\n\
         [[models.versions]]\nversion = \"1\"\nstage = \"production\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-prod\"\n\
         [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-slow\"\n\
         [[models.versions]]\nversion = \"3\"\nstage = \"staging\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-stalled\"\n\
         [models.shadow]\npercent = 100.0\ntimeout_ms = 20\n[models.compare]\nmode = \"llm\"\n",
        production.url, slow.url, stalled.url
    );
    let gateway = common::gateway(&text).await;
    let base = format!("http://{}", gateway.data_addr());
    let mut body = stream(&base).await.into_body();
    let mut pending = String::new();
    while next_event(&mut body, &mut pending).await.is_some() {}
    let report = |version: &'static str| {
        let gateway = &gateway;
        async move {
            let answer = admin(gateway, Method::GET, "/api/v1/models/chat/shadow", None).await;
            let versions = answer.json()["versions"].clone();
            let found = versions
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["version"] == version);
            found.cloned().unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while report("2").await["compared"] != 1 || report("3").await["errors"]["timeout"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} / {}",
            report("2").await,
            report("3").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow = report("2").await;
    assert_eq!(slow["matched"], 1, "{slow}");
    assert_eq!(slow["errors"]["timeout"], 0, "{slow}");
    assert_eq!(report("3").await["compared"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_rewritten_for_its_served_name_is_held_in_the_body_budget() {
    let production = Llm::start(DemoLlm::new("chat", Voice::Plain)).await;
    let staging = Llm::start(DemoLlm::new("llama-next", Voice::Plain)).await;
    let body = ask("chat").to_string();
    // Room for production's body and the mirror's hold on it, not for the
    // mirror's copy rewritten to name `llama-next` (6 bytes longer).
    let budget = 2 * body.len();
    let text = format!(
        "[server]\nshadow_cpu_share = 2.0\nmax_buffered_body_bytes = {budget}\n[[models]]\nname = \"chat\"\n\
         [[models.versions]]\nversion = \"1\"\nstage = \"production\"\nendpoints = [\"{}\"]\n\
         [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"{}\"]\nupstream_model = \"llama-next\"\n\
         [models.shadow]\npercent = 100.0\n",
        production.url, staging.url
    );
    let gateway = common::gateway(&text).await;
    let base = format!("http://{}", gateway.data_addr());
    assert_eq!(chat(&base, ask("chat"), &[]).await.status, StatusCode::OK);
    let dropped = || {
        let gateway = &gateway;
        async move {
            let answer = admin(gateway, Method::GET, "/api/v1/models/chat/shadow", None).await;
            answer.json()["versions"][0]["dropped"]["body_budget"].clone()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dropped().await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dropped: {}",
            dropped().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        staging.received().is_empty(),
        "nothing past the budget is sent"
    );
}
