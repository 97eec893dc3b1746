//! The DevTools connection under [`super::Browser`]: one WebSocket to the
//! browser carries every tab's commands (the flat session model: each command
//! names its tab's `sessionId`). A thread owns the socket: it sends the commands
//! callers queue, hands each answer to the caller waiting for its `id`, and
//! records events per session. Every command has a timeout.

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::{POLL, TIMEOUT};

pub(super) type Reply = Result<Value, String>;

/// The DevTools connection to the browser.
pub(super) struct Cdp {
    outgoing: mpsc::Sender<String>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

/// What the socket thread shares with callers.
struct Shared {
    /// Callers waiting for an answer, by command id; `None` once the socket closed.
    pending: Mutex<Option<HashMap<u64, mpsc::Sender<Reply>>>>,
    events: Mutex<HashMap<String, Events>>,
}

/// What one tab reported so far.
#[derive(Default)]
pub(super) struct Events {
    pub(super) errors: Vec<String>,
    /// The loader ids (navigations) whose `load` lifecycle event fired.
    pub(super) loaded: HashSet<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cdp {
    pub(super) fn connect(url: &str) -> Cdp {
        let port: u16 = (url.strip_prefix("ws://127.0.0.1:"))
            .and_then(|rest| rest.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("Chromium's DevTools URL {url} is not on 127.0.0.1"));
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to Chromium's DevTools at {url}: {e}"));
        let timeout = stream.set_read_timeout(Some(TIMEOUT));
        timeout.expect("set the DevTools socket's read timeout");
        let config = WebSocketConfig::default().max_message_size(Some(1 << 30));
        let config = config.max_frame_size(Some(1 << 30));
        let (socket, _) = tungstenite::client::client_with_config(url, stream, Some(config))
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        let poll = socket.get_ref().set_read_timeout(Some(POLL));
        poll.expect("set the DevTools socket's poll timeout");
        let pending = Mutex::new(Some(HashMap::new()));
        let shared = Arc::new(Shared {
            pending,
            events: Mutex::default(),
        });
        let (outgoing, queue) = mpsc::channel();
        let for_pump = Arc::clone(&shared);
        std::thread::spawn(move || pump(socket, &queue, &for_pump));
        Cdp {
            outgoing,
            shared,
            next_id: AtomicU64::new(1),
        }
    }

    pub(super) fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn try_call(&self, session: Option<&str>, method: &str, params: Value) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let closed = format!("CDP {method}: Chromium closed the DevTools connection");
        lock(&self.shared.pending)
            .as_mut()
            .ok_or(&closed)?
            .insert(id, tx);
        self.send(id, session, method, params);
        match rx.recv_timeout(TIMEOUT) {
            Ok(reply) => reply.map_err(|e| format!("CDP {method} failed: {e}")),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.shared.pending).as_mut().map(|p| p.remove(&id));
                Err(format!("CDP {method}: no answer within {TIMEOUT:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => Err(closed),
        }
    }

    /// Sends a command whose answer nobody waits for (closing a tab on drop).
    pub(super) fn notify(&self, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(id, None, method, params);
    }

    /// Queues a command without waiting for its answer.
    fn send(&self, id: u64, session: Option<&str>, method: &str, params: Value) {
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        // When the socket thread is gone, the caller's wait ends at once.
        let _ = self.outgoing.send(message.to_string());
    }

    pub(super) fn events<T>(&self, session: &str, read: impl FnOnce(&Events) -> T) -> T {
        read(lock(&self.shared.events).entry(session.into()).or_default())
    }
}

/// The socket thread: sends queued commands, routes answers and events, and
/// ends when the socket closes or the `Cdp` is dropped.
fn pump(mut socket: WebSocket<TcpStream>, queue: &mpsc::Receiver<String>, shared: &Shared) {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    while send_queued(&mut socket, queue) {
        match socket.read() {
            Ok(Message::Text(text)) => route(shared, text.as_str()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), WouldBlock | TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = socket.close(None);
    // Dropping the waiting senders wakes their callers.
    lock(&shared.pending).take();
}

/// Sends every queued command; false once the socket or the `Cdp` is gone.
fn send_queued(socket: &mut WebSocket<TcpStream>, queue: &mpsc::Receiver<String>) -> bool {
    loop {
        match queue.try_recv() {
            Ok(text) => {
                if socket.send(Message::text(text)).is_err() {
                    return false;
                }
            }
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
}

fn route(shared: &Shared, text: &str) {
    let Ok(mut message) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if let Some(id) = message["id"].as_u64() {
        let reply = match message.get("error") {
            Some(error) => Err(error.to_string()),
            None => Ok(message["result"].take()),
        };
        if let Some(waiter) = lock(&shared.pending).as_mut().and_then(|p| p.remove(&id)) {
            let _ = waiter.send(reply);
        }
    } else if let Some(session) = message["sessionId"].as_str() {
        let mut events = lock(&shared.events);
        let events = events.entry(session.into()).or_default();
        record(events, str_of(&message["method"]), &message["params"]);
    }
}

fn record(events: &mut Events, method: &str, params: &Value) {
    let error = match method {
        "Page.lifecycleEvent" if params["name"] == "load" => {
            events.loaded.insert(str_of(&params["loaderId"]).into());
            return;
        }
        "Runtime.consoleAPICalled" if matches!(str_of(&params["type"]), "error" | "assert") => {
            let args: Vec<_> = params["args"].as_array().into_iter().flatten().collect();
            let args: Vec<_> = args.into_iter().map(remote_text).collect();
            let frame = &params["stackTrace"]["callFrames"][0];
            let at = location(&frame["url"], &frame["lineNumber"]);
            format!(
                "console.{}: {}{at}",
                str_of(&params["type"]),
                args.join(" ")
            )
        }
        "Runtime.exceptionThrown" => exception_text(&params["exceptionDetails"]),
        "Log.entryAdded" if params["entry"]["level"] == "error" => log_text(&params["entry"]),
        _ => return,
    };
    if !error.is_empty() {
        events.errors.push(error);
    }
}

/// A `Log.LogEntry` as text, or "" for the /favicon.ico Chromium asks for on
/// its own (a page without one is no error).
fn log_text(entry: &Value) -> String {
    if entry["source"] == "network" && str_of(&entry["url"]).ends_with("/favicon.ico") {
        return String::new();
    }
    let at = location(&entry["url"], &entry["lineNumber"]);
    format!(
        "{}: {}{at}",
        str_of(&entry["source"]),
        str_of(&entry["text"])
    )
}

/// A `Runtime.RemoteObject` as text: its value, or its description.
fn remote_text(object: &Value) -> String {
    match object.get("value") {
        Some(Value::String(text)) => text.clone(),
        Some(value) => value.to_string(),
        None => (["description", "unserializableValue", "type"].iter())
            .find_map(|key| object[*key].as_str())
            .unwrap_or("?")
            .to_string(),
    }
}

/// `Runtime.ExceptionDetails` as text ("Uncaught Error: boom (url:line)"),
/// with the first line of the exception's description.
pub(super) fn exception_text(details: &Value) -> String {
    let thrown = details
        .get("exception")
        .map(remote_text)
        .unwrap_or_default();
    let first = thrown.lines().next().unwrap_or("");
    let at = location(&details["url"], &details["lineNumber"]);
    format!("{} {first}{at}", str_of(&details["text"]))
}

/// " (url:line)" with a 1-based line, or "" when the URL is unknown.
fn location(url: &Value, line: &Value) -> String {
    match (str_of(url), line.as_u64()) {
        ("", _) => String::new(),
        (url, Some(line)) => format!(" ({url}:{})", line + 1),
        (url, None) => format!(" ({url})"),
    }
}

pub(super) fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

pub(super) fn text_field(result: &Value, key: &str) -> String {
    let text = result[key].as_str();
    text.unwrap_or_else(|| panic!("CDP answer {result} has no {key}"))
        .into()
}
