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
//! - subscriptions (to one single- and one double-opt-in service, shared by
//!   all clients) agree with the profile's history (per service, the
//!   subscription entries chain and the newest is the current status) and
//!   with each service's subscriber list (the service → profile index);
//! - the write each client had in flight at the kill is wholly applied (state
//!   and history entry) or not at all; a confirmation token is used up
//!   exactly when its confirmation was applied.
//!
//! The server compacts its store whenever it may (`--compaction-ratio 2
//! --compaction-min-size 0`, a size check every 100 ms), so kills land before,
//! during and after compactions too.
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

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{
    error_info,
    process::{ServerProcess, connect, serve_args},
};
use consentd::pb::{
    self, AddressEventType, AddressHistoryEntry, AddressState, AddressStatus, ChangeContext,
    Channel, ConsentHistoryEntry, ConsentState, FeedbackKind, Source, Subscription,
    SubscriptionStatus, consent_service_client::ConsentServiceClient,
    profile_service_client::ProfileServiceClient,
    quarantine_service_client::QuarantineServiceClient,
    subscription_service_client::SubscriptionServiceClient,
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
/// The services every client subscribes its profiles to: id, channel,
/// double opt-in. Created once, before the first kill.
const SERVICES: [(&str, Channel, bool); 2] = [
    ("crash-single", Channel::Email, false),
    ("crash-double", Channel::Sms, true),
];

/// Whether a service of [`SERVICES`] needs double opt-in.
fn double_opt_in(service: &str) -> bool {
    SERVICES
        .iter()
        .any(|(id, _, double)| *id == service && *double)
}

/// The channel of a service of [`SERVICES`].
fn service_channel(service: &str) -> Channel {
    SERVICES
        .iter()
        .find(|(id, _, _)| *id == service)
        .map_or(Channel::Unspecified, |(_, channel, _)| *channel)
}

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
    /// `Subscribe` (with double opt-in, a new token when pending).
    Subscribe { profile: String, service: String },
    /// `ConfirmSubscription` with the newest token the client got for this
    /// profile and service.
    Confirm {
        profile: String,
        service: String,
        token: String,
    },
    /// `Unsubscribe`.
    Unsubscribe { profile: String, service: String },
}

impl Write {
    fn profile(&self) -> Option<&str> {
        match self {
            Write::Upsert { profile, .. }
            | Write::Consent { profile, .. }
            | Write::Subscribe { profile, .. }
            | Write::Confirm { profile, .. }
            | Write::Unsubscribe { profile, .. } => Some(profile),
            _ => None,
        }
    }

    fn service(&self) -> Option<&str> {
        match self {
            Write::Subscribe { service, .. }
            | Write::Confirm { service, .. }
            | Write::Unsubscribe { service, .. } => Some(service),
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
    /// A subscription write: the subscription after it (unset when
    /// unsubscribing a profile that never subscribed), and the token sent.
    Subscription {
        subscription: Option<Subscription>,
        token: String,
    },
}

/// The gRPC clients of one connection.
struct Clients {
    profiles: ProfileServiceClient<GrpcChannel>,
    consent: ConsentServiceClient<GrpcChannel>,
    quarantine: QuarantineServiceClient<GrpcChannel>,
    subscriptions: SubscriptionServiceClient<GrpcChannel>,
}

impl Clients {
    fn new(channel: GrpcChannel) -> Self {
        Self {
            profiles: ProfileServiceClient::new(channel.clone()),
            consent: ConsentServiceClient::new(channel.clone()),
            quarantine: QuarantineServiceClient::new(channel.clone()),
            subscriptions: SubscriptionServiceClient::new(channel),
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
            Write::Subscribe { profile, service } => {
                let out = clients
                    .subscriptions
                    .subscribe(pb::SubscribeRequest {
                        tenant: TENANT.into(),
                        profile_id: profile,
                        service_id: service,
                        context: context(Source::Api),
                    })
                    .await?
                    .into_inner();
                Ok(Ack::Subscription {
                    subscription: Some(
                        out.subscription
                            .expect("subscribe answers the subscription"),
                    ),
                    token: out.confirmation_token,
                })
            }
            Write::Confirm { profile, token, .. } => {
                let out = clients
                    .subscriptions
                    .confirm_subscription(pb::ConfirmSubscriptionRequest {
                        tenant: TENANT.into(),
                        token,
                        context: context(Source::Api),
                    })
                    .await?
                    .into_inner();
                assert_eq!(out.profile_id, profile, "a token confirms its own profile");
                Ok(Ack::Subscription {
                    subscription: Some(out.subscription.expect("confirm answers the subscription")),
                    token: String::new(),
                })
            }
            Write::Unsubscribe { profile, service } => {
                let out = clients
                    .subscriptions
                    .unsubscribe(pb::UnsubscribeRequest {
                        tenant: TENANT.into(),
                        profile_id: profile,
                        service_id: service,
                        context: context(Source::Api),
                    })
                    .await?
                    .into_inner();
                Ok(Ack::Subscription {
                    subscription: out.subscription,
                    token: String::new(),
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
#[derive(Debug, Clone, Default)]
struct ProfileModel {
    emails: Vec<String>,
    phones: Vec<String>,
    consent: Option<ConsentState>,
    /// Its subscriptions, by service id.
    subscriptions: BTreeMap<String, Subscription>,
    /// Per service, the confirmation token that still confirms its pending
    /// subscription, as far as the client knows.
    tokens: BTreeMap<String, String>,
    /// Entries in its consent history (consent and subscription changes).
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
    /// Of which subscription writes: subscribe, confirm, unsubscribe.
    acknowledged_subscriptions: [u64; 3],
    /// In-flight writes found applied / not applied after a restart.
    pending_applied: u64,
    pending_lost: u64,
    /// Of which subscription writes.
    pending_subscriptions_applied: u64,
    pending_subscriptions_lost: u64,
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
            acknowledged_subscriptions: [0; 3],
            pending_applied: 0,
            pending_lost: 0,
            pending_subscriptions_applied: 0,
            pending_subscriptions_lost: 0,
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
        if roll < 45 {
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
        if roll < 65 {
            let profile = existing[self.rng.usize(..existing.len())].clone();
            return self.pick_subscription(profile);
        }
        let addresses: Vec<&String> = self.addresses.keys().collect();
        let address = addresses[self.rng.usize(..addresses.len())].clone();
        if roll < 83 {
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
        } else if roll < 93 {
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

    /// Chooses a subscription write on an existing profile: mostly
    /// confirming when the client holds a token, unsubscribing when subscribed,
    /// subscribing otherwise.
    fn pick_subscription(&mut self, profile: String) -> Write {
        let service = SERVICES[self.rng.usize(..SERVICES.len())].0.to_owned();
        let model = &self.profiles[&profile];
        let roll = self.rng.u32(0..100);
        if let Some(token) = model.tokens.get(&service) {
            return match roll {
                0..60 => Write::Confirm {
                    profile,
                    service,
                    token: token.clone(),
                },
                60..80 => Write::Subscribe { profile, service },
                _ => Write::Unsubscribe { profile, service },
            };
        }
        let status = model
            .subscriptions
            .get(&service)
            .map_or(SubscriptionStatus::Unspecified, Subscription::status);
        let unsubscribe_below = match status {
            SubscriptionStatus::Active | SubscriptionStatus::PendingConfirmation => 70,
            _ => 20,
        };
        if roll < unsubscribe_below {
            Write::Unsubscribe { profile, service }
        } else {
            Write::Subscribe { profile, service }
        }
    }

    /// Records what the server acknowledged.
    fn acknowledged(&mut self, write: &Write, ack: Ack) {
        self.acknowledged += 1;
        match (write, ack) {
            (Write::Upsert { profile, .. }, Ack::Profile(p)) => {
                let known = self.profiles.remove(profile).unwrap_or_default();
                let history_len = known.history_len;
                self.profiles.insert(
                    profile.clone(),
                    ProfileModel {
                        emails: p.emails,
                        phones: p.phones,
                        consent: p.consent,
                        subscriptions: known.subscriptions,
                        tokens: known.tokens,
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
            (
                write,
                Ack::Subscription {
                    subscription,
                    token,
                },
            ) => {
                let kind = match write {
                    Write::Subscribe { .. } => 0,
                    Write::Confirm { .. } => 1,
                    _ => 2,
                };
                self.acknowledged_subscriptions[kind] += 1;
                let profile = write
                    .profile()
                    .expect("a subscription write names a profile");
                let service = write
                    .service()
                    .expect("a subscription write names a service");
                let model = self
                    .profiles
                    .get_mut(profile)
                    .expect("subscription writes go to existing profiles");
                let old = model
                    .subscriptions
                    .get(service)
                    .map_or(SubscriptionStatus::Unspecified, Subscription::status);
                if let Some(subscription) = subscription {
                    // A change of status is one history entry; a new token
                    // for a pending subscription is none.
                    model.history_len += u64::from(subscription.status() != old);
                    if subscription.status() == SubscriptionStatus::PendingConfirmation {
                        assert!(
                            !token.is_empty() || matches!(write, Write::Unsubscribe { .. }),
                            "{write:?}: pending without a token"
                        );
                    }
                    model.subscriptions.insert(service.to_owned(), subscription);
                }
                // The newest token replaces the older ones; confirming or
                // unsubscribing uses it up.
                if token.is_empty() {
                    if !matches!(write, Write::Subscribe { .. }) {
                        model.tokens.remove(service);
                    }
                } else {
                    model.tokens.insert(service.to_owned(), token);
                }
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
/// the unacknowledged write as `pending`; or until it sees the kill
/// announced, between two writes, with nothing pending.
async fn write_until_killed(
    mut model: ClientModel,
    mut clients: Clients,
    killed: Arc<AtomicBool>,
) -> ClientModel {
    loop {
        // Once the server is killed its port is free, and another test's
        // server may take it: a channel that reconnected would send the next
        // write there (and hang on a server that is holding its writes).
        if killed.load(Ordering::SeqCst) {
            return model;
        }
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
/// Subscription entries are checked by [`check_subscriptions_consistent`].
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
            .filter(|e| e.service_id.is_empty() && entry_scope(e) == scope)
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

/// A profile's subscriptions and the subscription entries of its history
/// agree: per service, the entries chain from "never subscribed" and the
/// newest is the current status, at the same time; a pending subscription
/// (only) has a token expiry.
fn check_subscriptions_consistent(
    profile: &str,
    subscriptions: &BTreeMap<String, Subscription>,
    history: &[ConsentHistoryEntry],
) {
    let mut per_service: BTreeMap<&str, Vec<&ConsentHistoryEntry>> = BTreeMap::new();
    // Oldest first.
    for entry in history.iter().rev().filter(|e| !e.service_id.is_empty()) {
        assert!(
            entry.old_status() == pb::ConsentStatus::Unspecified
                && entry.new_status() == pb::ConsentStatus::Unspecified
                && !entry.all_channels
                && entry.channel() == service_channel(&entry.service_id)
                && entry.old_subscription_status != entry.new_subscription_status,
            "{profile}: malformed subscription entry {entry:?}"
        );
        per_service
            .entry(&entry.service_id)
            .or_default()
            .push(entry);
    }
    assert_eq!(
        per_service.keys().copied().collect::<Vec<_>>(),
        subscriptions.keys().map(String::as_str).collect::<Vec<_>>(),
        "{profile}: services in the history and in ListSubscriptions differ: {subscriptions:?}"
    );
    for (service, entries) in per_service {
        assert_eq!(
            entries[0].old_subscription_status(),
            SubscriptionStatus::Unspecified,
            "{profile} {service}: the first entry does not start from never subscribed"
        );
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].old_subscription_status, pair[0].new_subscription_status,
                "{profile} {service}: history does not chain: {pair:?}"
            );
        }
        let newest = entries[entries.len() - 1];
        let subscription = &subscriptions[service];
        assert_eq!(
            newest.new_subscription_status, subscription.status,
            "{profile} {service}: newest entry {newest:?} is not the state {subscription:?}"
        );
        assert_eq!(
            newest.changed_at, subscription.changed_at,
            "{profile} {service}: the subscription and its history entry differ in time"
        );
        assert_eq!(
            subscription.confirmation_expires_at.is_some(),
            subscription.status() == SubscriptionStatus::PendingConfirmation,
            "{profile} {service}: token expiry and status disagree: {subscription:?}"
        );
    }
}

async fn list_subscriptions(
    clients: &mut Clients,
    profile: &str,
) -> BTreeMap<String, Subscription> {
    clients
        .subscriptions
        .list_subscriptions(pb::ListSubscriptionsRequest {
            tenant: TENANT.into(),
            profile_id: profile.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("ListSubscriptions {profile}: {e:?}"))
        .into_inner()
        .subscriptions
        .into_iter()
        .map(|s| (s.service_id.clone(), s))
        .collect()
}

/// Confirms with a token whose record must be gone (superseded): NOT_FOUND.
async fn assert_token_gone(clients: &mut Clients, what: &str, token: &str) {
    let refused = clients
        .subscriptions
        .confirm_subscription(pb::ConfirmSubscriptionRequest {
            tenant: TENANT.into(),
            token: token.into(),
            context: context(Source::Api),
        })
        .await
        .expect_err(what);
    assert_eq!(refused.code(), Code::NotFound, "{what}: {refused:?}");
    assert_eq!(
        error_info(&refused).reason,
        "TOKEN_NOT_FOUND",
        "{what}: {refused:?}"
    );
}

/// Confirms with a token that must be refused, changing nothing, for
/// `reason`.
async fn assert_token_refused(clients: &mut Clients, what: &str, token: &str, reason: &str) {
    let refused = clients
        .subscriptions
        .confirm_subscription(pb::ConfirmSubscriptionRequest {
            tenant: TENANT.into(),
            token: token.into(),
            context: context(Source::Api),
        })
        .await
        .expect_err(what);
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{what}: {refused:?}"
    );
    assert_eq!(error_info(&refused).reason, reason, "{what}: {refused:?}");
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
    let subscriptions = list_subscriptions(clients, id).await;
    check_subscriptions_consistent(id, &subscriptions, &history);
    let len = history.len() as u64;
    let mut observed = ProfileModel {
        emails: profile.emails.clone(),
        phones: profile.phones.clone(),
        consent: Some(consent.clone()),
        subscriptions,
        tokens: known.as_ref().map(|k| k.tokens.clone()).unwrap_or_default(),
        history_len: len,
    };
    let unchanged = |known: &ProfileModel| {
        known.emails == observed.emails
            && known.phones == observed.phones
            && known.consent == observed.consent
            && known.subscriptions == observed.subscriptions
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
                    assert!(
                        observed.subscriptions.is_empty(),
                        "{id}: a new profile with subscriptions"
                    );
                    Some(true)
                }
                Some(known) => {
                    assert!(
                        known.consent == observed.consent
                            && known.subscriptions == observed.subscriptions
                            && known.history_len == len,
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
                known.emails == observed.emails
                    && known.phones == observed.phones
                    && known.subscriptions == observed.subscriptions,
                "{id}: addresses or subscriptions changed by a consent write: {known:?} → {observed:?}"
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
        (
            Some(known),
            Some(
                write @ (Write::Subscribe { service, .. }
                | Write::Confirm { service, .. }
                | Write::Unsubscribe { service, .. }),
            ),
        ) => {
            let applied = check_pending_subscription(
                clients,
                id,
                write,
                service,
                known,
                &mut observed,
                &history,
            )
            .await;
            Some(applied)
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

/// Resolves an in-flight subscription write to `service`: wholly applied
/// (the status it sets, exactly one history entry if the status changed, a
/// token used up) or not at all. Forgets the tokens that no longer confirm.
async fn check_pending_subscription(
    clients: &mut Clients,
    id: &str,
    write: &Write,
    service: &str,
    known: &ProfileModel,
    observed: &mut ProfileModel,
    history: &[ConsentHistoryEntry],
) -> bool {
    assert!(
        known.emails == observed.emails
            && known.phones == observed.phones
            && known.consent == observed.consent,
        "{id}: in-flight {write:?} changed more than a subscription: {known:?} → {observed:?}"
    );
    let others = |m: &BTreeMap<String, Subscription>| {
        m.iter()
            .filter(|(s, _)| s.as_str() != service)
            .map(|(_, sub)| sub.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        others(&known.subscriptions),
        others(&observed.subscriptions),
        "{id}: in-flight {write:?} changed another service's subscription"
    );
    let len = observed.history_len;
    let before = known.subscriptions.get(service);
    let after = observed.subscriptions.get(service);
    if before == after && len == known.history_len {
        // Not applied, or changing nothing. A new token for a pending
        // subscription sent in the same millisecond as the old one would
        // look the same: the old token may no longer work.
        if matches!(write, Write::Subscribe { .. }) {
            observed.tokens.remove(service);
        }
        return false;
    }
    let after = after
        .unwrap_or_else(|| panic!("{id}: in-flight {write:?} removed the subscription"))
        .clone();
    let expected = match write {
        Write::Subscribe { .. } if double_opt_in(service) => {
            SubscriptionStatus::PendingConfirmation
        }
        Write::Subscribe { .. } | Write::Confirm { .. } => SubscriptionStatus::Active,
        _ => SubscriptionStatus::Unsubscribed,
    };
    assert_eq!(
        after.status(),
        expected,
        "{id}: in-flight {write:?} left {after:?}"
    );
    let old = before.map_or(SubscriptionStatus::Unspecified, Subscription::status);
    if old == expected {
        // Only a new token for a pending subscription keeps the status; it
        // writes no history entry and keeps the time of the change.
        assert!(
            matches!(write, Write::Subscribe { .. })
                && old == SubscriptionStatus::PendingConfirmation,
            "{id}: in-flight {write:?} changed {before:?} → {after:?} without a change of status"
        );
        assert_eq!(
            len, known.history_len,
            "{id}: a new token wrote a history entry"
        );
        assert_eq!(
            before.and_then(|b| b.changed_at),
            after.changed_at,
            "{id}: a new token changed the time of the subscription"
        );
    } else {
        assert_eq!(
            len,
            known.history_len + 1,
            "{id}: in-flight {write:?}: subscription changed without exactly one history entry: {before:?} → {after:?}"
        );
        let newest = &history[0];
        assert!(
            newest.service_id == service
                && newest.old_subscription_status() == old
                && newest.new_subscription_status() == expected,
            "{id}: in-flight {write:?}, newest entry {newest:?}"
        );
    }
    // The token held before is used up by the confirmation (its record is
    // kept until it expires, to say so), or superseded by a new token or by
    // the unsubscription (its record is deleted with that change).
    let held = observed.tokens.remove(service);
    match (write, held) {
        (Write::Confirm { token, .. }, _) => {
            let what = format!("{id}: the token of an applied confirmation");
            assert_token_refused(clients, &what, token, "TOKEN_ALREADY_USED").await;
        }
        (_, Some(token)) => {
            let what = format!("{id}: a token replaced by an applied {write:?}");
            assert_token_gone(clients, &what, &token).await;
        }
        (_, None) => {}
    }
    true
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

/// The subscribers of a service, by profile id, optionally only those with
/// one status.
async fn list_subscribers(
    clients: &mut Clients,
    service: &str,
    status: SubscriptionStatus,
) -> Vec<(String, SubscriptionStatus)> {
    let mut subscribers = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .subscriptions
            .list_subscribers(pb::ListSubscribersRequest {
                tenant: TENANT.into(),
                service_id: service.into(),
                status: status.into(),
                page_size: PAGE_SIZE,
                page_token,
            })
            .await
            .unwrap_or_else(|e| panic!("ListSubscribers {service} {status:?}: {e:?}"))
            .into_inner();
        subscribers.extend(
            page.subscribers
                .into_iter()
                .map(|s| (s.profile_id.clone(), s.status())),
        );
        if page.next_page_token.is_empty() {
            return subscribers;
        }
        page_token = page.next_page_token;
    }
}

/// The service → subscriber index agrees with the client's profiles'
/// subscriptions (as just read back), unfiltered and filtered by status.
async fn check_subscribers(clients: &mut Clients, model: &ClientModel, service: &str) {
    let statuses = [
        SubscriptionStatus::Unspecified,
        SubscriptionStatus::PendingConfirmation,
        SubscriptionStatus::Active,
        SubscriptionStatus::Unsubscribed,
    ];
    for filter in statuses {
        let listed: Vec<(String, SubscriptionStatus)> = list_subscribers(clients, service, filter)
            .await
            .into_iter()
            .filter(|(id, _)| model.profile_ids.contains(id))
            .collect();
        let expected: Vec<(String, SubscriptionStatus)> = model
            .profiles
            .iter()
            .filter_map(|(id, p)| Some((id.clone(), p.subscriptions.get(service)?.status())))
            .filter(|(_, status)| filter == SubscriptionStatus::Unspecified || *status == filter)
            .collect();
        assert_eq!(
            listed, expected,
            "client {}: ListSubscribers {service} {filter:?} does not match the profiles' subscriptions",
            model.client
        );
    }
}

/// Creates the [`SERVICES`] (already existing is fine) and checks that they
/// are all there, as created.
async fn ensure_services(addr: SocketAddr) {
    let mut clients = Clients::new(connect(addr).await);
    for (service, channel, double_opt_in) in SERVICES {
        match clients
            .subscriptions
            .create_service(pb::CreateServiceRequest {
                tenant: TENANT.into(),
                service_id: service.into(),
                name: format!("Crash cycle {service}"),
                channel: channel.into(),
                double_opt_in,
                context: context(Source::Operator),
            })
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::AlreadyExists => {}
            Err(status) => panic!("CreateService {service}: {status:?}"),
        }
    }
    let listed = clients
        .subscriptions
        .list_services(pb::ListServicesRequest {
            tenant: TENANT.into(),
            page_size: PAGE_SIZE,
            page_token: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("ListServices: {e:?}"))
        .into_inner();
    let mut found: Vec<(String, Channel, bool)> = listed
        .services
        .iter()
        .map(|s| (s.service_id.clone(), s.channel(), s.double_opt_in))
        .collect();
    found.sort();
    let mut expected: Vec<(String, Channel, bool)> = SERVICES
        .iter()
        .map(|(id, channel, double)| ((*id).to_owned(), *channel, *double))
        .collect();
    expected.sort();
    assert_eq!(found, expected, "the services");
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
    for (service, _, _) in SERVICES {
        check_subscribers(&mut clients, &model, service).await;
    }
    match (model.pending.take(), outcome) {
        (Some(write), Some(true)) => {
            model.pending_applied += 1;
            model.pending_subscriptions_applied += u64::from(write.service().is_some());
        }
        (Some(write), Some(false) | None) => {
            model.pending_lost += 1;
            model.pending_subscriptions_lost += u64::from(write.service().is_some());
        }
        (None, _) => {}
    }
    model
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// The result of a client's task; if it panicked, its message and the
/// server's last log lines again, last in the output (a long backtrace
/// printed with the panic would push them out of a shortened log), then the
/// same panic.
fn joined<T>(result: Result<T, tokio::task::JoinError>, server: &mut ServerProcess) -> T {
    match result {
        Ok(value) => value,
        Err(error) if error.is_panic() => {
            let payload = error.into_panic();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(not a text)");
            let lines = server.lines_so_far();
            eprintln!(
                "a client task panicked: {message}\nthe server's last log lines:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
            std::panic::resume_unwind(payload)
        }
        Err(error) => panic!("a client task was cancelled: {error}"),
    }
}

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

/// The server's flags: compactions as often as the store allows, so that
/// kills land before, during and after them.
const SERVE_FLAGS: [&str; 6] = [
    "--compaction-ratio",
    "2",
    "--compaction-min-size",
    "0",
    "--retention-sweep-interval",
    "100ms",
];

fn start_server(data_dir: &std::path::Path) -> ServerProcess {
    let mut args = serve_args(data_dir);
    args.extend(SERVE_FLAGS.iter().map(std::ffi::OsStr::new));
    ServerProcess::start_with(&args)
}

/// Compactions the server logged so far.
fn compactions(server: &mut ServerProcess) -> usize {
    server
        .lines_so_far()
        .iter()
        .filter(|line| line.contains("store compacted"))
        .count()
}

/// Where the killed server keeps its state.
enum Target {
    /// The embedded store in a data directory (compacted as often as it may).
    Sled(tempfile::TempDir),
    /// A schema of the test database.
    Postgres(String),
}

impl Target {
    fn start(&self) -> ServerProcess {
        match self {
            Target::Sled(dir) => start_server(dir.path()),
            Target::Postgres(url) => ServerProcess::start_with(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                url,
                "--retention-sweep-interval",
                "100ms",
            ]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_repeated_sigkill() {
    let dir = tempfile::tempdir().expect("temporary data directory");
    crash_cycles(Target::Sled(dir)).await;
}

/// The same on PostgreSQL: every acknowledged write was committed, and a
/// killed replica's restart reads it back. Skipped without a database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_repeated_sigkill_on_postgres() {
    let Some(url) = crate::common::pg::database_url() else {
        return;
    };
    let schema = format!("it_crash_{}", fastrand::u64(..));
    crate::common::pg::create_schema(&url, &schema).await;
    let separator = if url.contains('?') { '&' } else { '?' };
    crash_cycles(Target::Postgres(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    )))
    .await;
}

async fn crash_cycles(target: Target) {
    let seed = env_u64("CONSENTD_CRASH_SEED").unwrap_or_else(|| fastrand::u64(..));
    let cycles = env_u64("CONSENTD_CRASH_CYCLES").map_or(CYCLES_DEFAULT, |n| {
        u32::try_from(n).expect("CONSENTD_CRASH_CYCLES fits in u32")
    });
    let _report = SeedReport(seed);
    eprintln!("crash-cycle: seed {seed} (CONSENTD_CRASH_SEED), {cycles} cycles");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let mut models: Vec<ClientModel> = (0..CLIENTS)
        .map(|client| ClientModel::new(client, rng.u64(..)))
        .collect();
    let mut server = target.start();
    let mut addr = server.wait_listening().await;
    let mut compacted = 0;
    ensure_services(addr).await;

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
        compacted += compactions(&mut server);
        for task in tasks {
            models.push(joined(task.await, &mut server));
        }

        // Restart and read everything back.
        server = target.start();
        addr = server.wait_listening().await;
        ensure_services(addr).await;
        let mut checks = Vec::new();
        for model in models.drain(..) {
            checks.push(tokio::spawn(check_client(addr, model)));
        }
        for check in checks {
            models.push(joined(check.await, &mut server));
        }
        let acknowledged: u64 = models.iter().map(|m| m.acknowledged).sum();
        eprintln!(
            "cycle {cycle}: {acknowledged} writes acknowledged so far, all read back; {compacted} compactions; in-flight writes applied {} / not applied or changing nothing {}",
            models.iter().map(|m| m.pending_applied).sum::<u64>(),
            models.iter().map(|m| m.pending_lost).sum::<u64>(),
        );
    }
    let acknowledged: u64 = models.iter().map(|m| m.acknowledged).sum();
    assert!(
        acknowledged >= u64::from(cycles),
        "the clients got only {acknowledged} writes acknowledged in {cycles} cycles"
    );
    let [subscribed, confirmed, unsubscribed] = models.iter().fold([0u64; 3], |mut sum, m| {
        for (total, n) in sum.iter_mut().zip(m.acknowledged_subscriptions) {
            *total += n;
        }
        sum
    });
    if cycles >= 10 {
        // The store compacts soon after the start of about every other cycle
        // (sled's; PostgreSQL vacuums by itself).
        assert!(
            compacted > 0 || matches!(target, Target::Postgres(_)),
            "no compaction in {cycles} cycles"
        );
        // Hundreds of subscription writes are expected: none of a kind means
        // the client never picks it (e.g. never holds a token).
        assert!(
            subscribed > 0 && confirmed > 0 && unsubscribed > 0,
            "subscription writes acknowledged: subscribe {subscribed}, confirm {confirmed}, unsubscribe {unsubscribed}"
        );
    }
    eprintln!(
        "crash-cycle: {cycles} cycles, {acknowledged} acknowledged writes checked in {:?}; \
         subscription writes acknowledged: subscribe {subscribed}, confirm {confirmed}, \
         unsubscribe {unsubscribed}; in flight at a kill: applied {} / not applied or changing nothing {}",
        started.elapsed(),
        models
            .iter()
            .map(|m| m.pending_subscriptions_applied)
            .sum::<u64>(),
        models
            .iter()
            .map(|m| m.pending_subscriptions_lost)
            .sum::<u64>(),
    );
}
