//! The integration tests, as one test binary (`cargo test --test it`): one
//! module per area, sharing the harness in [`common`]. One binary links once,
//! and a helper no module uses is reported as dead code.
//!
//! Most tests start a server in process (`common::spawn_app`); the tests of
//! crashes, signals, the command line and outside tools start the `consentd`
//! binary (`common::process::ServerProcess`). Tests that need a tool the
//! machine may lack (grpcurl, the Python and Node clients, strace, root for a
//! tmpfs) are `#[ignore]`d with the reason and the install command;
//! `cargo test -- --include-ignored` runs them too, as CI does, and they fail
//! when their tool is missing.

mod common;

mod access;
mod address_opt_out;
mod clients;
mod crash_cycle;
mod data_tools;
mod docs;
mod durability;
mod erasure;
mod failover;
mod faults;
mod fsync_trace;
mod identity;
mod landing;
mod limits;
mod observability;
mod ordering;
mod replicas;
mod scenarios;
mod subscriptions;
mod tenants;
mod validation;
mod watch;
