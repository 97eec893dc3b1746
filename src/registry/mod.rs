//! The registry: models, their versions and the stage each version is in, kept
//! durable and changed by one writer.
//!
//! - the domain vocabulary ([`Stage`], [`ModelSpec`], [`VersionSpec`],
//!   [`EndpointUrl`]) that configuration produces and the routing table consumes;
//! - [`Command`]: a change asked for; [`rules`]: which are allowed and the
//!   record each becomes, as pure planning;
//! - [`record`] and [`ledger`]: the journal's records and the state they replay to;
//! - [`merge`]: config seeds + journal-owned stages -> the served models;
//! - [`store`]: the durable journal, snapshot and lock behind a trait;
//! - [`writer`]: the single writer task (validate, journal, apply, publish) and the
//!   [`Registry`] handle that sends it work;
//! - [`probe`]: health probes before a rollback.

mod command;
mod endpoint;
mod error;
pub mod evidence;
pub mod ledger;
pub mod merge;
pub mod policy;
pub mod probe;
pub mod record;
pub mod rollout;
mod rollout_rules;
pub mod rules;
pub mod store;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use command::Command;
pub use endpoint::{EndpointUrl, EndpointUrlError};
pub use error::RegistryError;
pub use evidence::{GateReading, Verdict};
pub use ledger::Ledger;
pub use policy::{CompareMode, ComparePolicy, ShadowPolicy, StickyPolicy, default_plan};
pub use record::{Observation, Record};
pub use rollout::{
    Canary, DEFAULT_CONFIDENCE, DEFAULT_LATENCY_QUANTILE, GateLimit, Gates, OnFailure, Phase, Plan,
    Rollout,
};
pub use rollout_rules::{Decision, failure_reason};
pub use writer::{Registry, ReloadHook, Reloaded, Writer, WriterStop};

/// The lifecycle stage of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Answers users.
    Production,
    /// Under test: receives mirrored traffic only, unless pinned.
    Staging,
    /// Retired: serves nothing, kept so that a rollback can bring it back.
    Archived,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Production, Stage::Staging, Stage::Archived];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Production => "production",
            Stage::Staging => "staging",
            Stage::Archived => "archived",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage name that is not one of `production`, `staging`, `archived`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage {0:?} (expected production, staging or archived)")]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Stage, UnknownStage> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| UnknownStage(s.to_string()))
    }
}

/// A model and all its versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// Path probed on a version's endpoints before a rollback puts it back.
    pub health_path: String,
    pub versions: Vec<VersionSpec>,
    /// Mirroring to staging versions, and how their answers are compared.
    pub shadow: ShadowPolicy,
    /// Where a canary split finds each request's sticky key.
    pub sticky: StickyPolicy,
    /// Defaults for this model's rollouts (`[models.rollout]`).
    pub rollout_defaults: Plan,
    /// The staging version answering a share of production traffic, if any.
    pub canary: Option<Canary>,
    /// The model's latest rollout, running or finished.
    pub rollout: Option<Rollout>,
}

/// One version of a model: where it runs and which stage it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSpec {
    pub version: String,
    pub stage: Stage,
    pub endpoints: Vec<EndpointUrl>,
    /// Requests this version may serve at once (on top of the gateway's limit).
    pub max_concurrent_requests: Option<usize>,
}

impl ModelSpec {
    pub fn production(&self) -> Option<&VersionSpec> {
        self.versions.iter().find(|v| v.stage == Stage::Production)
    }

    pub fn version(&self, id: &str) -> Option<&VersionSpec> {
        self.versions.iter().find(|v| v.version == id)
    }

    /// The rollout, while it is not over.
    pub fn running_rollout(&self) -> Option<&Rollout> {
        self.rollout.as_ref().filter(|r| !r.phase.is_final())
    }
}

/// What the control plane knows, published with every routing table so that
/// readers (the admin API) see the same state the data plane routes by.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The served models: config seeds merged with journal-owned stages.
    pub models: Vec<ModelSpec>,
    /// Journal-owned state, with each model's recent history.
    pub ledger: Arc<Ledger>,
}

impl Catalog {
    /// A catalog of `models` with an empty ledger (tests, benchmarks).
    pub fn from_models(models: Vec<ModelSpec>) -> Catalog {
        Catalog {
            models,
            ledger: Arc::default(),
        }
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Whether `name` may be used as a model or version identifier: it must sit in a
/// URL path segment and a metric label unescaped.
pub fn is_valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && !name.bytes().all(|b| b == b'.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_through_their_names() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
        }
        assert_eq!(
            "canary".parse::<Stage>(),
            Err(UnknownStage("canary".to_string()))
        );
    }

    #[test]
    fn identifiers_are_path_and_label_safe() {
        assert!(is_valid_identifier("fraud-v2.1_b"));
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_valid_identifier(bad), "{bad:?} accepted");
        }
    }
}
