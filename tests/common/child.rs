//! Real servers the tests start as child processes (MLflow, KServe model
//! servers): a free port for them, a start that dies with the test binary, and
//! a wait until they answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A loopback port nothing listens on now, for a server that needs a number.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Spawns `command` in a process group of its own that gets SIGTERM when the
/// test binary exits. Spawned from a thread that lives as long as the binary,
/// so the parent-death signal fires when the binary exits, not when the test
/// that started the server ends.
pub fn spawn_for_the_binary(mut command: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        command.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let _ = tx.send(command.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("the spawning thread answers")
}

/// Kills `child` and every process it started (its process group).
pub fn kill_group(child: &mut Child) {
    let group = i32::try_from(child.id()).unwrap();
    // SAFETY: a plain kill(2) of the process group the child leads.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Waits until `GET path` on `addr` answers 200, or panics with `log()` when
/// `child` exits first or `timeout` passes.
pub fn wait_until_ok(
    what: &str,
    addr: SocketAddr,
    path: &str,
    child: &mut Child,
    timeout: Duration,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if answers_ok(addr, path) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before answering; its log:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{what} did not answer {path} within {timeout:?}; its log:\n{}",
        log()
    );
}

/// Whether `GET path` on `addr` answers 200.
pub fn answers_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// `relative` (a file in a virtual environment under `target/`), once
/// `scripts/install-test-deps` has installed it; the script runs at most once
/// per test binary (it does nothing once everything is installed). Panics
/// saying how to install `what` when that fails.
pub fn installed(relative: &str, what: &str) -> std::path::PathBuf {
    static INSTALL: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let workspace = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = workspace.join("scripts/install-test-deps");
    let ran = INSTALL.get_or_init(|| match Command::new(&script).status() {
        Ok(status) if status.success() => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let path = workspace.join(relative);
    match ran {
        Ok(()) if path.exists() => path,
        outcome => panic!(
            "{what} is needed by these tests and could not be installed ({outcome:?}, {} {}).\n\
             Install it with: {} (it creates the virtual environments under target/ and \
             pip-installs the pinned packages there).",
            path.display(),
            if path.exists() {
                "exists"
            } else {
                "is missing"
            },
            script.display()
        ),
    }
}
