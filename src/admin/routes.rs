//! The admin API's paths under `/api/v1`, and which method each accepts.

use http::Method;

/// One admin API endpoint, with the path parameters it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    Models,
    Model(String),
    Register(String),
    Transition(String, String),
    Rollback(String),
    History(String),
    Reload,
}

pub const API_PREFIX: &str = "/api/v1";

impl ApiRoute {
    /// The route of a path under `/api/v1`, or `None`.
    pub fn parse(path: &str) -> Option<ApiRoute> {
        let rest = path.strip_prefix(API_PREFIX)?.strip_prefix('/')?;
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let owned = |s: &str| s.to_string();
        Some(match segments.as_slice() {
            ["models"] => ApiRoute::Models,
            ["models", m] if !m.is_empty() => ApiRoute::Model(owned(m)),
            ["models", m, "versions"] => ApiRoute::Register(owned(m)),
            ["models", m, "versions", v, "transition"] => ApiRoute::Transition(owned(m), owned(v)),
            ["models", m, "rollback"] => ApiRoute::Rollback(owned(m)),
            ["models", m, "history"] => ApiRoute::History(owned(m)),
            ["reload"] => ApiRoute::Reload,
            _ => return None,
        })
    }

    /// The one method this route accepts: POST for changes, GET for reads.
    pub fn method(&self) -> Method {
        match self {
            ApiRoute::Models | ApiRoute::Model(_) | ApiRoute::History(_) => Method::GET,
            ApiRoute::Register(_)
            | ApiRoute::Transition(..)
            | ApiRoute::Rollback(_)
            | ApiRoute::Reload => Method::POST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_route() {
        let cases = [
            ("/api/v1/models", ApiRoute::Models),
            ("/api/v1/models/", ApiRoute::Models),
            ("/api/v1/models/fraud", ApiRoute::Model("fraud".into())),
            (
                "/api/v1/models/fraud/versions",
                ApiRoute::Register("fraud".into()),
            ),
            (
                "/api/v1/models/fraud/versions/3/transition",
                ApiRoute::Transition("fraud".into(), "3".into()),
            ),
            (
                "/api/v1/models/fraud/rollback",
                ApiRoute::Rollback("fraud".into()),
            ),
            (
                "/api/v1/models/fraud/history",
                ApiRoute::History("fraud".into()),
            ),
            ("/api/v1/reload", ApiRoute::Reload),
        ];
        for (path, route) in cases {
            assert_eq!(ApiRoute::parse(path), Some(route), "{path}");
        }
        for path in [
            "/api/v1",
            "/api/v2/models",
            "/api/v1/nope",
            "/api/v1/models/m/versions/3",
            "/api/v1models",
        ] {
            assert_eq!(ApiRoute::parse(path), None, "{path}");
        }
    }

    #[test]
    fn changes_are_post_and_reads_are_get() {
        assert_eq!(ApiRoute::Reload.method(), Method::POST);
        assert_eq!(ApiRoute::Rollback("m".into()).method(), Method::POST);
        assert_eq!(ApiRoute::History("m".into()).method(), Method::GET);
    }
}
