//! gRPC's vocabulary, independent of the rest of the crate: protobuf's wire
//! format for the few fields the gateway reads and writes ([`wire`]), the
//! length-prefixed messages of a call ([`frame`]), statuses ([`status`]) and
//! the caller's deadline ([`timeout`]).

pub mod frame;
pub mod status;
pub mod timeout;
pub mod wire;
