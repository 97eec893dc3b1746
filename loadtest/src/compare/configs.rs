//! The proxies' configuration files, generated from a [`Setup`]: pure functions of
//! addresses and settings, so they are unit-tested without running anything.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// stagegate `worker_threads`, nginx `worker_processes`, haproxy `nbthread`.
    pub threads: usize,
    pub primary: SocketAddr,
    /// stagegate's production version's gRPC listener, when the case sends gRPC
    /// (the `grpc` case; direct load goes there too).
    pub grpc: Option<SocketAddr>,
    /// stagegate's staging version 2 (mirror and canary target); nginx's mirror.
    pub secondary: SocketAddr,
    /// Mirror every request to `secondary`.
    pub shadow: bool,
    /// stagegate: `shadow_priority = "idle"` instead of the default (normal
    /// priority within `shadow_cpu_share`).
    pub idle_priority: bool,
    /// stagegate: sticky canary on `x-user-id`, version 2 at weight 10.
    pub canary: bool,
}

/// Where a started proxy listens.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listen: SocketAddr,
    /// stagegate only.
    pub admin: SocketAddr,
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn stagegate_config(setup: &Setup, ports: &Ports, state_dir: &Path) -> String {
    let mut config = format!(
        "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\nworker_threads = {}\n\
         state_dir = {}\nrequest_timeout_ms = 30000\ndrain_timeout_ms = 1000\n{}\n\
         [[models]]\nname = \"m\"\n\n\
         [[models.versions]]\nversion = \"1\"\nstage = \"production\"\nendpoints = [\"http://{}\"]\n{}\n\
         [[models.versions]]\nversion = \"2\"\nstage = \"staging\"\nendpoints = [\"http://{}\"]\n",
        ports.listen,
        ports.admin,
        setup.threads,
        toml_string(&state_dir.to_string_lossy()),
        if setup.idle_priority {
            "shadow_priority = \"idle\"\n"
        } else {
            ""
        },
        setup.primary,
        setup.grpc.map_or_else(String::new, |grpc| format!(
            "grpc_endpoints = [\"http://{grpc}\"]\n"
        )),
        setup.secondary,
    );
    if setup.shadow {
        config.push_str(
            "\n[models.shadow]\npercent = 100.0\ntimeout_ms = 2000\nmax_in_flight = 256\n",
        );
    }
    if setup.canary {
        config.push_str("\n[models.canary]\nsticky_header = \"x-user-id\"\n");
    }
    config
}

const NGINX_PROXY: &str = "proxy_http_version 1.1;\n            proxy_set_header Connection \"\";";

/// nginx in the foreground; errors logged only at `crit`, so a mirror failing on
/// every request does not turn into a log write per request.
pub fn nginx_config(setup: &Setup, listen: SocketAddr, dir: &Path) -> String {
    let dir = dir.display();
    let (mirror, mirror_location, shadow_upstream) = if setup.shadow {
        (
            "mirror /mirror;\n            mirror_request_body on;\n            ",
            format!(
                "        location = /mirror {{\n            internal;\n            \
                 proxy_pass http://shadow$request_uri;\n            {NGINX_PROXY}\n            \
                 proxy_read_timeout 2s;\n            proxy_connect_timeout 1s;\n        }}\n"
            ),
            format!(
                "    upstream shadow {{\n        server {};\n        keepalive 256;\n        \
                 keepalive_requests 1000000;\n    }}\n",
                setup.secondary
            ),
        )
    } else {
        ("", String::new(), String::new())
    };
    format!(
        "worker_processes {threads};\ndaemon off;\nmaster_process on;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log crit;\n\n\
         events {{\n    worker_connections 16384;\n}}\n\n\
         http {{\n    access_log off;\n    keepalive_requests 1000000;\n    \
         client_body_temp_path {dir}/body;\n    proxy_temp_path {dir}/proxy;\n    \
         fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    \
         scgi_temp_path {dir}/scgi;\n\n    \
         upstream backend {{\n        server {primary};\n        keepalive 256;\n        \
         keepalive_requests 1000000;\n    }}\n{shadow_upstream}\n    \
         server {{\n        listen {listen} backlog=4096;\n\n        \
         location / {{\n            {mirror}proxy_pass http://backend;\n            {NGINX_PROXY}\n        }}\n\
         {mirror_location}    }}\n}}\n",
        threads = setup.threads,
        primary = setup.primary,
    )
}

/// haproxy's `maxconn`: 100,000, or less when the file descriptor hard limit is
/// lower than the two descriptors per connection haproxy reserves (it refuses to
/// start otherwise).
pub fn haproxy_maxconn(fd_hard_limit: Option<u64>) -> u64 {
    const WANTED: u64 = 100_000;
    fd_hard_limit.map_or(WANTED, |limit| WANTED.min(limit.saturating_sub(200) / 2))
}

/// The hard `Max open files` limit from the text of `/proc/self/limits`.
pub fn parse_fd_hard_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn fd_hard_limit() -> Option<u64> {
    parse_fd_hard_limit(&fs::read_to_string("/proc/self/limits").ok()?)
}

pub fn haproxy_config(setup: &Setup, listen: SocketAddr, maxconn: u64) -> String {
    format!(
        "global\n    nbthread {}\n    maxconn {maxconn}\n\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout http-keep-alive 30s\n    http-reuse always\n\n\
         frontend fe\n    bind {listen}\n    default_backend be\n\n\
         backend be\n    server primary {}\n",
        setup.threads, setup.primary
    )
}

/// A proxy ready for load (or the direct path, which has no process).
#[cfg(test)]
mod tests {
    use super::*;

    fn setup(shadow: bool, canary: bool) -> Setup {
        Setup {
            threads: 2,
            primary: "127.0.0.1:7001".parse().unwrap(),
            grpc: None,
            secondary: "127.0.0.1:7002".parse().unwrap(),
            shadow,
            idle_priority: false,
            canary,
        }
    }

    fn ports() -> Ports {
        Ports {
            listen: "127.0.0.1:8001".parse().unwrap(),
            admin: "127.0.0.1:8002".parse().unwrap(),
        }
    }

    #[test]
    fn stagegate_plain_config() {
        let text = stagegate_config(&setup(false, false), &ports(), Path::new("/tmp/x/state"));
        assert!(text.contains("listen = \"127.0.0.1:8001\""));
        assert!(text.contains("admin_listen = \"127.0.0.1:8002\""));
        assert!(text.contains("worker_threads = 2"));
        assert!(text.contains("state_dir = \"/tmp/x/state\""));
        assert!(text.contains("request_timeout_ms = 30000"));
        assert!(text.contains("stage = \"production\"\nendpoints = [\"http://127.0.0.1:7001\"]"));
        assert!(text.contains("stage = \"staging\"\nendpoints = [\"http://127.0.0.1:7002\"]"));
        assert!(!text.contains("[models.shadow]"));
        assert!(!text.contains("[models.canary]"));
    }

    #[test]
    fn stagegate_shadow_and_canary_sections() {
        let shadow = stagegate_config(&setup(true, false), &ports(), Path::new("s"));
        assert!(
            shadow.contains(
                "[models.shadow]\npercent = 100.0\ntimeout_ms = 2000\nmax_in_flight = 256"
            )
        );
        assert!(!shadow.contains("shadow_priority"));
        let idle = Setup {
            idle_priority: true,
            ..setup(true, false)
        };
        let idle = stagegate_config(&idle, &ports(), Path::new("s"));
        assert!(idle.contains("drain_timeout_ms = 1000\nshadow_priority = \"idle\"\n\n"));
        let canary = stagegate_config(&setup(false, true), &ports(), Path::new("s"));
        assert!(canary.contains("[models.canary]\nsticky_header = \"x-user-id\""));
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn nginx_plain_config() {
        let text = nginx_config(&setup(false, false), ports().listen, Path::new("/tmp/n"));
        assert!(text.starts_with("worker_processes 2;\ndaemon off;"));
        assert!(text.contains("pid /tmp/n/nginx.pid;"));
        assert!(text.contains("error_log /tmp/n/error.log crit;"));
        assert!(text.contains("access_log off;"));
        assert!(text.contains("server 127.0.0.1:7001;\n        keepalive 256;"));
        assert!(text.contains("listen 127.0.0.1:8001"));
        assert!(text.contains("proxy_pass http://backend;"));
        assert!(text.contains("proxy_set_header Connection \"\";"));
        assert!(!text.contains("mirror"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn nginx_mirror_config() {
        let text = nginx_config(&setup(true, false), ports().listen, Path::new("/tmp/n"));
        assert!(text.contains("mirror /mirror;\n            mirror_request_body on;"));
        assert!(text.contains("location = /mirror {\n            internal;"));
        assert!(text.contains("proxy_pass http://shadow$request_uri;"));
        assert!(text.contains("upstream shadow {\n        server 127.0.0.1:7002;"));
        assert!(text.contains("proxy_read_timeout 2s;"));
        assert!(text.contains("proxy_connect_timeout 1s;"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn haproxy_config_text() {
        let text = haproxy_config(&setup(false, false), ports().listen, 100_000);
        assert!(text.contains("nbthread 2"));
        assert!(text.contains("maxconn 100000"));
        assert!(text.contains("mode http"));
        assert!(text.contains("http-reuse always"));
        assert!(text.contains("bind 127.0.0.1:8001"));
        assert!(text.contains("server primary 127.0.0.1:7001"));
    }

    #[test]
    fn haproxy_maxconn_fits_the_fd_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 20000                files\n";
        assert_eq!(parse_fd_hard_limit(limits), Some(20000));
        assert_eq!(
            parse_fd_hard_limit("Max open files  1024  unlimited  files\n"),
            None
        );
        assert_eq!(haproxy_maxconn(Some(20000)), 9900);
        assert_eq!(haproxy_maxconn(Some(1 << 20)), 100_000);
        assert_eq!(haproxy_maxconn(None), 100_000);
    }

    #[test]
    fn the_grpc_case_gives_production_its_grpc_listener() {
        let grpc = Setup {
            grpc: Some("127.0.0.1:7003".parse().unwrap()),
            ..setup(false, false)
        };
        let text = stagegate_config(&grpc, &ports(), Path::new("/tmp/s"));
        assert!(text.contains("endpoints = [\"http://127.0.0.1:7001\"]\ngrpc_endpoints = [\"http://127.0.0.1:7003\"]"), "{text}");
        stagegate::config::Config::parse(&text, "t").unwrap();
        let plain = stagegate_config(&setup(false, false), &ports(), Path::new("/tmp/s"));
        assert!(!plain.contains("grpc_endpoints"));
    }
}
