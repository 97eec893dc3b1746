//! A real etcd for tests: Debian's `etcd-server` (installed by
//! `scripts/install-test-deps`), on free loopback ports with data directories
//! of its own: one member (started in about half a second), or a cluster of
//! several for the quorum tests. Set `STAGEGATE_ETCD` to an `etcd` executable
//! to use another install.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::child::{free_port, installed, kill_group, spawn_for_the_binary, wait_until_ok};

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct EtcdServer {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

struct Member {
    client: SocketAddr,
    child: Option<Child>,
}

impl EtcdServer {
    /// A single-member cluster.
    pub fn start() -> EtcdServer {
        EtcdServer::cluster(1)
    }

    /// A cluster of `size` members, each answering once it has a leader.
    pub fn cluster(size: usize) -> EtcdServer {
        let etcd = std::env::var_os("STAGEGATE_ETCD")
            .map_or_else(|| installed("/usr/bin/etcd", "etcd"), PathBuf::from);
        let dir = tempfile::tempdir().expect("a data directory for etcd");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::with_capacity(size);
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))
                .expect("etcd's log file");
            let mut command = Command::new(&etcd);
            command
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .stdout(Stdio::null())
                .stderr(log);
            let child = spawn_for_the_binary(command)
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd.display()));
            members.push(Member {
                client: ([127, 0, 0, 1], *client).into(),
                child: Some(child),
            });
        }
        for (i, member) in members.iter_mut().enumerate() {
            let log_path = dir.path().join(format!("m{i}.log"));
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            let child = member.child.as_mut().expect("just started");
            wait_until_ok("etcd", member.client, "/health", child, START_TIMEOUT, log);
        }
        EtcdServer { members, _dir: dir }
    }

    /// Member `index`'s client address.
    pub fn client_addr(&self, index: usize) -> SocketAddr {
        self.members[index].client
    }

    /// Every member's client URL, as a TOML array's items.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"http://{}\"", m.client))
            .collect();
        urls.join(", ")
    }

    /// Freezes every member (SIGSTOP): they hold their connections and answer
    /// nothing, as members that lost their disk or network would.
    pub fn freeze(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// Kills member `index` (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            kill_group(&mut child);
        }
    }

    fn signal_all(&self, signal: i32) {
        for child in self.members.iter().filter_map(|m| m.child.as_ref()) {
            let pid = i32::try_from(child.id()).expect("a pid fits in i32");
            // SAFETY: kill(2) of an etcd process this server started.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}
