//! Admin authentication: bearer tokens, each with a name that becomes the actor
//! recorded in the journal.
//!
//! Tokens come from `admin.token_file` (one per line: `name:token`, or a bare
//! token named `admin`; `#` starts a comment) and from the environment variable
//! `STAGEGATE_ADMIN_TOKEN` (same forms). With no token at all, the admin listener
//! must be on a loopback address, where only local users reach it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::HeaderValue;

use crate::config::AdminConfig;

pub const TOKEN_ENV: &str = "STAGEGATE_ADMIN_TOKEN";
/// The actor of changes made without a token (loopback-only admin) or by the
/// gateway itself.
pub const SYSTEM_ACTOR: &str = "system";
const DEFAULT_NAME: &str = "admin";
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read admin token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} line {line}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        message: String,
    },
    #[error(
        "the admin listener {addr} is not a loopback address and no admin token is configured; \
         set admin.token_file or {TOKEN_ENV}, or listen on 127.0.0.1"
    )]
    InsecureAdmin { addr: SocketAddr },
}

/// The configured tokens. `Debug` never shows the secrets.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

/// Who is calling, if allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authenticated with the named token.
    Token(String),
    /// No tokens are configured (loopback-only admin).
    Local,
}

impl Caller {
    /// The actor recorded in the journal.
    pub fn actor(&self) -> &str {
        match self {
            Caller::Token(name) => name,
            Caller::Local => SYSTEM_ACTOR,
        }
    }
}

impl Tokens {
    /// Tokens from the config's token file and the environment.
    pub fn load(config: &AdminConfig) -> Result<Tokens, AuthError> {
        let env = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty());
        Tokens::from_sources(config.token_file.as_deref(), env.as_deref())
    }

    pub fn from_sources(file: Option<&Path>, env: Option<&str>) -> Result<Tokens, AuthError> {
        let mut tokens = Tokens::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            tokens.add_lines(&text, &path.display().to_string())?;
        }
        if let Some(value) = env {
            tokens.add_lines(value, TOKEN_ENV)?;
        }
        Ok(tokens)
    }

    fn add_lines(&mut self, text: &str, origin: &str) -> Result<(), AuthError> {
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |message: String| AuthError::Invalid {
                origin: origin.to_string(),
                line: index + 1,
                message,
            };
            let (name, secret) = line.split_once(':').unwrap_or((DEFAULT_NAME, line));
            let (name, secret) = (name.trim(), secret.trim());
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
            {
                return Err(invalid(format!(
                    "token name {name:?} must be letters, digits or -_.@"
                )));
            }
            if secret.len() < MIN_TOKEN_LEN {
                return Err(invalid(format!(
                    "the token of {name:?} is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            if self
                .entries
                .iter()
                .any(|(n, s)| n == name || s == secret.as_bytes())
            {
                return Err(invalid(format!(
                    "token {name:?} is a duplicate (same name or same secret)"
                )));
            }
            self.entries
                .push((name.to_string(), secret.as_bytes().to_vec()));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Refuses an admin listener reachable from other hosts when no token guards it.
    pub fn check_exposure(&self, admin_addr: SocketAddr) -> Result<(), AuthError> {
        if self.is_empty() && !admin_addr.ip().is_loopback() {
            return Err(AuthError::InsecureAdmin { addr: admin_addr });
        }
        Ok(())
    }

    /// The caller named by an `Authorization: Bearer <token>` header, or `None`.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Option<Caller> {
        if self.is_empty() {
            return Some(Caller::Local);
        }
        let presented = authorization?.as_bytes().strip_prefix(b"Bearer ")?;
        // Compare against every token, in time independent of where they differ.
        let mut found = None;
        for (name, secret) in &self.entries {
            if constant_time_eq(secret, presented) {
                found = Some(name);
            }
        }
        found.map(|name| Caller::Token(name.clone()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice-0123456789abcdef";
    const CI: &str = "ci-token-0123456789abcdef";

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn named_and_bare_tokens_authenticate_as_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, format!("# operators\nalice:{ALICE}\n\n{CI}\n")).unwrap();
        let tokens =
            Tokens::from_sources(Some(&file), Some(&format!("deploy-bot:{}", "d".repeat(20))))
                .unwrap();
        assert_eq!(
            tokens.authenticate(Some(&bearer(ALICE))),
            Some(Caller::Token("alice".into()))
        );
        assert_eq!(
            tokens.authenticate(Some(&bearer(CI))),
            Some(Caller::Token("admin".into()))
        );
        assert_eq!(
            tokens
                .authenticate(Some(&bearer(&"d".repeat(20))))
                .unwrap()
                .actor(),
            "deploy-bot"
        );
        assert_eq!(
            tokens.authenticate(Some(&bearer("wrong-0123456789abcdef"))),
            None
        );
        assert_eq!(
            tokens.authenticate(Some(&HeaderValue::from_static("Basic abc"))),
            None
        );
        assert_eq!(tokens.authenticate(None), None);
        assert!(!format!("{tokens:?}").contains(ALICE));
    }

    #[test]
    fn weak_or_duplicate_tokens_are_refused_with_their_line() {
        for (text, needle) in [
            ("short", "shorter than 16"),
            ("a b:0123456789abcdef0", "token name"),
            (&format!("x:{ALICE}\ny:{ALICE}"), "duplicate"),
        ] {
            let error = Tokens::from_sources(None, Some(text))
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
            assert!(error.starts_with(TOKEN_ENV), "{error}");
        }
    }

    #[test]
    fn without_tokens_only_loopback_is_allowed() {
        let none = Tokens::default();
        assert!(
            none.check_exposure("127.0.0.1:8081".parse().unwrap())
                .is_ok()
        );
        assert!(none.check_exposure("[::1]:8081".parse().unwrap()).is_ok());
        let error = none
            .check_exposure("0.0.0.0:8081".parse().unwrap())
            .unwrap_err();
        assert!(
            error.to_string().contains("not a loopback address"),
            "{error}"
        );
        assert_eq!(none.authenticate(None), Some(Caller::Local));
        let some = Tokens::from_sources(None, Some(ALICE)).unwrap();
        assert!(some.check_exposure("0.0.0.0:8081".parse().unwrap()).is_ok());
    }
}
