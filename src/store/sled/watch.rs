//! The watch log of the embedded store (see `store/watch.rs`): one record
//! per committed transaction with changes, under its dense position.
//!
//! A commit writes its records and encodes its log record, which the feed
//! queue keeps with its position; the group committer writes the log
//! records of a whole group just before the flush that makes them durable
//! (one lock-free pass instead of one more insert under the queue's lock per
//! write). sled recovers a prefix of what was written, in order: after a
//! crash a log record never survives without its change, but a change may
//! survive without its log record (it was not durable, so never
//! acknowledged nor watched). A watcher
//! that resumed across the crash would miss it, so an open after an unclean
//! close logs a [`Change::Reset`]: tokens from before it ask for a resync.
//! A clean close writes `Wc` after its last flush; an open removes it.

use sled::Db;

use super::keys;
use crate::{
    clock::{Clock, SystemClock},
    engine::Tenant,
    store::{
        Change, ChangeRetention, Result, WatchRead,
        watch::{self, PositionToken},
    },
};

/// What the store needs of its log at open.
pub(super) struct Opened {
    /// The store's identity in its tokens.
    pub(super) id: String,
    /// The position of the newest logged transaction (0: none yet).
    pub(super) last: u64,
}

/// The newest position in the log.
fn last_position(db: &Db) -> Result<u64> {
    match db.scan_prefix([keys::WATCH_LOG_TYPE]).keys().next_back() {
        Some(key) => Ok(keys::watch_log_position(&key?).unwrap_or(0)),
        None => Ok(0),
    }
}

/// Reads (or makes) the store's identity, and logs a reset when the store
/// was not closed cleanly since it last had an identity.
pub(super) fn open(db: &Db) -> Result<Opened> {
    let clean = db.remove(keys::META_CLEAN_CLOSE)?.is_some();
    let id = db
        .get(keys::META_WATCH_ID)?
        .map(|id| String::from_utf8_lossy(&id).into_owned());
    let mut last = last_position(db)?;
    let id = match id {
        Some(id) => {
            if !clean {
                last += 1;
                db.insert(
                    keys::watch_log(last),
                    watch::encode_logged(SystemClock.now_ms(), &[Change::Reset]),
                )?;
                tracing::info!(
                    position = last,
                    "the store was not closed cleanly: watchers resuming from before now resync"
                );
            }
            id
        }
        None => {
            let id = watch::new_store_id();
            db.insert(keys::META_WATCH_ID, id.as_bytes())?;
            id
        }
    };
    Ok(Opened { id, last })
}

/// Marks the store as closed cleanly: the caller flushes afterwards.
pub(super) fn close(db: &Db) -> Result<()> {
    db.insert(keys::META_CLEAN_CLOSE, &[])?;
    Ok(())
}

/// The value that logs a transaction's changes (its key is its position).
pub(super) fn record(changes: &[Change]) -> Vec<u8> {
    watch::encode_logged(SystemClock.now_ms(), changes)
}

/// Writes log records (position, value), to the database and to a
/// compaction's copy if one is being made.
pub(super) fn write(
    db: &Db,
    shadow: Option<&super::shadow::Shadow>,
    records: &[(u64, Vec<u8>)],
) -> Result<()> {
    for (position, value) in records {
        db.insert(keys::watch_log(*position), value.as_slice())?;
    }
    if let Some(shadow) = shadow {
        let keys: Vec<[u8; 9]> = records.iter().map(|(p, _)| keys::watch_log(*p)).collect();
        shadow.apply(
            keys.iter()
                .zip(records)
                .map(|(key, (_, value))| (key.as_slice(), Some(value.as_slice()))),
        );
    }
    Ok(())
}

/// The transactions after `token`, up to `durable`.
pub(super) fn read(
    db: &Db,
    id: &str,
    token: &str,
    durable: u64,
    tenant: &Tenant,
    limit: usize,
) -> Result<WatchRead> {
    let after = match watch::parse_position_token(token, id) {
        PositionToken::At(after) => after,
        PositionToken::Refused(answer) => return Ok(answer),
    };
    let logged = db
        .range(keys::watch_log(after.saturating_add(1))..=keys::watch_log(u64::MAX))
        .take(limit.saturating_add(1))
        .map(|item| {
            let (key, value) = item?;
            let position = keys::watch_log_position(&key).unwrap_or(0);
            watch::decode_logged(position, &value)
        });
    watch::read_dense(id, after, durable, tenant, limit, logged)
}

/// The keys of the log records that retention removes, at most `limit`.
pub(super) fn expired(db: &Db, retention: ChangeRetention, limit: usize) -> Result<Vec<[u8; 9]>> {
    let last = last_position(db)?;
    let mut gone = Vec::new();
    for item in db.scan_prefix([keys::WATCH_LOG_TYPE]) {
        if gone.len() >= limit {
            break;
        }
        let (key, value) = item?;
        let position = keys::watch_log_position(&key).unwrap_or(0);
        // The time alone: the changes need not be decoded.
        let recorded_at = value
            .first_chunk::<8>()
            .map_or(i64::MIN, |time| i64::from_be_bytes(*time));
        if !watch::retention_removes(position, recorded_at, last, retention) {
            break;
        }
        gone.push(keys::watch_log(position));
    }
    Ok(gone)
}
