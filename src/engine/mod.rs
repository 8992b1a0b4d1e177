//! The domain: consent, quarantine and eligibility rules.
//!
//! Invariant: nothing here knows tonic, prost or sled. Every function is pure
//! (time comes in as an argument), so the rules are unit-tested and
//! benchmarked without a server or a disk.

mod consent;
mod eligibility;
mod quarantine;
mod types;

pub use consent::{
    ConsentHistoryEntry, ConsentMark, ConsentState, ConsentStatus, Profile, ProfileAddresses, Scope,
};
pub use eligibility::{Decision, ExclusionReason, Summary, decide};
pub use quarantine::{
    AddressEvent, AddressEventKind, AddressState, AddressStatus, ErrorReason, FeedbackKind,
    QuarantineRules, replay,
};
pub use types::*;
