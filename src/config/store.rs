//! `[store]`: where control-plane state is kept. `file` (the default) is the
//! state directory of one process; `etcd` is one state shared by every replica
//! that names the same etcd cluster and prefix.

use std::time::Duration;

use super::raw::RawStore;
use super::registry::Secret;
use super::validate::{Errors, positive};
use crate::vocab::EndpointUrl;

pub const DIAL_TIMEOUT_MS: u64 = 2_000;
pub const LEASE_TTL_S: u64 = 10;

/// Where control-plane state is kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StoreConfig {
    /// `server.state_dir`, locked by one process.
    #[default]
    File,
    Etcd(EtcdConfig),
}

/// An etcd cluster and the key prefix this stagegate cluster owns in it.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members; calls go to the first that answers.
    pub endpoints: Vec<EndpointUrl>,
    /// Starts with `/`, no trailing `/` (`/stagegate/prod`).
    pub prefix: String,
    /// The longest wait for one etcd call; a write refused for want of etcd is
    /// answered within this (plus a margin).
    pub dial_timeout: Duration,
    /// How long a replica's lease (its leadership, its published measurements)
    /// outlives the replica.
    pub lease_ttl: Duration,
    pub auth: Option<(String, Secret)>,
}

pub(super) fn validate_store(raw: Option<&RawStore>, errors: &mut Errors) -> StoreConfig {
    let Some(raw) = raw else {
        return StoreConfig::File;
    };
    match raw.kind.as_deref().unwrap_or("file") {
        "file" => {
            let etcd_only = [
                ("endpoints", raw.endpoints.is_some()),
                ("prefix", raw.prefix.is_some()),
                ("dial_timeout_ms", raw.dial_timeout_ms.is_some()),
                ("lease_ttl_s", raw.lease_ttl_s.is_some()),
                ("username", raw.username.is_some()),
                ("password_env", raw.password_env.is_some()),
            ];
            for (field, set) in etcd_only {
                if set {
                    errors.push(format!("store.{field}"), "only for kind = \"etcd\"");
                }
            }
            StoreConfig::File
        }
        "etcd" => validate_etcd(raw, errors).map_or(StoreConfig::File, StoreConfig::Etcd),
        other => {
            errors.push(
                "store.kind",
                format!("unknown store kind {other:?} (use \"file\" or \"etcd\")"),
            );
            StoreConfig::File
        }
    }
}

fn validate_etcd(raw: &RawStore, errors: &mut Errors) -> Option<EtcdConfig> {
    let before = errors.len();
    let endpoints = endpoints(raw.endpoints.as_deref(), errors);
    let prefix = prefix(raw.prefix.as_deref(), errors);
    let dial = positive(
        raw.dial_timeout_ms,
        DIAL_TIMEOUT_MS,
        "store.dial_timeout_ms",
        errors,
    );
    let ttl = positive(raw.lease_ttl_s, LEASE_TTL_S, "store.lease_ttl_s", errors);
    let auth = auth(raw, errors);
    (errors.len() == before).then(|| EtcdConfig {
        endpoints,
        prefix: prefix.unwrap_or_default(),
        dial_timeout: Duration::from_millis(dial.unwrap_or(DIAL_TIMEOUT_MS)),
        lease_ttl: Duration::from_secs(ttl.unwrap_or(LEASE_TTL_S)),
        auth: auth.flatten(),
    })
}

fn endpoints(raw: Option<&[String]>, errors: &mut Errors) -> Vec<EndpointUrl> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        errors.push(
            "store.endpoints",
            "needs at least one etcd client URL (e.g. [\"http://127.0.0.1:2379\"])",
        );
        return Vec::new();
    };
    let mut valid = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        match EndpointUrl::parse(text) {
            Ok(url) if url.path_prefix().is_empty() => valid.push(url),
            Ok(_) => errors.push(format!("store.endpoints[{i}]"), "an etcd URL has no path"),
            Err(error) => errors.push(format!("store.endpoints[{i}]"), error.to_string()),
        }
    }
    valid
}

fn prefix(raw: Option<&str>, errors: &mut Errors) -> Option<String> {
    let Some(prefix) = raw else {
        errors.push(
            "store.prefix",
            "needs the key prefix this cluster owns in etcd (e.g. \"/stagegate/prod\")",
        );
        return None;
    };
    let well_formed = prefix.starts_with('/')
        && prefix.len() > 1
        && !prefix.ends_with('/')
        && prefix.bytes().all(|b| b.is_ascii_graphic());
    if !well_formed {
        errors.push(
            "store.prefix",
            format!("{prefix:?} must start with '/', not end with one, and hold no spaces"),
        );
        return None;
    }
    Some(prefix.to_string())
}

/// `Some(None)`: no auth; `None`: an error was pushed.
fn auth(raw: &RawStore, errors: &mut Errors) -> Option<Option<(String, Secret)>> {
    match (&raw.username, &raw.password_env) {
        (None, None) => Some(None),
        (Some(user), Some(env)) => match std::env::var(env) {
            Ok(password) if !password.is_empty() => {
                Some(Some((user.clone(), Secret::new(password))))
            }
            _ => {
                errors.push(
                    "store.password_env",
                    format!("environment variable {env} is not set (it holds the etcd password)"),
                );
                None
            }
        },
        _ => {
            errors.push(
                "store.username",
                "username and password_env go together (etcd authenticates with both)",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(store: &str) -> Result<Config, Vec<String>> {
        Config::parse(&format!("[store]\n{store}"), "test")
            .map_err(|e| e.field_errors().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn etcd_is_validated_with_defaults() {
        let config = parse(
            "kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nprefix = \"/stagegate/prod\"",
        )
        .unwrap();
        let StoreConfig::Etcd(etcd) = config.store else {
            panic!("{:?}", config.store)
        };
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.prefix, "/stagegate/prod");
        assert_eq!(etcd.dial_timeout, Duration::from_millis(DIAL_TIMEOUT_MS));
        assert_eq!(etcd.lease_ttl, Duration::from_secs(LEASE_TTL_S));
        assert_eq!(Config::parse("", "t").unwrap().store, StoreConfig::File);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = parse(
            "kind = \"etcd\"\nendpoints = [\"https://x:2379\", \"http://x:2379/v3\"]\nprefix = \"stagegate/\"\nlease_ttl_s = 0\nusername = \"u\"",
        )
        .unwrap_err();
        let fields: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "store.endpoints[0]",
                "store.endpoints[1]",
                "store.prefix",
                "store.lease_ttl_s",
                "store.username"
            ],
            "{errors:?}"
        );
        assert_eq!(
            parse("kind = \"zookeeper\"").unwrap_err(),
            ["store.kind: unknown store kind \"zookeeper\" (use \"file\" or \"etcd\")"]
        );
        assert_eq!(
            parse("prefix = \"/x\"").unwrap_err(),
            ["store.prefix: only for kind = \"etcd\""]
        );
        assert!(
            parse("kind = \"etcd\"").unwrap_err().len() == 2,
            "endpoints and prefix"
        );
    }
}
