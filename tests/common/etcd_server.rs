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
    etcd: PathBuf,
    dir: tempfile::TempDir,
}

struct Member {
    client: SocketAddr,
    /// Its command line after the executable, to start it again.
    args: Vec<String>,
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
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let args = vec![
                    format!("--name=m{i}"),
                    format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new".to_string(),
                ];
                Member {
                    client: ([127, 0, 0, 1], *client).into(),
                    args,
                    child: None,
                }
            })
            .collect();
        let mut server = EtcdServer { members, etcd, dir };
        for index in 0..size {
            server.spawn(index);
        }
        for index in 0..size {
            server.wait_for(index);
        }
        server
    }

    /// Starts member `index` again on its data directory, after [`kill`](Self::kill).
    pub fn restart(&mut self, index: usize) {
        self.spawn(index);
        self.wait_for(index);
    }

    fn spawn(&mut self, index: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("etcd's log file");
        let member = &mut self.members[index];
        let mut command = Command::new(&self.etcd);
        command.args(&member.args).stdout(Stdio::null()).stderr(log);
        let child = spawn_for_the_binary(command)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.etcd.display()));
        member.child = Some(child);
    }

    fn wait_for(&mut self, index: usize) {
        let log_path = self.log_path(index);
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let member = &mut self.members[index];
        let child = member.child.as_mut().expect("just started");
        wait_until_ok("etcd", member.client, "/health", child, START_TIMEOUT, log);
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("m{index}.log"))
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
