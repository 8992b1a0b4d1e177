//! The application over every store: a model-based test of the rules with
//! restarts, in which the live decision index must always equal an index
//! rebuilt from the store; the retention rules with an injected clock; and
//! decisions that never see a write before it is durable.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use proptest::prelude::*;

use super::*;
use crate::{
    clock::ManualClock,
    engine::{
        Address, AddressState, AddressStatus, CHECKPOINT_EVERY, ChangeContext, Channel,
        ConsentStatus, ErrorReason, EventId, ExclusionReason, FeedbackKind, LogLimits, Placement,
        ProfileAddresses, ProfileId, Scope, ServiceId, Source, replay,
    },
    error::TokenProblem,
    index::Index,
    store::{DumpItem, memory::MemoryStore, sled::SledOptions},
};

const EMAILS: [&str; 4] = ["a@x.io", "b@x.io", "c@x.io", "d@x.io"];
const IDS: [&str; 3] = ["p0", "p1", "p2"];
const DAY_MS: i64 = 86_400_000;
const START_MS: i64 = 1_767_225_600_000;

fn tenant() -> Tenant {
    Tenant::parse("t").expect("valid tenant")
}

fn pid(i: usize) -> ProfileId {
    ProfileId::parse(IDS[i]).expect("valid id")
}

fn email(i: usize) -> Address {
    Address::email(EMAILS[i]).expect("valid email")
}

fn ctx() -> ChangeContext {
    ChangeContext::new(Source::Api, "model", "").expect("valid")
}

fn news() -> ServiceId {
    ServiceId::parse("news").expect("valid")
}

/// Which store a test runs over.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sled,
    Memory,
    /// A fresh schema on the test database (`CONSENTD_TEST_DATABASE_URL`).
    Postgres,
}

/// An app and what keeps its store alive across restarts.
struct Running {
    app: App,
    dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema, when the store is there.
    schema: Option<Arc<crate::store::postgres::tests::Schema>>,
    clock: ManualClock,
}

/// A PostgreSQL store on `schema` of the test database.
async fn postgres_store(schema: &crate::store::postgres::tests::Schema) -> Arc<dyn Store> {
    let url = crate::store::postgres::tests::test_database_url().expect("a test database");
    let mut options = crate::store::postgres::PgOptions::new(url);
    options.schema = Some(schema.name.clone());
    options.pool_size = 4;
    Arc::new(
        crate::store::postgres::PgStore::connect(options)
            .await
            .expect("connect"),
    )
}

async fn start(app: App) -> App {
    app.start().await.expect("the index loads");
    app
}

impl Running {
    async fn new(backend: Backend, settings: Settings) -> Self {
        let clock = ManualClock::new(START_MS);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let (app, dir, schema) = match backend {
            Backend::Sled => {
                let dir = tempfile::tempdir().expect("tempdir");
                let app = App::open(dir.path(), settings, shared).expect("open");
                (app, Some(dir), None)
            }
            Backend::Memory => (
                App::with_store(Arc::new(MemoryStore::new()), settings, shared),
                None,
                None,
            ),
            Backend::Postgres => {
                let url = crate::store::postgres::tests::test_database_url().expect("a database");
                let schema = Arc::new(crate::store::postgres::tests::fresh_schema(&url).await);
                let store = postgres_store(&schema).await;
                (App::with_store(store, settings, shared), None, Some(schema))
            }
        };
        Self {
            app: start(app).await,
            dir,
            schema,
            clock,
        }
    }

    /// Stops the app and starts another over the same data: the sled
    /// directory, or the in-memory store's records restored into a new one.
    async fn restart(self) -> Self {
        let settings = self.app.settings().clone();
        let shared: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let app = match (&self.dir, &self.schema) {
            (Some(dir), _) => {
                self.app.close(Duration::from_secs(5)).await.expect("close");
                App::open(dir.path(), settings, shared).expect("reopen")
            }
            (None, Some(schema)) => {
                self.app.close(Duration::from_secs(5)).await.expect("close");
                App::with_store(postgres_store(schema).await, settings, shared)
            }
            (None, None) => {
                let items: Vec<DumpItem> = self
                    .app
                    .store
                    .dump(None)
                    .map(|i| i.expect("item"))
                    .collect();
                let store = MemoryStore::new();
                store.restore(&items).await.expect("restore");
                App::with_store(Arc::new(store), settings, shared)
            }
        };
        Self {
            app: start(app).await,
            dir: self.dir,
            schema: self.schema,
            clock: self.clock,
        }
    }

    /// The live index equals one built afresh from the store.
    async fn check_index(&self) -> std::result::Result<(), TestCaseError> {
        let fresh = Index::new();
        self.app
            .store
            .load_decision_state(&mut |item| fresh.load(item))
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(self.app.index.canonical(), fresh.canonical());
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        id: usize,
        emails: Vec<usize>,
    },
    Consent {
        id: usize,
        channel: Option<usize>,
        out: bool,
    },
    Bounce {
        email: usize,
        hard: bool,
        day: i64,
        event: u8,
    },
    Quarantine {
        email: usize,
        deny: bool,
    },
    Release {
        email: usize,
    },
    Subscribe {
        id: usize,
    },
    Unsubscribe {
        id: usize,
    },
    Erase {
        id: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..IDS.len(),
            proptest::collection::vec(0..EMAILS.len(), 0..3)
        )
            .prop_map(|(id, emails)| Op::Upsert { id, emails }),
        (0..IDS.len(), proptest::option::of(0..5usize), any::<bool>())
            .prop_map(|(id, channel, out)| Op::Consent { id, channel, out }),
        (0..EMAILS.len(), any::<bool>(), 0..20i64, 0..6u8).prop_map(|(email, hard, day, event)| {
            Op::Bounce {
                email,
                hard,
                day,
                event,
            }
        }),
        (0..EMAILS.len(), any::<bool>()).prop_map(|(email, deny)| Op::Quarantine { email, deny }),
        (0..EMAILS.len()).prop_map(|email| Op::Release { email }),
        (0..IDS.len()).prop_map(|id| Op::Subscribe { id }),
        (0..IDS.len()).prop_map(|id| Op::Unsubscribe { id }),
        (0..IDS.len()).prop_map(|id| Op::Erase { id }),
        Just(Op::Restart),
    ]
}

/// One profile as the model sees it: emails, consent (true = opted out)
/// for all channels and per channel, the changes recorded.
type ModelProfile = (Vec<usize>, Option<bool>, [Option<bool>; 5], u64);

async fn run_ops(backend: Backend, ops: &[Op]) -> std::result::Result<(), TestCaseError> {
    let fail = |e: Error| TestCaseError::fail(e.to_string());
    let t = tenant();
    let mut running = Running::new(backend, Settings::default()).await;
    running
        .app
        .create_service(&t, news(), "News".into(), Channel::Email, false, &ctx())
        .await
        .map_err(fail)?;
    let mut profiles: BTreeMap<usize, ModelProfile> = BTreeMap::new();
    let mut events: BTreeMap<usize, BTreeSet<u8>> = BTreeMap::new();
    // The tombstone of each e-mail: (all channels, the e-mail channel).
    let mut tombstones: BTreeMap<usize, (bool, bool)> = BTreeMap::new();
    for op in ops {
        let app = &running.app;
        match op {
            Op::Upsert { id, emails } => {
                let mut distinct: Vec<usize> = Vec::new();
                for e in emails {
                    if !distinct.contains(e) {
                        distinct.push(*e);
                    }
                }
                let addresses = ProfileAddresses {
                    emails: distinct.iter().map(|e| email(*e)).collect(),
                    ..ProfileAddresses::default()
                };
                app.upsert_profile(&t, &pid(*id), addresses)
                    .await
                    .map_err(fail)?;
                let entry = profiles.entry(*id).or_default();
                // An address new to the profile brings its tombstone's
                // opt-outs, where the profile has no preference.
                let (mut all, mut mail) = (false, false);
                for e in distinct.iter().filter(|e| !entry.0.contains(e)) {
                    let (a, m) = tombstones.get(e).copied().unwrap_or_default();
                    all |= a;
                    mail |= m;
                }
                if all && entry.1.is_none() {
                    entry.1 = Some(true);
                    entry.3 += 1;
                }
                if mail && entry.2[0].is_none() {
                    entry.2[0] = Some(true);
                    entry.3 += 1;
                }
                entry.0 = distinct;
            }
            Op::Erase { id } => {
                let erased = app.erase_profile(&t, &pid(*id), &ctx()).await;
                match profiles.remove(id) {
                    None => prop_assert!(matches!(erased, Err(Error::ProfileNotFound(_)))),
                    Some((emails, all, channels, changes)) => {
                        let erasure = erased.map_err(fail)?;
                        prop_assert_eq!(erasure.history_entries, changes);
                        let kept = (all == Some(true), channels[0] == Some(true));
                        let stones = if kept.0 || kept.1 { emails.len() } else { 0 };
                        prop_assert_eq!(erasure.tombstones as usize, stones);
                        if stones > 0 {
                            for e in emails {
                                let stone = tombstones.entry(e).or_default();
                                stone.0 |= kept.0;
                                stone.1 |= kept.1;
                            }
                        }
                    }
                }
            }
            Op::Consent { id, channel, out } => {
                let scope = match channel {
                    None => Scope::AllChannels,
                    Some(c) => Scope::Channel(Channel::ALL[*c]),
                };
                let status = if *out {
                    ConsentStatus::OptedOut
                } else {
                    ConsentStatus::OptedIn
                };
                let written = app.set_consent(&t, &pid(*id), scope, status, &ctx()).await;
                match profiles.get_mut(id) {
                    None => prop_assert!(matches!(written, Err(Error::ProfileNotFound(_)))),
                    Some(entry) => {
                        let slot = match channel {
                            None => &mut entry.1,
                            Some(c) => &mut entry.2[*c],
                        };
                        let changed = *slot != Some(*out);
                        *slot = Some(*out);
                        entry.3 += u64::from(changed);
                        prop_assert_eq!(written.map_err(fail)?.changed, changed);
                    }
                }
            }
            Op::Bounce {
                email: e,
                hard,
                day,
                event,
            } => {
                let kind = if *hard {
                    FeedbackKind::HardBounce
                } else {
                    FeedbackKind::SoftBounce
                };
                let id = EventId::parse(&format!("{e}-{event}")).expect("valid");
                let recorded = app
                    .record_feedback(
                        &t,
                        &email(*e),
                        kind,
                        ErrorReason::Unreachable,
                        id,
                        Some(START_MS - 30 * DAY_MS + day * DAY_MS),
                        &ctx(),
                    )
                    .await
                    .map_err(fail)?;
                let fresh = events.entry(*e).or_default().insert(*event);
                prop_assert_eq!(recorded.changed, fresh);
            }
            Op::Quarantine { email: e, deny } => {
                let status = if *deny {
                    AddressStatus::Denylisted
                } else {
                    AddressStatus::Quarantined
                };
                app.quarantine_address(&t, &email(*e), status, &ctx())
                    .await
                    .map_err(fail)?;
            }
            Op::Release { email: e } => {
                app.release_address(&t, &email(*e), &ctx())
                    .await
                    .map_err(fail)?;
            }
            Op::Subscribe { id } | Op::Unsubscribe { id } => {
                let written = if matches!(op, Op::Subscribe { .. }) {
                    app.subscribe(&t, &pid(*id), &news(), &ctx())
                        .await
                        .map(|w| w.changed)
                } else {
                    app.unsubscribe(&t, &pid(*id), &news(), &ctx())
                        .await
                        .map(|w| w.changed)
                };
                match profiles.get_mut(id) {
                    None => prop_assert!(matches!(written, Err(Error::ProfileNotFound(_)))),
                    Some(entry) => entry.3 += u64::from(written.map_err(fail)?),
                }
            }
            Op::Restart => running = running.restart().await,
        }
        running.check_index().await?;
    }
    let running = running.restart().await;
    running.check_index().await?;
    check_model(&running.app, &profiles).await
}

/// The store holds what the model says.
async fn check_model(
    app: &App,
    profiles: &BTreeMap<usize, ModelProfile>,
) -> std::result::Result<(), TestCaseError> {
    let fail = |e: Error| TestCaseError::fail(e.to_string());
    let t = tenant();
    for (i, _) in IDS.iter().enumerate() {
        let stored = app.profile(&t, &pid(i)).await;
        let Some((emails, all, channels, changes)) = profiles.get(&i) else {
            prop_assert!(matches!(stored, Err(Error::ProfileNotFound(_))));
            continue;
        };
        let stored = stored.map_err(fail)?;
        let stored_emails: Vec<&str> = stored.emails.iter().map(Address::as_str).collect();
        let model_emails: Vec<&str> = emails.iter().map(|e| EMAILS[*e]).collect();
        prop_assert_eq!(stored_emails, model_emails);
        let as_status = |v: &Option<bool>| match v {
            None => ConsentStatus::NoPreference,
            Some(true) => ConsentStatus::OptedOut,
            Some(false) => ConsentStatus::OptedIn,
        };
        prop_assert_eq!(stored.consent.all_channels.status, as_status(all));
        for (c, v) in channels.iter().enumerate() {
            prop_assert_eq!(stored.consent.channels[c].status, as_status(v));
        }
        // History: one entry per change, numbered 1..=n, newest first.
        prop_assert_eq!(stored.history_seq, *changes);
        let history = app
            .consent_history(&t, &pid(i), None, 1000)
            .await
            .map_err(fail)?;
        let seqs: Vec<u64> = history.items.iter().map(|e| e.sequence).collect();
        let expected: Vec<u64> = (1..=*changes).rev().collect();
        prop_assert_eq!(seqs, expected);
    }
    for (e, _) in EMAILS.iter().enumerate() {
        let (users, truncated) = app.address_users(&t, &email(e)).await.map_err(fail)?;
        prop_assert!(!truncated);
        let users: BTreeSet<String> = users.iter().map(|p| p.as_str().to_owned()).collect();
        let expected: BTreeSet<String> = profiles
            .iter()
            .filter(|(_, (emails, ..))| emails.contains(&e))
            .map(|(i, _)| IDS[*i].to_owned())
            .collect();
        prop_assert_eq!(users, expected);
        // The state equals a fold of its whole log in event-time order (the
        // log is far below its limits here).
        let state = app
            .store
            .address_state(&t, &email(e))
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .unwrap_or_default();
        let mut log = app
            .store
            .address_history(&t, &email(e), None, 10_000)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(log.len() as u64, state.log_seq);
        prop_assert_eq!(u64::from(state.log.len), state.log_seq);
        let mut replayed = replay(&mut log, &app.settings.rules);
        replayed.log = state.log;
        prop_assert_eq!(&replayed, &state);
    }
    Ok(())
}

fn run_on(backend: Backend, ops: &[Op]) -> std::result::Result<(), TestCaseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .block_on(run_ops(backend, ops))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_rules_hold_and_the_index_follows_the_sled_store(ops in proptest::collection::vec(op(), 1..40)) {
        run_on(Backend::Sled, &ops)?;
    }

    #[test]
    fn the_rules_hold_and_the_index_follows_the_memory_store(ops in proptest::collection::vec(op(), 1..60)) {
        run_on(Backend::Memory, &ops)?;
    }
}

proptest! {
    // Fewer cases: each restart reconnects to the database.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Skipped (passes) without a test database; see `store/postgres/tests.rs`.
    #[test]
    fn the_rules_hold_and_the_index_follows_the_postgres_store(ops in proptest::collection::vec(op(), 1..40)) {
        if crate::store::postgres::tests::test_database_url().is_some() {
            run_on(Backend::Postgres, &ops)?;
        }
    }
}

/// Sends `n` soft bounces or deliveries for one address, `step` ms apart
/// from `from`, in the order given by `order` (indexes into the times).
async fn feed(app: &App, order: &[usize], from: i64, step: i64) -> Vec<Placement> {
    let mut placements = Vec::new();
    for &i in order {
        let kind = if i % 3 == 0 {
            FeedbackKind::Delivered
        } else {
            FeedbackKind::SoftBounce
        };
        let recorded = app
            .record_feedback(
                &tenant(),
                &email(0),
                kind,
                ErrorReason::MailboxFull,
                EventId::parse(&format!("ev-{i}")).expect("valid"),
                Some(from + i64::try_from(i).unwrap_or(0) * step),
                &ctx(),
            )
            .await
            .expect("recorded");
        assert!(recorded.changed);
        placements.extend(recorded.placement);
    }
    placements
}

/// Late events are placed in event-time order, so the state is the fold of
/// every event in event time, however they arrived, while the log stays
/// within its limit.
#[tokio::test]
async fn a_bounded_log_still_places_late_events_in_order() {
    for backend in [Backend::Memory, Backend::Sled] {
        let settings = Settings {
            log_limits: LogLimits {
                horizon: LATE_EVENT_HORIZON,
                events_max: 100,
            },
            ..Settings::default()
        };
        let running = Running::new(backend, settings).await;
        let app = &running.app;
        // 600 events, each arriving up to 40 places out of order.
        let n = 600usize;
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = 7u64;
        for chunk in order.chunks_mut(40) {
            for i in (1..chunk.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                chunk.swap(i, usize::try_from(rng % (i as u64 + 1)).unwrap_or(0));
            }
        }
        let from = START_MS - DAY_MS;
        let step = 60_000;
        let placements = feed(app, &order, from, step).await;
        assert!(placements.contains(&Placement::Late), "{backend:?}");
        assert!(
            !placements.contains(&Placement::ArrivalOrder),
            "{backend:?}"
        );
        let state = app
            .store
            .address_state(&tenant(), &email(0))
            .await
            .expect("read")
            .expect("state");
        assert!(
            state.log.len <= 100 + CHECKPOINT_EVERY,
            "{backend:?}: {:?}",
            state.log
        );
        let kept = app
            .store
            .address_history(&tenant(), &email(0), None, 10_000)
            .await
            .expect("history");
        assert_eq!(kept.len(), usize::try_from(state.log.len).unwrap_or(0));
        assert!(state.log.start.is_some(), "{backend:?}: pruned");
        // The same events in order, with no limit: the same state.
        let reference = Running::new(backend, Settings::default()).await;
        let in_order: Vec<usize> = (0..n).collect();
        feed(&reference.app, &in_order, from, step).await;
        let expected = reference
            .app
            .store
            .address_state(&tenant(), &email(0))
            .await
            .expect("read")
            .expect("state");
        let fold = |mut s: AddressState| {
            s.log = Default::default();
            s
        };
        assert_eq!(fold(state), fold(expected), "{backend:?}");
    }
}

const LATE_EVENT_HORIZON: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// Events older than the horizon leave the log; an event older than the
/// oldest kept is applied as if it had just happened, and says so; the
/// event-id markers expire with the horizon.
#[tokio::test]
async fn the_horizon_drops_old_events_and_markers() {
    let running = Running::new(Backend::Memory, Settings::default()).await;
    let app = &running.app;
    let t = tenant();
    // 40 events a day apart, the first 39 days ago.
    let first = START_MS - 39 * DAY_MS;
    let order: Vec<usize> = (0..40).collect();
    feed(app, &order, first, DAY_MS).await;
    let state = app
        .store
        .address_state(&t, &email(0))
        .await
        .expect("read")
        .expect("state");
    // Pruned when the 32nd event took a checkpoint: every event more than
    // 14 days old went; the oldest kept is exactly 14 days old.
    let start = state.log.start.expect("pruned by age");
    assert_eq!(start.at, START_MS - 14 * DAY_MS);
    let kept = app
        .store
        .address_history(&t, &email(0), None, 100)
        .await
        .expect("history");
    assert_eq!(kept.len(), usize::try_from(state.log.len).unwrap_or(0));
    assert_eq!(kept.len(), 15);
    assert!(kept.iter().all(|e| e.key() >= start));
    assert!(
        kept.last()
            .is_some_and(|e| e.key() == start && e.checkpoint.is_some())
    );
    // An event from before the oldest kept one.
    let recorded = app
        .record_feedback(
            &t,
            &email(0),
            FeedbackKind::HardBounce,
            ErrorReason::UserUnknown,
            EventId::parse("very-late").expect("valid"),
            Some(first),
            &ctx(),
        )
        .await
        .expect("recorded");
    assert_eq!(recorded.placement, Some(Placement::ArrivalOrder));
    assert_eq!(recorded.state.status, AddressStatus::Quarantined);
    // Markers: the old ones go with the sweep once past the horizon.
    let markers = |app: &App| {
        app.store
            .dump(None)
            .filter(|i| matches!(i, Ok(DumpItem::FeedbackEventId { .. })))
            .count()
    };
    assert_eq!(markers(app), 41);
    let removed = app.sweep().await.expect("sweep");
    assert_eq!(markers(app), 41 - usize::try_from(removed).unwrap_or(0));
    assert_eq!(
        removed, 0,
        "markers are recorded now; none is past the horizon"
    );
    running
        .clock
        .advance(LATE_EVENT_HORIZON + Duration::from_secs(1));
    assert_eq!(app.sweep().await.expect("sweep"), 41);
    assert_eq!(markers(app), 0);
    // With its marker gone, a repeated event id counts again.
    let again = app
        .record_feedback(
            &t,
            &email(0),
            FeedbackKind::SoftBounce,
            ErrorReason::Unreachable,
            EventId::parse("ev-1").expect("valid"),
            None,
            &ctx(),
        )
        .await
        .expect("recorded");
    assert!(again.changed);
}

/// A pending subscription keeps one token record however often it is sent
/// a new token; a used token's record stays until it expires (a second
/// click says "used"); the sweep deletes every expired record.
#[tokio::test]
async fn token_records_are_deleted_when_superseded_or_expired() {
    let running = Running::new(Backend::Memory, Settings::default()).await;
    let app = &running.app;
    let t = tenant();
    app.upsert_profile(&t, &pid(0), ProfileAddresses::default())
        .await
        .expect("upsert");
    app.create_service(&t, news(), "News".into(), Channel::Email, true, &ctx())
        .await
        .expect("service");
    let tokens = |app: &App| {
        app.store
            .dump(None)
            .filter_map(|i| match i {
                Ok(DumpItem::ConfirmationToken { record, .. }) => Some(record),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut last = None;
    for _ in 0..30 {
        let sent = app
            .subscribe(&t, &pid(0), &news(), &ctx())
            .await
            .expect("subscribe");
        last = sent.value.token;
    }
    assert_eq!(tokens(app).len(), 1, "30 Subscribe calls, one live token");
    let token = last.expect("a token");
    app.confirm_subscription(&t, &token.hash(), &ctx())
        .await
        .expect("confirms");
    let kept = tokens(app);
    assert_eq!(kept.len(), 1);
    assert!(kept[0].used_at.is_some());
    let again = app.confirm_subscription(&t, &token.hash(), &ctx()).await;
    assert!(
        matches!(again, Err(Error::TokenRefused(TokenProblem::Used))),
        "{again:?}"
    );
    assert_eq!(app.sweep().await.expect("sweep"), 0);
    running
        .clock
        .advance(app.settings().confirmation_token_ttl + Duration::from_secs(1));
    assert_eq!(app.sweep().await.expect("sweep"), 1);
    assert!(tokens(app).is_empty());
    // Unsubscribing while pending retires the token at once.
    app.unsubscribe(&t, &pid(0), &news(), &ctx())
        .await
        .expect("unsubscribe");
    app.subscribe(&t, &pid(0), &news(), &ctx())
        .await
        .expect("subscribe");
    assert_eq!(tokens(app).len(), 1);
    app.unsubscribe(&t, &pid(0), &news(), &ctx())
        .await
        .expect("unsubscribe");
    assert!(tokens(app).is_empty());
}

/// A decision never sees a write whose flush has not completed: the index
/// takes a change only once it is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_does_not_see_a_write_before_it_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hold = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let released = Arc::new(std::sync::Mutex::new(released));
    let holding = Arc::clone(&hold);
    let options = SledOptions {
        sync_fault: Some(Arc::new(move || {
            if holding.load(Ordering::SeqCst) {
                let _ = entered_tx.send(());
                let _ = released.lock().map(|r| r.recv());
            }
            Ok(())
        })),
        ..SledOptions::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
    let app = App::open_with(dir.path(), Settings::default(), clock, options).expect("open");
    let app = start(app).await;
    let t = tenant();
    app.upsert_profile(
        &t,
        &pid(0),
        ProfileAddresses {
            emails: vec![email(0)],
            ..ProfileAddresses::default()
        },
    )
    .await
    .expect("upsert");
    let delivery = app
        .delivery(&t, Some(Channel::Email), None)
        .await
        .expect("delivery");
    assert!(
        app.check_one(&t, &pid(0), &delivery)
            .await
            .expect("check")
            .eligible()
    );

    hold.store(true, Ordering::SeqCst);
    let writer = {
        let (app, t) = (app.clone(), t.clone());
        tokio::spawn(async move {
            app.set_consent(
                &t,
                &pid(0),
                Scope::AllChannels,
                ConsentStatus::OptedOut,
                &ctx(),
            )
            .await
        })
    };
    // The committer is inside the flush that would make the opt-out durable.
    tokio::task::spawn_blocking(move || entered.recv())
        .await
        .expect("join")
        .expect("the flush started");
    // The store already holds the change (sled applied it), but the index does not.
    let stored = app.profile(&t, &pid(0)).await.expect("read");
    assert!(stored.consent.opted_out_all(), "applied to the store");
    let decision = app.check_one(&t, &pid(0), &delivery).await.expect("check");
    assert!(
        decision.eligible(),
        "not durable yet: not seen by decisions"
    );
    assert!(!writer.is_finished(), "not acknowledged before the flush");

    hold.store(false, Ordering::SeqCst);
    release.send(()).expect("release");
    writer.await.expect("join").expect("written");
    let decision = app.check_one(&t, &pid(0), &delivery).await.expect("check");
    assert_eq!(decision.reasons, vec![ExclusionReason::OptedOutAllChannels]);
}

/// Writes and decisions wait while the index is built; a failed build
/// refuses them with UNAVAILABLE.
#[tokio::test]
async fn nothing_is_decided_or_written_before_the_index_is_ready() {
    let store = Arc::new(MemoryStore::new());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
    let app = App::with_store(store, Settings::default(), clock);
    let t = tenant();
    let pending = {
        let (app, t) = (app.clone(), t.clone());
        tokio::spawn(async move {
            app.upsert_profile(&t, &pid(0), ProfileAddresses::default())
                .await
        })
    };
    tokio::task::yield_now().await;
    assert!(!pending.is_finished(), "the write waits for the index");
    app.start().await.expect("start");
    pending.await.expect("join").expect("then it is written");

    let broken = App::with_store(
        Arc::new(MemoryStore::new()),
        Settings::default(),
        Arc::new(ManualClock::new(START_MS)),
    );
    broken.index.failed("a corrupt record");
    let refused = broken.delivery(&t, Some(Channel::Email), None).await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
}

/// Suppression imports fold as operators' changes do, except that a weaker
/// status never replaces a stronger one.
#[tokio::test]
async fn bulk_manual_events_fold_as_one_by_one_quarantines() {
    let running = Running::new(Backend::Memory, Settings::default()).await;
    let app = &running.app;
    let t = tenant();
    let event = |e: usize, status, occurred_at| ManualEvent {
        address: email(e),
        status,
        occurred_at,
        context: ctx(),
    };
    let events = vec![
        event(0, AddressStatus::Quarantined, START_MS - 10),
        event(1, AddressStatus::Denylisted, START_MS - 10),
        event(0, AddressStatus::Denylisted, START_MS - 50),
        event(1, AddressStatus::Denylisted, START_MS - 5),
        event(1, AddressStatus::Quarantined, START_MS - 1),
    ];
    let recorded = app.record_manual_events(&t, &events).await.expect("bulk");
    assert_eq!(recorded, [true, true, true, false, false]);
    for e in [0, 1] {
        let state = app.address_state(&t, &email(e)).await.expect("state");
        // Address 0: the DENYLISTED event is older than the QUARANTINED one;
        // in event time the QUARANTINED comes after it, but a weaker status
        // never replaces a stronger one: the address stays DENYLISTED.
        assert_eq!(state.status, AddressStatus::Denylisted, "{e}");
    }
    let delivery = app
        .delivery(&t, Some(Channel::Email), None)
        .await
        .expect("delivery");
    app.upsert_profile(
        &t,
        &pid(0),
        ProfileAddresses {
            emails: vec![email(1)],
            ..ProfileAddresses::default()
        },
    )
    .await
    .expect("upsert");
    assert_eq!(
        app.check_one(&t, &pid(0), &delivery)
            .await
            .expect("check")
            .reasons,
        vec![ExclusionReason::AddressDenylisted]
    );
}

/// The log an address keeps agrees with its state: in key order, the first
/// entry (once the log was pruned) is the start and carries a checkpoint;
/// folding from it, or from nothing, over the entries after it gives the
/// stored state; every checkpoint on the way is the fold up to its entry.
async fn check_log(app: &App, address: &Address) -> std::result::Result<(), TestCaseError> {
    let t = tenant();
    let state = app
        .store
        .address_state(&t, address)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .unwrap_or_default();
    let mut entries = app
        .store
        .address_history(&t, address, None, 100_000)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    entries.reverse();
    prop_assert_eq!(entries.len() as u64, u64::from(state.log.len));
    let mut folded = AddressState::default();
    for (i, entry) in entries.iter().enumerate() {
        if i == 0 && state.log.start.is_some() {
            prop_assert_eq!(Some(entry.key()), state.log.start);
            let first = entry
                .checkpoint
                .as_deref()
                .ok_or_else(|| TestCaseError::fail("the start has no checkpoint"))?;
            folded = first.clone();
            continue;
        }
        folded.apply(
            &entry.kind,
            entry.folded_at,
            &entry.context,
            &app.settings.rules,
        );
        folded.log_seq = folded.log_seq.max(entry.sequence);
        if let Some(checkpoint) = &entry.checkpoint {
            prop_assert_eq!(&**checkpoint, &folded, "checkpoint at {:?}", entry.key());
        }
    }
    folded.log = state.log;
    folded.log_seq = state.log_seq;
    prop_assert_eq!(&folded, &state);
    Ok(())
}

async fn run_log_ops(
    backend: Backend,
    events: &[(i64, u8, i64)],
) -> std::result::Result<(), TestCaseError> {
    let settings = Settings {
        log_limits: LogLimits {
            horizon: Duration::from_secs(3600),
            events_max: 2 * CHECKPOINT_EVERY,
        },
        ..Settings::default()
    };
    let running = Running::new(backend, settings).await;
    let app = &running.app;
    for (n, (ago_minutes, kind, advance_minutes)) in events.iter().enumerate() {
        running.clock.advance(Duration::from_secs(
            60 * u64::try_from(*advance_minutes).unwrap_or(0),
        ));
        let at = app.now() - ago_minutes * 60_000;
        let feedback = match kind % 5 {
            0 => FeedbackKind::HardBounce,
            1 | 2 => FeedbackKind::SoftBounce,
            3 => FeedbackKind::Delivered,
            _ => FeedbackKind::Complaint,
        };
        if kind % 7 == 6 {
            app.release_address(&tenant(), &email(0), &ctx())
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        } else {
            app.record_feedback(
                &tenant(),
                &email(0),
                feedback,
                ErrorReason::Unreachable,
                EventId::parse(&format!("e{n}")).expect("valid"),
                Some(at),
                &ctx(),
            )
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        check_log(app, &email(0)).await?;
    }
    Ok(())
}

fn run_log_on(
    backend: Backend,
    events: &[(i64, u8, i64)],
) -> std::result::Result<(), TestCaseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .block_on(run_log_ops(backend, events))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Events from up to two hours back (some beyond the one-hour horizon),
    /// the clock moving on, the log pruned by age and by count: after every
    /// event the log and the state agree.
    #[test]
    fn a_pruned_log_always_agrees_with_the_state(
        events in proptest::collection::vec((0..120i64, any::<u8>(), 0..10i64), 1..300)
    ) {
        run_log_on(Backend::Memory, &events)?;
    }

    #[test]
    fn a_pruned_sled_log_always_agrees_with_the_state(
        events in proptest::collection::vec((0..120i64, any::<u8>(), 0..10i64), 1..150)
    ) {
        run_log_on(Backend::Sled, &events)?;
    }
}

/// Every event older than all the others (each lands first), beyond the
/// most kept: the log stays within its limit and agrees with the state.
#[tokio::test]
async fn events_that_each_land_first_are_pruned_with_the_rest() {
    for backend in [Backend::Memory, Backend::Sled] {
        let events: Vec<(i64, u8, i64)> = (0..200).map(|i| (i / 2, 1, 0)).collect();
        run_log_ops(backend, &events).await.expect("consistent");
    }
}

/// Reads the address's stored state and how many log entries it keeps.
async fn log_of(app: &App, address: &Address) -> (AddressState, usize) {
    let state = app
        .store
        .address_state(&tenant(), address)
        .await
        .expect("read")
        .expect("state");
    let kept = app
        .store
        .address_history(&tenant(), address, None, 10_000)
        .await
        .expect("history");
    (state, kept.len())
}

/// Pruning drops only what the rules drop: events past the horizon and,
/// beyond the most kept, the oldest. A log within both keeps every event
/// through its checkpoints, and one over its most kept keeps exactly that
/// many, the newest.
#[tokio::test]
async fn pruning_keeps_every_event_within_the_horizon_and_the_most_kept() {
    let settings = Settings {
        log_limits: LogLimits {
            horizon: LATE_EVENT_HORIZON,
            events_max: 50,
        },
        ..Settings::default()
    };
    let running = Running::new(Backend::Memory, settings).await;
    let app = &running.app;
    // 40 events a minute apart, all within the horizon: the 32nd takes a
    // checkpoint (and walks the log), which drops nothing.
    let order: Vec<usize> = (0..40).collect();
    feed(app, &order, START_MS - DAY_MS, 60_000).await;
    let (state, kept) = log_of(app, &email(0)).await;
    assert_eq!((state.log.len, kept, state.log.start), (40, 40, None));
    // 20 more: 60 in all, over the most kept (50) from the 51st on.
    let order: Vec<usize> = (40..60).collect();
    feed(app, &order, START_MS - DAY_MS, 60_000).await;
    let (state, kept) = log_of(app, &email(0)).await;
    assert_eq!((state.log.len, kept), (50, 50));
    let start = state.log.start.expect("pruned");
    assert_eq!(
        start.at,
        START_MS - DAY_MS + 10 * 60_000,
        "the oldest 10 went"
    );
}

/// The log is walked for pruning only when an event takes a checkpoint or
/// brings it over its most kept: one that brings it to exactly its most
/// kept leaves it whole, even when every event is past the horizon.
#[tokio::test]
async fn a_log_at_its_most_kept_is_not_pruned_until_it_goes_over() {
    let settings = Settings {
        log_limits: LogLimits {
            horizon: LATE_EVENT_HORIZON,
            events_max: 4,
        },
        ..Settings::default()
    };
    let running = Running::new(Backend::Memory, settings).await;
    let app = &running.app;
    // Four events a day apart, all older than the horizon.
    let first = START_MS - 20 * DAY_MS;
    feed(app, &[0, 1, 2, 3], first, DAY_MS).await;
    let (state, kept) = log_of(app, &email(0)).await;
    assert_eq!((state.log.len, kept, state.log.start), (4, 4, None));
    // A fifth goes over: every event past the horizon goes but the newest.
    feed(app, &[4], first, DAY_MS).await;
    let (state, kept) = log_of(app, &email(0)).await;
    assert_eq!((state.log.len, kept), (1, 1));
    assert_eq!(state.log.start.map(|s| s.at), Some(first + 4 * DAY_MS));
}

/// A prune walks the whole log, however many reads that takes: when more
/// entries than one read returns are past the horizon, every one goes, and
/// the log's count is what is kept.
#[tokio::test]
async fn every_event_past_the_horizon_goes_however_many() {
    let settings = Settings {
        log_limits: LogLimits {
            horizon: LATE_EVENT_HORIZON,
            events_max: 70,
        },
        ..Settings::default()
    };
    let running = Running::new(Backend::Memory, settings).await;
    let app = &running.app;
    let from = START_MS - DAY_MS;
    let order: Vec<usize> = (0..70).collect();
    feed(app, &order, from, 60_000).await;
    let (state, kept) = log_of(app, &email(0)).await;
    assert_eq!((state.log.len, kept, state.log.start), (70, 70, None));
    // Fifteen days on, the 71st event brings the log over its most kept,
    // and all 70 before it are past the horizon.
    running
        .clock
        .advance(LATE_EVENT_HORIZON + Duration::from_secs(86_400));
    feed(app, &[70], from, 60_000).await;
    let (state, kept) = log_of(app, &email(0)).await;
    assert_eq!((state.log.len, kept), (1, 1));
    assert_eq!(state.log.start.map(|s| s.at), Some(from + 70 * 60_000));
}

/// A late event past the horizon is walked in its place among the stored
/// events (it is staged, not yet stored) and goes with them.
#[tokio::test]
async fn a_late_event_past_the_horizon_is_pruned_in_its_place() {
    let settings = Settings {
        log_limits: LogLimits {
            horizon: LATE_EVENT_HORIZON,
            events_max: 4,
        },
        ..Settings::default()
    };
    let running = Running::new(Backend::Memory, settings).await;
    let app = &running.app;
    let first = START_MS - 20 * DAY_MS;
    feed(app, &[0, 2, 3, 4], first, DAY_MS).await;
    let placements = feed(app, &[1], first, DAY_MS).await;
    assert_eq!(placements, [Placement::Late]);
    let (state, kept) = log_of(app, &email(0)).await;
    assert_eq!((state.log.len, kept), (1, 1));
    assert_eq!(state.log.start.map(|s| s.at), Some(first + 4 * DAY_MS));
}

#[tokio::test]
async fn a_profile_data_export_holds_the_newest_history_up_to_its_limit() {
    let running = Running::new(Backend::Memory, Settings::default()).await;
    let app = &running.app;
    let t = tenant();
    app.upsert_profile(
        &t,
        &pid(0),
        ProfileAddresses {
            emails: vec![email(0)],
            ..ProfileAddresses::default()
        },
    )
    .await
    .expect("upsert");
    let entries = EXPORT_HISTORY_ENTRIES_MAX + 1;
    for i in 0..entries {
        let status = if i % 2 == 0 {
            ConsentStatus::OptedOut
        } else {
            ConsentStatus::OptedIn
        };
        app.set_consent(&t, &pid(0), Scope::AllChannels, status, &ctx())
            .await
            .expect("consent");
    }
    let data = app.export_profile_data(&t, &pid(0)).await.expect("export");
    assert!(!data.history_complete);
    assert_eq!(data.history.len(), EXPORT_HISTORY_ENTRIES_MAX);
    assert_eq!(
        data.history.first().map(|e| e.sequence),
        Some(entries as u64),
        "newest first"
    );
    assert_eq!(data.addresses.len(), 1);
    app.set_consent(
        &t,
        &pid(1),
        Scope::AllChannels,
        ConsentStatus::OptedOut,
        &ctx(),
    )
    .await
    .expect_err("no such profile");
    assert!(matches!(
        app.export_profile_data(&t, &pid(1)).await,
        Err(Error::ProfileNotFound(_))
    ));
}
