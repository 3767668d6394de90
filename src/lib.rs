//! jwtgate: a JWT-enforcing API gateway with a built-in OAuth2
//! client-credentials token endpoint.
//!
//! Data path: `server → gateway::handle → runtime.snapshot() → router →
//! [policy.apply …] → forward → response`; any error becomes a response in
//! `error.rs`. See `STYLE.md` in the shared folder for the layout.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod client_addr;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod forward;
pub mod gateway;
pub mod jws;
pub mod keys;
mod lock;
pub mod metrics;
mod parking;
pub mod policy;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod token;
pub mod token_cache;
pub mod upstream_pool;
pub mod watch;
