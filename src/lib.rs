//! consentd: a gRPC consent-decision service.
//!
//! Layers, with dependencies pointing one way:
//! - [`api`]: the gRPC edge (tonic, prost), converting to and from domain types;
//! - [`app`]: the operations, joining rules and store, owning durability;
//! - [`engine`]: the rules (consent, quarantine, eligibility), pure;
//! - [`store`]: the store interface and its implementations (sled, memory);
//! - [`index`]: the in-memory decision index, fed by durable changes;
//! - [`auth`]: API keys, roles and the permission table (no tonic), used by the edge.
//!
//! [`server::run`] serves it all; see ARCHITECTURE.md for the map.

pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod connection;
pub mod data;
pub mod engine;
pub mod error;
pub mod index;
pub mod links;
pub mod metrics;
pub mod request_id;
pub mod server;
pub mod store;
pub mod web;

/// The code generated from `proto/consent/v1/*.proto`, fenced here.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("consent.v1");

    /// The encoded file descriptor set of the consent.v1 protos, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/consent_v1_descriptor.bin"));
}
