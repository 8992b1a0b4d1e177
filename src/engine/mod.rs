//! The domain: consent, quarantine and eligibility rules.
//!
//! Invariant: nothing here knows tonic, prost or sled. Every function is pure
//! (time comes in as an argument), so the rules are unit-tested and
//! benchmarked without a server or a disk.

mod address;
mod address_consent;
mod consent;
mod eligibility;
mod erasure;
mod preferences;
mod quarantine;
mod subscription;
mod tenant;
mod types;
mod usage;

pub use address::{Address, AddressKind, Region};
pub use address_consent::{AddressConsent, AddressMark, check_channel};
pub use consent::{
    Change, ConsentHistoryEntry, ConsentMark, ConsentState, ConsentStatus, Profile,
    ProfileAddresses, Scope,
};
pub use eligibility::{
    Decision, ExclusionReason, Facts, Policy, Reach, Reasons, Summary, decide, judge,
};
pub use erasure::{
    AddressHash, ERASURE_KEY_BYTES, Erasure, ErasureKey, TOMBSTONE_REASON, Tombstone,
};
pub use preferences::{
    PageChoice, PreferenceChanges, channel_ticked, preference_changes, service_has_box,
    service_ticked,
};
pub use quarantine::{
    ADDRESS_LOG_EVENTS_MAX_DEFAULT, AddressEvent, AddressEventKind, AddressState, AddressStatus,
    CHECKPOINT_EVERY, ErrorReason, EventKey, FeedbackKind, LATE_EVENT_HORIZON_DEFAULT, LogLimits,
    LogMeta, Placement, QuarantineRules, Refolded, fold_time, refold, replay,
};
pub use subscription::{
    PendingConfirmation, Service, Subscribed, Subscription, SubscriptionChange, SubscriptionStatus,
    TOKEN_BYTES, Token, TokenHash, TokenRecord, TokenRefusal, confirm, subscribe, unsubscribe,
};
pub use tenant::{
    DISPLAY_NAME_LEN_MAX, PRIVACY_POLICY_URL_LEN_MAX, RULE_PERIOD_MAX, Regime, RuleOverrides,
    SOFT_ERROR_THRESHOLD_MAX, SettingsUpdate, TenantSettings, parse_display_name,
    parse_privacy_policy_url,
};
pub use types::*;
pub use usage::{USAGE_EVENTS_MAX, USAGE_PAYLOAD_LEN_MAX, UsageOptOut};
