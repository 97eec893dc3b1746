//! [`RegistryError`]: why a control-plane change was refused or failed.

use super::Stage;
use super::store::StoreError;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown model {0:?} (models are defined in the config file; add it there and reload)")]
    UnknownModel(String),
    #[error("model {model:?} has no version {version:?}")]
    UnknownVersion { model: String, version: String },
    #[error("model {model:?} already has a version {version:?}")]
    AlreadyRegistered { model: String, version: String },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("version {version:?} of model {model:?} is already {stage}")]
    AlreadyInStage {
        model: String,
        version: String,
        stage: Stage,
    },
    #[error("version {version:?} of model {model:?} cannot go from {from} to {to}: {why}")]
    Refused {
        model: String,
        version: String,
        from: Stage,
        to: Stage,
        why: &'static str,
    },
    #[error("model {model:?} cannot roll back: {why}")]
    NoRollbackTarget { model: String, why: String },
    #[error("model {model:?}: {why}")]
    RolloutRefused { model: String, why: String },
    #[error(
        "version {version:?} of model {model:?} is not healthy, refusing to roll back to it (use force to override): {details}"
    )]
    Unhealthy {
        model: String,
        version: String,
        details: String,
    },
    #[error("the config file could not be reloaded; the running configuration is unchanged:\n{0}")]
    Reload(#[source] ConfigError),
    #[error("these settings cannot change while running (restart to apply them): {}", .0.join(", "))]
    NotReloadable(Vec<&'static str>),
    #[error("no config file to reload (the gateway was started from an in-memory config)")]
    NoConfigFile,
    #[error("the change could not be made durable, so it was not applied: {0}")]
    Store(#[from] StoreError),
    #[error(
        "the state changed (revision {current}) since the change was decided (at revision {expected}); decide again"
    )]
    Stale { expected: u64, current: u64 },
    #[error("the registry has shut down")]
    Closed,
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    /// The HTTP status the admin API answers with.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            RegistryError::UnknownModel(_) | RegistryError::UnknownVersion { .. } => {
                StatusCode::NOT_FOUND
            }
            RegistryError::Invalid { .. } => StatusCode::BAD_REQUEST,
            RegistryError::AlreadyRegistered { .. }
            | RegistryError::AlreadyInStage { .. }
            | RegistryError::Refused { .. }
            | RegistryError::NoRollbackTarget { .. }
            | RegistryError::RolloutRefused { .. }
            | RegistryError::Unhealthy { .. }
            | RegistryError::NotReloadable(_)
            | RegistryError::NoConfigFile
            | RegistryError::Stale { .. } => StatusCode::CONFLICT,
            RegistryError::Reload(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RegistryError::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            RegistryError::Closed | RegistryError::Store(StoreError::Unavailable(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RegistryError::Store(_) | RegistryError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The machine-readable `code` of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::UnknownModel(_) => "unknown_model",
            RegistryError::UnknownVersion { .. } => "unknown_version",
            RegistryError::AlreadyRegistered { .. } => "already_registered",
            RegistryError::Invalid { .. } => "invalid_request",
            RegistryError::AlreadyInStage { .. } => "already_in_stage",
            RegistryError::Refused { .. } => "transition_refused",
            RegistryError::NoRollbackTarget { .. } => "no_rollback_target",
            RegistryError::RolloutRefused { .. } => "rollout_refused",
            RegistryError::Unhealthy { .. } => "target_unhealthy",
            RegistryError::Reload(_) => "invalid_config",
            RegistryError::NotReloadable(_) => "not_reloadable",
            RegistryError::NoConfigFile => "no_config_file",
            RegistryError::Store(StoreError::Unavailable(_)) => "store_unavailable",
            RegistryError::Store(StoreError::Conflict { .. }) => "conflict",
            RegistryError::Store(_) => "journal_failed",
            RegistryError::Stale { .. } => "stale_state",
            RegistryError::Closed => "shutting_down",
            RegistryError::Internal(_) => "internal",
        }
    }
}
