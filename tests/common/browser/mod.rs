//! A small Chrome DevTools Protocol client for browser tests: it starts
//! Debian's headless Chromium with a throwaway profile and a DevTools port on
//! loopback, opens tabs with a given viewport and drives them (navigate,
//! evaluate, wait, click, type, press keys, screenshot) while recording the
//! console errors, uncaught exceptions and failed loads each tab reports.
//!
//! One WebSocket to the browser carries every tab's commands (the flat session
//! model: each command names its tab's `sessionId`). A thread owns the socket:
//! it sends the commands callers queue, hands each answer to the caller
//! waiting for its `id`, and records events per session. Every command has a
//! timeout and panics saying which method failed and why.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::child;
use cdp::{Cdp, Reply, exception_text, str_of, text_field};

mod cdp;

/// How long Chromium may take to start, answer a command or load a page.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long the socket thread blocks reading before it sends queued commands.
const POLL: Duration = Duration::from_millis(5);
/// Chromium's flags, before `--user-data-dir` and the first URL.
const ARGS: &str = "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --no-default-browser-check --disable-extensions \
    --disable-background-networking --disable-sync --metrics-recording-only --mute-audio \
    --remote-debugging-port=0";

/// A headless Chromium, killed (with its whole process group) on drop.
pub struct Browser {
    cdp: Cdp,
    _process: Process,
}

struct Process {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        child::kill_group(&mut self.child);
    }
}

impl Browser {
    /// Starts Chromium (`$STAGEGATE_CHROMIUM` or `/usr/bin/chromium`).
    pub fn launch() -> Browser {
        // Like the other real components, installed on first use by
        // scripts/install-test-deps (apt-get install -y chromium).
        let exe = std::env::var_os("STAGEGATE_CHROMIUM").map_or_else(
            || child::installed("/usr/bin/chromium", "Chromium"),
            PathBuf::from,
        );
        assert!(
            exe.exists(),
            "Chromium is needed by the status page tests: install it with \
             `apt-get install -y chromium` (scripts/install-test-deps does this); {} is missing",
            exe.display()
        );
        let profile = tempfile::tempdir().expect("create a Chromium profile directory");
        let mut command = Command::new(&exe);
        command
            .args(ARGS.split_whitespace())
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = child::spawn_for_the_binary(command)
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let stderr = child.stderr.take().expect("Chromium's stderr is piped");
        let _process = Process {
            child,
            _profile: profile,
        };
        let url = devtools_url(stderr).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        Browser {
            cdp: Cdp::connect(&url),
            _process,
        }
    }

    /// A new tab with a `width`×`height` desktop viewport.
    pub fn page(&self, width: u32, height: u32) -> Page<'_> {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = text_field(&target, "targetId");
        let attach = json!({"targetId": target, "flatten": true});
        let session = self.cdp.call(None, "Target.attachToTarget", attach);
        let session = text_field(&session, "sessionId");
        let page = Page {
            cdp: &self.cdp,
            target,
            session,
        };
        for method in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(method, json!({}));
        }
        page.call("Page.setLifecycleEventsEnabled", json!({"enabled": true}));
        // The tabs share one browser window; each acts as if it had the focus.
        page.call(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        );
        page.set_viewport(width, height, false);
        page
    }
}

/// Reads Chromium's stderr until it prints its DevTools URL, then keeps
/// draining it in a thread so Chromium never blocks writing to it.
fn devtools_url(stderr: ChildStderr) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut reader, mut line, mut tx) = (BufReader::new(stderr), Vec::new(), Some(tx));
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            line.clear();
            let url = text
                .strip_prefix("DevTools listening on ")
                .map(str::to_string);
            let found = url.is_some();
            if let Some(sender) = &tx {
                let _ = sender.send(url.ok_or(text));
            }
            if found {
                tx = None;
            }
        }
    });
    let (deadline, mut log) = (Instant::now() + TIMEOUT, Vec::new());
    loop {
        let why = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(url)) => return Ok(url),
            Ok(Err(line)) => {
                log.push(line);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => format!("no DevTools URL within {TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => "exited before its DevTools URL".into(),
        };
        return Err(format!("{why}; its stderr:\n{}", log.join("\n")));
    }
}

/// A browser tab; closed on drop.
pub struct Page<'b> {
    cdp: &'b Cdp,
    target: String,
    session: String,
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        let params = json!({"targetId": self.target});
        self.cdp.notify("Target.closeTarget", params);
    }
}

impl Page<'_> {
    fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params)
    }

    /// Loads `url` and waits for its load event.
    pub fn navigate(&self, url: &str) {
        let navigation = self.call("Page.navigate", json!({"url": url}));
        if let Some(error) = navigation["errorText"].as_str() {
            panic!("navigating to {url} failed: {error}");
        }
        // A same-document navigation (only the fragment changes) has no loader.
        let Some(loader) = navigation["loaderId"].as_str() else {
            return;
        };
        let deadline = Instant::now() + TIMEOUT;
        while !self
            .cdp
            .events(&self.session, |e| e.loaded.contains(loader))
        {
            assert!(
                Instant::now() < deadline,
                "{url} did not load within {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The value of a JavaScript expression (a promise is awaited; `undefined`
    /// is null); panics with the exception when it throws.
    pub fn eval(&self, expression: &str) -> Value {
        let value = self.try_eval(expression);
        value.unwrap_or_else(|e| panic!("evaluating `{expression}` failed: {e}"))
    }

    fn try_eval(&self, expression: &str) -> Reply {
        let params = json!({"expression": expression, "returnByValue": true,
            "awaitPromise": true, "userGesture": true});
        let answer = self
            .cdp
            .try_call(Some(&self.session), "Runtime.evaluate", params)?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(exception_text(details));
        }
        let result = &answer["result"];
        let value = result.get("value").or(result.get("unserializableValue"));
        Ok(value.cloned().unwrap_or(Value::Null))
    }

    /// Polls `expression` every 50 ms until it is truthy; panics after
    /// `timeout` with the expression and the page's text.
    pub fn wait_for(&self, expression: &str, timeout: Duration) {
        let check = format!("Promise.resolve({expression}).then(value => !!value)");
        let (deadline, mut last_error) = (Instant::now() + timeout, String::new());
        loop {
            match self.try_eval(&check) {
                Ok(Value::Bool(true)) => return,
                Ok(_) => last_error.clear(),
                Err(e) => last_error = format!(" (it threw: {e})"),
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = self.text();
        panic!(
            "`{expression}` was not true within {timeout:?}{last_error}; the page's text:\n{text}"
        );
    }

    /// The first 2000 characters of `document.body.innerText`, for messages.
    pub fn text(&self) -> String {
        match self.try_eval("document.body ? document.body.innerText : '(no document.body)'") {
            Ok(Value::String(text)) => text.chars().take(2000).collect(),
            other => format!("(could not read it: {other:?})"),
        }
    }

    /// A PNG of the whole page (not just the viewport), written to `path`
    /// (its directories are created) and returned.
    pub fn screenshot(&self, path: impl AsRef<Path>) -> Vec<u8> {
        let path = path.as_ref();
        let params = json!({"format": "png", "captureBeyondViewport": true});
        let shot = self.call("Page.captureScreenshot", params);
        let png = base64::engine::general_purpose::STANDARD.decode(str_of(&shot["data"]));
        let png = png.unwrap_or_else(|e| panic!("Page.captureScreenshot's base64: {e}"));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let created = std::fs::create_dir_all(dir);
            created.unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        png
    }

    /// Every console error, failed assertion, uncaught exception and error log
    /// entry (such as a failed resource load) this page reported so far.
    pub fn console_errors(&self) -> Vec<String> {
        self.cdp.events(&self.session, |e| e.errors.clone())
    }

    /// Emulates a `width`×`height` screen at device scale factor 1. Note that
    /// a `mobile` page without `<meta name="viewport">` lays out 980 px wide.
    pub fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        let params = json!({"width": width, "height": height,
            "deviceScaleFactor": 1, "mobile": mobile});
        self.call("Emulation.setDeviceMetricsOverride", params);
    }

    /// Scrolls the element into view and clicks it (`el.click()`).
    pub fn click(&self, selector: &str) {
        let script = "el.scrollIntoView({block: 'center'}); el.click();";
        self.on_element("click", selector, script);
    }

    /// Focuses the element, sets its value and fires `input` and `change`.
    pub fn type_into(&self, selector: &str, text: &str) {
        let script = format!(
            "el.scrollIntoView({{block: 'center'}}); el.focus(); el.value = {};
             el.dispatchEvent(new Event('input', {{bubbles: true}}));
             el.dispatchEvent(new Event('change', {{bubbles: true}}));",
            json!(text)
        );
        self.on_element("type into", selector, &script);
    }

    /// Runs `script` with `el` bound to the first element matching `selector`.
    fn on_element(&self, what: &str, selector: &str, script: &str) {
        let selector_js = json!(selector);
        let found = self.eval(&format!(
            "(() => {{ const el = document.querySelector({selector_js});
                if (!el) return false; {script} return true; }})()"
        ));
        if found != Value::Bool(true) {
            let text = self.text();
            panic!("cannot {what} `{selector}`: no element matches; the page's text:\n{text}");
        }
    }

    /// Presses and releases a key: one of `KEYS` ("Enter", "Tab", "Escape",
    /// "ArrowDown", ...), a letter or a digit, optionally after "Shift+".
    pub fn press_key(&self, key: &str) {
        let (modifiers, name) = key.strip_prefix("Shift+").map_or((0, key), |k| (8, k));
        let (key, code, key_code, text) = key_definition(name);
        // Like Puppeteer: a key that types text goes down as "keyDown".
        let down = if text.is_empty() {
            "rawKeyDown"
        } else {
            "keyDown"
        };
        for kind in [down, "keyUp"] {
            let mut params = json!({"type": kind, "key": key, "code": code,
                "modifiers": modifiers, "windowsVirtualKeyCode": key_code});
            if kind == "keyDown" {
                params["text"] = json!(text);
                params["unmodifiedText"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", params);
        }
    }
}

/// Named keys: their DOM `code` (also their `key`, but for Space), Windows
/// virtual key code and the text they type.
#[rustfmt::skip]
const KEYS: &[(&str, u32, &str)] = &[
    ("Enter", 13, "\r"), ("Tab", 9, ""), ("Escape", 27, ""), ("Space", 32, " "),
    ("Backspace", 8, ""), ("Delete", 46, ""), ("PageUp", 33, ""), ("PageDown", 34, ""),
    ("End", 35, ""), ("Home", 36, ""), ("ArrowLeft", 37, ""), ("ArrowUp", 38, ""),
    ("ArrowRight", 39, ""), ("ArrowDown", 40, ""),
];

/// A key's DOM `key`, `code`, Windows virtual key code and the text it types.
fn key_definition(name: &str) -> (&str, String, u32, &str) {
    if let Some(&(code, key_code, text)) = KEYS.iter().find(|k| k.0 == name) {
        return (
            if name == "Space" { " " } else { name },
            code.into(),
            key_code,
            text,
        );
    }
    let mut chars = name.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphanumeric() => {
            let upper = c.to_ascii_uppercase();
            let code = if c.is_ascii_digit() { "Digit" } else { "Key" };
            (name, format!("{code}{upper}"), u32::from(upper), name)
        }
        _ => panic!("press_key does not know the key {name:?}"),
    }
}
