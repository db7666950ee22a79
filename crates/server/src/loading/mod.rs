//! Loading: the inventory of cluster files and the tenant file, read, validated, watched and applied
//! incrementally, with the change feed that tells the rest of the server what changed.

pub mod demo;
pub mod feed;
pub mod files;
pub mod inventory;
pub mod record;
pub mod watch;
