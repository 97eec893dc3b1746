//! [`Record`]: one acknowledged change, as written to the journal (one JSON line).
//!
//! A change that moves several versions at once (a promotion archives the old
//! production version; a rollback swaps two) is one record, so a crash can never
//! leave half of it applied.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Canary, Rollout, ShadowPolicy, Stage};

/// What kind of change a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A version the config named and the journal had not seen, in the stage the
    /// config gave it: from then on the journal owns its stage.
    Seed,
    /// A new version, into staging.
    Register,
    /// A stage change asked for by a person or a tool.
    Transition,
    /// The production version archived and an earlier one put back.
    Rollback,
    /// New shadow and compare settings for the model.
    Shadow,
    /// A canary weight set by hand.
    Canary,
    /// A rollout started, stepped, paused, resumed, failed, aborted or finished.
    Rollout,
    /// A change seen in an external registry (an MLflow alias moved); what
    /// stagegate does about it follows in records of its own.
    Observe,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Strictly increasing, starting at 1, with no gaps.
    pub revision: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The admin token's name, or `system` for changes the gateway makes itself.
    pub actor: String,
    pub action: Action,
    pub model: String,
    /// The version moved; empty for model-wide changes (shadow settings).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `None` for a registration.
    #[serde(default)]
    pub from: Option<Stage>,
    /// `None` for model-wide changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Stage>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Endpoints of a registered version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// gRPC endpoints of a registered version (HTTP/2 cleartext).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_endpoints: Vec<String>,
    /// The served model name of a registered version, if not the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    /// Other versions moved by the same change (the production version a
    /// promotion or rollback archives).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Move>,
    /// The model's new shadow settings (`action: shadow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowPolicy>,
    /// The model's new hand-set canary (`action: canary`); weight 0 ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The model's rollout after this change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// What an external registry showed (`action: observe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
}

/// A change seen in an external registry: one of its slots (an alias, or a
/// legacy stage) now names another version, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// The registry ("mlflow").
    pub source: String,
    /// What moved: an alias (`champion`), or a stage (`Production`, or
    /// `Staging/3` for one version in Staging).
    pub slot: String,
    /// The stagegate stage the slot names versions for: production or staging.
    pub role: Stage,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// The registry's own time of the change, in milliseconds since the epoch
    /// (MLflow's `last_updated_timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ms: Option<i64>,
}

/// One more version moved by a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Move {
    pub version: String,
    pub from: Stage,
    pub to: Stage,
}

impl Record {
    /// Every version this record moves, with its new stage: the main one first.
    pub fn moves(&self) -> impl Iterator<Item = (&str, Stage)> {
        self.to
            .map(|to| (self.version.as_str(), to))
            .into_iter()
            .chain(self.also.iter().map(|m| (m.version.as_str(), m.to)))
    }
}

/// The current time as the journal writes it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl serde::Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Stage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Stage, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_is_one_line_with_the_archived_version_in_also() {
        let record = Record {
            revision: 7,
            time: "2026-11-27T09:00:00.000Z".into(),
            actor: "alice".into(),
            action: Action::Transition,
            model: "fraud".into(),
            version: "3".into(),
            from: Some(Stage::Staging),
            to: Some(Stage::Production),
            shadow: None,
            canary: None,
            rollout: None,
            observed: None,
            reason: "shadow agreement 99.7%".into(),
            endpoints: vec![],
            grpc_endpoints: Vec::new(),
            upstream_model: None,
            also: vec![Move {
                version: "2".into(),
                from: Stage::Production,
                to: Stage::Archived,
            }],
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.contains(r#""also":[{"version":"2","from":"production","to":"archived"}]"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
        let moves: Vec<_> = record.moves().collect();
        assert_eq!(moves, [("3", Stage::Production), ("2", Stage::Archived)]);
    }

    #[test]
    fn unknown_stages_and_fields_do_not_parse() {
        let bad_stage = r#"{"revision":1,"time":"t","actor":"a","action":"register","model":"m","version":"1","from":null,"to":"canary"}"#;
        assert!(serde_json::from_str::<Record>(bad_stage).is_err());
        let extra = r#"{"revision":1,"time":"t","actor":"a","action":"register","model":"m","version":"1","from":null,"to":"staging","x":1}"#;
        assert!(serde_json::from_str::<Record>(extra).is_err());
    }
}
