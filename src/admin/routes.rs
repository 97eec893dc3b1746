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
    ShadowReport(String),
    SetShadow(String),
    ResetShadow(String),
    SetCanary(String),
    RolloutStatus(String),
    StartRollout(String),
    /// `pause`, `resume`, `abort` or `promote`.
    RolloutAction(String, String),
    Reload,
    /// The external registry's sync state.
    Registry,
    /// Poll the external registry now.
    RegistrySync,
}

/// Why a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path exists; these methods are allowed on it.
    MethodNotAllowed(&'static str),
}

pub const API_PREFIX: &str = "/api/v1";

impl ApiRoute {
    /// The route of a request under `/api/v1`. Reads are GET, changes POST.
    pub fn parse(method: &Method, path: &str) -> Result<ApiRoute, Miss> {
        let rest = path
            .strip_prefix(API_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(Miss::NotFound)?;
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let m = |s: &str| s.to_string();
        let (get, post) = match segments.as_slice() {
            ["models"] => (Some(ApiRoute::Models), None),
            ["models", model] if !model.is_empty() => (Some(ApiRoute::Model(m(model))), None),
            ["models", model, "versions"] => (None, Some(ApiRoute::Register(m(model)))),
            ["models", model, "versions", v, "transition"] => {
                (None, Some(ApiRoute::Transition(m(model), m(v))))
            }
            ["models", model, "rollback"] => (None, Some(ApiRoute::Rollback(m(model)))),
            ["models", model, "history"] => (Some(ApiRoute::History(m(model))), None),
            ["models", model, "shadow"] => (
                Some(ApiRoute::ShadowReport(m(model))),
                Some(ApiRoute::SetShadow(m(model))),
            ),
            ["models", model, "shadow", "reset"] => (None, Some(ApiRoute::ResetShadow(m(model)))),
            ["models", model, "canary"] => (None, Some(ApiRoute::SetCanary(m(model)))),
            ["models", model, "rollout"] => (
                Some(ApiRoute::RolloutStatus(m(model))),
                Some(ApiRoute::StartRollout(m(model))),
            ),
            [
                "models",
                model,
                "rollout",
                action @ ("pause" | "resume" | "abort" | "promote"),
            ] => (None, Some(ApiRoute::RolloutAction(m(model), m(action)))),
            ["reload"] => (None, Some(ApiRoute::Reload)),
            ["registry"] => (Some(ApiRoute::Registry), None),
            ["registry", "sync"] => (None, Some(ApiRoute::RegistrySync)),
            _ => return Err(Miss::NotFound),
        };
        let allowed = match (&get, &post) {
            (Some(_), Some(_)) => "GET, POST",
            (Some(_), None) => "GET",
            _ => "POST",
        };
        let route = match *method {
            Method::GET => get,
            Method::POST => post,
            _ => None,
        };
        route.ok_or(Miss::MethodNotAllowed(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_route() {
        let get = |path| ApiRoute::parse(&Method::GET, path);
        let post = |path| ApiRoute::parse(&Method::POST, path);
        assert_eq!(get("/api/v1/models"), Ok(ApiRoute::Models));
        assert_eq!(get("/api/v1/models/"), Ok(ApiRoute::Models));
        assert_eq!(
            get("/api/v1/models/fraud"),
            Ok(ApiRoute::Model("fraud".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/versions"),
            Ok(ApiRoute::Register("fraud".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/versions/3/transition"),
            Ok(ApiRoute::Transition("fraud".into(), "3".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/rollback"),
            Ok(ApiRoute::Rollback("fraud".into()))
        );
        assert_eq!(
            get("/api/v1/models/fraud/history"),
            Ok(ApiRoute::History("fraud".into()))
        );
        assert_eq!(
            get("/api/v1/models/fraud/shadow"),
            Ok(ApiRoute::ShadowReport("fraud".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/shadow"),
            Ok(ApiRoute::SetShadow("fraud".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/shadow/reset"),
            Ok(ApiRoute::ResetShadow("fraud".into()))
        );
        assert_eq!(post("/api/v1/reload"), Ok(ApiRoute::Reload));
        assert_eq!(get("/api/v1/registry"), Ok(ApiRoute::Registry));
        assert_eq!(post("/api/v1/registry/sync"), Ok(ApiRoute::RegistrySync));
        assert_eq!(
            post("/api/v1/models/fraud/canary"),
            Ok(ApiRoute::SetCanary("fraud".into()))
        );
        assert_eq!(
            get("/api/v1/models/fraud/rollout"),
            Ok(ApiRoute::RolloutStatus("fraud".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/rollout"),
            Ok(ApiRoute::StartRollout("fraud".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/rollout/promote"),
            Ok(ApiRoute::RolloutAction("fraud".into(), "promote".into()))
        );
        assert_eq!(
            post("/api/v1/models/fraud/rollout/explode"),
            Err(Miss::NotFound)
        );
        for path in [
            "/api/v1",
            "/api/v2/models",
            "/api/v1/nope",
            "/api/v1/models/m/versions/3",
            "/api/v1models",
        ] {
            assert_eq!(get(path), Err(Miss::NotFound), "{path}");
        }
    }

    #[test]
    fn changes_are_post_and_reads_are_get() {
        assert_eq!(
            ApiRoute::parse(&Method::GET, "/api/v1/reload"),
            Err(Miss::MethodNotAllowed("POST"))
        );
        assert_eq!(
            ApiRoute::parse(&Method::POST, "/api/v1/models"),
            Err(Miss::MethodNotAllowed("GET"))
        );
        assert_eq!(
            ApiRoute::parse(&Method::DELETE, "/api/v1/models/m/shadow"),
            Err(Miss::MethodNotAllowed("GET, POST"))
        );
    }
}
