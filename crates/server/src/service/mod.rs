//! The service: one pipeline from credentials to file — authentication, visibility, the decision, the
//! cache, rendering — and the watches built on it; minted admin credentials ([`minting`]) and their
//! [`ledger`]. Knows nothing of gRPC or HTTP.

pub mod auth;
pub mod cached;
pub mod core;
pub mod error;
pub mod ledger;
pub mod minting;
pub mod streams;
