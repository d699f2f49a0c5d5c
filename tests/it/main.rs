//! The integration suite: one binary, a module per area, each test on its
//! own server and store. Runs on SQLite by default and on Postgres with
//! `TESSERA_TEST_STORE=postgres`.

mod harness;
mod idp;
mod moto;

mod audit;
mod aws;
mod cli;
mod credentials;
mod data;
mod discovery;
mod ext_authz_grpc;
mod ext_authz_http;
mod introspect_revoke;
mod keys;
mod lakeformation;
mod lakeformation_cli;
mod nginx;
mod openapi;
mod private_key_jwt;
mod replicas;
mod token;
mod token_exchange;
mod trusted_keys;
mod workload;
