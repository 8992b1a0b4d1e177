//! The sled store: the conformance suite, and what only a store on disk has
//! to show (reopening, the directory lock, crash leftovers, migration, a
//! failed flush).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use super::{SledOptions, SledStore, codec, keys};
use crate::{
    engine::{Channel, ConsentStatus, Profile, ProfileAddresses, Scope},
    store::{
        CompactionPolicy, Lock, Store, StoreError,
        conformance::{ctx, email, pid, tenant},
    },
};

fn open() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    (Arc::new(store) as Arc<dyn Store>, dir)
}

crate::store::conformance::conformance_suite!(open());

#[test]
fn a_second_open_of_the_same_directory_is_refused_with_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = SledStore::open(dir.path()).expect("first open");
    let second = SledStore::open(dir.path());
    let Err(StoreError::InUse { holder, .. }) = second else {
        panic!("second open must fail with InUse, got {second:?}");
    };
    assert_eq!(holder, format!("pid {}", std::process::id()));
}

#[tokio::test]
async fn what_was_synced_is_there_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t");
    let p = Profile::new(
        pid("p1"),
        ProfileAddresses {
            emails: vec![email("a@x.io")],
            ..ProfileAddresses::default()
        },
        1,
    );
    {
        let store = SledStore::open(dir.path()).expect("open");
        let mut tx = store
            .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
            .await
            .expect("begin");
        tx.put_profile(&t, &p);
        tx.commit().await.expect("commit");
        store.sync().await.expect("sync");
    }
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(store.profile(&t, &p.id).await.expect("read"), Some(p));
    assert_eq!(
        store
            .address_users(&t, &email("a@x.io"), 10)
            .await
            .expect("users"),
        (vec![pid("p1")], false)
    );
}

/// What a crash between the two inserts of a consent change leaves: the
/// history entry without the profile record that counts it. It is never
/// listed, and the next change takes its sequence.
#[tokio::test]
async fn a_history_entry_whose_profile_write_is_missing_is_not_listed_and_is_overwritten() {
    let (store, _dir) = open();
    let t = tenant("t");
    let mut p = Profile::new(pid("p0"), ProfileAddresses::default(), 1);
    let out = Scope::Channel(Channel::Email);
    let entry = p
        .set_consent(out, ConsentStatus::OptedOut, &ctx(), 2)
        .expect("a change");
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.append_history(&t, &p.id, &entry);
    tx.put_profile(&t, &p);
    tx.commit().await.expect("commit");
    // The orphan: an entry with the next sequence, its profile never written.
    let mut ahead = p.clone();
    let orphan = ahead
        .set_consent(out, ConsentStatus::OptedIn, &ctx(), 3)
        .expect("a change");
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.append_history(&t, &p.id, &orphan);
    tx.commit().await.expect("commit");
    let listed = store
        .consent_history(&t, &p.id, None, 10)
        .await
        .expect("history");
    assert_eq!(
        listed.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1]
    );
    let next = p
        .set_consent(out, ConsentStatus::OptedIn, &ctx(), 4)
        .expect("a change");
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), p.id.clone())])
        .await
        .expect("begin");
    tx.append_history(&t, &p.id, &next);
    tx.put_profile(&t, &p);
    tx.commit().await.expect("commit");
    let listed = store
        .consent_history(&t, &p.id, None, 10)
        .await
        .expect("history");
    assert_eq!(
        listed
            .iter()
            .map(|e| (e.sequence, e.changed_at))
            .collect::<Vec<_>>(),
        vec![(2, 4), (1, 2)]
    );
}

/// From the first failed sync on, nothing is acknowledged and no change is
/// accepted, even when the disk would let a later flush through (Linux
/// reports a writeback error once).
#[tokio::test]
async fn a_failed_sync_refuses_every_write_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fail = Arc::new(AtomicBool::new(false));
    let failing = Arc::clone(&fail);
    let store = SledStore::open_with(
        dir.path(),
        SledOptions {
            sync_fault: Some(Arc::new(move || {
                if failing.swap(false, Ordering::SeqCst) {
                    Err(std::io::Error::other("injected: EIO on fdatasync"))
                } else {
                    Ok(())
                }
            })),
            ..SledOptions::default()
        },
    )
    .expect("open");
    let t = tenant("t");
    let put = |id: &str| {
        let (store, t, id) = (&store, t.clone(), pid(id));
        async move {
            let mut tx = store
                .begin(vec![Lock::Profile(t.clone(), id.clone())])
                .await?;
            tx.put_profile(&t, &Profile::new(id, ProfileAddresses::default(), 1));
            tx.commit().await?;
            store.sync().await
        }
    };
    put("before").await.expect("a healthy write");
    assert!(store.failure().is_none());
    fail.store(true, Ordering::SeqCst);
    let failed = put("during").await;
    assert!(matches!(failed, Err(StoreError::Failed(_))), "{failed:?}");
    // The fault is gone, the next fdatasync would succeed: still refused.
    assert!(!fail.load(Ordering::SeqCst));
    let refused = put("after").await;
    assert!(matches!(refused, Err(StoreError::Failed(_))), "{refused:?}");
    assert!(matches!(store.sync().await, Err(StoreError::Failed(_))));
    let why = store.failure().expect("failed");
    assert!(why.contains("injected"), "{why}");
    // Reads go on.
    assert!(
        store
            .profile(&t, &pid("before"))
            .await
            .expect("read")
            .is_some()
    );
}

/// A data directory of format 2 (address log by arrival, markers without a
/// time, tokens without an expiry) is brought to format 3 at open.
#[tokio::test]
async fn a_format_2_directory_is_migrated_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t");
    let a = email("a@x.io");
    {
        let db = sled::Config::new().path(dir.path()).open().expect("sled");
        // Two log entries under `l`, by sequence, whose event times are out of order.
        for (seq, at) in [(1u64, 50i64), (2, 10)] {
            let mut key = vec![b'l', 1, b't'];
            key.push(codec::address_kind_byte(a.kind()));
            key.extend_from_slice(
                &u16::try_from(a.as_str().len())
                    .expect("short")
                    .to_be_bytes(),
            );
            key.extend_from_slice(a.as_str().as_bytes());
            key.extend_from_slice(&seq.to_be_bytes());
            let event = crate::engine::AddressEvent {
                sequence: seq,
                kind: crate::engine::AddressEventKind::Release,
                occurred_at: at,
                recorded_at: at,
                old_status: crate::engine::AddressStatus::Valid,
                new_status: crate::engine::AddressStatus::Valid,
                context: ctx(),
                folded_at: at,
                checkpoint: None,
                rules: None,
            };
            let mut value = codec::encode_address_event(&event);
            value[0] = 2;
            // A V2 entry ends after its context: no folded time, no
            // checkpoint, no rules.
            value.truncate(value.len() - 10);
            db.insert(key, value).expect("insert");
        }
        // A marker whose value is the address key alone.
        db.insert(keys::event_id(&t, "ev"), keys::address(&t, &a))
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = SledStore::open(dir.path()).expect("open migrates");
    let history = store
        .address_history(&t, &a, None, 10)
        .await
        .expect("history");
    assert_eq!(
        history.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2],
        "newest event time first"
    );
    let state = store
        .address_state(&t, &a)
        .await
        .expect("read")
        .expect("state");
    assert_eq!(state.log.len, 2);
    let markers: Vec<_> = store
        .dump(None)
        .filter_map(|i| match i.expect("item") {
            crate::store::DumpItem::FeedbackEventId { recorded_at, .. } => Some(recorded_at),
            _ => None,
        })
        .collect();
    assert_eq!(markers.len(), 1);
    assert!(markers[0] > 1_700_000_000_000, "dated at the upgrade");
    drop(store);
    // Opening again changes nothing more.
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store
            .address_history(&t, &a, None, 10)
            .await
            .expect("history")
            .len(),
        2
    );
}

/// A format-3 directory holds addresses as earlier builds spelled them: at
/// open, each moves to its canonical form, and two spellings of one address
/// merge (the profiles use one address, the stricter state wins, both logs
/// are kept).
#[tokio::test]
async fn a_format_3_directory_gets_canonical_addresses_at_open() {
    use crate::engine::{
        Address, AddressEvent, AddressEventKind, AddressKind, AddressState, AddressStatus, EventId,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t");
    let old_phone = Address::from_trusted(AddressKind::Phone, "+330612345678".into());
    let phone = Address::phone("+33612345678").expect("valid");
    let old_email = Address::from_trusted(AddressKind::Email, "user@bücher.de".into());
    let new_email = Address::email("user@bücher.de").expect("valid");
    assert_eq!(new_email.as_str(), "user@xn--bcher-kva.de");
    let event = |sequence, at, new_status| AddressEvent {
        sequence,
        kind: AddressEventKind::Release,
        occurred_at: at,
        recorded_at: at,
        old_status: AddressStatus::Valid,
        new_status,
        context: ctx(),
        folded_at: at,
        checkpoint: None,
        rules: None,
    };
    let state = |status, updated_at, log_len| AddressState {
        status,
        updated_at: Some(updated_at),
        log_seq: u64::from(log_len),
        log: crate::engine::LogMeta {
            len: log_len,
            since_checkpoint: log_len,
            start: None,
        },
        ..AddressState::default()
    };
    {
        let store = SledStore::open(dir.path()).expect("open");
        let mut tx = store.begin(vec![]).await.expect("begin");
        // p1 has both spellings of the phone; p2 the old e-mail spelling.
        let mut p1 = Profile::new(pid("p1"), ProfileAddresses::default(), 1);
        p1.phones = vec![old_phone.clone(), phone.clone()];
        tx.put_profile(&t, &p1);
        let mut p2 = Profile::new(pid("p2"), ProfileAddresses::default(), 1);
        p2.emails = vec![old_email.clone()];
        tx.put_profile(&t, &p2);
        // The old phone spelling is QUARANTINED (newer), the canonical one WITH_ERRORS.
        tx.put_address_state(&t, &old_phone, &state(AddressStatus::Quarantined, 20, 1));
        tx.put_address_event(&t, &old_phone, &event(1, 20, AddressStatus::Quarantined));
        tx.put_address_state(&t, &phone, &state(AddressStatus::WithErrors, 30, 2));
        tx.put_address_event(&t, &phone, &event(1, 10, AddressStatus::WithErrors));
        tx.put_address_event(&t, &phone, &event(2, 30, AddressStatus::WithErrors));
        tx.put_address_state(&t, &old_email, &state(AddressStatus::Denylisted, 5, 1));
        tx.put_address_event(&t, &old_email, &event(1, 5, AddressStatus::Denylisted));
        tx.put_event_marker(&t, &EventId::parse("ev").expect("valid"), &old_phone, 20);
        tx.commit().await.expect("commit");
        store.sync().await.expect("sync");
    }
    {
        // The store's threads let go of sled's file lock just after it is
        // dropped: wait for it rather than fail.
        let started = std::time::Instant::now();
        let db = loop {
            match sled::Config::new().path(dir.path()).open() {
                Ok(db) => break db,
                Err(error) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    drop(error);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(error) => panic!("sled: {error}"),
            }
        };
        db.insert(keys::META_FORMAT, &[3]).expect("format 3");
        db.flush().expect("flush");
    }
    let store = SledStore::open(dir.path()).expect("open migrates");
    let p1 = store
        .profile(&t, &pid("p1"))
        .await
        .expect("read")
        .expect("p1");
    assert_eq!(p1.phones, vec![phone.clone()], "one spelling, one address");
    let p2 = store
        .profile(&t, &pid("p2"))
        .await
        .expect("read")
        .expect("p2");
    assert_eq!(p2.emails, vec![new_email.clone()]);
    assert_eq!(
        store.address_users(&t, &phone, 10).await.expect("users"),
        (vec![pid("p1")], false)
    );
    assert_eq!(
        store
            .address_users(&t, &old_phone, 10)
            .await
            .expect("users"),
        (vec![], false)
    );
    assert_eq!(
        store
            .address_users(&t, &new_email, 10)
            .await
            .expect("users"),
        (vec![pid("p2")], false)
    );
    let merged = store
        .address_state(&t, &phone)
        .await
        .expect("read")
        .expect("state");
    assert_eq!(
        merged.status,
        AddressStatus::Quarantined,
        "the stricter state wins"
    );
    assert_eq!((merged.log.len, merged.log_seq), (3, 3));
    let history = store
        .address_history(&t, &phone, None, 10)
        .await
        .expect("history");
    assert_eq!(
        history
            .iter()
            .map(|e| (e.occurred_at, e.sequence))
            .collect::<Vec<_>>(),
        vec![(30, 2), (20, 3), (10, 1)],
        "both logs, newest first, the moved entry renumbered"
    );
    assert_eq!(
        store.address_state(&t, &old_phone).await.expect("read"),
        None
    );
    let moved = store
        .address_state(&t, &new_email)
        .await
        .expect("read")
        .expect("state");
    assert_eq!(
        (moved.status, moved.log.len),
        (AddressStatus::Denylisted, 1)
    );
    assert_eq!(
        store
            .address_history(&t, &new_email, None, 10)
            .await
            .expect("history")
            .len(),
        1
    );
    let listed: Vec<_> = store
        .list_addresses(&t, None, None, 10)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|(a, s)| (a.as_str().to_owned(), s.status))
        .collect();
    assert_eq!(
        listed,
        vec![
            (phone.as_str().to_owned(), AddressStatus::Quarantined),
            (new_email.as_str().to_owned(), AddressStatus::Denylisted),
        ]
    );
    let markers: Vec<_> = store
        .dump(None)
        .filter_map(|i| match i.expect("item") {
            crate::store::DumpItem::FeedbackEventId { address, .. } => Some(address),
            _ => None,
        })
        .collect();
    assert_eq!(
        markers,
        vec![phone.clone()],
        "the marker names the canonical address"
    );
    drop(store);
    // Opening again changes nothing more.
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store
            .address_history(&t, &phone, None, 10)
            .await
            .expect("history")
            .len(),
        3
    );
}

/// Writes profile `id` (with version `version`) and waits until it is durable.
async fn put_profile(store: &SledStore, id: &str, version: u64) -> crate::store::Result<()> {
    let t = tenant("t");
    let address = email(&format!("{id}-{version}@x.io"));
    let id = pid(id);
    let mut tx = store
        .begin(vec![Lock::Profile(t.clone(), id.clone())])
        .await?;
    tx.put_profile(
        &t,
        &Profile::new(
            id,
            ProfileAddresses {
                emails: vec![address],
                ..ProfileAddresses::default()
            },
            // The version as the time of the change: what a read shows of it.
            i64::try_from(version).expect("small"),
        ),
    );
    tx.commit().await?;
    store.sync().await
}

/// Writes profiles `p0`… `p{profiles - 1}` once per round, `rounds` times over.
async fn rewrite_profiles(store: &SledStore, rounds: u64, profiles: usize) {
    for round in 1..=rounds {
        for i in 0..profiles {
            put_profile(store, &format!("p{i}"), round)
                .await
                .expect("put");
        }
    }
    // The watch log keeps a record of every rewrite until retention lets
    // it go: let it go now, as a sweep would, so that only the rewrites'
    // garbage is left.
    let all_but_newest = crate::store::ChangeRetention {
        before: i64::MAX,
        keep_max: 1,
    };
    store
        .expire(0, 0, all_but_newest, usize::MAX)
        .await
        .expect("expire");
}

fn dump_all(store: &SledStore) -> Vec<crate::store::DumpItem> {
    store.dump(None).collect::<Result<_, _>>().expect("dump")
}

/// Compacts now, whatever the policy would say.
async fn compact_now(store: &SledStore) -> crate::store::Result<crate::store::Reclaimed> {
    let size = store.size_on_disk()?;
    store.compact(size).await
}

#[tokio::test]
async fn a_compaction_keeps_every_record_and_moves_to_a_new_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    rewrite_profiles(&store, 3, 50).await;
    let before = dump_all(&store);
    let reclaimed = compact_now(&store).await.expect("compact");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("CURRENT")).expect("CURRENT"),
        "gen-1\n"
    );
    assert!(!dir.path().join("db").exists(), "generation 0 is removed");
    assert!(dir.path().join("gen-1").join("db").is_file());
    assert_eq!(dump_all(&store), before, "every record, as it was");
    // Profiles, their address index and the format mark.
    assert!(reclaimed.records > 100, "{reclaimed:?}");
    assert!(reclaimed.bytes_before > 0 && reclaimed.bytes_after > 0);
    assert!(
        reclaimed.paused > std::time::Duration::ZERO && reclaimed.paused <= reclaimed.took,
        "{reclaimed:?}"
    );

    // Writes go to the new generation, and a reopen finds them.
    put_profile(&store, "after", 1).await.expect("put");
    let mut expected = dump_all(&store);
    assert_eq!(expected.len(), before.len() + 1, "one more profile");
    drop(store);
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(dump_all(&store), expected);

    // And on to the next generation, which removes the one before.
    put_profile(&store, "later", 1).await.expect("put");
    expected = dump_all(&store);
    compact_now(&store).await.expect("compact");
    assert!(!dir.path().join("gen-1").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("CURRENT")).expect("CURRENT"),
        "gen-2\n"
    );
    drop(store);
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(dump_all(&store), expected);
}

#[tokio::test]
async fn a_store_within_the_policy_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    put_profile(&store, "p", 1).await.expect("put");
    let never = CompactionPolicy {
        ratio: 0,
        min_bytes: 0,
    };
    let big = CompactionPolicy {
        ratio: 2,
        min_bytes: u64::MAX,
    };
    let lenient = CompactionPolicy {
        ratio: u32::MAX,
        min_bytes: 0,
    };
    for policy in [never, big, lenient] {
        assert_eq!(
            store.reclaim(policy).await.expect("reclaim"),
            None,
            "{policy:?}"
        );
    }
    assert!(!dir.path().join("CURRENT").exists());
    assert!(dir.path().join("db").is_file());
}

/// A compaction cut short (here: its directory cannot be made) changes
/// nothing: the store goes on in its generation, and the next one works.
#[tokio::test]
async fn a_compaction_that_fails_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    put_profile(&store, "p", 1).await.expect("put");
    let before = dump_all(&store);
    // A file where the next generation's directory goes.
    std::fs::write(dir.path().join("gen-1"), b"in the way").expect("write");
    compact_now(&store).await.expect_err("cannot copy");
    assert!(!dir.path().join("CURRENT").exists());
    assert!(
        !dir.path().join("gen-1").exists(),
        "what it left is removed"
    );
    assert!(store.failure().is_none(), "writes go on");
    put_profile(&store, "q", 1).await.expect("put");
    assert_eq!(dump_all(&store).len(), before.len() + 1);
    compact_now(&store).await.expect("compact");
    assert!(dir.path().join("gen-1").join("db").is_file());
}

/// Writers keep going while the store compacts, three times over: they wait
/// for it, and every acknowledged write is there after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_compaction_wait_for_it_and_none_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path()).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = format!("w{w}-{}", n % 40);
                    put_profile(&store, &id, n).await.expect("put");
                    acknowledged.push((id, n));
                }
                acknowledged
            })
        })
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        compact_now(&store).await.expect("compact");
    }
    stop.store(true, Ordering::SeqCst);
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for writer in writers {
        for (id, version) in writer.await.expect("writer") {
            last.insert(id, version);
        }
    }
    drop(store);
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("CURRENT")).expect("CURRENT"),
        "gen-3\n"
    );
    let t = tenant("t");
    for (id, version) in last {
        let profile = store
            .profile(&t, &pid(&id))
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{id} is lost"));
        assert_eq!(
            profile.updated_at,
            i64::try_from(version).expect("small"),
            "{id}: the last acknowledged write"
        );
    }
}

#[test]
fn records_are_counted_with_their_key_and_value_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new().path(dir.path()).open().expect("sled");
    assert_eq!(super::count_records(&db).expect("count"), (0, 0));
    db.insert(b"ab", &b"cde"[..]).expect("insert");
    db.insert(b"f", &b""[..]).expect("insert");
    db.insert(b"ghij", &[0u8; 10][..]).expect("insert");
    assert_eq!(
        super::count_records(&db).expect("count"),
        (3, 2 + 3 + 1 + 4 + 10)
    );
}

/// A store rewritten over and over takes far more than a fresh copy of its
/// few records: the policy finds it due, and the copy holds them all.
#[tokio::test]
async fn reclaim_compacts_a_store_that_outgrew_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    rewrite_profiles(&store, 30, 20).await;
    let before = dump_all(&store);
    let policy = CompactionPolicy {
        ratio: 2,
        min_bytes: 0,
    };
    let reclaimed = store
        .reclaim(policy)
        .await
        .expect("reclaim")
        .expect("due: rewritten 30 times");
    assert!(
        reclaimed.bytes_after < reclaimed.bytes_before,
        "{reclaimed:?}"
    );
    assert_eq!(dump_all(&store), before);
    assert!(dir.path().join("gen-1").join("db").is_file());
}

/// A profile with no addresses.
fn bare(id: &str) -> Profile {
    Profile::new(pid(id), ProfileAddresses::default(), 0)
}

#[tokio::test]
async fn a_backup_keeps_only_the_records_changed_since_its_cut_and_lets_go_when_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let t = tenant("t");
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    for i in 0..200 {
        tx.put_profile(&t, &bare(&format!("p{i:03}")));
    }
    tx.commit().await.expect("commit");
    let snapshot = store.snapshot(None).await.expect("snapshot");
    assert_eq!(snapshot.len(), 200);
    let views = store.backups.active();
    assert_eq!(views.len(), 1, "the backup's view is registered");
    // Nothing is copied at the cut.
    assert_eq!(views[0].kept(), 0);
    // Two records rewritten (one twice) and one added: three kept.
    for id in ["p010", "p020", "p010", "new"] {
        let mut tx = store.begin(Vec::new()).await.expect("begin");
        let mut profile = bare(id);
        profile.history_seq = 9;
        tx.put_profile(&t, &profile);
        tx.commit().await.expect("commit");
    }
    assert_eq!(views[0].kept(), 3);
    assert_eq!(snapshot.items().count(), 200);
    // A backup of one tenant keeps nothing of another's changes.
    let of_t = store.snapshot(Some(&t)).await.expect("snapshot of t");
    let views_now = store.backups.active();
    let view_of_t = views_now.last().expect("registered");
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    tx.put_profile(&tenant("other"), &bare("p010"));
    tx.commit().await.expect("commit");
    assert_eq!(view_of_t.kept(), 0);
    assert_eq!(views[0].kept(), 4, "the backup of every tenant keeps it");
    drop((views_now, of_t));
    drop(views);
    drop(snapshot);
    assert!(!store.backups.any(), "the view is dropped with the backup");
    // Changes no longer pay for it.
    let mut tx = store.begin(Vec::new()).await.expect("begin");
    tx.put_profile(&t, &bare("later"));
    tx.commit().await.expect("commit");
    assert!(store.backups.active().is_empty());
}

/// A compaction would switch databases under a backup: while one runs, a
/// due compaction waits for a later sweep.
#[tokio::test]
async fn reclaim_waits_while_a_backup_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    rewrite_profiles(&store, 30, 20).await;
    let policy = CompactionPolicy {
        ratio: 2,
        min_bytes: 0,
    };
    let snapshot = store.snapshot(None).await.expect("snapshot");
    assert_eq!(store.reclaim(policy).await.expect("reclaim"), None);
    drop(snapshot);
    assert!(
        store.reclaim(policy).await.expect("reclaim").is_some(),
        "due once the backup is over"
    );
}

/// The watch log across restarts: a clean close keeps tokens valid and
/// positions going on; after an unclean one (no `Wc` marker, as a crash
/// leaves it), a token from before asks for a resync, and so does a token
/// of another store.
#[tokio::test]
async fn watch_tokens_survive_a_clean_close_and_resync_after_an_unclean_one() {
    use crate::store::WatchRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t");
    let store = SledStore::open(dir.path()).expect("open");
    let start = store.watch_head().await.expect("head");
    put_profile(&store, "p1", 1).await.expect("put");
    let after_first = store.watch_head().await.expect("head");
    drop(store);

    let store = SledStore::open(dir.path()).expect("reopen");
    put_profile(&store, "p2", 1).await.expect("put");
    let WatchRead::Changes { entries, .. } = store.watch_read(&start, &t, 10).await.expect("read")
    else {
        panic!("a clean close keeps the token");
    };
    assert_eq!(
        entries.len(),
        2,
        "the change before the close and the one after"
    );
    assert_eq!(
        entries[0].token, after_first,
        "positions go on where they were"
    );
    let other = SledStore::open(tempfile::tempdir().expect("tempdir").path()).expect("open");
    assert!(matches!(
        other.watch_read(&start, &t, 10).await.expect("read"),
        WatchRead::Resync(_)
    ));
    drop(store);

    // What a crash leaves: no clean-close marker.
    let generation = super::generation::open(dir.path()).expect("generation");
    let db = sled::Config::new()
        .path(&generation.path)
        .open()
        .expect("sled");
    assert!(db.remove(keys::META_CLEAN_CLOSE).expect("remove").is_some());
    db.flush().expect("flush");
    drop(db);
    let store = SledStore::open(dir.path()).expect("reopen");
    let now = store.watch_head().await.expect("head");
    put_profile(&store, "p3", 1).await.expect("put");
    assert!(matches!(
        store.watch_read(&after_first, &t, 10).await.expect("read"),
        WatchRead::Resync(_)
    ));
    let WatchRead::Changes { entries, .. } = store.watch_read(&now, &t, 10).await.expect("read")
    else {
        panic!("a token from after the reopen reads on");
    };
    assert_eq!(entries.len(), 1);
}

/// Changes flushed together are logged as one group: a token inside the
/// group resumes inside it, and retention removes a group whole.
#[tokio::test]
async fn a_group_of_logged_changes_resumes_from_inside_it() {
    use crate::store::{ChangeRetention, WatchRead};
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t");
    let store = SledStore::open(dir.path()).expect("open");
    let start = store.watch_head().await.expect("head");
    for id in ["p1", "p2", "p3"] {
        let mut tx = store
            .begin(vec![Lock::Profile(t.clone(), pid(id))])
            .await
            .expect("begin");
        tx.put_profile(&t, &Profile::new(pid(id), ProfileAddresses::default(), 0));
        tx.commit().await.expect("commit");
    }
    store.sync().await.expect("one flush for the three");
    let groups = store.db().scan_prefix([keys::WATCH_LOG_TYPE]).count();
    assert_eq!(groups, 1, "one group");
    let read = |token: String, limit: usize| {
        let store = &store;
        let t = t.clone();
        async move {
            match store.watch_read(&token, &t, limit).await.expect("read") {
                WatchRead::Changes { entries, .. } => entries,
                other => panic!("{other:?}"),
            }
        }
    };
    let all = read(start.clone(), 10).await;
    assert_eq!(all.len(), 3);
    let rest = read(all[0].token.clone(), 10).await;
    assert_eq!(
        rest.iter().map(|e| e.token.clone()).collect::<Vec<_>>(),
        [all[1].token.clone(), all[2].token.clone()]
    );
    assert_eq!(read(all[1].token.clone(), 1).await[0].token, all[2].token);
    put_profile(&store, "p4", 1).await.expect("a second group");
    let everything_old = ChangeRetention {
        before: i64::MAX,
        keep_max: 1,
    };
    let expired = store
        .expire(0, 0, everything_old, 100)
        .await
        .expect("expire");
    assert_eq!(expired.changes, 3, "the first group, whole");
    store.sync().await.expect("sync");
    assert_eq!(
        store.watch_read(&all[1].token, &t, 10).await.expect("read"),
        WatchRead::Expired
    );
    assert_eq!(read(all[2].token.clone(), 10).await.len(), 1, "p4");
}
