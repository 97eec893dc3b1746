//! The status page on the admin listener, in a real browser: Debian's headless
//! Chromium driven over the DevTools protocol ([`common::browser`]), against a
//! running gateway with the demo's model servers. The gateway runs on a runtime
//! of its own while the test thread drives the browser.

mod common;
// Only the fake's start and versions are used here.
#[allow(dead_code)]
#[path = "common/fake_mlflow.rs"]
mod fake_mlflow;

use std::time::{Duration, Instant};

use common::browser::{Browser, Page};
use common::{FakeUpstream, TOKEN, gateway_from_file, one_model};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use stagegate::demo::Demo;
use tokio::runtime::Runtime;

/// How long the page may take to show a change: two polls and a margin.
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

struct Running {
    runtime: Runtime,
    demo: Option<Demo>,
}

impl Running {
    fn demo() -> Running {
        let runtime = Runtime::new().expect("a tokio runtime for the gateway");
        let any = "127.0.0.1:0".parse().unwrap();
        let demo = runtime
            .block_on(stagegate::demo::start(any, any))
            .unwrap_or_else(|e| panic!("the demo did not start: {e}"));
        Running {
            runtime,
            demo: Some(demo),
        }
    }

    fn demo_ref(&self) -> &Demo {
        self.demo.as_ref().expect("the demo runs until dropped")
    }

    fn admin_url(&self) -> String {
        format!("http://{}/", self.demo_ref().gateway.admin_addr())
    }

    /// Calls the demo's admin API (on loopback with no tokens: no auth needed).
    fn api(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!(
            "http://{}/api/v1{path}",
            self.demo_ref().gateway.admin_addr()
        );
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let answer =
            self.runtime
                .block_on(common::send(&common::client(), method, &url, &[], &body));
        (answer.status, answer.json())
    }

    /// Sends a prediction through the data plane.
    fn predict(&self, instances: Value) {
        let url = format!(
            "http://{}/v1/models/fraud:predict",
            self.demo_ref().gateway.data_addr()
        );
        let body = json!({ "instances": instances }).to_string();
        let answer = self.runtime.block_on(common::send(
            &common::client(),
            Method::POST,
            &url,
            &[],
            &body,
        ));
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }

    /// Waits until the shadow report of fraud's version 3 satisfies `done`.
    fn wait_for_shadow(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SHOWN_WITHIN;
        loop {
            let (_, report) = self.api(Method::GET, "/models/fraud/shadow", Value::Null);
            if done(&report["versions"][0]) {
                return report;
            }
            assert!(Instant::now() < deadline, "{what}: {report:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(demo) = self.demo.take() {
            self.runtime.block_on(demo.shutdown());
        }
    }
}

fn no_console_errors(page: &Page) {
    let errors = page.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

/// The selector of version `version`'s chip in the overview's column `stage`.
fn chip_in(model: &str, version: &str, stage: &str) -> String {
    format!(
        "#overview tr[data-model=\"{model}\"] td[data-col=\"{stage}\"] \
         .chip[data-version=\"{version}\"][data-stage=\"{stage}\"]"
    )
}

fn exists(selector: &str) -> String {
    format!("document.querySelector({}) !== null", json!(selector))
}

fn text_of(page: &Page, selector: &str) -> String {
    let value = page.eval(&format!(
        "(document.querySelector({0}) || {{ innerText: '' }}).innerText",
        json!(selector)
    ));
    value.as_str().unwrap_or_default().to_string()
}

#[test]
fn the_overview_shows_every_version_and_follows_a_transition_without_reloading() {
    let running = Running::demo();
    let browser = Browser::launch();
    let page = browser.page(1280, 900);
    page.navigate(&running.admin_url());

    let (_, models) = running.api(Method::GET, "/models", Value::Null);
    let models = models["models"].as_array().unwrap().clone();
    assert_eq!(models.len(), 2, "{models:?}");
    for model in &models {
        let name = model["name"].as_str().unwrap();
        for version in model["versions"].as_array().unwrap() {
            let selector = chip_in(
                name,
                version["version"].as_str().unwrap(),
                version["stage"].as_str().unwrap(),
            );
            page.wait_for(&exists(&selector), SHOWN_WITHIN);
        }
    }
    let status = text_of(&page, "#status-line");
    assert!(
        status.contains("gateway ready") && status.contains("routing revision"),
        "{status}"
    );
    page.screenshot("target/status-page/overview-desktop.png");

    page.eval("window.__sameDocument = true");
    let (status, answer) = running.api(
        Method::POST,
        "/models/fraud/versions/3/transition",
        json!({ "stage": "production", "reason": "shadow agrees" }),
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    page.wait_for(&exists(&chip_in("fraud", "3", "production")), SHOWN_WITHIN);
    assert!(
        page.eval(&exists(&chip_in("fraud", "2", "archived")))
            .as_bool()
            == Some(true)
    );
    assert_eq!(
        page.eval("window.__sameDocument === true"),
        json!(true),
        "the page was reloaded"
    );
    no_console_errors(&page);
}

#[test]
fn a_mismatch_is_listed_with_both_answers_and_what_differs_marked() {
    let running = Running::demo();
    // Far from the decision boundary the versions' small drift is a large
    // relative difference: the first prediction disagrees, the second agrees
    // within rel_tol, and model_version is ignored by the comparator.
    running.predict(json!([[-5.0, -5.0, -5.0], [0.2, 1.5, 3.0]]));
    let report = running.wait_for_shadow("a mismatch sample", |v| {
        v["samples"].as_array().is_some_and(|s| !s.is_empty())
    });
    let sample = report["versions"][0]["samples"][0].clone();
    let request_id = sample["request_id"].as_str().unwrap();

    let browser = Browser::launch();
    let page = browser.page(1280, 900);
    page.navigate(&format!("{}#/models/fraud", running.admin_url()));
    let item = format!(".mismatches .mismatch[data-request-id=\"{request_id}\"]");
    page.wait_for(&exists(&item), SHOWN_WITHIN);

    let marked = |side: &str| {
        page.eval(&format!(
            "[...document.querySelectorAll({})].map((m) => m.textContent)",
            json!(format!(
                "{item} pre[aria-label=\"{side} answer\"] mark.diff"
            ))
        ))
    };
    let primary = sample["primary"].as_str().unwrap();
    let shadow = sample["shadow"].as_str().unwrap();
    let first = |body: &str| {
        let answer: Value = serde_json::from_str(body).unwrap();
        answer["predictions"][0].to_string()
    };
    assert_eq!(marked("production"), json!([first(primary)]), "{primary}");
    assert_eq!(marked("shadow"), json!([first(shadow)]), "{shadow}");
    let listed = text_of(&page, &format!("{item} ul"));
    assert!(listed.contains("predictions[0]"), "{listed}");
    let pane = text_of(&page, &format!("{item} pre[aria-label=\"shadow answer\"]"));
    assert!(pane.contains("\"model_version\": \"3\""), "{pane}");

    // A poll that brings new counts but no new mismatch redraws the counts and
    // keeps the mismatch list as it was (its scroll, selection and focus).
    page.eval("document.querySelector('[data-slot=\"mismatches-3\"]').__kept = true");
    let before = text_of(&page, "[data-slot=\"shadow-3\"]");
    running.predict(json!([[0.2, 1.5, 3.0]]));
    running.wait_for_shadow("the agreeing pair", |v| v["compared"].as_u64() == Some(2));
    page.wait_for(
        &format!(
            "document.querySelector('[data-slot=\"shadow-3\"]').innerText !== {}",
            json!(before)
        ),
        SHOWN_WITHIN,
    );
    assert_eq!(
        page.eval("document.querySelector('[data-slot=\"mismatches-3\"]').__kept === true"),
        json!(true),
        "the mismatch list was redrawn though its samples did not change"
    );
    no_console_errors(&page);
}

#[test]
fn a_rollout_shows_its_gates_and_weight_and_fits_a_phone() {
    let running = Running::demo();
    let (status, answer) = running.api(
        Method::POST,
        "/models/fraud/rollout",
        json!({ "candidate": "3", "steps": [10, 50, 100], "step_interval_s": 3600,
                "min_requests": 20, "reason": "shadow agrees" }),
    );
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    // The canary answers about a tenth of these itself (not mirrored); one in
    // four disagrees.
    for n in 0..40 {
        let x = 0.01 * f64::from(n);
        let features = match n % 4 {
            0 => [-5.0 + x, -5.0, -5.0],
            _ => [0.2 + x, 1.5, 3.0],
        };
        running.predict(json!([features]));
    }
    running.wait_for_shadow("compared pairs", |v| {
        v["compared"].as_u64() >= Some(20) && v["samples"].as_array().is_some_and(|s| !s.is_empty())
    });

    let browser = Browser::launch();
    let page = browser.page(1280, 900);
    page.navigate(&format!("{}#/models/fraud", running.admin_url()));
    for gate in ["error_rate", "p99_ratio"] {
        page.wait_for(
            &exists(&format!("#rollout tr[data-gate=\"{gate}\"]")),
            SHOWN_WITHIN,
        );
    }
    let rollout = text_of(&page, "#rollout");
    assert!(
        rollout.contains("progressing") && rollout.contains("step 1 of 3"),
        "{rollout}"
    );
    assert!(rollout.contains("Waiting for:"), "{rollout}");
    let verdicts = text_of(&page, "#rollout tbody");
    assert!(
        verdicts.contains("pass") || verdicts.contains("wait"),
        "verdicts are written out, not only coloured: {verdicts}"
    );
    assert!(page.eval(&exists("#rollout svg.plot path.primary")) == json!(true));
    assert!(page.eval(&exists("#shadow svg.plot circle.dot")) == json!(true));
    page.wait_for(&exists("#history li[data-revision]"), SHOWN_WITHIN);
    page.screenshot("target/status-page/model-desktop.png");

    page.set_viewport(390, 844, true);
    page.wait_for(
        "document.documentElement.scrollWidth <= window.innerWidth + 1",
        SHOWN_WITHIN,
    );
    page.screenshot("target/status-page/model-phone.png");
    no_console_errors(&page);
}

#[test]
fn a_refused_action_shows_the_servers_message_and_actions_work_from_the_keyboard() {
    let running = Running::demo();
    let browser = Browser::launch();
    let page = browser.page(1280, 900);
    page.navigate(&format!("{}#/models/chat", running.admin_url()));
    page.wait_for(
        &exists("#versions [data-action=\"rollback\"]"),
        SHOWN_WITHIN,
    );

    // Opened with the keyboard: focus the button, press Enter.
    page.eval("document.querySelector('[data-action=\"rollback\"]').focus()");
    page.press_key("Enter");
    page.wait_for(
        "document.getElementById('action-dialog').open",
        SHOWN_WITHIN,
    );
    page.type_into("#action-reason", "p99 regression");
    page.click("#action-confirm");
    page.wait_for(
        "document.getElementById('action-error').textContent !== ''",
        SHOWN_WITHIN,
    );
    // The demo's chat model has no earlier production version to go back to.
    let (status, refused) = running.api(
        Method::POST,
        "/models/chat/rollback",
        json!({ "reason": "p99 regression" }),
    );
    assert!(status.is_client_error(), "{status} {refused}");
    let shown = text_of(&page, "#action-error");
    let message = refused["error"].as_str().unwrap();
    assert!(shown.contains(message), "{shown:?} shows {message:?}");
    assert_eq!(
        page.eval("document.getElementById('action-dialog').open"),
        json!(true)
    );
    page.press_key("Escape");
    page.wait_for(
        "!document.getElementById('action-dialog').open",
        SHOWN_WITHIN,
    );
    // Focus goes back to the button that opened the dialog.
    assert_eq!(
        page.eval("document.activeElement.getAttribute('data-action')"),
        json!("rollback")
    );

    // A weight left empty is refused in the page, not sent as 0 (which would
    // end the canary).
    page.click("#versions [data-action=\"canary\"]");
    page.wait_for(
        "document.getElementById('action-dialog').open",
        SHOWN_WITHIN,
    );
    page.type_into("#field-weight", "");
    page.click("#action-confirm");
    page.wait_for(
        "document.getElementById('action-error').textContent.includes('weight must be a number')",
        SHOWN_WITHIN,
    );
    page.press_key("Escape");
    let (_, rollout) = running.api(Method::GET, "/models/chat/rollout", Value::Null);
    assert_eq!(
        rollout["canary"],
        Value::Null,
        "no canary was set: {rollout}"
    );

    // And one that is accepted: version 3 to production, with its reason journaled.
    page.eval("location.hash = '#/models/fraud'");
    page.wait_for(
        &exists("#versions .chip[data-model=\"fraud\"][data-version=\"3\"]"),
        SHOWN_WITHIN,
    );
    page.click("[data-action=\"transition\"][data-version=\"3\"]");
    page.wait_for(
        "document.getElementById('action-dialog').open",
        SHOWN_WITHIN,
    );
    assert_eq!(
        page.eval("document.getElementById('field-stage').value"),
        json!("production")
    );
    page.type_into("#action-reason", "agreement holds");
    page.click("#action-confirm");
    page.wait_for(
        "!document.getElementById('action-dialog').open",
        SHOWN_WITHIN,
    );
    let (_, history) = running.api(Method::GET, "/models/fraud/history?limit=1", Value::Null);
    let entry = &history["entries"][0];
    assert_eq!(
        (&entry["version"], &entry["to"], &entry["reason"]),
        (&json!("3"), &json!("production"), &json!("agreement holds"))
    );
    page.wait_for(
        &exists("#versions .chip[data-version=\"3\"][data-stage=\"production\"]"),
        SHOWN_WITHIN,
    );
    // Every action is a button, reachable by Tab.
    let not_buttons = page.eval(
        "[...document.querySelectorAll('[data-action]')].filter((e) => e.tagName !== 'BUTTON').length",
    );
    assert_eq!(not_buttons, json!(0));
    // The browser logs the refused call itself; nothing else went wrong.
    for error in page.console_errors() {
        assert!(
            error.contains("409") && error.contains("/rollback"),
            "{error}"
        );
    }
}

#[test]
fn with_a_token_the_page_asks_for_it_and_shows_no_data_until_given() {
    let runtime = Runtime::new().expect("a tokio runtime for the gateway");
    let (gateway, _upstream) = runtime.block_on(async {
        let upstream = FakeUpstream::start("v2").await;
        let config = one_model("", &[("2", "production", &[&upstream.url()])]);
        (gateway_from_file(&config).await.0, upstream)
    });
    let url = format!("http://{}/", gateway.admin_addr());
    let browser = Browser::launch();
    let page = browser.page(1280, 900);
    page.navigate(&url);
    page.wait_for(
        "!document.getElementById('token-prompt').hidden",
        SHOWN_WITHIN,
    );
    assert_eq!(
        page.eval("document.getElementById('app').innerText.trim()"),
        json!("")
    );
    assert_eq!(
        page.eval("document.querySelectorAll('.chip').length"),
        json!(0)
    );

    page.type_into("#token-input", "wrong-token-0123456789");
    page.click("#token-prompt button[type=submit]");
    page.wait_for(
        "document.getElementById('token-error').textContent.includes('refused')",
        SHOWN_WITHIN,
    );
    assert_eq!(
        page.eval("document.querySelectorAll('.chip').length"),
        json!(0)
    );

    page.type_into("#token-input", TOKEN);
    page.click("#token-prompt button[type=submit]");
    page.wait_for(&exists(&chip_in("fraud", "2", "production")), SHOWN_WITHIN);
    assert_eq!(
        page.eval("document.getElementById('token-prompt').hidden"),
        json!(true)
    );
    // Kept in the tab only: not in a cookie, not in the address.
    assert_eq!(
        page.eval("sessionStorage.getItem('stagegate.admin-token')"),
        json!(TOKEN)
    );
    assert_eq!(page.eval("document.cookie"), json!(""));
    assert!(!page.eval("location.href").as_str().unwrap().contains(TOKEN));
    // The only errors are the refused reads before the token was given.
    for error in page.console_errors() {
        assert!(error.contains("401"), "{error}");
    }
    runtime.block_on(gateway.shutdown());
}

#[test]
fn the_diff_and_weight_logic_give_what_the_page_shows() {
    let running = Running::demo();
    let browser = Browser::launch();
    let page = browser.page(1280, 900);
    page.navigate(&running.admin_url());
    page.wait_for("window.stagegate !== undefined", SHOWN_WITHIN);
    let run = |expression: &str| {
        page.eval(&format!(
            "(() => {{ const sg = window.stagegate; return {expression}; }})()"
        ))
    };

    // Words: what one side lacks is marked, whitespace is not.
    assert_eq!(
        run("sg.diffWords('the cat sat down', 'the dog sat down')"),
        json!({
            "left": [{"text": "the ", "diff": false}, {"text": "cat", "diff": true}, {"text": " sat down", "diff": false}],
            "right": [{"text": "the ", "diff": false}, {"text": "dog", "diff": true}, {"text": " sat down", "diff": false}],
        })
    );
    assert_eq!(
        run("sg.diffWords('same', 'same').left"),
        json!([{"text": "same", "diff": false}])
    );

    // JSON with the comparator's paths: only those places are marked.
    let marked = |expression: &str| {
        run(&format!(
            "(() => {{ const d = {expression}; return [d.left, d.right].map((side) => side.filter((s) => s.diff).map((s) => s.text)); }})()"
        ))
    };
    assert_eq!(
        marked(r#"sg.diffAnswers('{"v":"2","p":[1,5]}', '{"v":"3","p":[1,6]}', [["p", 1]])"#),
        json!([["5"], ["6"]])
    );
    // Without paths (or with paths that name nothing there), every difference.
    assert_eq!(
        marked(r#"sg.diffAnswers('{"v":"2","p":[1,5]}', '{"v":"3","p":[1,6]}', [["text"]])"#),
        json!([["2", "5"], ["3", "6"]])
    );
    // A key one side lacks; a string diffed word by word; wildcards.
    assert_eq!(
        marked(r#"sg.diffAnswers('{"a":1,"b":2}', '{"a":1}', [])"#),
        json!([["\"b\": 2"], []])
    );
    assert_eq!(
        marked(r#"sg.diffAnswers('{"t":"a big dog"}', '{"t":"a small dog"}', [["t"]])"#),
        json!([["big"], ["small"]])
    );
    assert_eq!(
        marked(
            r#"sg.diffAnswers('{"p":[{"s":1},{"s":2}]}', '{"p":[{"s":3},{"s":4}]}', [["p", null, "s"]])"#
        ),
        json!([["1", "2"], ["3", "4"]])
    );
    // Not JSON (a cut-off body): word by word.
    assert_eq!(
        marked(
            r#"sg.diffAnswers('{"a": 1, "b"... (9000 bytes)', '{"a": 2, "b"... (9000 bytes)', [])"#
        ),
        json!([["1"], ["2"]])
    );

    // The weight over time follows the journal's rollout records (newest first).
    let series = run(r#"sg.weightSeries([
            { time: '2026-12-03T10:02:00Z', rollout: { id: 7, phase: 'succeeded', step: 2, plan: { steps: [10, 50, 100] } } },
            { time: '2026-12-03T10:01:00Z', rollout: { id: 7, phase: 'progressing', step: 1, plan: { steps: [10, 50, 100] } } },
            { time: '2026-12-03T10:00:30Z', canary: { version: '3', weight: 5 } },
            { time: '2026-12-03T10:00:00Z', rollout: { id: 7, phase: 'progressing', step: 0, plan: { steps: [10, 50, 100] } } },
            { time: '2026-12-03T09:00:00Z', rollout: { id: 3, phase: 'rolled_back', step: 0, plan: { steps: [20] } } },
        ], 7, Date.parse('2026-12-03T10:03:00Z')).map(([t, w]) => [new Date(t).toISOString().slice(11, 16), w])"#);
    assert_eq!(
        series,
        json!([["10:00", 10], ["10:01", 50], ["10:02", 100], ["10:03", 100]])
    );
    assert_eq!(
        run(
            "[sg.percent(0.9), sg.percent(0.987), sg.percent(1), sg.percent(0.99971), sg.percent(null)]"
        ),
        json!(["90%", "98.7%", "100%", "99.97%", "–"])
    );
    no_console_errors(&page);
}

#[test]
fn the_overview_shows_the_registry_sync_state() {
    let runtime = Runtime::new().expect("a tokio runtime for the gateway");
    let (gateway, _mlflow, _upstream) = runtime.block_on(async {
        let mlflow = fake_mlflow::FakeMlflow::start().await;
        let upstream = FakeUpstream::start("v1").await;
        mlflow.add_version("fraud-detector", "1", &upstream.url());
        mlflow.set_alias("fraud-detector", "champion", "1");
        let config = format!(
            "[registry]\nkind = \"mlflow\"\nurl = \"{}\"\npoll_interval_ms = 3600000\n\n\
             [[models]]\nname = \"fraud\"\n[models.mlflow]\n\
             registered_model = \"fraud-detector\"\non_production_change = \"promote\"\n",
            mlflow.url()
        );
        let gateway = common::gateway(&config).await;
        let synced = common::admin(&gateway, Method::POST, "/api/v1/registry/sync", None).await;
        assert_eq!(synced.status, StatusCode::OK, "{:?}", synced.body);
        (gateway, mlflow, upstream)
    });
    let browser = Browser::launch();
    let page = browser.page(1280, 900);
    page.navigate(&format!("http://{}/", gateway.admin_addr()));
    page.wait_for(&exists(&chip_in("fraud", "1", "production")), SHOWN_WITHIN);
    page.wait_for(&exists("#registry .verdict.pass"), SHOWN_WITHIN);
    let registry = text_of(&page, "#registry");
    for shown in ["mlflow", "ok", "fraud-detector", "champion"] {
        assert!(registry.contains(shown), "{shown} in {registry}");
    }
    assert!(text_of(&page, "#status-line").contains("mlflow sync ok"));
    no_console_errors(&page);
    runtime.block_on(gateway.shutdown());
}

#[test]
fn pages_from_elsewhere_cannot_call_the_admin_api() {
    let running = Running::demo();
    let admin = running.demo_ref().gateway.admin_addr();
    let url = format!("http://{admin}/api/v1/models/fraud/rollback");
    let call = |headers: &[(&str, &str)]| {
        let answer = running.runtime.block_on(common::send(
            &common::client(),
            Method::POST,
            &url,
            headers,
            r#"{"reason": "from a page"}"#,
        ));
        (answer.status, answer.code())
    };
    let forbidden = (StatusCode::FORBIDDEN, "cross_origin".to_string());
    // A plain cross-site POST needs no preflight, so the browser would send it.
    assert_eq!(call(&[("origin", "https://evil.example")]), forbidden);
    assert_eq!(call(&[("origin", "null")]), forbidden);
    // A DNS-rebinding page reaches the loopback listener by its own name.
    let rebound = [
        ("host", "evil.example:8081"),
        ("origin", "http://evil.example:8081"),
    ];
    assert_eq!(
        call(&rebound),
        (StatusCode::FORBIDDEN, "not_loopback_host".to_string())
    );
    // The page itself, on its own origin, is answered (here: no earlier production).
    let own = format!("http://{admin}");
    assert_eq!(
        call(&[("origin", &own)]),
        (StatusCode::CONFLICT, "no_rollback_target".to_string())
    );
}
