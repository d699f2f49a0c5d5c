//! Tessera: a central token and credential-exchange service.
//!
//! The crate is split so that only the edge modules ([`http`], [`ext_authz`]'s
//! adapters, [`router`]) know about axum or tonic; everything else is plain
//! Rust that takes the current time and its dependencies as inputs.

pub mod app;
pub mod audit;
pub mod aws;
pub mod cli;
pub mod clock;
pub mod config;
pub mod data;
pub mod ext_authz;
pub mod http;
pub mod issuer;
pub mod jose;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod registry;
pub mod revocation;
pub mod router;
pub mod server;
pub mod store;
pub mod trusted;
