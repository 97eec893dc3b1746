//! The real `stagegate` binary as a child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `stagegate serve`; killed (SIGKILL) if dropped while still running.
pub struct Serve {
    child: Option<Child>,
    pub data_addr: String,
    pub admin_addr: String,
    /// Log lines after the start-up line.
    pub log: mpsc::Receiver<String>,
}

pub fn stagegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stagegate"))
}

impl Serve {
    /// Starts `stagegate serve --config path` and waits until it says where it
    /// serves; panics with its log if it exits first.
    pub fn start(config: &Path) -> Serve {
        let mut child = stagegate()
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match log.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("stagegate serving") => {
                    let field = |name: &str| {
                        let rest = line.split(&format!("{name}=")).nth(1).unwrap_or_default();
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string()
                    };
                    return Serve {
                        data_addr: field("data_addr"),
                        admin_addr: field("admin_addr"),
                        child: Some(child),
                        log,
                    };
                }
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("stagegate did not start; its log:\n{}", seen.join("\n"));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal with the shell's builtin kill (no procps needed).
    pub fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.pid())])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL, then reap.
    pub fn kill_hard(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
