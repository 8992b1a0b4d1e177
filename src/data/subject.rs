//! The document of `ExportProfileData`: everything consentd holds about one
//! profile, as one JSON object (the answer to a data-subject access
//! request). Its parts are the export format's records (`record.rs`), so a
//! field means the same in both; the shape is documented in docs/api.md.

use serde::Serialize;

use super::record::{
    AddressConsentRecord, AddressStateRecord, ConsentHistoryRecord, ProfileRecord, Record,
    SubscriptionRecord,
};
use crate::{
    app::SubjectData,
    engine::{AddressKind, Tenant, UnixMillis},
    store::DumpItem,
};

/// The `format` of the document.
pub const SUBJECT_FORMAT_NAME: &str = "consentd-profile-data";
/// The version of the document's shape.
pub const SUBJECT_FORMAT_VERSION: u32 = 1;
/// The media type of the document.
pub const SUBJECT_CONTENT_TYPE: &str = "application/json";

/// The document.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectDocument {
    /// Always [`SUBJECT_FORMAT_NAME`].
    pub format: &'static str,
    /// [`SUBJECT_FORMAT_VERSION`].
    pub version: u32,
    /// When it was read (ms since the Unix epoch).
    pub exported_at_ms: UnixMillis,
    /// The tenant.
    pub tenant: String,
    /// The profile: addresses, consent.
    pub profile: ProfileRecord,
    /// The consent and subscription history with its proofs, newest first.
    pub consent_history: Vec<ConsentHistoryRecord>,
    /// False when older entries were left out (read them with
    /// `ListConsentHistory`).
    pub consent_history_complete: bool,
    /// The subscriptions to services.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Each address of the profile, with what is held about it.
    pub addresses: Vec<SubjectAddress>,
}

/// One address of the profile.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectAddress {
    /// EMAIL, PHONE or PUSH_TOKEN.
    pub address_type: &'static str,
    /// The address, normalised.
    pub address: String,
    /// Its stored quarantine state; `null` when nothing was ever recorded
    /// about it (it is VALID).
    pub state: Option<AddressStateRecord>,
    /// Its per-channel opt-outs; `null` when it never had one.
    pub consent: Option<AddressConsentRecord>,
}

fn kind_name(kind: AddressKind) -> &'static str {
    match kind {
        AddressKind::Email => "EMAIL",
        AddressKind::Phone => "PHONE",
        AddressKind::PushToken => "PUSH_TOKEN",
    }
}

impl SubjectDocument {
    /// The document of what the application read.
    pub fn new(tenant: &Tenant, data: &SubjectData) -> Self {
        let record = |item: DumpItem| Record::from_item(&item);
        let profile = match record(DumpItem::Profile {
            tenant: tenant.clone(),
            profile: data.profile.clone(),
        }) {
            Record::Profile(p) => p,
            other => unreachable!("a profile is a profile record, not {}", other.type_name()),
        };
        let id = &data.profile.id;
        let consent_history = data
            .history
            .iter()
            .filter_map(|entry| {
                match record(DumpItem::ConsentEntry {
                    tenant: tenant.clone(),
                    profile_id: id.clone(),
                    entry: entry.clone(),
                }) {
                    Record::ConsentHistory(r) => Some(r),
                    _ => None,
                }
            })
            .collect();
        let subscriptions = data
            .subscriptions
            .iter()
            .filter_map(|subscription| {
                match record(DumpItem::Subscription {
                    tenant: tenant.clone(),
                    profile_id: id.clone(),
                    subscription: subscription.clone(),
                }) {
                    Record::Subscription(r) => Some(r),
                    _ => None,
                }
            })
            .collect();
        let addresses = data
            .addresses
            .iter()
            .map(|(address, state, consent)| SubjectAddress {
                address_type: kind_name(address.kind()),
                address: address.as_str().to_owned(),
                state: state.as_ref().and_then(|state| {
                    match record(DumpItem::AddressState {
                        tenant: tenant.clone(),
                        address: address.clone(),
                        state: state.clone(),
                    }) {
                        Record::AddressState(r) => Some(r),
                        _ => None,
                    }
                }),
                consent: consent.as_ref().and_then(|consent| {
                    match record(DumpItem::AddressConsent {
                        tenant: tenant.clone(),
                        address: address.clone(),
                        consent: consent.clone(),
                    }) {
                        Record::AddressConsent(r) => Some(r),
                        _ => None,
                    }
                }),
            })
            .collect();
        Self {
            format: SUBJECT_FORMAT_NAME,
            version: SUBJECT_FORMAT_VERSION,
            exported_at_ms: data.exported_at,
            tenant: tenant.as_str().to_owned(),
            profile,
            consent_history,
            consent_history_complete: data.history_complete,
            subscriptions,
            addresses,
        }
    }

    /// The document as UTF-8 JSON.
    pub fn to_json(&self) -> String {
        // Plain data (strings, numbers, options): serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
