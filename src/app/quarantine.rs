//! Address quarantine: delivery feedback, operators' quarantines and
//! releases, and the log every address keeps.
//!
//! [`record_in`] is the one place an address event is folded in, for
//! feedback, operators and suppression imports alike:
//! - an event at or after every event kept is folded on top of the state;
//! - a late one is placed in event-time order: the events after it are
//!   folded again from the nearest checkpoint before it ([`refold`]);
//! - one older than the oldest event kept (the log was pruned past it) is
//!   folded on top, as if it had just happened ([`Placement::ArrivalOrder`]);
//! - a release is folded after every event received before it ([`fold_time`]).
//!
//! Each entry stores the tenant's quarantine rules of the moment it was
//! received, and every later fold of it uses those.
//!
//! Then the log is kept bounded ([`prune`]): events older than the
//! late-event horizon, or beyond the most kept, are dropped up to a
//! checkpoint, which becomes the oldest entry.

use super::{ADDRESS_USERS_MAX, App, Page, Written, page_by_key};
use crate::{
    engine::{
        Address, AddressEvent, AddressEventKind, AddressState, AddressStatus, CHECKPOINT_EVERY,
        ChangeContext, ErrorReason, EventId, EventKey, FeedbackKind, LogLimits, LogMeta, Placement,
        ProfileId, QuarantineRules, Tenant, UnixMillis, fold_time, refold,
    },
    error::{Error, Result},
    store::{Cursor, Direction, Lock, Store, Txn},
};

/// How many log entries are read at a time while looking for a checkpoint.
const LOG_READ_CHUNK: usize = 64;

/// An operator-style status change of an address, as a bulk import records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualEvent {
    /// The address.
    pub address: Address,
    /// QUARANTINED or DENYLISTED.
    pub status: AddressStatus,
    /// Event time.
    pub occurred_at: UnixMillis,
    /// Who, how and why.
    pub context: ChangeContext,
}

/// What recording an address event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The address's state afterwards, as of now.
    pub state: AddressState,
    /// False when nothing was written (a repeated event id, a no-op).
    pub changed: bool,
    /// Where the event was folded in, when it was.
    pub placement: Option<Placement>,
}

/// The rules an event is recorded under.
#[derive(Debug, Clone, Copy)]
pub struct Recording {
    /// The tenant's quarantine rules.
    pub rules: QuarantineRules,
    /// How the address's log is kept.
    pub limits: LogLimits,
    /// The time it is recorded at.
    pub now: UnixMillis,
}

/// A checkpoint: the fold part of a state (its log bookkeeping is not kept).
fn checkpoint(state: &AddressState) -> Box<AddressState> {
    Box::new(AddressState {
        log: LogMeta::default(),
        ..state.clone()
    })
}

/// Records one event for an address in `tx`, which holds the address's lock
/// (and the event id's, for feedback). See the module documentation.
pub(crate) async fn record_in(
    tx: &mut (dyn Txn + '_),
    tenant: &Tenant,
    address: &Address,
    kind: AddressEventKind,
    occurred_at: UnixMillis,
    context: &ChangeContext,
    how: Recording,
) -> Result<Recorded> {
    let Recording {
        rules, limits, now, ..
    } = how;
    let old = tx.address_state(tenant, address).await?.unwrap_or_default();
    let current = old.as_of(now, &rules);
    let unchanged = |state: AddressState| Recorded {
        state,
        changed: false,
        placement: None,
    };
    if let AddressEventKind::Feedback { event_id, .. } = &kind
        && tx.event_marker(tenant, event_id).await?
    {
        return Ok(unchanged(current));
    }
    if kind.is_noop_for(&current) {
        return Ok(unchanged(current));
    }
    let sequence = old.log_seq + 1;
    let beyond = old.log.start.is_some_and(|start| {
        EventKey {
            at: occurred_at,
            sequence,
        } < start
    });
    let folded_at = fold_time(&kind, occurred_at, &old, beyond);
    let marker = match &kind {
        AddressEventKind::Feedback { event_id, .. } => Some(event_id.clone()),
        _ => None,
    };
    let mut event = AddressEvent {
        sequence,
        kind,
        occurred_at,
        recorded_at: now,
        old_status: current.status,
        new_status: AddressStatus::Valid,
        context: context.clone(),
        folded_at,
        checkpoint: None,
        rules: Some(rules),
    };
    // The log entries this change stages (a change's reads do not see them):
    // pruning below walks them with the stored ones.
    let mut staged: Vec<AddressEvent> = Vec::new();
    let (mut new, placement) = if old.is_late(folded_at) {
        let start = nearest_checkpoint(tx, tenant, address, event.key()).await?;
        let start_key = start.as_ref().map(|(key, _)| *key);
        let start_state = start.map(|(_, state)| state).unwrap_or_default();
        let after = tx
            .address_events(tenant, address, start_key, Direction::After, usize::MAX)
            .await?;
        let refolded = refold(start_state, after, event, &rules);
        for mut entry in refolded.rewritten {
            entry.checkpoint = entry.checkpoint.as_deref().map(checkpoint);
            tx.put_address_event(tenant, address, &entry);
            staged.push(entry);
        }
        event = refolded.event;
        event.checkpoint = event.checkpoint.as_deref().map(checkpoint);
        let mut new = refolded.state;
        new.log = old.log;
        new.log.since_checkpoint = refolded.since_checkpoint;
        (new, Placement::Late)
    } else {
        let mut new = old.clone();
        new.apply(&event.kind, folded_at, context, &rules);
        new.log_seq = sequence;
        new.log.since_checkpoint += 1;
        if new.log.since_checkpoint >= CHECKPOINT_EVERY {
            event.checkpoint = Some(checkpoint(&new));
            new.log.since_checkpoint = 0;
        }
        let placement = if beyond {
            Placement::ArrivalOrder
        } else {
            Placement::InOrder
        };
        (new, placement)
    };
    new.log_seq = sequence;
    new.log.len = old.log.len.saturating_add(1);
    event.new_status = new.as_of(now, &rules).status;
    tx.put_address_event(tenant, address, &event);
    if let Some(event_id) = marker {
        tx.put_event_marker(tenant, &event_id, address, now);
    }
    if event.checkpoint.is_some() || new.log.len > limits.events_max {
        staged.push(event.clone());
        staged.sort_by_key(AddressEvent::key);
        prune(tx, tenant, address, &mut new, &staged, &how).await?;
    }
    tx.put_address_state(tenant, address, &new);
    Ok(Recorded {
        state: new.as_of(now, &rules),
        changed: true,
        placement: Some(placement),
    })
}

/// Records many manual status changes of one tenant's addresses, folding
/// each exactly as an operator's `QuarantineAddress` is folded ([`record_in`]):
/// a weaker status never replaces a stronger one. Commits them in few
/// changes: one per run of distinct addresses (a change does not read the
/// log entries it staged itself).
/// Returns, per event, whether it was recorded. Durable after `sync`.
pub(crate) async fn record_manual(
    store: &dyn Store,
    tenant: &Tenant,
    events: &[ManualEvent],
    how: Recording,
) -> Result<Vec<bool>> {
    let mut recorded = Vec::with_capacity(events.len());
    let mut start = 0;
    while start < events.len() {
        let mut seen = std::collections::HashSet::new();
        let end = events[start..]
            .iter()
            .position(|e| !seen.insert(&e.address))
            .map_or(events.len(), |n| start + n);
        let run = &events[start..end];
        let locks = run
            .iter()
            .map(|e| Lock::Address(tenant.clone(), e.address.clone()))
            .collect();
        let mut tx = store.begin(locks).await?;
        for e in run {
            let done = record_in(
                tx.as_mut(),
                tenant,
                &e.address,
                AddressEventKind::Manual(e.status),
                e.occurred_at,
                &e.context,
                how,
            )
            .await?;
            recorded.push(done.changed);
        }
        tx.commit().await?;
        start = end;
    }
    Ok(recorded)
}

/// The newest entry before `key` that carries a checkpoint: its key and
/// state; `None` when the log must be folded from its beginning.
async fn nearest_checkpoint(
    tx: &mut (dyn Txn + '_),
    tenant: &Tenant,
    address: &Address,
    key: EventKey,
) -> Result<Option<(EventKey, AddressState)>> {
    let mut from = Some(key);
    loop {
        let chunk = tx
            .address_events(tenant, address, from, Direction::Before, LOG_READ_CHUNK)
            .await?;
        let done = chunk.len() < LOG_READ_CHUNK;
        for entry in chunk {
            from = Some(entry.key());
            let key = entry.key();
            if let Some(state) = entry.checkpoint {
                return Ok(Some((key, *state)));
            }
        }
        if done {
            return Ok(None);
        }
    }
}

/// The walk of [`prune`]: entries in key order, folded as they come.
struct Walk<'a> {
    /// Entries walked.
    seen: usize,
    /// The state after the last entry walked.
    folded: AddressState,
    /// The entry to keep as the new start: how many came before it, it,
    /// and the state after it.
    keep: Option<(usize, AddressEvent, AddressState)>,
    /// Entries that must go (beyond the most kept).
    must: usize,
    /// Entries folded before this time may go.
    cutoff: UnixMillis,
    how: &'a Recording,
}

impl Walk<'_> {
    /// Walks one entry; false once it may not go (it is then the start).
    fn step(&mut self, entry: AddressEvent) -> bool {
        self.folded = match &entry.checkpoint {
            Some(state) => (**state).clone(),
            None => {
                let mut next = std::mem::take(&mut self.folded);
                next.apply(
                    &entry.kind,
                    entry.folded_at,
                    &entry.context,
                    entry.rules_or(&self.how.rules),
                );
                next.log_seq = next.log_seq.max(entry.sequence);
                next
            }
        };
        let droppable = self.seen < self.must || entry.folded_at < self.cutoff;
        self.keep = Some((self.seen, entry, self.folded.clone()));
        self.seen += 1;
        droppable
    }
}

/// Drops the oldest entries of an address's log: those older than the
/// late-event horizon, and those beyond the most kept. The oldest entry
/// kept gets a checkpoint (the entries dropped are folded into it) and
/// becomes the log's start. `staged` (in key order) are the entries this
/// change wrote: the walk sees them in their place, over the stored ones.
async fn prune(
    tx: &mut (dyn Txn + '_),
    tenant: &Tenant,
    address: &Address,
    state: &mut AddressState,
    staged: &[AddressEvent],
    how: &Recording,
) -> Result<()> {
    let cutoff = how.limits.cutoff(how.now);
    let len = usize::try_from(state.log.len).unwrap_or(usize::MAX);
    let must = len.saturating_sub(usize::try_from(how.limits.events_max).unwrap_or(usize::MAX));
    // Walk from the oldest, folding, while entries may go; the first that
    // may not (or the newest) is kept, with the state after it.
    let mut walk = Walk {
        seen: 0,
        folded: AddressState::default(),
        keep: None,
        must,
        cutoff,
        how,
    };
    let mut pending = staged.iter().peekable();
    let mut from = None;
    'walk: loop {
        let chunk = tx
            .address_events(tenant, address, from, Direction::After, LOG_READ_CHUNK)
            .await?;
        let done = chunk.len() < LOG_READ_CHUNK;
        'stored: for stored in chunk {
            from = Some(stored.key());
            // Staged entries before this one come first; one with its key replaces it.
            while let Some(entry) = pending.next_if(|e| e.key() <= stored.key()) {
                let replaces = entry.key() == stored.key();
                if !walk.step(entry.clone()) {
                    break 'walk;
                }
                if replaces {
                    continue 'stored;
                }
            }
            if !walk.step(stored) {
                break 'walk;
            }
        }
        if done {
            for entry in pending {
                if !walk.step(entry.clone()) {
                    break;
                }
            }
            break;
        }
    }
    let keep = walk.keep;
    let Some((dropped, mut first, after)) = keep else {
        return Ok(());
    };
    if dropped == 0 {
        return Ok(());
    }
    first.checkpoint = Some(checkpoint(&after));
    tx.put_address_event(tenant, address, &first);
    tx.delete_address_events(tenant, address, first.key());
    state.log.len = state
        .log
        .len
        .saturating_sub(u32::try_from(dropped).unwrap_or(u32::MAX));
    state.log.start = Some(first.key());
    // The newest checkpoint is the new start's or a later one.
    state.log.since_checkpoint = state
        .log
        .since_checkpoint
        .min(state.log.len.saturating_sub(1));
    Ok(())
}

impl App {
    /// The rules an event is recorded under now, for a tenant.
    async fn recording(&self, tenant: &Tenant) -> Result<Recording> {
        Ok(Recording {
            rules: self.rules(tenant).await?,
            limits: self.settings.log_limits,
            now: self.now(),
        })
    }

    /// Records delivery feedback. `occurred_at` defaults to now; more than
    /// [`super::FEEDBACK_FUTURE_SKEW_MAX`] ahead of now is invalid.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_feedback(
        &self,
        tenant: &Tenant,
        address: &Address,
        kind: FeedbackKind,
        reason: ErrorReason,
        event_id: EventId,
        occurred_at: Option<UnixMillis>,
        context: &ChangeContext,
    ) -> Result<Recorded> {
        let how = self.recording(tenant).await?;
        let occurred_at = occurred_at.unwrap_or(how.now);
        let skew = i64::try_from(super::FEEDBACK_FUTURE_SKEW_MAX.as_millis()).unwrap_or(i64::MAX);
        if occurred_at > how.now.saturating_add(skew) {
            return Err(Error::invalid(
                "occurred_at",
                "is more than 5 minutes in the future; check the sender's clock",
            ));
        }
        let locks = vec![
            Lock::Address(tenant.clone(), address.clone()),
            Lock::FeedbackEvent(tenant.clone(), event_id.clone()),
        ];
        let event = AddressEventKind::Feedback {
            kind,
            reason,
            event_id,
        };
        self.record(tenant, address, locks, event, occurred_at, context, how)
            .await
    }

    /// Quarantines or denylists an address by hand; idempotent. A status
    /// weaker than the address's (QUARANTINED over DENYLISTED) changes
    /// nothing: only a release lowers a status.
    pub async fn quarantine_address(
        &self,
        tenant: &Tenant,
        address: &Address,
        status: AddressStatus,
        context: &ChangeContext,
    ) -> Result<Written<AddressState>> {
        let how = self.recording(tenant).await?;
        let locks = vec![Lock::Address(tenant.clone(), address.clone())];
        let event = AddressEventKind::Manual(status);
        let recorded = self
            .record(tenant, address, locks, event, how.now, context, how)
            .await?;
        Ok(Written {
            value: recorded.state,
            changed: recorded.changed,
        })
    }

    /// Releases an address to VALID; releasing a VALID address changes
    /// nothing. The release is folded after every event received before it,
    /// even one dated in the future ([`fold_time`]).
    pub async fn release_address(
        &self,
        tenant: &Tenant,
        address: &Address,
        context: &ChangeContext,
    ) -> Result<Written<AddressState>> {
        let how = self.recording(tenant).await?;
        let locks = vec![Lock::Address(tenant.clone(), address.clone())];
        let recorded = self
            .record(
                tenant,
                address,
                locks,
                AddressEventKind::Release,
                how.now,
                context,
                how,
            )
            .await?;
        Ok(Written {
            value: recorded.state,
            changed: recorded.changed,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        tenant: &Tenant,
        address: &Address,
        locks: Vec<Lock>,
        event: AddressEventKind,
        occurred_at: UnixMillis,
        context: &ChangeContext,
        how: Recording,
    ) -> Result<Recorded> {
        let mut tx = self.begin(locks).await?;
        let recorded = record_in(
            tx.as_mut(),
            tenant,
            address,
            event,
            occurred_at,
            context,
            how,
        )
        .await?;
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(recorded)
    }

    /// Records many manual status changes of one tenant's addresses (a
    /// suppression import) as [`record_manual`] does. Durable when it returns.
    pub async fn record_manual_events(
        &self,
        tenant: &Tenant,
        events: &[ManualEvent],
    ) -> Result<Vec<bool>> {
        let how = self.recording(tenant).await?;
        self.ready().await?;
        let recorded = record_manual(self.store.as_ref(), tenant, events, how).await?;
        self.sync().await?;
        Ok(recorded)
    }

    /// An address's state as of now (VALID when never seen).
    pub async fn address_state(&self, tenant: &Tenant, address: &Address) -> Result<AddressState> {
        let state = self
            .store
            .address_state(tenant, address)
            .await?
            .unwrap_or_default();
        Ok(state.as_of(self.now(), &self.rules(tenant).await?))
    }

    /// The profiles that use an address (at most [`ADDRESS_USERS_MAX`]) and
    /// whether there were more.
    pub async fn address_users(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<(Vec<ProfileId>, bool)> {
        let (store, tenant, address) = (self.store.clone(), tenant.clone(), address.clone());
        self.off_workers(move || async move {
            Ok(store
                .address_users(&tenant, &address, ADDRESS_USERS_MAX)
                .await?)
        })
        .await
    }

    /// A page of the addresses that are not VALID now (or have `status`).
    pub async fn list_addresses(
        &self,
        tenant: &Tenant,
        status: Option<AddressStatus>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<(Address, AddressState), Vec<u8>>> {
        let (now, rules) = (self.now(), self.rules(tenant).await?);
        let (store, tenant) = (self.store.clone(), tenant.clone());
        let found = self
            .off_workers(move || async move {
                let after = after.map(Cursor);
                Ok(store
                    .list_addresses(&tenant, status, after.as_ref(), limit)
                    .await?)
            })
            .await?;
        // The index holds stored statuses; an address whose errors expired reads VALID now.
        let items = found
            .items
            .into_iter()
            .map(|(address, state)| (address, state.as_of(now, &rules)))
            .filter(|(_, state)| {
                state.status != AddressStatus::Valid && status.is_none_or(|s| s == state.status)
            })
            .collect();
        Ok(Page {
            items,
            next: found.next.map(|c| c.0),
        })
    }

    /// A page of an address's history, newest first (in event-time order).
    pub async fn address_history(
        &self,
        tenant: &Tenant,
        address: &Address,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Page<AddressEvent, EventKey>> {
        let (store, tenant, address) = (self.store.clone(), tenant.clone(), address.clone());
        let items = self
            .off_workers(move || async move {
                Ok(store
                    .address_history(&tenant, &address, before, limit + 1)
                    .await?)
            })
            .await?;
        Ok(page_by_key(items, limit, AddressEvent::key))
    }
}
