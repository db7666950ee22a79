//! The end-to-end suites, in one test binary (one link instead of ten): each module starts the real
//! `kubeconfigd` (and `kubeconfig-agent`, Redis) processes and drives them with real clients, except
//! `ledger`, which drives the service's own Redis ledger against a real `redis-server`.

mod access_matrix;
mod api_behaviour;
mod audit;
mod cache;
mod credentials;
mod frames;
mod hostile;
mod hostile_server;
mod identity;
mod import;
mod issuers;
mod jwt;
mod ledger;
mod metrics;
mod mtls;
mod operator_tools;
mod reload;
mod shutdown;
mod sidecar;
mod sidecar_credentials;
