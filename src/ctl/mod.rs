//! `stagegate ctl`: the admin client. Each subcommand is one admin API call; the
//! answer is printed as a table (or as JSON with `--json`), and a refusal exits
//! non-zero with the server's message.

mod client;
mod registry;
mod render;
mod render_rollout;
mod rollout;

pub use render_rollout::gate_line;
pub use rollout::{RolloutAction, RolloutStart};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::admin::auth::TOKEN_ENV;
use client::AdminClient;

pub const ADMIN_URL_ENV: &str = "STAGEGATE_ADMIN_URL";

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin API base URL.
    #[arg(long, env = ADMIN_URL_ENV, default_value = "http://127.0.0.1:8081")]
    pub admin: String,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every model with its production, staging and archived versions.
    Status,
    /// One model: versions, stages, endpoints, revisions.
    Model { model: String },
    /// Register a new version; it lands in staging.
    Register {
        model: String,
        version: String,
        /// Base URL of a model server (repeat for several).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Base URL of the model server's gRPC listener (HTTP/2 cleartext;
        /// repeat for several).
        #[arg(long = "grpc-endpoint")]
        grpc_endpoints: Vec<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Move a version to production, staging or archived.
    Transition {
        model: String,
        version: String,
        stage: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Archive the production version and restore an earlier one.
    Rollback {
        model: String,
        /// The archived version to restore (default: the previous production one).
        #[arg(long = "to")]
        to_version: Option<String>,
        /// Skip the health probe of the restored version.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The model's journal entries, newest first.
    History {
        model: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only entries older than this revision (the `next_before` of a page).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Re-read the gateway's config file.
    Reload,
    /// Shadow report of a model (`shadow M`), or change (`shadow set`) or reset
    /// (`shadow reset`) its mirroring.
    Shadow(ShadowArgs),
    /// Give a staging version a sticky share of production traffic (0 ends it).
    Canary {
        model: String,
        version: String,
        /// Percent of production traffic, 0-100.
        #[arg(long)]
        weight: f64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Start, follow or steer a rollout.
    #[command(subcommand)]
    Rollout(RolloutAction),
    /// The external registry's sync state (`registry`), or poll it now
    /// (`registry sync`).
    Registry {
        #[command(subcommand)]
        action: Option<RegistryAction>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegistryAction {
    /// Poll the registry now and show the result.
    Sync,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ShadowArgs {
    /// The model whose report to show.
    pub model: Option<String>,
    #[command(subcommand)]
    pub action: Option<ShadowAction>,
}

#[derive(Debug, Subcommand)]
pub enum ShadowAction {
    /// Change mirroring settings; only the options given change.
    Set(Box<ShadowSet>),
    /// Start a model's shadow reports afresh.
    Reset {
        model: String,
        /// Only this staging version.
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ShadowSet {
    model: String,
    /// Share of production requests mirrored, 0-100 (0 turns mirroring off).
    #[arg(long)]
    percent: Option<f64>,
    /// Staging versions to mirror to, comma-separated ("" for all).
    #[arg(long, value_delimiter = ',')]
    versions: Option<Vec<String>>,
    #[arg(long)]
    timeout_ms: Option<u64>,
    #[arg(long)]
    max_in_flight: Option<u64>,
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Methods mirrored, comma-separated.
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Comparator: json, oip, label, status or bytes.
    #[arg(long)]
    mode: Option<String>,
    #[arg(long)]
    abs_tol: Option<f64>,
    #[arg(long)]
    rel_tol: Option<f64>,
    /// JSON paths left out of comparisons, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ignore: Option<Vec<String>>,
    #[arg(long)]
    label_path: Option<String>,
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin API at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the gateway refused: {status}")]
    Refused {
        status: http::StatusCode,
        body: Value,
    },
}

/// Runs one ctl command; returns what to print.
pub async fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let token = std::env::var(TOKEN_ENV).ok();
    let client = AdminClient::new(&args.admin, token.as_deref());
    let answer = call(&client, &args.command).await?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string()));
    }
    Ok(match &args.command {
        CtlCommand::Status => render::status(&answer),
        CtlCommand::Model { .. } => {
            render::model(&answer) + &registry::followed(&answer["registry"])
        }
        CtlCommand::History { .. } => render::history(&answer),
        CtlCommand::Reload => render::reloaded(&answer),
        CtlCommand::Shadow(ShadowArgs { action: None, .. }) => render::shadow(&answer),
        CtlCommand::Shadow(ShadowArgs {
            action: Some(ShadowAction::Set { .. }),
            ..
        }) => render::change(&answer),
        CtlCommand::Shadow(ShadowArgs {
            action: Some(ShadowAction::Reset { .. }),
            ..
        }) => render::reset(&answer),
        CtlCommand::Rollout(RolloutAction::Status { .. }) => render_rollout::rollout(&answer),
        CtlCommand::Registry { .. } => registry::status(&answer),
        CtlCommand::Register { .. }
        | CtlCommand::Transition { .. }
        | CtlCommand::Rollback { .. }
        | CtlCommand::Canary { .. }
        | CtlCommand::Rollout(_) => render::change(&answer),
    })
}

async fn call(client: &AdminClient, command: &CtlCommand) -> Result<Value, CtlError> {
    let models = "/api/v1/models";
    match command {
        CtlCommand::Status => client.get(models).await,
        CtlCommand::Model { model } => client.get(&format!("{models}/{model}")).await,
        CtlCommand::Register {
            model,
            version,
            endpoints,
            grpc_endpoints,
            reason,
        } => {
            let body = json!({ "version": version, "endpoints": endpoints,
                               "grpc_endpoints": grpc_endpoints, "reason": reason });
            client
                .post(&format!("{models}/{model}/versions"), &body)
                .await
        }
        CtlCommand::Transition {
            model,
            version,
            stage,
            reason,
        } => {
            let body = json!({ "stage": stage, "reason": reason });
            client
                .post(
                    &format!("{models}/{model}/versions/{version}/transition"),
                    &body,
                )
                .await
        }
        CtlCommand::Rollback {
            model,
            to_version,
            force,
            reason,
        } => {
            let body = json!({ "to_version": to_version, "force": force, "reason": reason });
            client
                .post(&format!("{models}/{model}/rollback"), &body)
                .await
        }
        CtlCommand::History {
            model,
            limit,
            before,
        } => {
            let before = before.map(|b| format!("&before={b}")).unwrap_or_default();
            client
                .get(&format!("{models}/{model}/history?limit={limit}{before}"))
                .await
        }
        CtlCommand::Reload => client.post("/api/v1/reload", &json!({})).await,
        CtlCommand::Shadow(args) => shadow(client, args).await,
        CtlCommand::Canary {
            model,
            version,
            weight,
            reason,
        } => {
            let body = json!({ "version": version, "weight": weight, "reason": reason });
            client
                .post(&format!("{models}/{model}/canary"), &body)
                .await
        }
        CtlCommand::Rollout(action) => rollout::rollout(client, action).await,
        CtlCommand::Registry { action: None } => client.get("/api/v1/registry").await,
        CtlCommand::Registry {
            action: Some(RegistryAction::Sync),
        } => client.post("/api/v1/registry/sync", &json!({})).await,
    }
}

async fn shadow(client: &AdminClient, args: &ShadowArgs) -> Result<Value, CtlError> {
    let models = "/api/v1/models";
    match (&args.action, &args.model) {
        (None, Some(model)) => client.get(&format!("{models}/{model}/shadow")).await,
        (None, None) => Err(CtlError::Usage(
            "name a model: stagegate ctl shadow MODEL".into(),
        )),
        (Some(ShadowAction::Reset { model, version }), _) => {
            client
                .post(
                    &format!("{models}/{model}/shadow/reset"),
                    &json!({ "version": version }),
                )
                .await
        }
        (Some(ShadowAction::Set(set)), _) => {
            let path = format!("{models}/{}/shadow", set.model);
            client.post(&path, &shadow_settings(set)).await
        }
    }
}

/// The settings a `shadow set` names, as a partial settings object.
fn shadow_settings(set: &ShadowSet) -> Value {
    let ShadowSet {
        percent,
        versions,
        timeout_ms,
        max_in_flight,
        max_body_bytes,
        methods,
        mode,
        abs_tol,
        rel_tol,
        ignore,
        label_path,
        reason,
        ..
    } = set;
    let mut body = serde_json::Map::new();
    let put = |map: &mut serde_json::Map<String, Value>, key: &str, value: Value| {
        if !value.is_null() {
            map.insert(key.to_string(), value);
        }
    };
    let non_empty = |list: &Option<Vec<String>>| {
        list.as_ref().map(|l| {
            l.iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    put(&mut body, "percent", json!(percent));
    put(&mut body, "versions", json!(non_empty(versions)));
    put(&mut body, "timeout_ms", json!(timeout_ms));
    put(&mut body, "max_in_flight", json!(max_in_flight));
    put(&mut body, "max_body_bytes", json!(max_body_bytes));
    put(&mut body, "methods", json!(methods));
    let mut compare = serde_json::Map::new();
    put(&mut compare, "mode", json!(mode));
    put(&mut compare, "abs_tol", json!(abs_tol));
    put(&mut compare, "rel_tol", json!(rel_tol));
    put(&mut compare, "ignore", json!(non_empty(ignore)));
    put(&mut compare, "label_path", json!(label_path));
    if !compare.is_empty() {
        body.insert("compare".into(), Value::Object(compare));
    }
    body.insert("reason".into(), json!(reason));
    Value::Object(body)
}
