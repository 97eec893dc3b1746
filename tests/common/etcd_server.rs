//! A real etcd for tests: Debian's `etcd-server` (installed by
//! `scripts/install-test-deps`), one member on free loopback ports with a data
//! directory of its own, started in about half a second. Set `STAGEGATE_ETCD`
//! to an `etcd` executable to use another install.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::child::{free_port, installed, kill_group, spawn_for_the_binary, wait_until_ok};

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct EtcdServer {
    pub client: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// A single-member cluster.
    pub fn start() -> EtcdServer {
        let etcd = std::env::var_os("STAGEGATE_ETCD")
            .map_or_else(|| installed("/usr/bin/etcd", "etcd"), PathBuf::from);
        let dir = tempfile::tempdir().expect("a data directory for etcd");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd's log file");
        let mut command = Command::new(&etcd);
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = spawn_for_the_binary(command)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd.display()));
        let addr: SocketAddr = ([127, 0, 0, 1], client).into();
        let log_path = dir.path().join("etcd.log");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        wait_until_ok("etcd", addr, "/health", &mut child, START_TIMEOUT, log);
        EtcdServer {
            client: addr,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Freezes etcd (SIGSTOP): it holds its connections and answers nothing,
    /// as a member that lost its disk or its network would.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: kill(2) of the etcd process this server started.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
