//! The edges: gRPC, the REST shim and the admin listener translate between their wire formats and the
//! service; connection handling (limits, timeouts, TLS) is shared by all of them.

pub mod admin;
pub mod admission;
pub mod connections;
pub mod grpc;
pub mod rest;
pub mod tls;
