//! One-time upgrades of the data directory, run at open before anything
//! else reads it.
//!
//! Format 3 (this build): the address log moved from `l` (arrival order) to
//! `g` (event-time order, with checkpoints); markers carry the time they
//! were recorded and have an expiry index (`E`); token records carry their
//! expiry. Each step is idempotent and the version is written last, so a
//! migration cut short by a crash simply runs again.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sled::IVec;

use super::{Result, codec, corrupt, keys, keys::KeyParts};
use crate::engine::{AddressState, UnixMillis};

/// The format this build writes.
const FORMAT: u8 = 3;
/// The lifetime given to a token record that had no expiry: the longest a
/// token lived by default before format 3 (the server's default TTL).
const TOKEN_TTL_ASSUMED: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Writes per batch while migrating.
const BATCH_OPS: usize = 10_000;

/// The expiry a token record written before format 3 reads with, should
/// one be read before it is migrated: never.
pub(crate) const LEGACY_TOKEN_EXPIRY: UnixMillis = UnixMillis::MAX;
/// The recorded-at time of a marker written before format 3, likewise.
pub(crate) const LEGACY_MARKER_TIME: UnixMillis = UnixMillis::MAX;

/// Brings the store to [`FORMAT`].
pub(crate) fn run(db: &sled::Db) -> Result<()> {
    let version = db.get(keys::META_FORMAT)?.and_then(|v| v.first().copied());
    if version.is_some_and(|v| v >= FORMAT) {
        return Ok(());
    }
    if version.is_none() && db.first()?.is_none() {
        db.insert(keys::META_FORMAT, &[FORMAT])?;
        return Ok(());
    }
    // The one place the store reads the clock: the expiries it gives
    // records that had none start from the upgrade.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    tracing::info!("upgrading the data directory to format {FORMAT}");
    move_address_logs(db)?;
    date_markers(db, now)?;
    date_tokens(db, now)?;
    db.insert(keys::META_FORMAT, &[FORMAT])?;
    db.flush()?;
    tracing::info!("data directory upgraded to format {FORMAT}");
    Ok(())
}

/// Applies `batch` when it is full.
fn flush_if_full(db: &sled::Db, batch: &mut sled::Batch, ops: &mut usize) -> Result<()> {
    if *ops >= BATCH_OPS {
        db.apply_batch(std::mem::take(batch))?;
        *ops = 0;
    }
    Ok(())
}

/// `l` entries to `g` keys; each address's state learns how long its log is.
fn move_address_logs(db: &sled::Db) -> Result<()> {
    let mut lengths: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut batch = sled::Batch::default();
    let mut ops = 0;
    for item in db.scan_prefix(keys::legacy_address_log_prefix()) {
        let (key, value) = item?;
        let Some((address_key, tenant, address)) = keys::parse_legacy_address_log(&key) else {
            return Err(corrupt(&key)(codec::CodecError::Truncated));
        };
        let event = codec::decode_address_event(&value).map_err(corrupt(&key))?;
        batch.insert(
            keys::event_log(&tenant, &address, event.key()),
            codec::encode_address_event(&event),
        );
        batch.remove(key);
        *lengths.entry(address_key).or_default() += 1;
        ops += 2;
        flush_if_full(db, &mut batch, &mut ops)?;
    }
    for (address_key, len) in lengths {
        let mut state: AddressState = match db.get(&address_key)? {
            Some(bytes) => codec::decode_address_state(&bytes).map_err(corrupt(&address_key))?,
            None => AddressState::default(),
        };
        // No checkpoints yet: a late event folds from the log's start, and
        // the stretch it folds gets checkpoints as it goes.
        state.log.len = len;
        state.log.since_checkpoint = len;
        state.log.start = None;
        batch.insert(address_key, codec::encode_address_state(&state));
        ops += 1;
        flush_if_full(db, &mut batch, &mut ops)?;
    }
    db.apply_batch(batch)?;
    Ok(())
}

/// Markers without a time get `now` (their dedup window starts at the
/// upgrade) and an expiry entry.
fn date_markers(db: &sled::Db, now: UnixMillis) -> Result<()> {
    let mut batch = sled::Batch::default();
    let mut ops = 0;
    for item in db.scan_prefix([keys::EVENT_ID_TYPE]) {
        let (key, value) = item?;
        let Some(KeyParts::EventId { tenant, event_id }) = keys::parse(&key) else {
            continue;
        };
        // A format-2 value is an address key alone, which parses as one.
        if !matches!(keys::parse(&value), Some(KeyParts::Address { .. })) {
            continue;
        }
        let tenant = super::tenant_of(&key, tenant)?;
        let event_id = super::utf8(&key, event_id)?.to_owned();
        let mut dated = value.to_vec();
        dated.extend_from_slice(&now.to_be_bytes());
        batch.insert(key, dated);
        batch.insert(
            keys::event_id_expiry(&tenant, &event_id, now),
            IVec::default(),
        );
        ops += 2;
        flush_if_full(db, &mut batch, &mut ops)?;
    }
    db.apply_batch(batch)?;
    Ok(())
}

/// Token records without an expiry get the longest a token may have lived.
fn date_tokens(db: &sled::Db, now: UnixMillis) -> Result<()> {
    let ttl = i64::try_from(TOKEN_TTL_ASSUMED.as_millis()).unwrap_or(0);
    let mut batch = sled::Batch::default();
    let mut ops = 0;
    for item in db.scan_prefix([keys::TOKEN_TYPE]) {
        let (key, value) = item?;
        let mut record = codec::decode_token(&value, LEGACY_TOKEN_EXPIRY).map_err(corrupt(&key))?;
        if record.expires_at == LEGACY_TOKEN_EXPIRY {
            record.expires_at = now.saturating_add(ttl);
            batch.insert(key, codec::encode_token(&record));
            ops += 1;
            flush_if_full(db, &mut batch, &mut ops)?;
        }
    }
    db.apply_batch(batch)?;
    Ok(())
}
