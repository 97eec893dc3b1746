//! [`Ledger`]: the state the journal owns, rebuilt by replaying records.
//!
//! The ledger knows only versions that some record has touched. Versions the
//! config seeds and nobody has changed yet follow the config; see [`super::merge`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::record::{Action, Observation, Record};
use super::{Canary, Rollout, ShadowPolicy, Stage};

/// Records kept per model for `GET /models/{m}/history`; older ones live on only in
/// the journal until it is compacted.
pub const HISTORY_LIMIT: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// Revision of the last record applied; 0 for an empty journal.
    pub revision: u64,
    pub models: BTreeMap<String, LedgerModel>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerModel {
    pub versions: BTreeMap<String, LedgerVersion>,
    /// Versions in the order they became production, for rollback's default target.
    pub production_history: Vec<String>,
    /// The newest records about this model, oldest first.
    pub history: VecDeque<Arc<Record>>,
    /// Shadow settings set through the admin API; they override the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowPolicy>,
    /// A canary set by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The latest rollout, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The revision of the record that made the current production version
    /// production (0: none has yet).
    #[serde(default)]
    pub production_revision: u64,
    /// The revision of the last record that changed the rollout (0: none has).
    #[serde(default)]
    pub rollout_revision: u64,
    /// What an external registry last showed, by slot (an alias or a stage).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observed: BTreeMap<String, ObservedSlot>,
    /// Every version an external registry's slot has named.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub registry_named: BTreeSet<String>,
}

/// The version a registry slot named when last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedSlot {
    pub role: Stage,
    /// `None`: the production slot was emptied (its revision still counts).
    pub version: Option<String>,
    /// The revision of the record that saw it.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerVersion {
    pub stage: Stage,
    /// Endpoints given at registration; empty for versions defined in the config,
    /// whose endpoints follow the config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// gRPC endpoints given at registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_endpoints: Vec<String>,
    /// Served model name given at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
}

/// A record that does not follow the ledger's last one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record revision {found} does not follow revision {expected_after}")]
pub struct OutOfOrder {
    pub expected_after: u64,
    pub found: u64,
}

impl Ledger {
    /// Applies the next record. Revisions must follow one another without gaps.
    pub fn apply(&mut self, record: Arc<Record>) -> Result<(), OutOfOrder> {
        if record.revision != self.revision + 1 {
            return Err(OutOfOrder {
                expected_after: self.revision,
                found: record.revision,
            });
        }
        self.revision = record.revision;
        let model = self.models.entry(record.model.clone()).or_default();
        model.note_production_changes(&record);
        for (version, stage) in record.moves() {
            let entry = model
                .versions
                .entry(version.to_string())
                .or_insert_with(|| LedgerVersion {
                    stage,
                    endpoints: Vec::new(),
                    grpc_endpoints: Vec::new(),
                    upstream_model: None,
                });
            entry.stage = stage;
        }
        if record.action == Action::Register
            && let Some(entry) = model.versions.get_mut(&record.version)
        {
            entry.endpoints.clone_from(&record.endpoints);
            entry.grpc_endpoints.clone_from(&record.grpc_endpoints);
            entry.upstream_model.clone_from(&record.upstream_model);
        }
        if let Some(shadow) = &record.shadow {
            model.shadow = Some(shadow.clone());
        }
        if let Some(canary) = &record.canary {
            model.canary = (canary.weight > 0.0).then(|| canary.clone());
        }
        if let Some(rollout) = &record.rollout {
            model.rollout = Some(rollout.clone());
            model.rollout_revision = record.revision;
        }
        if let Some(observed) = &record.observed {
            model.observe(observed, record.revision);
        }
        model.history.push_back(record);
        if model.history.len() > HISTORY_LIMIT {
            model.history.pop_front();
        }
        Ok(())
    }

    pub fn model(&self, name: &str) -> Option<&LedgerModel> {
        self.models.get(name)
    }

    /// The version's stage, if the journal owns it.
    pub fn stage(&self, model: &str, version: &str) -> Option<Stage> {
        self.models
            .get(model)?
            .versions
            .get(version)
            .map(|v| v.stage)
    }
}

impl LedgerModel {
    fn note_production_changes(&mut self, record: &Record) {
        let leaving = std::iter::once((record.version.as_str(), record.from))
            .chain(
                record
                    .also
                    .iter()
                    .map(|m| (m.version.as_str(), Some(m.from))),
            )
            .filter(|(_, from)| *from == Some(Stage::Production));
        for (version, _) in leaving {
            // A version seeded as production by the config enters the history when
            // it first leaves production.
            if self.production_history.last().map(String::as_str) != Some(version) {
                self.production_history.push(version.to_string());
            }
        }
        for (version, stage) in record.moves() {
            if stage == Stage::Production {
                self.production_history.push(version.to_string());
                self.production_revision = record.revision;
            }
        }
    }

    fn observe(&mut self, observed: &Observation, revision: u64) {
        self.registry_named.extend(observed.to.iter().cloned());
        if observed.to.is_none() && observed.role != Stage::Production {
            self.observed.remove(&observed.slot);
            return;
        }
        let slot = ObservedSlot {
            role: observed.role,
            version: observed.to.clone(),
            revision,
        };
        self.observed.insert(observed.slot.clone(), slot);
    }

    /// The version that was production before `current`: rollback's default target.
    pub fn previous_production(&self, current: Option<&str>) -> Option<&str> {
        let mut earlier = self.production_history.iter().rev().map(String::as_str);
        if let Some(current) = current {
            // Skip the current version's latest stint in production.
            if self.production_history.last().map(String::as_str) == Some(current) {
                earlier.next();
            }
        }
        earlier.find(|v| Some(*v) != current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::record::Move;

    fn record(
        revision: u64,
        action: Action,
        version: &str,
        from: Option<Stage>,
        to: Stage,
        also: Vec<Move>,
    ) -> Arc<Record> {
        Arc::new(Record {
            revision,
            time: String::new(),
            actor: "test".into(),
            action,
            model: "m".into(),
            version: version.into(),
            from,
            to: Some(to),
            shadow: None,
            canary: None,
            rollout: None,
            observed: None,
            reason: String::new(),
            endpoints: if action == Action::Register {
                vec!["http://h:1".into()]
            } else {
                vec![]
            },
            grpc_endpoints: vec![],
            upstream_model: None,
            also,
        })
    }

    fn archive(version: &str) -> Vec<Move> {
        vec![Move {
            version: version.into(),
            from: Stage::Production,
            to: Stage::Archived,
        }]
    }

    #[test]
    fn replays_registrations_promotions_and_rollbacks() {
        let mut ledger = Ledger::default();
        ledger
            .apply(record(
                1,
                Action::Register,
                "3",
                None,
                Stage::Staging,
                vec![],
            ))
            .unwrap();
        // Version 2 was seeded as production by the config.
        ledger
            .apply(record(
                2,
                Action::Transition,
                "3",
                Some(Stage::Staging),
                Stage::Production,
                archive("2"),
            ))
            .unwrap();
        assert_eq!(ledger.stage("m", "3"), Some(Stage::Production));
        assert_eq!(ledger.stage("m", "2"), Some(Stage::Archived));
        assert_eq!(
            ledger.model("m").unwrap().versions["3"].endpoints,
            ["http://h:1"]
        );
        assert_eq!(ledger.model("m").unwrap().production_history, ["2", "3"]);
        assert_eq!(
            ledger.model("m").unwrap().previous_production(Some("3")),
            Some("2")
        );

        ledger
            .apply(record(
                3,
                Action::Rollback,
                "2",
                Some(Stage::Archived),
                Stage::Production,
                archive("3"),
            ))
            .unwrap();
        let model = ledger.model("m").unwrap();
        assert_eq!(model.production_history, ["2", "3", "2"]);
        // Rolling back again undoes the rollback.
        assert_eq!(model.previous_production(Some("2")), Some("3"));
        assert_eq!(model.history.len(), 3);
        assert_eq!(ledger.revision, 3);
    }

    #[test]
    fn refuses_gaps_and_repeats() {
        let mut ledger = Ledger::default();
        let error = ledger
            .apply(record(
                2,
                Action::Register,
                "1",
                None,
                Stage::Staging,
                vec![],
            ))
            .unwrap_err();
        assert_eq!(
            error,
            OutOfOrder {
                expected_after: 0,
                found: 2
            }
        );
        ledger
            .apply(record(
                1,
                Action::Register,
                "1",
                None,
                Stage::Staging,
                vec![],
            ))
            .unwrap();
        assert!(
            ledger
                .apply(record(
                    1,
                    Action::Register,
                    "2",
                    None,
                    Stage::Staging,
                    vec![]
                ))
                .is_err()
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut ledger = Ledger::default();
        for revision in 1..=(HISTORY_LIMIT as u64 + 5) {
            let to = if revision % 2 == 0 {
                Stage::Archived
            } else {
                Stage::Staging
            };
            ledger
                .apply(record(revision, Action::Transition, "1", None, to, vec![]))
                .unwrap();
        }
        let history = &ledger.model("m").unwrap().history;
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history.front().unwrap().revision, 6);
    }
}
