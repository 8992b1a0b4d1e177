//! Crash cycles: 16 clients write to the real `consentd` binary, which is
//! killed with SIGKILL at a random moment and restarted, again and again.
//! After each restart the whole state is read back and checked against what
//! the server acknowledged:
//!
//! - every acknowledged write is visible, with its history entry;
//! - the state is consistent: the address → profile index matches the
//!   profiles' addresses, the newest history entry of each consent scope and
//!   of each address matches the current state, the history chains
//!   (`old_status` of an entry is `new_status` of the one before), and no
//!   count went backwards;
//! - the write each client had in flight at the kill is wholly applied (state
//!   and history entry) or not at all.
//!
//! Each client owns its own profiles and addresses, so it knows exactly the
//! state it last had acknowledged. `CONSENTD_CRASH_SEED` replays a run's
//! choice of writes (the kill moments depend on timing too);
//! `CONSENTD_CRASH_CYCLES` runs more cycles (a soak).
//!
//! To add a kind of write: a [`Write`] variant, how a client picks it
//! (`ClientModel::pick`), sends it (`send`), what its acknowledgement means
//! (`ClientModel::acknowledged`) and what "applied" looks like in the state
//! read back (`check_profile` or `check_address`).

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::process::{ServerProcess, connect};
use consentd::pb::{
    self, AddressEventType, AddressHistoryEntry, AddressState, AddressStatus, ChangeContext,
    Channel, ConsentHistoryEntry, ConsentState, FeedbackKind, Source,
    consent_service_client::ConsentServiceClient, profile_service_client::ProfileServiceClient,
    quarantine_service_client::QuarantineServiceClient,
};
use tonic::{Code, Status, transport::Channel as GrpcChannel};

/// The tenant of every write.
const TENANT: &str = "crash";
/// Concurrent clients, each with its own connection.
const CLIENTS: usize = 16;
/// Kill/restart cycles when `CONSENTD_CRASH_CYCLES` is not set.
const CYCLES_DEFAULT: u32 = 20;
/// Profiles each client owns (`c<client>-p<n>`).
const PROFILES_PER_CLIENT: usize = 4;
/// E-mail addresses each client owns; its profiles use them, and so do its
/// address writes.
const EMAILS_PER_CLIENT: usize = 4;
/// Phone numbers each client owns.
const PHONES_PER_CLIENT: usize = 2;
/// The kill comes this many ms after the clients start writing, at random.
const KILL_AFTER_MS_MAX: u64 = 300;
/// A call that takes longer has hung: the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Page size of the history listings.
const PAGE_SIZE: i32 = 1000;

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// A consent scope: every channel, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Channel(Channel),
}

/// One write a client can make. Each targets one profile or one address
/// that the client owns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    /// `UpsertProfile` with these addresses.
    Upsert {
        profile: String,
        emails: Vec<String>,
        phones: Vec<String>,
    },
    /// `OptOut` (status OPTED_OUT) or `OptIn` (OPTED_IN).
    Consent {
        profile: String,
        scope: Scope,
        status: pb::ConsentStatus,
    },
    /// `RecordDeliveryFeedback`.
    Feedback {
        address: String,
        kind: FeedbackKind,
        event_id: String,
    },
    /// `QuarantineAddress` to QUARANTINED or DENYLISTED.
    Quarantine {
        address: String,
        status: AddressStatus,
    },
    /// `ReleaseAddress`.
    Release { address: String },
}

impl Write {
    fn profile(&self) -> Option<&str> {
        match self {
            Write::Upsert { profile, .. } | Write::Consent { profile, .. } => Some(profile),
            _ => None,
        }
    }

    fn address(&self) -> Option<&str> {
        match self {
            Write::Feedback { address, .. }
            | Write::Quarantine { address, .. }
            | Write::Release { address } => Some(address),
            _ => None,
        }
    }
}

/// What the server answered to an acknowledged write.
#[derive(Debug)]
enum Ack {
    Profile(pb::Profile),
    Consent {
        changed: bool,
        consent: ConsentState,
    },
    Address {
        changed: bool,
        state: AddressState,
    },
}

/// The gRPC clients of one connection.
struct Clients {
    profiles: ProfileServiceClient<GrpcChannel>,
    consent: ConsentServiceClient<GrpcChannel>,
    quarantine: QuarantineServiceClient<GrpcChannel>,
}

impl Clients {
    fn new(channel: GrpcChannel) -> Self {
        Self {
            profiles: ProfileServiceClient::new(channel.clone()),
            consent: ConsentServiceClient::new(channel.clone()),
            quarantine: QuarantineServiceClient::new(channel),
        }
    }
}

fn context(source: Source) -> Option<ChangeContext> {
    Some(ChangeContext {
        source: source.into(),
        actor: "crash-cycle".to_owned(),
        reason: String::new(),
        ..Default::default()
    })
}

fn scope_fields(scope: Scope) -> (i32, bool) {
    match scope {
        Scope::All => (0, true),
        Scope::Channel(channel) => (channel.into(), false),
    }
}

/// Sends one write; `Err` when it was not acknowledged.
async fn send(clients: &mut Clients, write: &Write) -> Result<Ack, Status> {
    let call = async {
        match write.clone() {
            Write::Upsert {
                profile,
                emails,
                phones,
            } => {
                let out = clients
                    .profiles
                    .upsert_profile(pb::UpsertProfileRequest {
                        tenant: TENANT.into(),
                        profile_id: profile,
                        emails,
                        phones,
                        context: context(Source::Api),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(Ack::Profile(
                    out.profile.expect("upsert answers the profile"),
                ))
            }
            Write::Consent {
                profile,
                scope,
                status,
            } => {
                let (channel, all_channels) = scope_fields(scope);
                let (changed, consent) = if status == pb::ConsentStatus::OptedOut {
                    let out = clients
                        .consent
                        .opt_out(pb::OptOutRequest {
                            tenant: TENANT.into(),
                            profile_id: profile,
                            channel,
                            all_channels,
                            context: context(Source::LandingPage),
                        })
                        .await?
                        .into_inner();
                    (out.changed, out.consent)
                } else {
                    let out = clients
                        .consent
                        .opt_in(pb::OptInRequest {
                            tenant: TENANT.into(),
                            profile_id: profile,
                            channel,
                            all_channels,
                            context: context(Source::Api),
                        })
                        .await?
                        .into_inner();
                    (out.changed, out.consent)
                };
                Ok(Ack::Consent {
                    changed,
                    consent: consent.expect("consent writes answer the consent"),
                })
            }
            Write::Feedback {
                address,
                kind,
                event_id,
            } => {
                let error_reason = match kind {
                    FeedbackKind::HardBounce => pb::DeliveryErrorReason::UserUnknown,
                    FeedbackKind::SoftBounce => pb::DeliveryErrorReason::MailboxFull,
                    _ => pb::DeliveryErrorReason::Unspecified,
                };
                let out = clients
                    .quarantine
                    .record_delivery_feedback(pb::RecordDeliveryFeedbackRequest {
                        tenant: TENANT.into(),
                        address,
                        kind: kind.into(),
                        error_reason: error_reason.into(),
                        event_id,
                        context: context(Source::DeliveryFeedback),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(Ack::Address {
                    changed: out.recorded,
                    state: out.state.expect("feedback answers the state"),
                })
            }
            Write::Quarantine { address, status } => {
                let out = clients
                    .quarantine
                    .quarantine_address(pb::QuarantineAddressRequest {
                        tenant: TENANT.into(),
                        address,
                        status: status.into(),
                        context: context(Source::Operator),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(Ack::Address {
                    changed: out.changed,
                    state: out.state.expect("quarantine answers the state"),
                })
            }
            Write::Release { address } => {
                let out = clients
                    .quarantine
                    .release_address(pb::ReleaseAddressRequest {
                        tenant: TENANT.into(),
                        address,
                        context: context(Source::Operator),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(Ack::Address {
                    changed: out.changed,
                    state: out.state.expect("release answers the state"),
                })
            }
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => panic!("{write:?} hung for {CALL_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------
// What each client knows was acknowledged
// ---------------------------------------------------------------------------

/// A profile as last acknowledged.
#[derive(Debug, Clone)]
struct ProfileModel {
    emails: Vec<String>,
    phones: Vec<String>,
    consent: Option<ConsentState>,
    /// Entries in its consent history.
    history_len: u64,
}

/// An address as last acknowledged.
#[derive(Debug, Clone, Default)]
struct AddressModel {
    /// `None` until a write to the address is acknowledged.
    state: Option<AddressState>,
    /// Entries in its log.
    log_len: u64,
}

/// One client's profiles and addresses, and the write it had in flight.
#[derive(Debug)]
struct ClientModel {
    client: usize,
    profile_ids: Vec<String>,
    profiles: BTreeMap<String, ProfileModel>,
    addresses: BTreeMap<String, AddressModel>,
    emails: Vec<String>,
    phones: Vec<String>,
    /// The write sent but not acknowledged when the server died.
    pending: Option<Write>,
    /// Numbers feedback event ids.
    next_event: u64,
    /// Writes acknowledged, over all cycles.
    acknowledged: u64,
    /// In-flight writes found applied / not applied after a restart.
    pending_applied: u64,
    pending_lost: u64,
    rng: fastrand::Rng,
}

impl ClientModel {
    fn new(client: usize, seed: u64) -> Self {
        let emails: Vec<String> = (0..EMAILS_PER_CLIENT)
            .map(|n| format!("c{client}-a{n}@example.com"))
            .collect();
        let phones: Vec<String> = (0..PHONES_PER_CLIENT)
            .map(|n| format!("+3361234{client:02}{n:02}"))
            .collect();
        let addresses = emails
            .iter()
            .chain(&phones)
            .map(|a| (a.clone(), AddressModel::default()))
            .collect();
        Self {
            client,
            profile_ids: (0..PROFILES_PER_CLIENT)
                .map(|n| format!("c{client}-p{n}"))
                .collect(),
            profiles: BTreeMap::new(),
            addresses,
            emails,
            phones,
            pending: None,
            next_event: 0,
            acknowledged: 0,
            pending_applied: 0,
            pending_lost: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Chooses the next write: consent writes only on profiles that exist.
    fn pick(&mut self) -> Write {
        let roll = self.rng.u32(0..100);
        let existing: Vec<String> = self.profiles.keys().cloned().collect();
        if existing.is_empty() || roll < 15 {
            let profile = self.profile_ids[self.rng.usize(..self.profile_ids.len())].clone();
            let mut emails = vec![self.emails[self.rng.usize(..self.emails.len())].clone()];
            if self.rng.bool() {
                let other = self.emails[self.rng.usize(..self.emails.len())].clone();
                if other != emails[0] {
                    emails.push(other);
                }
            }
            let phones = if self.rng.bool() {
                vec![self.phones[self.rng.usize(..self.phones.len())].clone()]
            } else {
                Vec::new()
            };
            return Write::Upsert {
                profile,
                emails,
                phones,
            };
        }
        if roll < 55 {
            let channels = [
                Channel::Email,
                Channel::Sms,
                Channel::Push,
                Channel::Voice,
                Channel::DirectMail,
            ];
            let scope = if self.rng.u32(0..4) == 0 {
                Scope::All
            } else {
                Scope::Channel(channels[self.rng.usize(..channels.len())])
            };
            let status = if self.rng.bool() {
                pb::ConsentStatus::OptedOut
            } else {
                pb::ConsentStatus::OptedIn
            };
            return Write::Consent {
                profile: existing[self.rng.usize(..existing.len())].clone(),
                scope,
                status,
            };
        }
        let addresses: Vec<&String> = self.addresses.keys().collect();
        let address = addresses[self.rng.usize(..addresses.len())].clone();
        if roll < 80 {
            let kind = match self.rng.u32(0..10) {
                0..3 => FeedbackKind::HardBounce,
                3..8 => FeedbackKind::SoftBounce,
                _ => FeedbackKind::Delivered,
            };
            self.next_event += 1;
            Write::Feedback {
                address,
                kind,
                event_id: format!("c{}-e{}", self.client, self.next_event),
            }
        } else if roll < 90 {
            let status = if self.rng.bool() {
                AddressStatus::Quarantined
            } else {
                AddressStatus::Denylisted
            };
            Write::Quarantine { address, status }
        } else {
            Write::Release { address }
        }
    }

    /// Records what the server acknowledged.
    fn acknowledged(&mut self, write: &Write, ack: Ack) {
        self.acknowledged += 1;
        match (write, ack) {
            (Write::Upsert { profile, .. }, Ack::Profile(p)) => {
                let history_len = self.profiles.get(profile).map_or(0, |m| m.history_len);
                self.profiles.insert(
                    profile.clone(),
                    ProfileModel {
                        emails: p.emails,
                        phones: p.phones,
                        consent: p.consent,
                        history_len,
                    },
                );
            }
            (Write::Consent { profile, .. }, Ack::Consent { changed, consent }) => {
                let model = self
                    .profiles
                    .get_mut(profile)
                    .expect("consent writes go to existing profiles");
                model.consent = Some(consent);
                model.history_len += u64::from(changed);
            }
            (write, Ack::Address { changed, state }) => {
                let address = write.address().expect("an address write");
                let model = self.addresses.get_mut(address).expect("an owned address");
                model.state = Some(state);
                model.log_len += u64::from(changed);
            }
            (write, ack) => panic!("{write:?} answered with {ack:?}"),
        }
    }
}

/// Writes until the first failure (the kill), then returns the model with
/// the unacknowledged write as `pending`.
async fn write_until_killed(
    mut model: ClientModel,
    mut clients: Clients,
    killed: Arc<AtomicBool>,
) -> ClientModel {
    loop {
        let write = model.pick();
        model.pending = Some(write.clone());
        match send(&mut clients, &write).await {
            Ok(ack) => {
                model.pending = None;
                model.acknowledged(&write, ack);
            }
            Err(status) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "client {}: {write:?} failed while the server was up: {status:?}",
                    model.client
                );
                return model;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Reading back and checking
// ---------------------------------------------------------------------------

async fn consent_history(clients: &mut Clients, profile: &str) -> Vec<ConsentHistoryEntry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .consent
            .list_consent_history(pb::ListConsentHistoryRequest {
                tenant: TENANT.into(),
                profile_id: profile.into(),
                page_size: PAGE_SIZE,
                page_token,
            })
            .await
            .unwrap_or_else(|e| panic!("ListConsentHistory {profile}: {e:?}"))
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

async fn address_history(clients: &mut Clients, address: &str) -> Vec<AddressHistoryEntry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .quarantine
            .list_address_history(pb::ListAddressHistoryRequest {
                tenant: TENANT.into(),
                address: address.into(),
                page_size: PAGE_SIZE,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("ListAddressHistory {address}: {e:?}"))
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

/// Sequences must run from the newest, `len`, down to 1.
fn assert_contiguous(what: &str, sequences: impl Iterator<Item = u64>, len: usize) {
    let sequences: Vec<u64> = sequences.collect();
    let expected: Vec<u64> = (1..=len as u64).rev().collect();
    assert_eq!(sequences, expected, "{what}: history sequences");
}

/// The mark of one scope in a consent state.
fn mark(consent: &ConsentState, scope: Scope) -> Option<&pb::ConsentMark> {
    match scope {
        Scope::All => consent.all_channels.as_ref(),
        Scope::Channel(channel) => consent
            .channels
            .iter()
            .find(|c| c.channel == i32::from(channel))
            .and_then(|c| c.mark.as_ref()),
    }
}

fn entry_scope(entry: &ConsentHistoryEntry) -> Scope {
    if entry.all_channels {
        Scope::All
    } else {
        Scope::Channel(entry.channel())
    }
}

/// History and state of a profile agree: per scope, the entries chain and
/// the newest is the current mark; a scope never changed has no preference.
fn check_consent_consistent(
    profile: &str,
    consent: &ConsentState,
    history: &[ConsentHistoryEntry],
) {
    assert_contiguous(profile, history.iter().map(|e| e.sequence), history.len());
    let scopes = [
        Scope::All,
        Scope::Channel(Channel::Email),
        Scope::Channel(Channel::Sms),
        Scope::Channel(Channel::Push),
        Scope::Channel(Channel::Voice),
        Scope::Channel(Channel::DirectMail),
    ];
    for scope in scopes {
        // Oldest first.
        let entries: Vec<&ConsentHistoryEntry> = history
            .iter()
            .rev()
            .filter(|e| entry_scope(e) == scope)
            .collect();
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].old_status, pair[0].new_status,
                "{profile} {scope:?}: history does not chain: {pair:?}"
            );
        }
        let current = mark(consent, scope).map_or(pb::ConsentStatus::NoPreference, |m| m.status());
        match entries.last() {
            Some(newest) => {
                assert_eq!(
                    newest.new_status(),
                    current,
                    "{profile} {scope:?}: newest history entry {newest:?} is not the state {consent:?}"
                );
                assert_eq!(
                    mark(consent, scope).and_then(|m| m.changed_at),
                    newest.changed_at,
                    "{profile} {scope:?}: the mark and its history entry differ in time"
                );
            }
            None => assert_eq!(
                current,
                pb::ConsentStatus::NoPreference,
                "{profile} {scope:?}: a setting without a history entry: {consent:?}"
            ),
        }
    }
}

/// Reads one profile back and checks it against the model, resolving the
/// in-flight write if it targeted this profile. Returns whether the
/// in-flight write was found applied, when it targeted this profile.
async fn check_profile(clients: &mut Clients, model: &mut ClientModel, id: &str) -> Option<bool> {
    let found = match clients
        .profiles
        .get_profile(pb::GetProfileRequest {
            tenant: TENANT.into(),
            profile_id: id.into(),
        })
        .await
    {
        Ok(response) => Some(response.into_inner().profile.expect("a profile")),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("GetProfile {id}: {status:?}"),
    };
    let pending = model.pending.clone().filter(|w| w.profile() == Some(id));
    let known = model.profiles.get(id).cloned();
    let Some(profile) = found else {
        assert!(
            known.is_none(),
            "{id}: an acknowledged profile is gone after the crash"
        );
        return pending.map(|_| false);
    };
    let history = consent_history(clients, id).await;
    let consent = profile.consent.clone().expect("a profile has consent");
    check_consent_consistent(id, &consent, &history);
    let len = history.len() as u64;
    let observed = ProfileModel {
        emails: profile.emails.clone(),
        phones: profile.phones.clone(),
        consent: Some(consent.clone()),
        history_len: len,
    };
    let unchanged = |known: &ProfileModel| {
        known.emails == observed.emails
            && known.phones == observed.phones
            && known.consent == observed.consent
            && known.history_len == len
    };
    let applied = match (&known, &pending) {
        (Some(known), None) => {
            assert!(
                unchanged(known),
                "{id}: acknowledged {known:?}, read back {observed:?} (history {history:?})"
            );
            None
        }
        (None, None) => panic!("{id}: a profile nobody wrote exists: {profile:?}"),
        (known, Some(Write::Upsert { emails, phones, .. })) => {
            let new_addresses = &observed.emails == emails && &observed.phones == phones;
            match known {
                // A created profile: its addresses, no consent yet.
                None => {
                    assert!(new_addresses, "{id}: half an upsert: {observed:?}");
                    assert!(history.is_empty(), "{id}: a new profile with history");
                    Some(true)
                }
                Some(known) => {
                    assert!(
                        known.consent == observed.consent && known.history_len == len,
                        "{id}: an upsert changed consent: {known:?} → {observed:?}"
                    );
                    let old_addresses =
                        known.emails == observed.emails && known.phones == observed.phones;
                    assert!(
                        old_addresses || new_addresses,
                        "{id}: upsert {emails:?} {phones:?} neither applied nor not: {known:?} → {observed:?}"
                    );
                    Some(new_addresses && !old_addresses)
                }
            }
        }
        (Some(known), Some(Write::Consent { scope, status, .. })) => {
            assert!(
                known.emails == observed.emails && known.phones == observed.phones,
                "{id}: addresses changed by a consent write: {known:?} → {observed:?}"
            );
            if known.consent == observed.consent && known.history_len == len {
                Some(false)
            } else {
                assert_eq!(
                    len,
                    known.history_len + 1,
                    "{id}: in-flight {scope:?} {status:?}: state changed without exactly one history entry: {known:?} → {observed:?}"
                );
                let newest = &history[0];
                assert_eq!(entry_scope(newest), *scope, "{id}: newest entry {newest:?}");
                assert_eq!(
                    newest.new_status(),
                    *status,
                    "{id}: newest entry {newest:?}"
                );
                Some(true)
            }
        }
        (None, Some(write)) => panic!("{id}: in-flight {write:?} on a profile never created"),
        (_, Some(write)) => panic!("{id}: {write:?} is not a profile write"),
    };
    if let Some(known) = &known {
        assert!(len >= known.history_len, "{id}: history went backwards");
    }
    model.profiles.insert(id.to_owned(), observed);
    applied
}

/// Reads one address back, checks it against the model and the profiles
/// (the index), resolving the in-flight write if it targeted this address.
async fn check_address(
    clients: &mut Clients,
    model: &mut ClientModel,
    address: &str,
) -> Option<bool> {
    let status = clients
        .quarantine
        .get_address_status(pb::GetAddressStatusRequest {
            tenant: TENANT.into(),
            address: address.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("GetAddressStatus {address}: {e:?}"))
        .into_inner();
    let state = status.state.expect("an address state");

    // The index: exactly the profiles that have this address.
    let mut users = status.profile_ids.clone();
    users.sort();
    let expected_users: Vec<String> = model
        .profiles
        .iter()
        .filter(|(_, p)| p.emails.iter().chain(&p.phones).any(|a| a == address))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        users, expected_users,
        "{address}: the address → profile index does not match the profiles"
    );

    let history = address_history(clients, address).await;
    assert_contiguous(address, history.iter().map(|e| e.sequence), history.len());
    for pair in history.windows(2) {
        // Newest first: pair[0] follows pair[1].
        assert_eq!(
            pair[0].old_status, pair[1].new_status,
            "{address}: log does not chain: {pair:?}"
        );
    }
    match history.first() {
        Some(newest) => assert_eq!(
            newest.new_status, state.status,
            "{address}: newest log entry {newest:?} is not the state {state:?}"
        ),
        None => assert_eq!(
            state.status(),
            AddressStatus::Valid,
            "{address}: a status without a log entry: {state:?}"
        ),
    }
    let len = history.len() as u64;
    let known = model.addresses.get(address).cloned().unwrap_or_default();
    assert!(len >= known.log_len, "{address}: log went backwards");
    let unchanged =
        len == known.log_len && known.state.as_ref().is_none_or(|known| known == &state);
    let pending = model
        .pending
        .clone()
        .filter(|w| w.address() == Some(address));
    let applied = match &pending {
        None => {
            assert!(
                unchanged,
                "{address}: acknowledged {known:?}, read back {state:?} with {len} log entries"
            );
            if let Some(known) = &known.state {
                assert!(
                    state.error_count >= known.error_count || state.error_count == 0,
                    "{address}: error count went backwards"
                );
            }
            None
        }
        Some(_) if unchanged => Some(false),
        Some(write) => {
            assert_eq!(
                len,
                known.log_len + 1,
                "{address}: in-flight {write:?}: state changed without exactly one log entry: {known:?} → {state:?}"
            );
            let newest = &history[0];
            let matches = match write {
                Write::Feedback { kind, event_id, .. } => {
                    newest.event_type() == AddressEventType::Feedback
                        && newest.feedback_kind() == *kind
                        && &newest.event_id == event_id
                }
                Write::Quarantine { status, .. } => {
                    newest.event_type() == AddressEventType::ManualQuarantine
                        && newest.requested_status() == *status
                }
                Write::Release { .. } => newest.event_type() == AddressEventType::Release,
                _ => false,
            };
            assert!(
                matches,
                "{address}: in-flight {write:?}, newest log entry {newest:?}"
            );
            Some(true)
        }
    };
    model.addresses.insert(
        address.to_owned(),
        AddressModel {
            state: Some(state),
            log_len: len,
        },
    );
    applied
}

/// Checks everything a client owns; profiles first, since the address index
/// is checked against them.
async fn check_client(addr: SocketAddr, mut model: ClientModel) -> ClientModel {
    let mut clients = Clients::new(connect(addr).await);
    let mut outcome = None;
    for id in model.profile_ids.clone() {
        outcome = outcome.or(check_profile(&mut clients, &mut model, &id).await);
    }
    let addresses: Vec<String> = model.addresses.keys().cloned().collect();
    for address in addresses {
        outcome = outcome.or(check_address(&mut clients, &mut model, &address).await);
    }
    match (model.pending.take(), outcome) {
        (Some(_), Some(true)) => model.pending_applied += 1,
        (Some(_), Some(false) | None) => model.pending_lost += 1,
        (None, _) => {}
    }
    model
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// Prints the seed if the test fails, so that the run can be replayed.
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash-cycle test failed; replay the same writes with CONSENTD_CRASH_SEED={}",
                self.0
            );
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_repeated_sigkill() {
    let seed = env_u64("CONSENTD_CRASH_SEED").unwrap_or_else(|| fastrand::u64(..));
    let cycles = env_u64("CONSENTD_CRASH_CYCLES").map_or(CYCLES_DEFAULT, |n| {
        u32::try_from(n).expect("CONSENTD_CRASH_CYCLES fits in u32")
    });
    let _report = SeedReport(seed);
    eprintln!("crash-cycle: seed {seed} (CONSENTD_CRASH_SEED), {cycles} cycles");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let mut models: Vec<ClientModel> = (0..CLIENTS)
        .map(|client| ClientModel::new(client, rng.u64(..)))
        .collect();
    let mut server = ServerProcess::start(data_dir.path());
    let mut addr = server.wait_listening().await;

    for cycle in 1..=cycles {
        // Write from every client until the kill.
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for model in models.drain(..) {
            let clients = Clients::new(connect(addr).await);
            tasks.push(tokio::spawn(write_until_killed(
                model,
                clients,
                Arc::clone(&killed),
            )));
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=KILL_AFTER_MS_MAX))).await;
        killed.store(true, Ordering::SeqCst);
        server.kill();
        for task in tasks {
            models.push(task.await.expect("a client task panicked"));
        }

        // Restart and read everything back.
        server = ServerProcess::start(data_dir.path());
        addr = server.wait_listening().await;
        let mut checks = Vec::new();
        for model in models.drain(..) {
            checks.push(tokio::spawn(check_client(addr, model)));
        }
        for check in checks {
            models.push(check.await.expect("a check panicked"));
        }
        let acknowledged: u64 = models.iter().map(|m| m.acknowledged).sum();
        eprintln!(
            "cycle {cycle}: {acknowledged} writes acknowledged so far, all read back; in-flight writes applied {} / not applied or changing nothing {}",
            models.iter().map(|m| m.pending_applied).sum::<u64>(),
            models.iter().map(|m| m.pending_lost).sum::<u64>(),
        );
    }
    let acknowledged: u64 = models.iter().map(|m| m.acknowledged).sum();
    assert!(
        acknowledged >= u64::from(cycles),
        "the clients got only {acknowledged} writes acknowledged in {cycles} cycles"
    );
    eprintln!(
        "crash-cycle: {cycles} cycles, {acknowledged} acknowledged writes checked in {:?}",
        started.elapsed()
    );
}
