//! One-time upgrades of the data directory, run at open before anything
//! else reads it.
//!
//! Format 3: the address log moved from `l` (arrival order) to `g`
//! (event-time order, with checkpoints); markers carry the time they were
//! recorded and have an expiry index (`E`); token records carry their
//! expiry.
//!
//! Format 4 (this build): every address in its canonical form
//! (`engine::Address`: IDNA domains, NFC local parts, phone numbers through
//! a numbering plan). Stored addresses are re-canonicalised; two spellings
//! that became one address are merged: the profiles use the one address, the
//! stricter state wins ([`AddressState::stricter`]), and both logs are kept
//! as one. An address that the rules of today refuse is left as it was.
//!
//! Each step is idempotent and the version is written last, so a migration
//! cut short by a crash simply runs again.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sled::IVec;

use super::{Result, codec, corrupt, keys, keys::KeyParts};
use crate::engine::{Address, AddressState, AddressStatus, ProfileId, Tenant, UnixMillis};

/// The format this build writes.
const FORMAT: u8 = 4;
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
    if version.is_none_or(|v| v < 3) {
        move_address_logs(db)?;
        date_markers(db, now)?;
        date_tokens(db, now)?;
    }
    let merged = recanonicalise_addresses(db)?;
    if merged.renamed > 0 {
        tracing::info!(
            renamed = merged.renamed,
            merged = merged.merged,
            profiles = merged.profiles,
            "addresses stored in their canonical form"
        );
    }
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

/// What [`recanonicalise_addresses`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recanonicalised {
    /// Addresses whose state moved to their canonical form.
    pub(crate) renamed: usize,
    /// Of those, the ones merged into a state the canonical form already had.
    pub(crate) merged: usize,
    /// Profiles whose addresses changed.
    pub(crate) profiles: usize,
}

/// Format 4: every stored address in its canonical form, two spellings of
/// one address merged (see the module documentation).
pub(crate) fn recanonicalise_addresses(db: &sled::Db) -> Result<Recanonicalised> {
    let mut done = Recanonicalised::default();
    let mut batch = sled::Batch::default();
    let mut ops = 0;

    // Profiles and the address → profile index.
    for item in db.scan_prefix([keys::PROFILE_TYPE]) {
        let (key, value) = item?;
        let Some(KeyParts::Profile { tenant, id }) = keys::parse(&key) else {
            continue;
        };
        let tenant = super::tenant_of(&key, tenant)?;
        let id = ProfileId::from_trusted(super::utf8(&key, id)?.to_owned());
        let mut profile = codec::decode_profile(id.clone(), &value).map_err(corrupt(&key))?;
        let mut changed = false;
        for list in [
            &mut profile.emails,
            &mut profile.phones,
            &mut profile.push_tokens,
        ] {
            let mut canonical: Vec<Address> = Vec::with_capacity(list.len());
            for address in list.drain(..) {
                let new = match address.recanonicalised() {
                    Some(new) => {
                        changed = true;
                        batch.remove(keys::address_user(&tenant, &address, &id));
                        batch.insert(keys::address_user(&tenant, &new, &id), IVec::default());
                        ops += 2;
                        new
                    }
                    None => address,
                };
                if !canonical.contains(&new) {
                    canonical.push(new);
                }
            }
            *list = canonical;
        }
        if changed {
            batch.insert(key, codec::encode_profile(&profile));
            ops += 1;
            done.profiles += 1;
            flush_if_full(db, &mut batch, &mut ops)?;
        }
    }
    db.apply_batch(std::mem::take(&mut batch))?;
    ops = 0;

    // Address states, their logs and the status index.
    let mut renames: Vec<(Tenant, Address, Address)> = Vec::new();
    for item in db.scan_prefix([keys::ADDRESS_TYPE]) {
        let (key, _) = item?;
        let Some(KeyParts::Address {
            tenant,
            kind,
            address,
        }) = keys::parse(&key)
        else {
            continue;
        };
        let address = super::address_of(&key, kind, address)?;
        if let Some(canonical) = address.recanonicalised() {
            renames.push((super::tenant_of(&key, tenant)?, address, canonical));
        }
    }
    let mut moved_keys: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (tenant, old, new) in &renames {
        rename_address(db, tenant, old, new, &mut done)?;
        moved_keys.insert(keys::address(tenant, old), keys::address(tenant, new));
    }

    // Feedback event markers name the address they were recorded for.
    for item in db.scan_prefix([keys::EVENT_ID_TYPE]) {
        let (key, value) = item?;
        let Some(split) = value.len().checked_sub(8) else {
            continue;
        };
        let (address_key, recorded_at) = value.split_at(split);
        let new = match moved_keys.get(address_key) {
            Some(new) => new.clone(),
            None => match keys::parse(address_key) {
                Some(KeyParts::Address {
                    tenant,
                    kind,
                    address,
                }) => {
                    let address = super::address_of(&key, kind, address)?;
                    match address.recanonicalised() {
                        Some(canonical) => {
                            keys::address(&super::tenant_of(&key, tenant)?, &canonical)
                        }
                        None => continue,
                    }
                }
                _ => continue,
            },
        };
        let mut rewritten = new;
        rewritten.extend_from_slice(recorded_at);
        batch.insert(key, rewritten);
        ops += 1;
        flush_if_full(db, &mut batch, &mut ops)?;
    }
    db.apply_batch(batch)?;
    Ok(done)
}

/// Moves the state and log of `old` to `new`, merging them with what `new`
/// already has. One batch per address, so that a crash leaves either both
/// spellings as they were or the move done (the step then runs again and
/// finds nothing left under `old`).
fn rename_address(
    db: &sled::Db,
    tenant: &Tenant,
    old: &Address,
    new: &Address,
    done: &mut Recanonicalised,
) -> Result<()> {
    let old_key = keys::address(tenant, old);
    let new_key = keys::address(tenant, new);
    let Some(old_bytes) = db.get(&old_key)? else {
        return Ok(());
    };
    let old_state = codec::decode_address_state(&old_bytes).map_err(corrupt(&old_key))?;
    let new_state = match db.get(&new_key)? {
        Some(bytes) => Some(codec::decode_address_state(&bytes).map_err(corrupt(&new_key))?),
        None => None,
    };
    let mut batch = sled::Batch::default();
    let mut old_log = Vec::new();
    for item in db.scan_prefix(keys::event_log_prefix(tenant, old)) {
        let (key, value) = item?;
        old_log.push(codec::decode_address_event(&value).map_err(corrupt(&key))?);
        batch.remove(key);
    }
    batch.remove(old_key);
    if old_state.status != AddressStatus::Valid {
        batch.remove(keys::status_index(tenant, old_state.status, old));
    }
    let state = match new_state {
        None => {
            // A plain move: the log keeps its keys and checkpoints.
            for event in &old_log {
                batch.insert(
                    keys::event_log(tenant, new, event.key()),
                    codec::encode_address_event(event),
                );
            }
            old_state
        }
        Some(new_state) => {
            done.merged += 1;
            if new_state.status != AddressStatus::Valid {
                batch.remove(keys::status_index(tenant, new_state.status, new));
            }
            let mut merged = new_state.clone().stricter(old_state);
            // One log: the other spelling's entries follow in arrival order
            // (new sequence numbers); entries older than the log's start
            // cannot be placed and are dropped. Only the start keeps its
            // checkpoint, so that a late event refolds the whole merged log.
            let start = new_state.log.start;
            let mut sequence = new_state.log_seq.max(merged.log_seq);
            let mut len = 0u32;
            let rewrite = |event: &mut crate::engine::AddressEvent| {
                if start != Some(event.key()) {
                    event.checkpoint = None;
                }
            };
            for item in db.scan_prefix(keys::event_log_prefix(tenant, new)) {
                let (key, value) = item?;
                let mut event = codec::decode_address_event(&value).map_err(corrupt(&key))?;
                rewrite(&mut event);
                batch.insert(key, codec::encode_address_event(&event));
                len += 1;
            }
            for mut event in old_log {
                if start.is_some_and(|start| event.key() <= start) {
                    continue;
                }
                sequence += 1;
                event.sequence = sequence;
                rewrite(&mut event);
                batch.insert(
                    keys::event_log(tenant, new, event.key()),
                    codec::encode_address_event(&event),
                );
                len += 1;
            }
            merged.log_seq = sequence;
            merged.log = crate::engine::LogMeta {
                len,
                since_checkpoint: len,
                start,
            };
            merged
        }
    };
    if state.status != AddressStatus::Valid {
        batch.insert(
            keys::status_index(tenant, state.status, new),
            IVec::default(),
        );
    }
    batch.insert(new_key, codec::encode_address_state(&state));
    db.apply_batch(batch)?;
    done.renamed += 1;
    Ok(())
}
