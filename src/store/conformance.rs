//! The conformance suite: what every [`Store`] must do, checked the same way
//! against each implementation (after SpiceDB's `pkg/datastore/test`).
//!
//! Each check is an `async fn` over a fresh store; [`conformance_suite!`]
//! makes one `#[tokio::test]` per check for an implementation:
//!
//! ```ignore
//! crate::store::conformance::conformance_suite!(|| MemoryStore::new());
//! ```
//!
//! The rules are not tested here (that is `app`'s model-based test, which
//! also runs over every store): only the interface's promises.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    Change, ChangeRetention, Committed, Cursor, Direction, DumpItem, Loaded, Lock, Store, WatchRead,
};
use crate::engine::{
    Address, AddressConsent, AddressEvent, AddressEventKind, AddressState, AddressStatus,
    Change as History, ChangeContext, Channel, ConsentHistoryEntry, ConsentStatus, Erasure,
    ErasureKey, EventId, EventKey, Profile, ProfileAddresses, ProfileId, Regime, Scope, Service,
    ServiceId, Source, Subscription, SubscriptionStatus, Tenant, TenantSettings, TokenHash,
    TokenRecord, Tombstone, UsageOptOut, UserId,
};

pub(crate) fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).expect("valid tenant")
}

pub(crate) fn pid(id: &str) -> ProfileId {
    ProfileId::parse(id).expect("valid id")
}

pub(crate) fn email(text: &str) -> Address {
    Address::email(text).expect("valid email")
}

pub(crate) fn ctx() -> ChangeContext {
    ChangeContext::new(Source::Api, "conformance", "").expect("valid")
}

fn profile(id: &str, emails: &[&str]) -> Profile {
    Profile::new(
        pid(id),
        ProfileAddresses {
            emails: emails.iter().map(|e| email(e)).collect(),
            ..ProfileAddresses::default()
        },
        1,
    )
}

fn state(status: AddressStatus) -> AddressState {
    AddressState {
        status,
        ..AddressState::default()
    }
}

fn event(sequence: u64, at: i64) -> AddressEvent {
    AddressEvent {
        sequence,
        kind: AddressEventKind::Manual(AddressStatus::Quarantined),
        occurred_at: at,
        recorded_at: at,
        old_status: AddressStatus::Valid,
        new_status: AddressStatus::Quarantined,
        context: ctx(),
        folded_at: at,
        checkpoint: sequence
            .is_multiple_of(2)
            .then(|| Box::new(state(AddressStatus::Quarantined))),
        rules: (!sequence.is_multiple_of(3)).then(crate::engine::QuarantineRules::default),
    }
}

fn service(id: &str) -> Service {
    Service {
        id: ServiceId::parse(id).expect("valid"),
        name: id.to_owned(),
        channel: Channel::Email,
        double_opt_in: true,
        created_at: 1,
    }
}

fn usage_opt_out(user: &str) -> UsageOptOut {
    UsageOptOut {
        user_id: UserId::parse(user).expect("valid"),
        opted_out_at: 5,
        context: ctx(),
    }
}

fn subscription(service: &str, status: SubscriptionStatus) -> Subscription {
    Subscription {
        service_id: ServiceId::parse(service).expect("valid"),
        status,
        changed_at: 1,
        pending: None,
    }
}

fn token(profile: &str, expires_at: i64) -> TokenRecord {
    TokenRecord {
        profile_id: pid(profile),
        service_id: ServiceId::parse("news").expect("valid"),
        used_at: None,
        expires_at,
    }
}

/// Everything a listing gives, page after page of `limit`.
async fn all_pages<T, F, Fut>(limit: usize, mut page: F) -> Vec<T>
where
    F: FnMut(Option<Cursor>) -> Fut,
    Fut: std::future::Future<Output = super::Result<super::Page<T>>>,
{
    let mut items = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let got = page(after).await.expect("page");
        assert!(got.items.len() <= limit, "a page holds at most its limit");
        items.extend(got.items);
        match got.next {
            Some(next) => after = Some(next),
            None => return items,
        }
    }
    panic!("a listing never ended");
}

/// Point reads see what a change committed, and only once it committed; a
/// change reads its own staged writes; a dropped change writes nothing.
pub(crate) async fn changes_commit_as_one_and_read_their_own_writes(store: &dyn Store) {
    let t = tenant("t");
    let p = profile("p1", &["a@x.io"]);
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.put_profile(&t, &p);
    assert_eq!(tx.profile(&t, &p.id).await.expect("read"), Some(p.clone()));
    let settings = TenantSettings {
        updated_at: Some(3),
        ..TenantSettings::default()
    };
    tx.put_tenant_settings(&t, &settings);
    assert_eq!(
        tx.tenant_settings(&t).await.expect("read"),
        Some(settings.clone())
    );
    assert_eq!(
        store.profile(&t, &p.id).await.expect("read"),
        None,
        "not yet"
    );
    drop(tx);
    assert_eq!(store.profile(&t, &p.id).await.expect("read"), None);
    assert_eq!(store.tenant_settings(&t).await.expect("read"), None);

    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.put_profile(&t, &p);
    tx.put_tenant_settings(&t, &settings);
    let hash = TokenHash([7; 32]);
    tx.put_token(&t, &hash, &token("p1", 10));
    assert_eq!(
        tx.token(&t, &hash).await.expect("read"),
        Some(token("p1", 10))
    );
    tx.delete_token(&t, &hash);
    assert_eq!(tx.token(&t, &hash).await.expect("read"), None, "deleted");
    tx.commit().await.expect("commit");
    store.sync().await.expect("sync");
    assert_eq!(store.profile(&t, &p.id).await.expect("read"), Some(p));
    assert_eq!(
        store.tenant_settings(&t).await.expect("read"),
        Some(settings)
    );
    // Another tenant sees none of it.
    assert_eq!(
        store
            .profile(&tenant("t2"), &pid("p1"))
            .await
            .expect("read"),
        None
    );
}

/// A change that names a lock another change holds waits for it.
pub(crate) async fn a_lock_is_held_until_commit(store: Arc<dyn Store>) {
    let t = tenant("t");
    let lock = Lock::Profile(t.clone(), pid("p"));
    let first = store.begin(vec![lock.clone()]).await.expect("begin");
    let waiting = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let _tx = store.begin(vec![lock]).await.expect("begin");
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "the second change must wait");
    first.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the second change goes on once the first committed")
        .expect("no panic");
    // Different locks do not wait for each other (barring a shared stripe,
    // which these two do not have).
    let a = store
        .begin(vec![Lock::Profile(t.clone(), pid("a"))])
        .await
        .expect("a");
    let b = tokio::time::timeout(
        Duration::from_secs(5),
        store.begin(vec![Lock::Address(t.clone(), email("b@x.io"))]),
    )
    .await
    .expect("no wait")
    .expect("b");
    drop((a, b));
}

/// History is listed newest first, below a sequence, and never above the
/// profile's own count.
pub(crate) async fn history_pages_newest_first(store: &dyn Store) {
    let t = tenant("t");
    let mut p = profile("p1", &[]);
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    for i in 0..5i64 {
        let status = if i % 2 == 0 {
            ConsentStatus::OptedOut
        } else {
            ConsentStatus::OptedIn
        };
        let entry = p
            .set_consent(Scope::Channel(Channel::Sms), status, &ctx(), i)
            .expect("a change");
        tx.append_history(&t, &p.id, &entry);
    }
    // One entry beyond the profile's count: never listed.
    let ahead = ConsentHistoryEntry {
        sequence: p.history_seq + 1,
        changed_at: 99,
        change: History::Consent {
            scope: Scope::AllChannels,
            old_status: ConsentStatus::NoPreference,
            new_status: ConsentStatus::OptedOut,
        },
        context: ctx(),
    };
    tx.append_history(&t, &p.id, &ahead);
    tx.put_profile(&t, &p);
    tx.commit().await.expect("commit");
    let seqs = |v: Vec<ConsentHistoryEntry>| v.iter().map(|e| e.sequence).collect::<Vec<_>>();
    let all = store
        .consent_history(&t, &p.id, None, 100)
        .await
        .expect("history");
    assert_eq!(seqs(all), vec![5, 4, 3, 2, 1]);
    let page = store
        .consent_history(&t, &p.id, Some(4), 2)
        .await
        .expect("history");
    assert_eq!(seqs(page), vec![3, 2]);
    assert!(
        store
            .consent_history(&t, &pid("nobody"), None, 10)
            .await
            .expect("history")
            .is_empty()
    );
}

/// The address → profiles index follows each profile's addresses.
pub(crate) async fn address_users_follow_profiles(store: &dyn Store) {
    let t = tenant("t");
    let put = |p: Profile| async move {
        let mut tx = store
            .begin(vec![Lock::Profile(tenant("t"), p.id.clone())])
            .await
            .expect("begin");
        tx.put_profile(&tenant("t"), &p);
        tx.commit().await.expect("commit");
    };
    put(profile("p1", &["shared@x.io", "one@x.io"])).await;
    put(profile("p2", &["shared@x.io"])).await;
    put(profile("p3", &["shared@x.io"])).await;
    let users = |a: &str| {
        let a = email(a);
        let t = t.clone();
        async move { store.address_users(&t, &a, 2).await.expect("users") }
    };
    assert_eq!(
        users("shared@x.io").await,
        (vec![pid("p1"), pid("p2")], true)
    );
    assert_eq!(users("one@x.io").await, (vec![pid("p1")], false));
    put(profile("p1", &["two@x.io"])).await;
    assert_eq!(users("one@x.io").await, (vec![], false));
    assert_eq!(users("two@x.io").await, (vec![pid("p1")], false));
    assert_eq!(
        users("shared@x.io").await,
        (vec![pid("p2"), pid("p3")], false)
    );
}

/// The non-VALID addresses are listed by status then address, page by page,
/// and follow every status change.
pub(crate) async fn address_listing_follows_statuses(store: &dyn Store) {
    let t = tenant("t");
    let statuses = [
        ("a@x.io", AddressStatus::Quarantined),
        ("b@x.io", AddressStatus::Denylisted),
        ("c@x.io", AddressStatus::WithErrors),
        ("d@x.io", AddressStatus::Quarantined),
        ("e@x.io", AddressStatus::Valid),
    ];
    for (a, status) in statuses {
        let mut tx = store
            .begin(vec![Lock::Address(t.clone(), email(a))])
            .await
            .expect("begin");
        tx.put_address_state(&t, &email(a), &state(status));
        tx.commit().await.expect("commit");
    }
    let listed = |status: Option<AddressStatus>| {
        let t = t.clone();
        async move {
            all_pages(1, |after| {
                let t = t.clone();
                async move { store.list_addresses(&t, status, after.as_ref(), 1).await }
            })
            .await
            .into_iter()
            .map(|(a, s)| (a.as_str().to_owned(), s.status))
            .collect::<Vec<_>>()
        }
    };
    let all = listed(None).await;
    assert_eq!(
        all.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["c@x.io", "a@x.io", "d@x.io", "b@x.io"],
        "by status, then address"
    );
    assert_eq!(
        listed(Some(AddressStatus::Quarantined)).await.len(),
        2,
        "one status"
    );
    // A release takes it out of the listing.
    let mut tx = store
        .begin(vec![Lock::Address(t.clone(), email("a@x.io"))])
        .await
        .expect("begin");
    tx.put_address_state(&t, &email("a@x.io"), &state(AddressStatus::Valid));
    tx.commit().await.expect("commit");
    assert_eq!(listed(Some(AddressStatus::Quarantined)).await.len(), 1);
    assert!(listed(None).await.iter().all(|(a, _)| a != "a@x.io"));
}

/// An address's log is kept in key order: read after or before a key,
/// listed newest first, and cut at a key.
pub(crate) async fn address_logs_read_in_key_order(store: &dyn Store) {
    let t = tenant("t");
    let a = email("a@x.io");
    let mut tx = store
        .begin(vec![Lock::Address(t.clone(), a.clone())])
        .await
        .expect("begin");
    // Arrival order differs from event-time order; negative times too.
    for (seq, at) in [(1, 50), (2, -10), (3, 20), (4, 20), (5, 70)] {
        tx.put_address_event(&t, &a, &event(seq, at));
    }
    tx.put_address_event(&t, &email("b@x.io"), &event(9, 0));
    tx.commit().await.expect("commit");
    let keys = |v: Vec<AddressEvent>| v.iter().map(|e| e.sequence).collect::<Vec<_>>();
    let mut tx = store
        .begin(vec![Lock::Address(t.clone(), a.clone())])
        .await
        .expect("begin");
    let ordered = tx
        .address_events(&t, &a, None, Direction::After, 100)
        .await
        .expect("read");
    assert_eq!(keys(ordered.clone()), vec![2, 3, 4, 1, 5]);
    assert_eq!(ordered, {
        let mut sorted = ordered.clone();
        sorted.sort_by_key(AddressEvent::key);
        sorted
    });
    let k = |at, sequence| Some(EventKey { at, sequence });
    let after = tx
        .address_events(&t, &a, k(20, 3), Direction::After, 2)
        .await
        .expect("read");
    assert_eq!(keys(after), vec![4, 1]);
    let before = tx
        .address_events(&t, &a, k(50, 1), Direction::Before, 100)
        .await
        .expect("read");
    assert_eq!(keys(before), vec![4, 3, 2]);
    let newest = tx
        .address_events(&t, &a, None, Direction::Before, 2)
        .await
        .expect("read");
    assert_eq!(keys(newest), vec![5, 1]);
    // The checkpoint travels with its entry.
    assert!(
        tx.address_events(&t, &a, None, Direction::After, 100)
            .await
            .expect("read")
            .iter()
            .all(|e| e.checkpoint.is_some() == e.sequence.is_multiple_of(2))
    );
    // An entry this change staged before the cut goes with the stored ones.
    tx.put_address_event(&t, &a, &event(6, -20));
    tx.delete_address_events(
        &t,
        &a,
        EventKey {
            at: 20,
            sequence: 4,
        },
    );
    tx.commit().await.expect("commit");
    let history = store
        .address_history(&t, &a, None, 100)
        .await
        .expect("history");
    assert_eq!(
        keys(history),
        vec![5, 1, 4],
        "entries before the cut are gone"
    );
    let page = store
        .address_history(
            &t,
            &a,
            EventKey {
                at: 70,
                sequence: 5,
            }
            .into(),
            1,
        )
        .await
        .expect("history");
    assert_eq!(keys(page), vec![1]);
    assert_eq!(
        keys(
            store
                .address_history(&t, &email("b@x.io"), None, 10)
                .await
                .expect("b")
        ),
        vec![9],
        "another address's log is its own"
    );
}

/// Subscriptions read back, list by profile and by service, page by page.
pub(crate) async fn subscriptions_list_both_ways(store: &dyn Store) {
    let t = tenant("t");
    for (p, s, status) in [
        ("p1", "news", SubscriptionStatus::Active),
        ("p2", "news", SubscriptionStatus::PendingConfirmation),
        ("p3", "news", SubscriptionStatus::Active),
        ("p1", "deals", SubscriptionStatus::Unsubscribed),
    ] {
        let mut tx = store
            .begin(vec![Lock::Profile(t.clone(), pid(p))])
            .await
            .expect("begin");
        tx.put_subscription(&t, &pid(p), &subscription(s, status));
        assert_eq!(
            tx.subscription(&t, &pid(p), &ServiceId::parse(s).expect("valid"))
                .await
                .expect("read")
                .map(|s| s.status),
            Some(status)
        );
        tx.commit().await.expect("commit");
    }
    let mine = store.subscriptions(&t, &pid("p1")).await.expect("read");
    assert_eq!(
        mine.iter()
            .map(|s| s.service_id.as_str())
            .collect::<Vec<_>>(),
        ["deals", "news"]
    );
    let news = ServiceId::parse("news").expect("valid");
    let subscribers = all_pages(2, |after| {
        let (t, news) = (t.clone(), news.clone());
        async move { store.subscribers(&t, &news, after.as_ref(), 2).await }
    })
    .await;
    assert_eq!(
        subscribers
            .iter()
            .map(|(p, s)| (p.as_str(), *s))
            .collect::<Vec<_>>(),
        [
            ("p1", SubscriptionStatus::Active),
            ("p2", SubscriptionStatus::PendingConfirmation),
            ("p3", SubscriptionStatus::Active)
        ]
    );
}

/// Services, usage opt-outs and settings: point reads, counts, pages.
pub(crate) async fn small_records_read_count_and_page(store: &dyn Store) {
    let t = tenant("t");
    let mut tx = store
        .begin(vec![Lock::Services(t.clone())])
        .await
        .expect("begin");
    for id in ["c", "a", "b"] {
        tx.put_service(&t, &service(id));
    }
    assert_eq!(tx.service_count(&t).await.expect("count"), 3);
    tx.commit().await.expect("commit");
    let mut tx = store
        .begin(vec![Lock::Services(t.clone())])
        .await
        .expect("begin");
    tx.put_service(&t, &service("a"));
    assert_eq!(
        tx.service_count(&t).await.expect("count"),
        3,
        "a replacement"
    );
    tx.put_service(&t, &service("d"));
    assert_eq!(tx.service_count(&t).await.expect("count"), 4);
    drop(tx);
    let ids = all_pages(2, |after| {
        let t = t.clone();
        async move { store.services(&t, after.as_ref(), 2).await }
    })
    .await;
    assert_eq!(
        ids.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );

    for user in ["u2", "u1", "u3"] {
        let user = UserId::parse(user).expect("valid");
        let mut tx = store
            .begin(vec![Lock::UsageUser(t.clone(), user.clone())])
            .await
            .expect("begin");
        tx.put_usage_opt_out(
            &t,
            &UsageOptOut {
                user_id: user,
                opted_out_at: 5,
                context: ctx(),
            },
        );
        tx.commit().await.expect("commit");
    }
    let u2 = UserId::parse("u2").expect("valid");
    let mut tx = store
        .begin(vec![Lock::UsageUser(t.clone(), u2.clone())])
        .await
        .expect("begin");
    tx.delete_usage_opt_out(&t, &u2);
    assert_eq!(tx.usage_opt_out(&t, &u2).await.expect("read"), None);
    tx.commit().await.expect("commit");
    let users = all_pages(1, |after| {
        let t = t.clone();
        async move { store.usage_opt_outs(&t, after.as_ref(), 1).await }
    })
    .await;
    assert_eq!(
        users.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>(),
        ["u1", "u3"]
    );
}

/// Markers and token records expire by their times, within the limit.
pub(crate) async fn markers_and_tokens_expire(store: &dyn Store) {
    let t = tenant("t");
    let mut tx = store
        .begin(vec![Lock::Address(t.clone(), email("a@x.io"))])
        .await
        .expect("begin");
    for (id, at) in [("e1", 10), ("e2", 20), ("e3", 30)] {
        let id = EventId::parse(id).expect("valid");
        tx.put_event_marker(&t, &id, &email("a@x.io"), at);
        assert!(tx.event_marker(&t, &id).await.expect("read"));
    }
    tx.put_token(&t, &TokenHash([1; 32]), &token("p", 15));
    tx.put_token(&t, &TokenHash([2; 32]), &token("p", 100));
    tx.commit().await.expect("commit");
    let expired = store
        .expire(25, 50, ChangeRetention::KEEP_ALL, 100)
        .await
        .expect("expire");
    assert_eq!((expired.event_markers, expired.tokens), (2, 1));
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    let marked = |id: &str| EventId::parse(id).expect("valid");
    assert!(!tx.event_marker(&t, &marked("e1")).await.expect("read"));
    assert!(!tx.event_marker(&t, &marked("e2")).await.expect("read"));
    assert!(tx.event_marker(&t, &marked("e3")).await.expect("read"));
    assert_eq!(tx.token(&t, &TokenHash([1; 32])).await.expect("read"), None);
    assert!(
        tx.token(&t, &TokenHash([2; 32]))
            .await
            .expect("read")
            .is_some()
    );
    drop(tx);
    // The limit holds.
    let expired = store
        .expire(1000, 1000, ChangeRetention::KEEP_ALL, 1)
        .await
        .expect("expire");
    assert_eq!(expired.event_markers + expired.tokens, 1);
    assert!(store.dump(None).all(|item| !matches!(
        item,
        Ok(DumpItem::FeedbackEventId { ref event_id, .. }) if event_id.as_str() == "e1"
    )));
}

/// The feed: committed changes, numbered in commit order, handed on once
/// durable, each the state after the change; changes without
/// decision-relevant writes take no position.
pub(crate) async fn the_feed_carries_every_committed_change_in_order(store: &dyn Store) {
    let t = tenant("t");
    let seen: Arc<Mutex<Vec<Committed>>> = Arc::default();
    let sink_seen = Arc::clone(&seen);
    let start = store.position();
    store
        .follow(
            start,
            Box::new(move |batch: &[Committed]| {
                sink_seen.lock().expect("lock").extend_from_slice(batch);
            }),
        )
        .expect("follow");
    assert!(
        store.follow(start, Box::new(|_: &[Committed]| {})).is_err(),
        "one follower"
    );
    let p = profile("p1", &["a@x.io"]);
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.put_profile(&t, &p);
    tx.put_subscription(&t, &p.id, &subscription("news", SubscriptionStatus::Active));
    let first = tx.commit().await.expect("commit");
    // A marker alone decides nothing: nothing on the feed.
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    tx.put_event_marker(
        &t,
        &EventId::parse("e").expect("valid"),
        &email("a@x.io"),
        1,
    );
    tx.commit().await.expect("commit");
    let mut tx = store
        .begin(vec![Lock::Address(t.clone(), email("a@x.io"))])
        .await
        .expect("begin");
    tx.put_address_state(&t, &email("a@x.io"), &state(AddressStatus::Denylisted));
    let second = tx.commit().await.expect("commit");
    // The same status again is no change of status.
    let mut tx = store
        .begin(vec![Lock::Address(t.clone(), email("a@x.io"))])
        .await
        .expect("begin");
    assert_eq!(
        tx.address_state(&t, &email("a@x.io"))
            .await
            .expect("read")
            .map(|s| s.status),
        Some(AddressStatus::Denylisted)
    );
    tx.put_address_state(&t, &email("a@x.io"), &state(AddressStatus::Denylisted));
    tx.commit().await.expect("commit");
    store.sync().await.expect("sync");
    // Positions: a commit's is never past the one that delivers it (the
    // sled store knows it at commit; a replica of the PostgreSQL store
    // learns it from the feed), the feed's increase, and after `sync` the
    // store's is the last delivered.
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "two changes on the feed: {seen:?}");
    assert!(start < seen[0].position && seen[0].position < seen[1].position);
    assert!(first <= seen[0].position && second <= seen[1].position);
    assert_eq!(store.position(), seen[1].position);
    assert_eq!(
        seen[0].changes,
        vec![
            Change::Profile {
                tenant: t.clone(),
                profile: Box::new(p.clone())
            },
            Change::Subscription {
                tenant: t.clone(),
                profile_id: p.id.clone(),
                service_id: ServiceId::parse("news").expect("valid"),
                status: SubscriptionStatus::Active,
            }
        ]
    );
    assert_eq!(
        seen[1].changes,
        vec![Change::Address {
            tenant: t,
            address: email("a@x.io"),
            status: AddressStatus::Denylisted
        }]
    );
}

/// The watch log: a token resumes after what it saw, a tenant sees its own
/// changes only, a read stops at its limit, restores are logged, and what
/// retention removed is an expired token, never a silent skip.
pub(crate) async fn the_watch_log_resumes_after_a_token_and_expires(store: &dyn Store) {
    let (t, u) = (tenant("t"), tenant("u"));
    let start = store.watch_head().await.expect("head");
    let p = profile("p1", &["a@x.io"]);
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.put_profile(&t, &p);
    tx.commit().await.expect("commit");
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    tx.put_usage_opt_out(&u, &usage_opt_out("someone"));
    tx.commit().await.expect("commit");
    let mut tx = store
        .begin(vec![Lock::Address(t.clone(), email("a@x.io"))])
        .await
        .expect("begin");
    tx.put_address_state(&t, &email("a@x.io"), &state(AddressStatus::Denylisted));
    tx.commit().await.expect("commit");
    store.sync().await.expect("sync");

    let read = |token: String, tenant: Tenant, limit: usize| async move {
        match store
            .watch_read(&token, &tenant, limit)
            .await
            .expect("read")
        {
            WatchRead::Changes {
                entries,
                through,
                more,
            } => (entries, through, more),
            other => panic!("a read of changes, not {other:?}"),
        }
    };
    let (entries, through, more) = read(start.clone(), t.clone(), 10).await;
    assert!(!more);
    assert_eq!(
        entries
            .iter()
            .map(|e| e.changes.clone())
            .collect::<Vec<_>>(),
        vec![
            vec![Change::Profile {
                tenant: t.clone(),
                profile: Box::new(p.clone())
            }],
            vec![Change::Address {
                tenant: t.clone(),
                address: email("a@x.io"),
                status: AddressStatus::Denylisted
            }],
        ],
        "tenant t's transactions, in commit order, not tenant u's"
    );
    assert!(entries.iter().all(|e| e.recorded_at > 0));
    let (after_first, _, _) = read(entries[0].token.clone(), t.clone(), 10).await;
    assert_eq!(after_first.len(), 1, "resumes after the first");
    assert_eq!(after_first[0].changes, entries[1].changes);
    let (nothing, again, more) = read(through.clone(), t.clone(), 10).await;
    assert!(nothing.is_empty() && !more);
    let (nothing_yet, _, _) = read(again, t.clone(), 10).await;
    assert!(
        nothing_yet.is_empty(),
        "a token read twice hands out nothing twice"
    );
    let (first_only, _, more) = read(start.clone(), t.clone(), 1).await;
    assert_eq!(first_only.len(), 1);
    assert!(more, "stopped at its limit");
    let (of_u, _, _) = read(start.clone(), u.clone(), 10).await;
    assert_eq!(of_u.len(), 1, "tenant u sees its own change");
    assert!(matches!(
        store.watch_read("nonsense", &t, 10).await.expect("read"),
        WatchRead::Malformed(_)
    ));

    // A restore is logged like any change.
    let before_restore = store.watch_head().await.expect("head");
    let restored = profile("p2", &["b@x.io"]);
    store
        .restore(&[DumpItem::Profile {
            tenant: t.clone(),
            profile: restored.clone(),
        }])
        .await
        .expect("restore");
    store.sync().await.expect("sync");
    let (entries, _, _) = read(before_restore, t.clone(), 10).await;
    assert_eq!(
        entries
            .iter()
            .map(|e| e.changes.clone())
            .collect::<Vec<_>>(),
        vec![vec![Change::Profile {
            tenant: t.clone(),
            profile: Box::new(restored)
        }]]
    );

    // Retention: everything but the newest goes; a token from before it has expired.
    let keep_one = ChangeRetention {
        before: i64::MAX,
        keep_max: u64::MAX,
    };
    let expired = store.expire(0, 0, keep_one, 100).await.expect("expire");
    assert_eq!(expired.changes, 3, "{expired:?}");
    store.sync().await.expect("sync");
    assert_eq!(
        store.watch_read(&start, &t, 10).await.expect("read"),
        WatchRead::Expired
    );
    let (nothing, _, _) = read(store.watch_head().await.expect("head"), t.clone(), 10).await;
    assert!(nothing.is_empty(), "a token of now reads on");
    assert_eq!(
        store
            .expire(0, 0, keep_one, 100)
            .await
            .expect("expire")
            .changes,
        0,
        "the newest stays"
    );
}

/// What the index is built from: settings, services, profiles, non-VALID
/// addresses and subscriptions, as of the position returned.
pub(crate) async fn the_decision_state_loads_whole(store: &dyn Store) {
    let t = tenant("t");
    let p = profile("p1", &["a@x.io"]);
    let settings = TenantSettings {
        regimes: [Regime::OptIn; 5],
        ..TenantSettings::default()
    };
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.put_profile(&t, &p);
    tx.put_tenant_settings(&t, &settings);
    tx.put_service(&t, &service("news"));
    tx.put_subscription(&t, &p.id, &subscription("news", SubscriptionStatus::Active));
    tx.put_address_state(&t, &email("a@x.io"), &state(AddressStatus::Quarantined));
    tx.put_address_state(&t, &email("v@x.io"), &state(AddressStatus::Valid));
    let position = tx.commit().await.expect("commit");
    let mut loaded = Vec::new();
    let at = store
        .load_decision_state(&mut |item| loaded.push(item))
        .await
        .expect("load");
    assert_eq!(at, position);
    let expected = [
        Loaded::TenantSettings(t.clone(), settings),
        Loaded::Service(t.clone(), service("news")),
        Loaded::Profile(t.clone(), Box::new(p.clone())),
        Loaded::Address(t.clone(), email("a@x.io"), AddressStatus::Quarantined),
        Loaded::Subscription(
            t.clone(),
            p.id.clone(),
            ServiceId::parse("news").expect("valid"),
            SubscriptionStatus::Active,
        ),
    ];
    assert_eq!(loaded.len(), expected.len(), "{loaded:?}");
    for item in expected {
        assert!(loaded.contains(&item), "{item:?} missing from {loaded:?}");
    }
}

/// A snapshot is the state when it was taken, whatever is written while it
/// is read: records rewritten, removed (by a change or by expiry) and added,
/// before and after the place the reading has reached, in its tenant and in
/// another; in the order of a dump. A tenant's snapshot is its part of it.
pub(crate) async fn a_snapshot_is_the_state_when_it_was_taken(store: &dyn Store) {
    let (a, b) = (tenant("a"), tenant("b"));
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    for id in ["p2", "p4", "p6", "p8"] {
        tx.put_profile(&a, &profile(id, &[&format!("{id}@x.io")]));
    }
    tx.put_profile(&b, &profile("q1", &["q1@x.io"]));
    tx.put_event_marker(
        &a,
        &EventId::parse("e1").expect("valid"),
        &email("p2@x.io"),
        10,
    );
    tx.put_token(&a, &TokenHash([1; 32]), &token("p2", 15));
    tx.put_token(&a, &TokenHash([2; 32]), &token("p4", 100));
    tx.put_usage_opt_out(
        &a,
        &UsageOptOut {
            user_id: UserId::parse("u1").expect("valid"),
            opted_out_at: 5,
            context: ctx(),
        },
    );
    tx.commit().await.expect("commit");
    let before: Vec<String> = store
        .dump(None)
        .map(|i| format!("{:?}", i.expect("item")))
        .collect();
    let before_a: Vec<String> = store
        .dump(Some(&a))
        .map(|i| format!("{:?}", i.expect("item")))
        .collect();

    let whole = store.snapshot(None).await.expect("snapshot");
    let of_a = store.snapshot(Some(&a)).await.expect("snapshot of a");
    assert_eq!(whole.len(), before.len());
    assert_eq!(of_a.len(), before_a.len());
    let mut reading = whole.items();
    // The reading is under way (past the first profile of a) when the writes come.
    let mut read: Vec<String> = reading
        .by_ref()
        .take(3)
        .map(|i| format!("{:?}", i.expect("item")))
        .collect();
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    tx.put_profile(&a, &profile("p1", &["new@x.io"]));
    tx.put_profile(&a, &profile("p2", &["changed@x.io"]));
    tx.put_profile(&a, &profile("p6", &["changed@x.io"]));
    tx.put_profile(&a, &profile("p9", &["new@x.io"]));
    tx.put_profile(&b, &profile("q1", &["changed@x.io"]));
    tx.put_profile(&b, &profile("q2", &["new@x.io"]));
    tx.delete_token(&a, &TokenHash([2; 32]));
    tx.delete_usage_opt_out(&a, &UserId::parse("u1").expect("valid"));
    tx.put_token(&a, &TokenHash([3; 32]), &token("p9", 100));
    tx.commit().await.expect("commit");
    let expired = store
        .expire(1000, 50, ChangeRetention::KEEP_ALL, 100)
        .await
        .expect("expire");
    assert_eq!((expired.event_markers, expired.tokens), (1, 1));
    read.extend(reading.map(|i| format!("{:?}", i.expect("item"))));
    assert_eq!(read, before, "the snapshot is the state when it was taken");
    let read_a: Vec<String> = of_a
        .items()
        .map(|i| format!("{:?}", i.expect("item")))
        .collect();
    assert_eq!(read_a, before_a, "a tenant's snapshot");
    drop((whole, of_a));
    // The writes themselves stand.
    let after: Vec<String> = store
        .dump(None)
        .map(|i| format!("{:?}", i.expect("item")))
        .collect();
    assert_ne!(after, before);
    assert!(after.iter().any(|i| i.contains("changed@x.io")));
}

/// A dump restored into an empty store dumps the same, with every derived
/// index rebuilt; restoring twice equals once; a snapshot is a dump.
pub(crate) async fn dumps_restore_into_the_same_store(store: &dyn Store, empty: &dyn Store) {
    let t = tenant("t");
    let p = profile("p1", &["a@x.io"]);
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.put_profile(&t, &p);
    tx.put_address_state(&t, &email("a@x.io"), &state(AddressStatus::Denylisted));
    tx.put_address_event(&t, &email("a@x.io"), &event(2, 7));
    tx.put_event_marker(
        &t,
        &EventId::parse("e").expect("valid"),
        &email("a@x.io"),
        9,
    );
    tx.put_subscription(&t, &p.id, &subscription("news", SubscriptionStatus::Active));
    tx.put_service(&t, &service("news"));
    tx.put_token(&t, &TokenHash([3; 32]), &token("p1", 77));
    tx.put_tenant_settings(&t, &TenantSettings::default());
    let mut consent = AddressConsent::default();
    consent
        .set(&email("a@x.io"), Channel::Email, true, 3, &ctx())
        .expect("email");
    tx.put_address_consent(&t, &email("a@x.io"), &consent);
    tx.commit().await.expect("commit");
    let items: Vec<DumpItem> = store.dump(None).map(|i| i.expect("item")).collect();
    let snapshot = store.snapshot(None).await.expect("snapshot");
    let snapped: Vec<DumpItem> = snapshot.items().map(|i| i.expect("item")).collect();
    let as_set = |v: &[DumpItem]| v.iter().map(|i| format!("{i:?}")).collect::<BTreeSet<_>>();
    assert_eq!(as_set(&items), as_set(&snapped));
    assert_eq!(items.len(), 9, "{items:?}");
    let twice: Vec<DumpItem> = items.iter().chain(&items).cloned().collect();
    empty.restore(&twice).await.expect("restore");
    empty.sync().await.expect("sync");
    let again: Vec<DumpItem> = empty.dump(None).map(|i| i.expect("item")).collect();
    assert_eq!(as_set(&again), as_set(&items));
    assert_eq!(
        empty
            .address_users(&t, &email("a@x.io"), 10)
            .await
            .expect("users"),
        (vec![p.id.clone()], false)
    );
    assert_eq!(
        empty
            .list_addresses(&t, Some(AddressStatus::Denylisted), None, 10)
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let news = ServiceId::parse("news").expect("valid");
    assert_eq!(
        empty
            .subscribers(&t, &news, None, 10)
            .await
            .expect("subscribers")
            .items,
        vec![(p.id, SubscriptionStatus::Active)]
    );
    assert_eq!(
        empty.dump(Some(&tenant("other"))).count(),
        0,
        "a tenant's dump holds only its own"
    );
    // A restored marker expires by its time.
    assert_eq!(
        empty
            .expire(10, 0, ChangeRetention::KEEP_ALL, 10)
            .await
            .expect("expire")
            .event_markers,
        1
    );
}

/// An address's opt-outs: read back in the change and after it, on the
/// feed with the channels opted out of, in the decision state only while
/// some channel is opted out of, and in dumps.
pub(crate) async fn address_opt_outs_are_stored_fed_and_loaded(store: &dyn Store) {
    let t = tenant("t");
    let phone = Address::phone("+33612345678").expect("valid");
    let other = Address::phone("+33687654321").expect("valid");
    let seen: Arc<Mutex<Vec<Committed>>> = Arc::default();
    let sink_seen = Arc::clone(&seen);
    store
        .follow(
            store.position(),
            Box::new(move |batch: &[Committed]| {
                sink_seen.lock().expect("lock").extend_from_slice(batch);
            }),
        )
        .expect("follow");
    assert_eq!(store.address_consent(&t, &phone).await.expect("read"), None);
    let mut stop = AddressConsent::default();
    stop.set(&phone, Channel::Sms, true, 5, &ctx())
        .expect("sms");
    let mut lifted = AddressConsent::default();
    lifted
        .set(&other, Channel::Voice, true, 5, &ctx())
        .expect("voice");
    lifted
        .set(&other, Channel::Voice, false, 6, &ctx())
        .expect("voice back");
    let mut tx = store
        .begin(vec![
            Lock::Address(t.clone(), phone.clone()),
            Lock::Address(t.clone(), other.clone()),
        ])
        .await
        .expect("begin");
    tx.put_address_consent(&t, &phone, &stop);
    assert_eq!(
        tx.address_consent(&t, &phone).await.expect("read"),
        Some(stop.clone()),
        "a change reads its own write"
    );
    tx.put_address_consent(&t, &other, &lifted);
    let position = tx.commit().await.expect("commit");
    store.sync().await.expect("sync");
    assert_eq!(
        store.address_consent(&t, &phone).await.expect("read"),
        Some(stop.clone())
    );
    assert!(store.position() >= position);
    assert_eq!(
        store
            .address_consent(&tenant("u"), &phone)
            .await
            .expect("read"),
        None,
        "tenants share nothing"
    );
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.last().map(|c| c.position), Some(store.position()));
    assert_eq!(
        seen.last().map(|c| c.changes.clone()),
        Some(vec![
            Change::AddressConsent {
                tenant: t.clone(),
                address: phone.clone(),
                opted_out: 1 << Channel::Sms.index(),
            },
            Change::AddressConsent {
                tenant: t.clone(),
                address: other.clone(),
                opted_out: 0,
            },
        ])
    );
    let mut loaded = Vec::new();
    store
        .load_decision_state(&mut |item| loaded.push(item))
        .await
        .expect("load");
    assert_eq!(
        loaded,
        vec![Loaded::AddressConsent(
            t.clone(),
            phone.clone(),
            1 << Channel::Sms.index()
        )],
        "only what some channel is opted out of"
    );
    let dumped: Vec<DumpItem> = store.dump(None).map(|i| i.expect("item")).collect();
    assert_eq!(dumped.len(), 2, "{dumped:?}");
    assert!(dumped.contains(&DumpItem::AddressConsent {
        tenant: t,
        address: other,
        consent: lifted,
    }));
}

/// Erasing a profile deletes it with its history, subscriptions (and their
/// subscriber entries), tokens and address links, and puts
/// `ProfileErased` on the feed; tombstones, the erasure secret and erasure
/// records are read back in a change, kept apart per tenant, and carried by
/// dumps; address states stay.
pub(crate) async fn erasure_removes_the_profile_and_keeps_tombstones(
    store: &dyn Store,
    empty: &dyn Store,
) {
    let t = tenant("t");
    let seen: Arc<Mutex<Vec<Committed>>> = Arc::default();
    let sink_seen = Arc::clone(&seen);
    store
        .follow(
            store.position(),
            Box::new(move |batch: &[Committed]| {
                sink_seen.lock().expect("lock").extend_from_slice(batch);
            }),
        )
        .expect("follow");
    let mut p = profile("p1", &["a@x.io"]);
    let kept = profile("p10", &["a@x.io"]);
    let entry = p
        .set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx(), 2)
        .expect("an entry");
    let mut tx = store
        .begin(vec![
            Lock::Profile(t.clone(), p.id.clone()),
            Lock::Profile(t.clone(), kept.id.clone()),
            Lock::Address(t.clone(), email("a@x.io")),
        ])
        .await
        .expect("begin");
    tx.append_history(&t, &p.id, &entry);
    tx.put_profile(&t, &p);
    tx.put_profile(&t, &kept);
    tx.put_subscription(&t, &p.id, &subscription("news", SubscriptionStatus::Active));
    tx.put_subscription(
        &t,
        &kept.id,
        &subscription("news", SubscriptionStatus::Active),
    );
    tx.put_token(&t, &TokenHash([1; 32]), &token("p1", 100));
    tx.put_token(&t, &TokenHash([2; 32]), &token("p10", 100));
    tx.put_address_state(&t, &email("a@x.io"), &state(AddressStatus::Quarantined));
    tx.commit().await.expect("commit");

    let key = ErasureKey([5; 32]);
    let hash = key.hash(&email("a@x.io"));
    let stone = Tombstone {
        all_channels: true,
        channels: 0,
    };
    let erasure = Erasure {
        erased_at: 9,
        id: 77,
        context: ctx(),
        tombstones: 1,
        history_entries: 1,
        subscriptions: 1,
    };
    let mut tx = store
        .begin(vec![
            Lock::Profile(t.clone(), p.id.clone()),
            Lock::ErasureKey(t.clone()),
        ])
        .await
        .expect("begin");
    assert_eq!(tx.erasure_key(&t).await.expect("read"), None);
    assert_eq!(tx.tombstone(&t, &hash).await.expect("read"), None);
    tx.put_erasure_key(&t, &key);
    tx.put_tombstone(&t, &hash, &stone);
    assert_eq!(
        tx.erasure_key(&t).await.expect("read"),
        Some(key.clone()),
        "a change reads its own write"
    );
    assert_eq!(tx.tombstone(&t, &hash).await.expect("read"), Some(stone));
    let mut stored = tx.profile(&t, &p.id).await.expect("read").expect("there");
    // What this change staged of the profile goes too.
    let late = stored
        .set_consent(
            Scope::Channel(Channel::Sms),
            ConsentStatus::OptedOut,
            &ctx(),
            3,
        )
        .expect("an entry");
    tx.append_history(&t, &p.id, &late);
    tx.put_profile(&t, &stored);
    tx.put_subscription(
        &t,
        &p.id,
        &subscription("digest", SubscriptionStatus::Active),
    );
    tx.erase_profile(&t, &stored).await.expect("erase");
    assert_eq!(
        tx.profile(&t, &p.id).await.expect("read"),
        None,
        "a change reads its own erasure"
    );
    tx.put_erasure(&t, &erasure);
    tx.commit().await.expect("commit");
    store.sync().await.expect("sync");

    assert_eq!(store.profile(&t, &p.id).await.expect("read"), None);
    assert!(
        store
            .consent_history(&t, &p.id, None, 10)
            .await
            .expect("history")
            .is_empty()
    );
    assert!(
        store
            .subscriptions(&t, &p.id)
            .await
            .expect("subscriptions")
            .is_empty()
    );
    assert!(
        store
            .subscribers(&t, &ServiceId::parse("digest").expect("valid"), None, 10)
            .await
            .expect("subscribers")
            .items
            .is_empty(),
        "a subscription staged by the erasing change goes too"
    );
    assert_eq!(
        store
            .subscribers(&t, &ServiceId::parse("news").expect("valid"), None, 10)
            .await
            .expect("subscribers")
            .items,
        vec![(kept.id.clone(), SubscriptionStatus::Active)],
        "only the other profile is a subscriber"
    );
    assert_eq!(
        store
            .address_users(&t, &email("a@x.io"), 10)
            .await
            .expect("users"),
        (vec![kept.id.clone()], false)
    );
    assert_eq!(
        store
            .address_state(&t, &email("a@x.io"))
            .await
            .expect("state")
            .map(|s| s.status),
        Some(AddressStatus::Quarantined),
        "the address's state stays"
    );
    assert_eq!(
        store.profile(&t, &kept.id).await.expect("read"),
        Some(kept.clone()),
        "another profile with the same address stays"
    );
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.last()
            .is_some_and(|c| c.changes.contains(&Change::ProfileErased {
                tenant: t.clone(),
                profile_id: p.id.clone(),
            })),
        "the erasure is on the feed"
    );

    // Read back in a later change; another tenant has none.
    let mut tx = store
        .begin(vec![Lock::ErasureKey(t.clone())])
        .await
        .expect("begin");
    assert_eq!(tx.erasure_key(&t).await.expect("read"), Some(key.clone()));
    assert_eq!(tx.tombstone(&t, &hash).await.expect("read"), Some(stone));
    assert_eq!(
        tx.tombstone(&t, &key.hash(&email("b@x.io")))
            .await
            .expect("read"),
        None
    );
    assert_eq!(tx.erasure_key(&tenant("u")).await.expect("read"), None);
    assert_eq!(tx.tombstone(&tenant("u"), &hash).await.expect("read"), None);
    drop(tx);

    // The dump holds the tombstone, the secret and the record, and nothing
    // of the erased profile; a restore carries them.
    let items: Vec<DumpItem> = store.dump(None).map(|i| i.expect("item")).collect();
    for item in &items {
        let erased = match item {
            DumpItem::Profile { profile, .. } => profile.id == p.id,
            DumpItem::ConsentEntry { profile_id, .. }
            | DumpItem::Subscription { profile_id, .. } => profile_id == &p.id,
            DumpItem::ConfirmationToken { record, .. } => record.profile_id == p.id,
            _ => false,
        };
        assert!(!erased, "nothing of the erased profile is dumped: {item:?}");
    }
    for wanted in [
        DumpItem::ErasureKey {
            tenant: t.clone(),
            key: key.clone(),
        },
        DumpItem::Tombstone {
            tenant: t.clone(),
            hash,
            tombstone: stone,
        },
        DumpItem::Erasure {
            tenant: t.clone(),
            erasure: erasure.clone(),
        },
    ] {
        assert!(items.contains(&wanted), "{wanted:?} is dumped");
    }
    assert!(
        items
            .iter()
            .any(|i| matches!(i, DumpItem::ConfirmationToken { hash, .. } if hash.0 == [2; 32])),
        "the other profile's token stays"
    );
    empty.restore(&items).await.expect("restore");
    empty.sync().await.expect("sync");
    let restored: Vec<DumpItem> = empty.dump(None).map(|i| i.expect("item")).collect();
    assert_eq!(restored.len(), items.len(), "the same number of records");
    for item in &items {
        assert!(restored.contains(item), "{item:?} is restored");
    }
    let mut tx = empty
        .begin(vec![Lock::ErasureKey(t.clone())])
        .await
        .expect("begin");
    assert_eq!(tx.erasure_key(&t).await.expect("read"), Some(key));
    assert_eq!(tx.tombstone(&t, &hash).await.expect("read"), Some(stone));
}

/// One `#[tokio::test]` per check, over stores made by `$make` (an
/// expression giving `(Arc<dyn Store>, guard)`; the guard lives as long as
/// the test, e.g. a temporary directory).
macro_rules! conformance_suite {
    ($make:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::store::conformance as suite;

            #[tokio::test]
            async fn address_opt_outs_are_stored_fed_and_loaded() {
                let (store, _guard) = $make;
                suite::address_opt_outs_are_stored_fed_and_loaded(store.as_ref()).await;
            }

            #[tokio::test]
            async fn changes_commit_as_one_and_read_their_own_writes() {
                let (store, _guard) = $make;
                suite::changes_commit_as_one_and_read_their_own_writes(store.as_ref()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lock_is_held_until_commit() {
                let (store, _guard) = $make;
                suite::a_lock_is_held_until_commit(store).await;
            }

            #[tokio::test]
            async fn history_pages_newest_first() {
                let (store, _guard) = $make;
                suite::history_pages_newest_first(store.as_ref()).await;
            }

            #[tokio::test]
            async fn address_users_follow_profiles() {
                let (store, _guard) = $make;
                suite::address_users_follow_profiles(store.as_ref()).await;
            }

            #[tokio::test]
            async fn address_listing_follows_statuses() {
                let (store, _guard) = $make;
                suite::address_listing_follows_statuses(store.as_ref()).await;
            }

            #[tokio::test]
            async fn address_logs_read_in_key_order() {
                let (store, _guard) = $make;
                suite::address_logs_read_in_key_order(store.as_ref()).await;
            }

            #[tokio::test]
            async fn subscriptions_list_both_ways() {
                let (store, _guard) = $make;
                suite::subscriptions_list_both_ways(store.as_ref()).await;
            }

            #[tokio::test]
            async fn small_records_read_count_and_page() {
                let (store, _guard) = $make;
                suite::small_records_read_count_and_page(store.as_ref()).await;
            }

            #[tokio::test]
            async fn markers_and_tokens_expire() {
                let (store, _guard) = $make;
                suite::markers_and_tokens_expire(store.as_ref()).await;
            }

            #[tokio::test]
            async fn the_feed_carries_every_committed_change_in_order() {
                let (store, _guard) = $make;
                suite::the_feed_carries_every_committed_change_in_order(store.as_ref()).await;
            }

            #[tokio::test]
            async fn the_watch_log_resumes_after_a_token_and_expires() {
                let (store, _guard) = $make;
                suite::the_watch_log_resumes_after_a_token_and_expires(store.as_ref()).await;
            }

            #[tokio::test]
            async fn the_decision_state_loads_whole() {
                let (store, _guard) = $make;
                suite::the_decision_state_loads_whole(store.as_ref()).await;
            }

            #[tokio::test]
            async fn a_snapshot_is_the_state_when_it_was_taken() {
                let (store, _guard) = $make;
                suite::a_snapshot_is_the_state_when_it_was_taken(store.as_ref()).await;
            }

            #[tokio::test]
            async fn erasure_removes_the_profile_and_keeps_tombstones() {
                let (store, _guard) = $make;
                let (empty, _empty_guard) = $make;
                suite::erasure_removes_the_profile_and_keeps_tombstones(
                    store.as_ref(),
                    empty.as_ref(),
                )
                .await;
            }

            #[tokio::test]
            async fn dumps_restore_into_the_same_store() {
                let (store, _guard) = $make;
                let (empty, _empty_guard) = $make;
                suite::dumps_restore_into_the_same_store(store.as_ref(), empty.as_ref()).await;
            }
        }
    };
}

pub(crate) use conformance_suite;
