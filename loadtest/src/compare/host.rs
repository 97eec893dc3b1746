//! Facts about the machine and this invocation for the report's header: cores, CPU
//! model, kernel, the command line, whether pinning is possible, proxy versions.

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::Command;

use super::configs;
use super::procs::{Pinning, which};
use super::proxies::Programs;
use super::report::Machine;

/// Pinning if `taskset` exists and there are two cores, and how it was decided.
pub fn pinning(nproc: usize) -> (Pinning, String) {
    match which("taskset") {
        Some(_) if nproc < 2 => (
            Pinning { taskset: None },
            format!("NOT pinned: only {nproc} core(s); results are not comparable"),
        ),
        Some(taskset) => (
            Pinning {
                taskset: Some(taskset),
            },
            "taskset: load generator, backends and this harness on core 0; the proxy \
             (all its threads/workers) on core 1"
                .to_string(),
        ),
        None => (
            Pinning { taskset: None },
            "NOT pinned: taskset not found (apt-get install -y util-linux); proxy and \
             load generator compete for the same cores"
                .to_string(),
        ),
    }
}

/// One line per proxy: its version, or why it is missing.
pub fn tool_lines(programs: &Programs) -> Vec<String> {
    let mut lines = vec![format!(
        "stagegate: {} ({})",
        programs.stagegate.display(),
        version(&programs.stagegate, "--version")
    )];
    for (name, program, flag, package) in [
        ("nginx", &programs.nginx, "-v", "nginx-light"),
        ("haproxy", &programs.haproxy, "-v", "haproxy"),
    ] {
        lines.push(match program {
            Some(path) => format!("{name}: {} ({})", path.display(), version(path, flag)),
            None => format!(
                "{name}: not installed (apt-get install -y {package}); its rows are skipped"
            ),
        });
    }
    let maxconn = configs::haproxy_maxconn(configs::fd_hard_limit());
    if programs.haproxy.is_some() && maxconn < 100_000 {
        lines.push(format!(
            "haproxy maxconn lowered from 100000 to {maxconn} to fit the open-files hard limit"
        ));
    }
    for line in &lines {
        eprintln!("loadtest compare: {line}");
    }
    lines
}

/// The first line a program prints for `flag` (nginx prints to stderr).
fn version(program: &Path, flag: &str) -> String {
    let Ok(output) = Command::new(program).arg(flag).output() else {
        return "version unknown".to_string();
    };
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("version unknown")
        .to_string()
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".to_string()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |text| text.trim().to_string()),
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    let line = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// This process's arguments as a shell would take them.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().map(|arg| shell_quote(&arg)).collect();
    args.join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_and_quoting() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor: 0\n"), None);
        assert_eq!(shell_quote("--cases"), "--cases");
        assert_eq!(shell_quote("plain-64,canary"), "plain-64,canary");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
