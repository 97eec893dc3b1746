//! stagegate: a deployment gateway that routes ML inference requests by the stage
//! of the model version behind them.
//!
//! # Layout
//!
//! - [`vocab`]: the shared vocabulary, validated into types once (JSON paths,
//!   HTTP methods and header names of policies); imports nothing of the crate.
//! - [`config`]: the TOML file, validated into a [`config::Config`] with every
//!   error reported at once, with its field path.
//! - [`registry`]: models, versions and stages (production, staging, archived); the
//!   transition rules, the durable journal and snapshot, and the single writer.
//! - [`upstream`]: reaching model servers: endpoints with their connection pools
//!   and passive health, the client and the request bodies it sends (whole or
//!   streamed), admission and the gateway's body budget; imports nothing above it.
//! - [`routing`]: the immutable [`routing::RoutingTable`] held in one `ArcSwap`
//!   ([`routing::Router`]); resolving a request to a version route.
//! - [`proxy`]: the data plane: hyper server (HTTP/1.1 and h2c), limits and
//!   timeouts, forwarding through [`upstream`], header hygiene, graceful
//!   shutdown.
//! - [`shadow`]: mirroring production traffic to staging versions on threads of
//!   their own (within a metered CPU share), comparing their answers off the
//!   request path, and the shadow reports.
//! - [`rollout`]: the controller that steps canaries through a rollout plan
//!   while their gates hold, and stops them when they don't; the gates judge
//!   with confidence bounds that stay valid under continuous monitoring.
//! - [`sync`]: following an external model registry (MLflow): its aliases or
//!   stages drive stagegate's, and stagegate's changes are written back.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, and the JSON admin API under
//!   `/api/v1` with bearer-token auth.
//! - [`ctl`]: `stagegate ctl`, the admin API's command-line client.
//! - [`runtime`]: how the Tokio runtimes of the workers and shadow threads are built.
//! - [`telemetry`]: metric names, the Prometheus recorder, per-route handles.
//! - [`gateway`]: wires the parts together from a config and runs them.
//! - [`fuzzing`]: the entry points of the fuzz targets in `fuzz/`, shared with the
//!   corpus regression test.
//! - [`demo`]: `stagegate demo`, model servers and a gateway in one process.
//!
//! Data flows one way: control-plane inputs -> registry -> new routing table ->
//! `ArcSwap` -> data plane. The data plane never writes control-plane state.

pub mod admin;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod fuzzing;
pub mod gateway;
pub mod proxy;
pub mod registry;
pub mod rollout;
pub mod routing;
pub mod runtime;
pub mod shadow;
pub mod sync;
pub mod telemetry;
pub mod upstream;
pub mod vocab;
