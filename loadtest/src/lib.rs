//! Load testing for stagegate: a load generator ([`load`]) built directly on hyper's
//! HTTP/1 client connections, with coordinated-omission-corrected open-loop pacing,
//! and a fast fake model server ([`backend`]) to aim it at; [`compare`] runs
//! stagegate, nginx, haproxy and the hyper floor ([`floor`], the cheapest proxy
//! hyper and Tokio make) side by side with both; [`judge`] simulates
//! thousands of rollouts through stagegate's gates, and [`rollouts`] runs real
//! ones against Python model servers.
//!
//! The `loadtest` binary is a thin command line over these modules; tests drive them
//! in-process.

pub mod backend;
pub mod compare;
mod conn;
pub mod floor;
pub mod grpc;
pub mod judge;
pub mod load;
pub mod parse;
pub mod report;
pub mod rollouts;
pub mod schedule;
pub mod sse;

pub use backend::{BackendOptions, Mode};
pub use load::{LoadError, LoadOptions, Stop};
pub use report::{ErrorKind, Report};
