//! Sluice's gRPC interface (`proto/sluice/v1/gateway.proto`): the messages,
//! in protobuf and in proto3's JSON mapping; gRPC's message framing and
//! trailers; the mapping between the HTTP API's answers and gRPC statuses.
//!
//! The server crate serves it on the API port: a call becomes the HTTP
//! API's request (the same path: keys, limits, routing, audit) and its
//! answer becomes the call's reply. Token streams are written as gRPC
//! frames by the providers' token encoder, without passing through these
//! types.

pub mod codec;
pub mod convert;
pub mod status;

/// The generated `sluice.v1` messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.serde.rs"));
}

/// The encoded file descriptor set of `sluice.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));

/// The service's full name, as paths carry it (`/sluice.v1.Gateway/Chat`).
pub const SERVICE: &str = "sluice.v1.Gateway";
