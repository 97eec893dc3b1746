//! stagegate: a deployment gateway that routes ML inference requests by the stage
//! of the model version behind them.
//!
//! # Layout
//!
//! From the bottom up; each imports only what is below it.
//!
//! - [`vocab`]: the shared vocabulary, validated into types once: stages, models
//!   and versions, endpoint URLs, policies, rollout plans, JSON paths, HTTP names.
//!   Imports nothing of the crate. [`grpc`]: gRPC's wire format and statuses,
//!   likewise on its own. [`llm`]: OpenAI-compatible calls, the body fields the
//!   gateway routes by and rewrites, and what a streamed or whole answer says
//!   of itself, likewise.
//! - [`runtime`], [`telemetry`]: how Tokio runtimes are built; metric names, the
//!   Prometheus recorder, per-route handles.
//! - [`upstream`]: reaching model servers: endpoints with their connection pools
//!   and passive health, the client and the request bodies it sends (whole or
//!   streamed), admission and the gateway's body budget.
//! - [`config`]: the TOML file, validated into a [`config::Config`] with every
//!   error reported at once, with its field path.
//! - Data plane: [`routing`] (the immutable [`routing::RoutingTable`] built from
//!   models, held in one `ArcSwap` by [`routing::Router`]; resolving a request to a
//!   version route), [`shadow`] (mirroring production traffic to staging versions
//!   on threads of their own within a metered CPU share, comparing answers off the
//!   request path, the reports), [`proxy`] (hyper server for HTTP/1.1 and h2c,
//!   connection limits, framing checks, graceful shutdown, and the request path
//!   as a stack of tower services: respond, answer the protocol's server-level
//!   calls, admit, read an OpenAI-style call's body to route by its `model`,
//!   route, read the body ahead, balance, mirror, forward through [`upstream`],
//!   measuring LLM answers as they stream; gRPC calls are routed by the model
//!   their first message names and forwarded over HTTP/2).
//! - Control plane: [`registry`] (the transition rules, the durable journal and
//!   snapshot in a state directory or in etcd, the single writer, and
//!   [`registry::Published`]: the catalog published together with the table
//!   built from it), [`rollout`] (the controller that steps canaries through a
//!   plan while their confidence-bound gates hold), [`sync`] (following MLflow),
//!   [`admin`] (`/healthz`, `/readyz`, `/metrics`, the JSON admin API under
//!   `/api/v1`, and the status page at `/`), and above them [`cluster`]
//!   (replicas on one etcd sharing their route measurements and shadow reports,
//!   the leader's rollout readings, and passing MLflow poll requests to the
//!   leader).
//! - [`gateway`] wires the parts together; [`ctl`] is `stagegate ctl`; [`demo`]
//!   is `stagegate demo`; [`fuzzing`] holds the fuzz targets' entry points.
//!
//! Data flows one way: control-plane inputs -> registry -> new routing table ->
//! `ArcSwap` -> data plane. The data plane never imports or writes control-plane
//! state.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod fuzzing;
pub mod gateway;
pub mod grpc;
pub mod llm;
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
