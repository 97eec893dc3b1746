//! Child processes for a comparison: pinning with `taskset`, a guard that stops a
//! process (SIGTERM, then SIGKILL) when dropped, free ports, and reading CPU time
//! and peak RSS of a process tree from `/proc`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use super::CompareError;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);

/// Which core a process runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Core {
    /// Load generator, backends and this process.
    Load,
    /// The proxy under test (all of its threads or workers).
    Proxy,
}

impl Core {
    pub fn list(self) -> &'static str {
        match self {
            Core::Load => "0",
            Core::Proxy => "1",
        }
    }
}

/// Whether processes are pinned; `taskset` is `None` when it is missing or the
/// machine has fewer than two cores.
#[derive(Debug, Clone)]
pub struct Pinning {
    pub taskset: Option<PathBuf>,
}

impl Pinning {
    /// A command for `program`, pinned to `core` when pinning is on.
    pub fn command(&self, core: Core, program: impl AsRef<OsStr>) -> Command {
        match &self.taskset {
            Some(taskset) => {
                let mut command = Command::new(taskset);
                command.arg("-c").arg(core.list()).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// Pins every thread of this process to the load core (children inherit it
    /// unless they are pinned elsewhere).
    pub fn pin_self(&self) -> Result<(), CompareError> {
        let Some(taskset) = &self.taskset else {
            return Ok(());
        };
        let pid = std::process::id().to_string();
        let status = Command::new(taskset)
            .args(["-a", "-p", "-c", Core::Load.list(), &pid])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|source| CompareError::spawn("taskset -p", source))?;
        if status.success() {
            Ok(())
        } else {
            Err(CompareError::Setup(format!(
                "taskset could not pin this process to core 0 ({status})"
            )))
        }
    }
}

/// The first executable called `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The stagegate binary: `explicit`, or `stagegate` next to this executable.
pub fn stagegate_binary(explicit: Option<&Path>) -> Result<PathBuf, CompareError> {
    let stagegate = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|source| CompareError::io("locating this executable", source))?
            .with_file_name("stagegate"),
    };
    if !stagegate.is_file() {
        return Err(CompareError::NoStagegate(stagegate));
    }
    Ok(stagegate)
}

/// A port that was free a moment ago on 127.0.0.1 (bound to port 0, then closed).
pub fn free_addr() -> Result<SocketAddr, CompareError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|source| CompareError::io("binding a free port", source))?;
    listener
        .local_addr()
        .map_err(|source| CompareError::io("reading a free port", source))
}

/// A running child process, stopped when the guard is dropped.
#[derive(Debug)]
pub struct ProcessGuard {
    name: String,
    child: Child,
}

impl ProcessGuard {
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Self, CompareError> {
        let name = name.into();
        let child = command
            .spawn()
            .map_err(|source| CompareError::spawn(&name, source))?;
        Ok(ProcessGuard { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        terminate(self.child.id());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            thread::sleep(POLL);
        }
        eprintln!(
            "loadtest compare: {} ignored SIGTERM; killing it",
            self.name
        );
        // Errors mean it exited in the meantime; there is nothing else to do.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions;
    // `pid` is our own unreaped child, so it cannot name a recycled process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Clock ticks per second for `/proc/PID/stat` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `(ppid, utime + stime)` from the text of `/proc/PID/stat`. The command name is
/// in parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ppid (4), ..., utime (14), stime (15).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `VmHWM` (peak resident set) in KiB from the text of `/proc/PID/status`.
pub fn parse_vm_hwm(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Every live process's `(ppid, cpu ticks)`, by pid.
fn process_table() -> HashMap<u32, (u32, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&text)?))
        })
        .collect()
}

/// `root` and all of its descendants, with their CPU ticks.
fn tree(root: u32) -> Vec<(u32, u64)> {
    let table = process_table();
    let mut found = Vec::new();
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        let Some(&(_, ticks)) = table.get(&pid) else {
            continue;
        };
        found.push((pid, ticks));
        pending.extend(
            table
                .iter()
                .filter(|(_, (ppid, _))| *ppid == pid)
                .map(|(&child, _)| child),
        );
    }
    found
}

/// User plus system CPU seconds of `root` and its descendants (nginx workers).
pub fn tree_cpu_seconds(root: u32, ticks_per_second: f64) -> f64 {
    let ticks: u64 = tree(root).iter().map(|&(_, ticks)| ticks).sum();
    ticks as f64 / ticks_per_second
}

/// Sum of the peak RSS of `root` and its descendants, in KiB (pages shared between
/// them count once per process).
pub fn tree_peak_rss_kib(root: u32) -> u64 {
    tree(root)
        .iter()
        .filter_map(|&(pid, _)| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|text| parse_vm_hwm(&text))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_awkward_name() {
        let text = "4242 (nginx: worker (x) ) S 4241 4241 4241 0 -1 4194624 1 0 0 0 \
                    150 27 0 0 20 0 1 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat(text), Some((4241, 177)));
    }

    #[test]
    fn stat_of_a_real_process() {
        let text = fs::read_to_string("/proc/self/stat").unwrap();
        let (ppid, _) = parse_stat(&text).unwrap();
        assert!(ppid > 0);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 0").is_none());
    }

    #[test]
    fn vm_hwm() {
        let text = "Name:\tnginx\nVmPeak:\t  20000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(parse_vm_hwm(text), Some(5120));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t12 MB\n"), None);
        let own = fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_vm_hwm(&own).unwrap() > 0);
    }

    #[test]
    fn own_tree_has_cpu_and_memory() {
        let pid = std::process::id();
        assert!(tree(pid).iter().any(|&(p, _)| p == pid));
        assert!(tree_peak_rss_kib(pid) > 0);
        assert!(tree_cpu_seconds(pid, clock_ticks()) >= 0.0);
    }

    #[test]
    fn pinned_commands_go_through_taskset() {
        let pinned = Pinning {
            taskset: Some(PathBuf::from("/usr/bin/taskset")),
        };
        let command = pinned.command(Core::Proxy, "nginx");
        assert_eq!(command.get_program(), "/usr/bin/taskset");
        let args: Vec<&OsStr> = command.get_args().collect();
        assert_eq!(args, ["-c", "1", "nginx"]);
        let unpinned = Pinning { taskset: None }.command(Core::Load, "nginx");
        assert_eq!(unpinned.get_program(), "nginx");
    }

    #[test]
    fn guard_stops_its_process() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let guard = ProcessGuard::spawn("sleep", &mut command).unwrap();
        let pid = guard.pid();
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() < STOP_GRACE);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
