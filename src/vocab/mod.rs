//! The vocabulary the data plane and the control plane share: values that are
//! validated into types once, when a config is loaded or an admin call is
//! accepted, so that nothing downstream (a routing table build, the request
//! path) parses a string or has to decide what to do with an invalid one.
//! Imports nothing from the rest of the crate.
//!
//! - [`model`]: [`Stage`], [`ModelSpec`], [`VersionSpec`], valid ids;
//!   [`endpoint`]: [`EndpointUrl`];
//! - [`policy`]: shadow, comparison and sticky policies; [`rollout`]: canaries,
//!   rollout plans and their gates; [`evidence`]: what a gate read;
//! - [`path`]: the JSON paths of comparison policies ([`PathPattern`]).
//! - [`names`]: HTTP methods and header names of policies ([`MethodName`],
//!   [`HeaderNameText`]), ids as header values, and the model name a server
//!   serves a version under ([`ServedModelName`]).

pub mod endpoint;
pub mod evidence;
pub mod model;
pub mod names;
pub mod path;
pub mod policy;
pub mod rollout;

pub use endpoint::{EndpointUrl, EndpointUrlError};
pub use model::{ModelSpec, Stage, VersionSpec};
pub use names::{HeaderNameText, MethodName, ServedModelName, id_header_value};
pub use path::{JsonPath, PathPattern, Step};
