//! The watch log of the embedded store (see `store/watch.rs`): one record
//! per committed transaction with changes, under its dense position.
//!
//! A commit writes its records and encodes its log record, which the feed
//! queue keeps with its position; the group committer writes the log
//! records of a whole group as one sled record, under the group's first
//! position, just before the flush that makes them durable (one insert per
//! flush instead of one per write, which cost 10-15 % of the server's CPU
//! per durable write). A group's value is its records one after the other,
//! each `position (u64 BE), length (u32 BE), record`. sled recovers a prefix of what was written, in order: after a
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
        watch::{self, Logged, PositionToken},
    },
};

/// What the store needs of its log at open.
pub(super) struct Opened {
    /// The store's identity in its tokens.
    pub(super) id: String,
    /// The position of the newest logged transaction (0: none yet).
    pub(super) last: u64,
}

/// The records of a group's value: position and record, in order.
fn entries(key: &[u8], value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let corrupt = |reason: &str| crate::store::StoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        reason: reason.to_owned(),
    };
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let (position, after) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("a watch log entry without its position"))?;
        let (len, after) = after
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("a watch log entry without its length"))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if after.len() < len {
            return Err(corrupt("a watch log entry shorter than its length"));
        }
        let (record, after) = after.split_at(len);
        out.push((u64::from_be_bytes(*position), record.to_vec()));
        rest = after;
    }
    Ok(out)
}

/// The value of a group of records.
fn group_value(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut value = Vec::with_capacity(records.iter().map(|(_, r)| 12 + r.len()).sum());
    for (position, record) in records {
        value.extend_from_slice(&position.to_be_bytes());
        value.extend_from_slice(
            &u32::try_from(record.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        value.extend_from_slice(record);
    }
    value
}

/// The newest position in the log.
fn last_position(db: &Db) -> Result<u64> {
    match db.scan_prefix([keys::WATCH_LOG_TYPE]).next_back() {
        Some(item) => {
            let (key, value) = item?;
            Ok(entries(&key, &value)?.last().map_or(0, |(p, _)| *p))
        }
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
                write(db, None, &[(last, record(&[Change::Reset]))])?;
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

/// The record that logs a transaction's changes (its position is kept beside it).
pub(super) fn record(changes: &[Change]) -> Vec<u8> {
    watch::encode_logged(SystemClock.now_ms(), changes)
}

/// Writes log records (position, record; consecutive positions) as one
/// group, to the database and to a compaction's copy if one is being made.
pub(super) fn write(
    db: &Db,
    shadow: Option<&super::shadow::Shadow>,
    records: &[(u64, Vec<u8>)],
) -> Result<()> {
    let Some((first, _)) = records.first() else {
        return Ok(());
    };
    let key = keys::watch_log(*first);
    let value = group_value(records);
    db.insert(key, value.as_slice())?;
    if let Some(shadow) = shadow {
        shadow.apply(std::iter::once((key.as_slice(), Some(value.as_slice()))));
    }
    Ok(())
}

/// The logged transactions from the group that holds `from` on (from the
/// first group after it when none does), in position order.
fn logged_from(db: &Db, from: u64) -> impl Iterator<Item = Result<Logged>> + '_ {
    let lowest: &[u8] = &[keys::WATCH_LOG_TYPE];
    // The group that starts at or before `from`, if it reaches it.
    let start = match db.range(lowest..=&keys::watch_log(from)[..]).next_back() {
        Some(Ok((key, _))) => keys::watch_log_position(&key).unwrap_or(from),
        _ => from,
    };
    db.range(keys::watch_log(start)..=keys::watch_log(u64::MAX))
        .flat_map(|item| {
            let group = item
                .map_err(crate::store::StoreError::from)
                .and_then(|(key, value)| entries(&key, &value));
            let list: Vec<Result<Logged>> = match group {
                Ok(list) => list
                    .into_iter()
                    .map(|(position, record)| watch::decode_logged(position, &record))
                    .collect(),
                Err(error) => vec![Err(error)],
            };
            list
        })
        .skip_while(move |logged| logged.as_ref().is_ok_and(|l| l.position < from))
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
    let logged = logged_from(db, after.saturating_add(1)).take(limit.saturating_add(1));
    watch::read_dense(id, after, durable, tenant, limit, logged)
}

/// The keys of the groups that retention removes (a group goes when its
/// newest transaction may), at most `limit`, and how many transactions they
/// hold.
pub(super) fn expired(
    db: &Db,
    retention: ChangeRetention,
    limit: usize,
) -> Result<(Vec<[u8; 9]>, u64)> {
    let last = last_position(db)?;
    let (mut gone, mut transactions) = (Vec::new(), 0u64);
    for item in db.scan_prefix([keys::WATCH_LOG_TYPE]) {
        if gone.len() >= limit {
            break;
        }
        let (key, value) = item?;
        let group = entries(&key, &value)?;
        let Some((newest, record)) = group.last() else {
            break;
        };
        // The time alone: the changes need not be decoded.
        let recorded_at = record
            .first_chunk::<8>()
            .map_or(i64::MIN, |time| i64::from_be_bytes(*time));
        if !watch::retention_removes(*newest, recorded_at, last, retention) {
            break;
        }
        gone.push(keys::watch_log(keys::watch_log_position(&key).unwrap_or(0)));
        transactions += u64::try_from(group.len()).unwrap_or(u64::MAX);
    }
    Ok((gone, transactions))
}
