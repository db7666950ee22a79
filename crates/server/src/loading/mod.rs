//! Loading: the inventory of cluster files and the tenant file, read, validated, watched and applied
//! incrementally, with the change feed that tells the rest of the server what changed; and the small
//! files re-read when they are replaced ([`reloading`]: credentials configuration and TLS material).

pub mod demo;
pub mod feed;
pub mod files;
pub mod inventory;
pub mod record;
pub mod reloading;
pub mod watch;
