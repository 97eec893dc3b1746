//! The registry: models, their versions and the stage each version is in, kept
//! durable and changed by one writer. The vocabulary it works in ([`Stage`],
//! [`ModelSpec`], [`VersionSpec`], [`EndpointUrl`], the policies and rollout
//! plans) lives in [`crate::vocab`], below the data plane, and is re-exported here.
//!
//! - [`Command`]: a change asked for; [`rules`]: which are allowed and the
//!   record each becomes, as pure planning;
//! - [`record`] and [`ledger`]: the journal's records and the state they replay to;
//! - [`merge`]: config seeds + journal-owned stages -> the served models;
//! - [`store`]: the durable journal, snapshot and lock behind a trait;
//! - [`writer`]: the single writer task (validate, journal, apply, publish) and the
//!   [`Registry`] handle that sends it work;
//! - [`probe`]: health probes before a rollback.

mod command;
mod error;
pub mod ledger;
pub mod merge;
pub mod probe;
mod published;
pub mod record;
mod rollout_rules;
pub mod rules;
pub mod store;
mod writer;

use std::sync::Arc;

pub use crate::vocab::endpoint::{EndpointUrl, EndpointUrlError};
pub use crate::vocab::evidence::{GateReading, Verdict};
pub use crate::vocab::model::{ModelSpec, Stage, UnknownStage, VersionSpec};
pub use crate::vocab::names::is_valid_identifier;
pub use crate::vocab::policy::{
    CompareMode, ComparePolicy, ShadowPolicy, StickyPolicy, default_plan,
};
pub use crate::vocab::rollout::{
    Canary, DEFAULT_CONFIDENCE, DEFAULT_LATENCY_QUANTILE, GateLimit, Gates, OnFailure, Phase, Plan,
    Rollout,
};
pub use crate::vocab::{evidence, policy, rollout};
pub use command::Command;
pub use error::RegistryError;
pub use ledger::Ledger;
pub use published::{Published, Served};
pub use record::{Observation, Record};
pub use rollout_rules::{Decision, failure_reason};
pub use writer::{Registry, ReloadHook, Reloaded, Writer, WriterStop};

/// What the control plane knows, published with every routing table (see
/// [`Published`]) so that readers see the same state the data plane routes by.
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
