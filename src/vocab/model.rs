//! Models and their versions as configuration and the journal define them and
//! the routing table serves them: [`Stage`], [`ModelSpec`], [`VersionSpec`].

use std::fmt;
use std::str::FromStr;

use super::endpoint::EndpointUrl;
use super::names::ServedModelName;
use super::policy::{ShadowPolicy, StickyPolicy};
use super::rollout::{Canary, Plan, Rollout};

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
    /// Where the version answers gRPC (HTTP/2 cleartext), since servers listen
    /// for it on a port of its own (Triton 8001, KServe 8081); empty if it
    /// does not.
    pub grpc_endpoints: Vec<EndpointUrl>,
    /// Requests this version may serve at once (on top of the gateway's limit).
    pub max_concurrent_requests: Option<usize>,
    /// The name its server serves it under, written into an OpenAI-style
    /// request's `model` (`None`: the model's own name, as the client gave it).
    pub upstream_model: Option<ServedModelName>,
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
