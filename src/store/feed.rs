//! The feed of committed changes: what a change did to the state decisions
//! read, numbered by position, handed on once durable.
//!
//! Each [`Change`] carries the state *after* the change (a whole profile, an
//! address's status), not a delta, so applying the feed in position order
//! from any consistent starting point gives the current state, and applying
//! a change twice is harmless.

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex},
};

use super::StoreError;
use crate::engine::{
    Address, AddressStatus, Profile, ProfileId, Service, ServiceId, SubscriptionStatus, Tenant,
    TenantSettings, UserId,
};

/// A position in the feed: every committed change has a higher one than the
/// changes committed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

/// What one write did to decision-relevant state, as the state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A profile was written (its consent or addresses).
    Profile {
        /// Its tenant.
        tenant: Tenant,
        /// The profile as written.
        profile: Box<Profile>,
    },
    /// An address's stored status was written.
    Address {
        /// Its tenant.
        tenant: Tenant,
        /// The address.
        address: Address,
        /// Its stored status.
        status: AddressStatus,
    },
    /// A subscription was written.
    Subscription {
        /// Its tenant.
        tenant: Tenant,
        /// The profile.
        profile_id: ProfileId,
        /// The service.
        service_id: ServiceId,
        /// Its status.
        status: SubscriptionStatus,
    },
    /// A tenant's settings were written.
    TenantSettings {
        /// Its tenant.
        tenant: Tenant,
        /// The settings.
        settings: TenantSettings,
    },
    /// A service was written.
    Service {
        /// Its tenant.
        tenant: Tenant,
        /// The service.
        service: Service,
    },
    /// A user was opted out of usage tracking, or back in.
    UsageOptOut {
        /// Its tenant.
        tenant: Tenant,
        /// The user.
        user_id: UserId,
        /// True when opted out.
        opted_out: bool,
    },
    /// Everything before is void: the changes that follow (the whole
    /// decision state, as changes) replace it. A replica of the PostgreSQL
    /// store sends it when it rebuilds from the database (after a database
    /// restart, when transaction ids may have been reused).
    Reset,
    /// An address's opt-outs were written.
    AddressConsent {
        /// Its tenant.
        tenant: Tenant,
        /// The address.
        address: Address,
        /// The channels it is opted out of ([`AddressConsent::mask`](crate::engine::AddressConsent::mask)).
        opted_out: u8,
    },
    /// A profile was erased, with its subscriptions (`EraseProfile`).
    ProfileErased {
        /// Its tenant.
        tenant: Tenant,
        /// The profile that no longer exists.
        profile_id: ProfileId,
    },
}

impl Change {
    /// The tenant it changed (`None` for [`Change::Reset`], which is every tenant's).
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Change::Profile { tenant, .. }
            | Change::Address { tenant, .. }
            | Change::Subscription { tenant, .. }
            | Change::TenantSettings { tenant, .. }
            | Change::Service { tenant, .. }
            | Change::UsageOptOut { tenant, .. }
            | Change::AddressConsent { tenant, .. }
            | Change::ProfileErased { tenant, .. } => Some(tenant),
            Change::Reset => None,
        }
    }
}

/// The changes of one committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its position.
    pub position: Position,
    /// What it changed, in the order written.
    pub changes: Vec<Change>,
}

/// Where durable changes go, in position order (the decision index).
pub type FeedSink = Box<dyn Fn(&[Committed]) + Send + Sync>;

/// A [`FeedSink`] the queue can hand out while it delivers.
type SharedSink = std::sync::Arc<dyn Fn(&[Committed]) + Send + Sync>;

/// The queue between commit and durability that both stores share.
///
/// Invariant: a change is pushed after it was applied (so a flush that
/// starts after the push covers it), and delivered only up to a position
/// that a finished flush covers.
pub(crate) struct FeedQueue {
    /// Pending changes, the next position and the sink, under one lock so
    /// that positions are handed out and delivered in one order.
    inner: Mutex<Queue>,
}

struct Queue {
    /// The last position handed out.
    last: u64,
    /// The last position delivered (or skipped for want of a sink).
    delivered: u64,
    /// Committed, not yet delivered.
    pending: VecDeque<Committed>,
    /// Log records of committed changes not yet written to the store's
    /// watch log (by its committer, before the flush that makes them
    /// durable), in position order: position and value.
    records: Vec<(u64, Vec<u8>)>,
    /// Where delivered changes go; `None`: nobody follows, nothing is kept.
    sink: Option<SharedSink>,
}

impl fmt::Debug for FeedQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = self.lock();
        f.debug_struct("FeedQueue")
            .field("last", &queue.last)
            .field("delivered", &queue.delivered)
            .field("pending", &queue.pending.len())
            .field("sink", &queue.sink.is_some())
            .finish()
    }
}

impl FeedQueue {
    /// A queue whose last position is `start`.
    pub(crate) fn new(start: Position) -> Self {
        Self {
            inner: Mutex::new(Queue {
                last: start.0,
                delivered: start.0,
                pending: VecDeque::new(),
                records: Vec::new(),
                sink: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers a committed transaction's changes (a transaction without
    /// decision-relevant changes takes no position), and keeps `record` (its
    /// watch log value) for
    /// [`FeedQueue::take_records`]: the log is written later, in one go for
    /// many changes, before the flush that makes them durable.
    pub(crate) fn push_recorded(&self, changes: Vec<Change>, record: Vec<u8>) -> Position {
        let mut queue = self.lock();
        if changes.is_empty() {
            return Position(queue.last);
        }
        queue.last += 1;
        let position = Position(queue.last);
        queue.pending.push_back(Committed { position, changes });
        queue.records.push((position.0, record));
        position
    }

    /// The log records pushed since the last call, in position order: every
    /// one up to [`FeedQueue::last`] as read before the call.
    pub(crate) fn take_records(&self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.lock().records)
    }

    /// The last position delivered: durable, and handed to the sink.
    pub(crate) fn delivered(&self) -> Position {
        Position(self.lock().delivered)
    }

    /// The last position handed out.
    pub(crate) fn last(&self) -> Position {
        Position(self.lock().last)
    }

    /// Hands every pending change up to `through` to the sink, in order.
    pub(crate) fn deliver_through(&self, through: Position) {
        let mut queue = self.lock();
        let mut ready = Vec::new();
        while queue.pending.front().is_some_and(|c| c.position <= through) {
            if let Some(committed) = queue.pending.pop_front() {
                ready.push(committed);
            }
        }
        queue.delivered = queue.delivered.max(through.0.min(queue.last));
        if let (Some(sink), false) = (&queue.sink, ready.is_empty()) {
            sink(&ready);
        }
    }

    /// Sets the sink; changes after `after` that are pending go to it at
    /// the next delivery. Refused when a sink was set already.
    pub(crate) fn follow(&self, after: Position, sink: FeedSink) -> Result<(), StoreError> {
        let mut queue = self.lock();
        if queue.sink.is_some() {
            return Err(StoreError::Corrupt {
                key: "feed".into(),
                reason: "the feed is followed already".into(),
            });
        }
        queue.pending.retain(|c| c.position > after);
        queue.sink = Some(Arc::from(sink));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u32) -> Change {
        Change::UsageOptOut {
            tenant: Tenant::parse("t").expect("valid"),
            user_id: UserId::parse(&format!("u{n}")).expect("valid"),
            opted_out: true,
        }
    }

    #[test]
    fn changes_are_delivered_once_in_order_and_only_through_the_durable_position() {
        let queue = FeedQueue::new(Position(10));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = Arc::clone(&seen);
        queue
            .follow(
                Position(10),
                Box::new(move |batch: &[Committed]| {
                    let mut seen = sink_seen.lock().expect("lock");
                    seen.extend(batch.iter().map(|c| c.position.0));
                }),
            )
            .expect("the first follower");
        assert_eq!(
            queue.push_recorded(vec![change(1)], Vec::new()),
            Position(11)
        );
        assert_eq!(
            queue.push_recorded(Vec::new(), Vec::new()),
            Position(11),
            "nothing: no position"
        );
        assert_eq!(
            queue.push_recorded(vec![change(2)], Vec::new()),
            Position(12)
        );
        assert_eq!(
            queue.push_recorded(vec![change(3)], Vec::new()),
            Position(13)
        );
        queue.deliver_through(Position(12));
        assert_eq!(*seen.lock().expect("lock"), vec![11, 12]);
        queue.deliver_through(Position(12));
        assert_eq!(*seen.lock().expect("lock"), vec![11, 12], "delivered once");
        queue.deliver_through(queue.last());
        assert_eq!(*seen.lock().expect("lock"), vec![11, 12, 13]);
        assert!(
            queue
                .follow(Position(0), Box::new(|_: &[Committed]| {}))
                .is_err()
        );
    }

    #[test]
    fn records_are_kept_in_position_order_until_taken() {
        let queue = FeedQueue::new(Position(4));
        assert_eq!(
            queue.push_recorded(vec![change(1)], b"a".to_vec()),
            Position(5)
        );
        assert_eq!(
            queue.push_recorded(Vec::new(), b"nothing".to_vec()),
            Position(5),
            "no change: no position, no record"
        );
        assert_eq!(
            queue.push_recorded(vec![change(2)], b"b".to_vec()),
            Position(6)
        );
        assert_eq!(
            queue.take_records(),
            vec![(5, b"a".to_vec()), (6, b"b".to_vec())]
        );
        assert!(queue.take_records().is_empty(), "taken once");
    }
}
