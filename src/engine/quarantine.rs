//! Address quarantine: the rules that turn delivery feedback into an
//! address status, with Adobe Campaign's defaults.
//!
//! The state of an address is a fold of its events in event time
//! ([`AddressState::apply`]). An event that arrives late is placed in
//! event-time order: the events after it are folded again from the nearest
//! checkpoint before it ([`refold`]), so late and out-of-order feedback gives
//! the same result as feedback in order, at a cost that grows with how late
//! it is, not with the length of the log.
//!
//! Three rules keep a replay from rewriting what was decided:
//! - each event is folded under the rules in force when it was received
//!   ([`AddressEvent::rules`]), not under today's;
//! - a release is folded after every event received before it
//!   ([`fold_time`]), so it lifts them all, even one dated in the (allowed)
//!   future;
//! - a weaker status never replaces a stronger one except through a release
//!   (the order of [`AddressStatus`]): a manual QUARANTINED leaves a DENYLISTED
//!   address as it is, in the fold and at the door ([`AddressEventKind::is_noop_for`]).
//!
//! The log is bounded ([`LogLimits`]): the oldest events are folded into
//! the checkpoint of the oldest event kept and dropped. An event older than
//! that cannot be placed in order any more; it is applied as if it had just
//! happened ([`Placement::ArrivalOrder`]).

use std::time::Duration;

use super::types::{ChangeContext, EventId, UnixMillis};

/// The deliverability of an address, weakest first: the order is the
/// strength an operator's or an import's status is compared by (it never
/// replaces a stronger one; only a release lowers a status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub enum AddressStatus {
    /// May be used.
    #[default]
    Valid,
    /// Soft errors are being counted; may still be used.
    WithErrors,
    /// Must not be used until released.
    Quarantined,
    /// Must never be used until released.
    Denylisted,
}

impl AddressStatus {
    /// Whether a delivery may use an address with this status.
    pub fn is_usable(self) -> bool {
        matches!(self, AddressStatus::Valid | AddressStatus::WithErrors)
    }
}

/// What a delivery attempt reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackKind {
    /// Permanent failure.
    HardBounce,
    /// Temporary failure.
    SoftBounce,
    /// Says nothing about the address.
    Ignored,
    /// Spam complaint.
    Complaint,
    /// Delivered.
    Delivered,
}

/// Why a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorReason {
    /// None given.
    #[default]
    Unspecified,
    /// No such user.
    UserUnknown,
    /// No such domain.
    InvalidDomain,
    /// Could not be reached.
    Unreachable,
    /// Account disabled.
    AccountDisabled,
    /// Mailbox full.
    MailboxFull,
    /// Refused by the receiver.
    Refused,
    /// Device not connected.
    NotConnected,
    /// Anything else.
    Other,
}

/// The quarantine rule parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineRules {
    /// Soft errors counted before an address is quarantined.
    pub soft_error_threshold: u32,
    /// At most one soft error is counted per interval.
    pub significant_error_interval: Duration,
    /// A WITH_ERRORS address whose last counted error is older than this returns to VALID.
    pub error_reset_period: Duration,
    /// The reset period when the last counted error was MAILBOX_FULL.
    pub mailbox_full_reset_period: Duration,
}

impl Default for QuarantineRules {
    /// Adobe Campaign's defaults: 5 errors, 1 day, 10 days, 30 days.
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 60 * 60);
        Self {
            soft_error_threshold: 5,
            significant_error_interval: DAY,
            error_reset_period: DAY * 10,
            mailbox_full_reset_period: DAY * 30,
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What happened to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressEventKind {
    /// Delivery feedback.
    Feedback {
        /// What the delivery reported.
        kind: FeedbackKind,
        /// Why it failed, if it did.
        reason: ErrorReason,
        /// The sender's unique id of the event.
        event_id: EventId,
    },
    /// An operator set the status (QUARANTINED or DENYLISTED).
    Manual(AddressStatus),
    /// An operator released the address.
    Release,
}

impl AddressEventKind {
    /// Whether recording this event would change nothing: a manual status the
    /// address already has or that is weaker than its own (QUARANTINED over
    /// DENYLISTED), or a release of a VALID address. (Feedback always
    /// counts: it is deduplicated by event id instead.)
    pub fn is_noop_for(&self, current: &AddressState) -> bool {
        match self {
            AddressEventKind::Manual(status) => current.status >= *status,
            AddressEventKind::Release => {
                current.status == AddressStatus::Valid && current.error_count == 0
            }
            AddressEventKind::Feedback { .. } => false,
        }
    }
}

/// Where an event sits in an address's log: event-time order (the time it
/// was folded at), ties in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventKey {
    /// The event time it was folded at ([`AddressEvent::folded_at`]).
    pub at: UnixMillis,
    /// Its arrival sequence.
    pub sequence: u64,
}

/// One event in an address's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEvent {
    /// Position in the address's arrival order, from 1.
    pub sequence: u64,
    /// What happened.
    pub kind: AddressEventKind,
    /// When it happened (event time).
    pub occurred_at: UnixMillis,
    /// When consentd recorded it.
    pub recorded_at: UnixMillis,
    /// The status before it was recorded.
    pub old_status: AddressStatus,
    /// The status after it was recorded.
    pub new_status: AddressStatus,
    /// Who, how and why.
    pub context: ChangeContext,
    /// The event time it was folded at: `occurred_at`, except for an event
    /// older than every event kept, which is folded at the newest event time
    /// seen (see [`Placement::ArrivalOrder`]).
    pub folded_at: UnixMillis,
    /// The address's state right after this event, in event-time order, on
    /// every [`CHECKPOINT_EVERY`]-th entry and on the oldest entry kept: a
    /// late event is folded from the nearest checkpoint before it.
    pub checkpoint: Option<Box<AddressState>>,
    /// The quarantine rules in force when it was received: every fold of it
    /// uses them, so a later change of the tenant's rules never rewrites the
    /// past. `None` on entries stored before rules were kept, which are
    /// folded under the rules the fold is given (those in force now).
    pub rules: Option<QuarantineRules>,
}

impl AddressEvent {
    /// Its place in the log.
    pub fn key(&self) -> EventKey {
        EventKey {
            at: self.folded_at,
            sequence: self.sequence,
        }
    }

    /// The rules it is folded under: its own, or `fallback` when it has none.
    pub fn rules_or<'a>(&'a self, fallback: &'a QuarantineRules) -> &'a QuarantineRules {
        self.rules.as_ref().unwrap_or(fallback)
    }
}

/// The event time a new event is folded at, given the address's state before
/// it. Its `occurred_at`, except:
/// - a release is folded at the newest event time seen when that is later, so
///   that it comes after every event received before it (ties go in arrival
///   order) and lifts them all, even one dated in the future;
/// - an event older than every event kept (`beyond`: the log was pruned past
///   it) cannot be placed in order and is folded at the newest event time
///   seen too ([`Placement::ArrivalOrder`]).
pub fn fold_time(
    kind: &AddressEventKind,
    occurred_at: UnixMillis,
    before: &AddressState,
    beyond: bool,
) -> UnixMillis {
    if beyond || *kind == AddressEventKind::Release {
        before
            .last_event_at
            .map_or(occurred_at, |last| last.max(occurred_at))
    } else {
        occurred_at
    }
}

/// An entry of a log carries a checkpoint at least every this many entries,
/// so that a late event folds at most this many entries more than the ones
/// after it.
pub const CHECKPOINT_EVERY: u32 = 32;

/// How an address's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogMeta {
    /// Entries kept.
    pub len: u32,
    /// Entries after the newest checkpoint (in event-time order).
    pub since_checkpoint: u32,
    /// The oldest entry kept, once older ones were dropped: it carries a
    /// checkpoint, and an event before it cannot be placed in order.
    pub start: Option<EventKey>,
}

/// How long and how many events an address's log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Events older than this (in event time, from now) are folded into a
    /// checkpoint and dropped: the late-event horizon.
    pub horizon: Duration,
    /// Most events kept per address, whatever their age.
    pub events_max: u32,
}

/// Default late-event horizon: asynchronous bounces arrive up to a week
/// after a delivery; twice that leaves room.
pub const LATE_EVENT_HORIZON_DEFAULT: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// Default most events kept per address.
pub const ADDRESS_LOG_EVENTS_MAX_DEFAULT: u32 = 1000;

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            horizon: LATE_EVENT_HORIZON_DEFAULT,
            events_max: ADDRESS_LOG_EVENTS_MAX_DEFAULT,
        }
    }
}

impl LogLimits {
    /// The oldest event time kept at `now`.
    pub fn cutoff(&self, now: UnixMillis) -> UnixMillis {
        now.saturating_sub(millis(self.horizon))
    }
}

/// Where a new event was folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// At or after every event kept: folded on top of the state.
    InOrder,
    /// Before some kept events: they were folded again after it.
    Late,
    /// Before the oldest event kept (beyond the horizon): folded on top of
    /// the state as if it had happened at the newest event time seen.
    ArrivalOrder,
}

/// The state of an address: the fold of its events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressState {
    /// The status as of the last event (see [`AddressState::as_of`] for "now").
    pub status: AddressStatus,
    /// Soft errors counted since the address was last VALID.
    pub error_count: u32,
    /// Event time of the first counted error.
    pub first_error_at: Option<UnixMillis>,
    /// Event time of the last counted error.
    pub last_error_at: Option<UnixMillis>,
    /// The reason of the last counted error (or hard bounce).
    pub last_error_reason: ErrorReason,
    /// The reason text of the last status change.
    pub last_reason: String,
    /// Event time of the last status change.
    pub updated_at: Option<UnixMillis>,
    /// The latest event time folded in; an older event means a replay.
    pub last_event_at: Option<UnixMillis>,
    /// The sequence number of the last event recorded (0: none).
    pub log_seq: u64,
    /// How the log is kept (bookkeeping, not part of the fold).
    pub log: LogMeta,
}

impl AddressState {
    /// Of two states of one address (two spellings that turned out to be
    /// one), the one to keep: the stricter status wins (DENYLISTED over
    /// QUARANTINED over WITH_ERRORS over VALID); between equals, the one
    /// that changed last, and `self` on a tie.
    pub fn stricter(self, other: AddressState) -> AddressState {
        fn rank(status: AddressStatus) -> u8 {
            match status {
                AddressStatus::Valid => 0,
                AddressStatus::WithErrors => 1,
                AddressStatus::Quarantined => 2,
                AddressStatus::Denylisted => 3,
            }
        }
        let ours = (rank(self.status), self.updated_at);
        let theirs = (rank(other.status), other.updated_at);
        if theirs > ours { other } else { self }
    }

    /// The state at time `now`: a WITH_ERRORS address whose last counted
    /// error is older than the reset period reads as VALID.
    pub fn as_of(&self, now: UnixMillis, rules: &QuarantineRules) -> AddressState {
        let mut state = self.clone();
        state.expire_errors(now, rules);
        state
    }

    fn expire_errors(&mut self, at: UnixMillis, rules: &QuarantineRules) {
        if self.status != AddressStatus::WithErrors {
            return;
        }
        let period = if self.last_error_reason == ErrorReason::MailboxFull {
            rules.mailbox_full_reset_period
        } else {
            rules.error_reset_period
        };
        if let Some(last) = self.last_error_at
            && at.saturating_sub(last) >= millis(period)
        {
            self.reset(AddressStatus::Valid, last.saturating_add(millis(period)));
        }
    }

    fn reset(&mut self, status: AddressStatus, at: UnixMillis) {
        self.status = status;
        self.error_count = 0;
        self.first_error_at = None;
        self.last_error_at = None;
        self.updated_at = Some(at);
    }

    fn set_status(&mut self, status: AddressStatus, at: UnixMillis, reason: &str) {
        if self.status != status {
            self.status = status;
            self.updated_at = Some(at);
        }
        self.last_reason = reason.to_owned();
    }

    /// Folds one event in. Events must come in event-time order; the caller
    /// replays the log when one arrives late (see [`AddressState::is_late`]).
    pub fn apply(
        &mut self,
        kind: &AddressEventKind,
        at: UnixMillis,
        context: &ChangeContext,
        rules: &QuarantineRules,
    ) {
        self.expire_errors(at, rules);
        match kind {
            AddressEventKind::Feedback { kind, reason, .. } => {
                self.apply_feedback(*kind, *reason, at, context, rules);
            }
            // Never weaker than what the address has (a late manual
            // QUARANTINED placed after a complaint keeps it DENYLISTED).
            AddressEventKind::Manual(status) => {
                if *status >= self.status {
                    self.set_status(*status, at, &context.reason);
                }
            }
            AddressEventKind::Release => {
                self.reset(AddressStatus::Valid, at);
                self.last_reason = context.reason.clone();
            }
        }
        self.last_event_at = Some(self.last_event_at.map_or(at, |last| last.max(at)));
    }

    fn apply_feedback(
        &mut self,
        kind: FeedbackKind,
        reason: ErrorReason,
        at: UnixMillis,
        context: &ChangeContext,
        rules: &QuarantineRules,
    ) {
        let why = |what: &str| {
            if context.reason.is_empty() {
                what.to_owned()
            } else {
                context.reason.clone()
            }
        };
        match kind {
            FeedbackKind::HardBounce => {
                if self.status != AddressStatus::Denylisted {
                    self.last_error_reason = reason;
                    self.set_status(AddressStatus::Quarantined, at, &why("hard bounce"));
                }
            }
            FeedbackKind::Complaint => {
                self.set_status(AddressStatus::Denylisted, at, &why("complaint"));
            }
            FeedbackKind::Ignored => {}
            FeedbackKind::Delivered => {
                if self.status == AddressStatus::WithErrors {
                    self.reset(AddressStatus::Valid, at);
                    self.last_reason = why("delivered");
                }
            }
            FeedbackKind::SoftBounce => {
                if !self.status.is_usable() {
                    return;
                }
                let interval = millis(rules.significant_error_interval);
                let counts = self
                    .last_error_at
                    .is_none_or(|last| at.saturating_sub(last) >= interval);
                if !counts {
                    return;
                }
                self.error_count = self.error_count.saturating_add(1);
                self.first_error_at.get_or_insert(at);
                self.last_error_at = Some(at);
                self.last_error_reason = reason;
                let status = if self.error_count >= rules.soft_error_threshold {
                    AddressStatus::Quarantined
                } else {
                    AddressStatus::WithErrors
                };
                self.set_status(status, at, &why("soft bounce"));
            }
        }
    }

    /// Whether an event at `at` is older than one already folded in, so that
    /// the log must be replayed rather than the event applied on top.
    pub fn is_late(&self, at: UnixMillis) -> bool {
        self.last_event_at.is_some_and(|last| at < last)
    }
}

/// Folds a whole log in event-time order (ties in arrival order), each event
/// under its own rules (`rules` for those that carry none). The result
/// depends only on the set of events, not on the order they arrived in.
pub fn replay(events: &mut [AddressEvent], rules: &QuarantineRules) -> AddressState {
    events.sort_by_key(AddressEvent::key);
    let mut state = AddressState::default();
    for event in events.iter() {
        state.apply(
            &event.kind,
            event.folded_at,
            &event.context,
            event.rules_or(rules),
        );
        state.log_seq = state.log_seq.max(event.sequence);
    }
    state
}

/// The result of [`refold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refolded {
    /// The state after the last entry (the fold part; the caller sets the
    /// log bookkeeping).
    pub state: AddressState,
    /// Entries whose checkpoint must be written again (its state changed, or
    /// it gained one), the new event included when it carries one.
    pub rewritten: Vec<AddressEvent>,
    /// The new event, with its checkpoint if it got one.
    pub event: AddressEvent,
    /// Entries after the newest checkpoint.
    pub since_checkpoint: u32,
}

/// Places `event` among `after` (the kept entries after a checkpoint whose
/// state is `start`, in key order; `start` is the default state when the
/// log is folded from its beginning) and folds them all again in key order,
/// each under its own rules (`rules` for those that carry none).
/// Entries after the new event that carry a checkpoint get the new state;
/// an entry also gains one where [`CHECKPOINT_EVERY`] entries have passed
/// since the last one, so that the stretch just folded never needs folding
/// whole again.
pub fn refold(
    start: AddressState,
    mut after: Vec<AddressEvent>,
    event: AddressEvent,
    rules: &QuarantineRules,
) -> Refolded {
    let at = after.partition_point(|e| e.key() < event.key());
    after.insert(at, event);
    let mut state = start;
    let mut rewritten = Vec::new();
    let mut since_checkpoint = 0u32;
    for (i, entry) in after.iter_mut().enumerate() {
        state.apply(
            &entry.kind,
            entry.folded_at,
            &entry.context,
            entry.rules_or(rules),
        );
        state.log_seq = state.log_seq.max(entry.sequence);
        since_checkpoint += 1;
        let had = entry.checkpoint.is_some();
        if had || since_checkpoint >= CHECKPOINT_EVERY {
            entry.checkpoint = Some(Box::new(state.clone()));
            since_checkpoint = 0;
            // Before the new event the fold is what it was: a checkpoint
            // there changes only if it is new.
            if i != at && (i > at || !had) {
                rewritten.push(entry.clone());
            }
        }
    }
    let event = after.swap_remove(at);
    Refolded {
        state,
        rewritten,
        event,
        since_checkpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::Source;
    use super::*;

    #[test]
    fn of_two_spellings_the_stricter_state_wins() {
        let state = |status, updated_at| AddressState {
            status,
            updated_at,
            ..AddressState::default()
        };
        use AddressStatus::*;
        let order = [Valid, WithErrors, Quarantined, Denylisted];
        for (i, &weaker) in order.iter().enumerate() {
            for &stronger in &order[i + 1..] {
                // Whatever the times and whichever comes first.
                for (w_at, s_at) in [(Some(9), Some(1)), (Some(1), Some(9)), (None, Some(1))] {
                    let w = state(weaker, w_at);
                    let s = state(stronger, s_at);
                    assert_eq!(w.clone().stricter(s.clone()).status, stronger);
                    assert_eq!(s.stricter(w).status, stronger);
                }
            }
        }
        // Equal statuses: the later change wins, and `self` on a tie.
        let early = AddressState {
            last_reason: "early".into(),
            ..state(Quarantined, Some(1))
        };
        let late = AddressState {
            last_reason: "late".into(),
            ..state(Quarantined, Some(2))
        };
        assert_eq!(early.clone().stricter(late.clone()).last_reason, "late");
        assert_eq!(late.clone().stricter(early.clone()).last_reason, "late");
        let twin = AddressState {
            last_reason: "twin".into(),
            ..state(Quarantined, Some(2))
        };
        assert_eq!(late.stricter(twin).last_reason, "late");
    }

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    fn ctx() -> ChangeContext {
        ChangeContext::new(Source::DeliveryFeedback, "mta", "").expect("valid")
    }

    fn feedback(kind: FeedbackKind, reason: ErrorReason, id: &str) -> AddressEventKind {
        AddressEventKind::Feedback {
            kind,
            reason,
            event_id: EventId::parse(id).expect("valid id"),
        }
    }

    fn soft(id: &str) -> AddressEventKind {
        feedback(FeedbackKind::SoftBounce, ErrorReason::Unreachable, id)
    }

    fn fold(events: &[(AddressEventKind, i64)]) -> AddressState {
        let rules = QuarantineRules::default();
        let mut state = AddressState::default();
        for (kind, at) in events {
            state.apply(kind, *at, &ctx(), &rules);
        }
        state
    }

    #[test]
    fn five_soft_bounces_on_five_days_quarantine() {
        let events: Vec<_> = (0..5)
            .map(|d| (soft(&format!("e{d}")), d * DAY_MS))
            .collect();
        let state = fold(&events[..4]);
        assert_eq!(
            (state.status, state.error_count),
            (AddressStatus::WithErrors, 4)
        );
        let state = fold(&events);
        assert_eq!(
            (state.status, state.error_count),
            (AddressStatus::Quarantined, 5)
        );
        assert_eq!(state.first_error_at, Some(0));
    }

    #[test]
    fn soft_bounces_within_one_interval_count_once() {
        let events: Vec<_> = (0..5)
            .map(|h| (soft(&format!("e{h}")), h * 3_600_000))
            .collect();
        let state = fold(&events);
        assert_eq!(
            (state.status, state.error_count),
            (AddressStatus::WithErrors, 1)
        );
    }

    #[test]
    fn delivered_resets_with_errors() {
        let mut events: Vec<_> = (0..3)
            .map(|d| (soft(&format!("e{d}")), d * DAY_MS))
            .collect();
        events.push((
            feedback(FeedbackKind::Delivered, ErrorReason::Unspecified, "ok"),
            3 * DAY_MS,
        ));
        let state = fold(&events);
        assert_eq!((state.status, state.error_count), (AddressStatus::Valid, 0));
    }

    #[test]
    fn errors_expire_after_the_reset_period_and_mailbox_full_after_thirty_days() {
        let rules = QuarantineRules::default();
        let state = fold(&[(soft("a"), 0)]);
        assert_eq!(
            state.as_of(9 * DAY_MS, &rules).status,
            AddressStatus::WithErrors
        );
        let later = state.as_of(10 * DAY_MS, &rules);
        assert_eq!((later.status, later.error_count), (AddressStatus::Valid, 0));

        let full = fold(&[(
            feedback(FeedbackKind::SoftBounce, ErrorReason::MailboxFull, "m"),
            0,
        )]);
        assert_eq!(
            full.as_of(11 * DAY_MS, &rules).status,
            AddressStatus::WithErrors
        );
        assert_eq!(full.as_of(30 * DAY_MS, &rules).status, AddressStatus::Valid);
    }

    #[test]
    fn an_expired_count_starts_again() {
        let events = [
            (soft("a"), 0),
            (soft("b"), DAY_MS),
            (soft("c"), 20 * DAY_MS),
        ];
        assert_eq!(fold(&events).error_count, 1);
    }

    #[test]
    fn quarantine_and_denylist_are_never_lifted_by_time_or_delivery() {
        let rules = QuarantineRules::default();
        let hard = feedback(FeedbackKind::HardBounce, ErrorReason::UserUnknown, "h");
        let delivered = feedback(FeedbackKind::Delivered, ErrorReason::Unspecified, "d");
        let state = fold(&[(hard, 0), (delivered, DAY_MS)]);
        assert_eq!(
            state.as_of(400 * DAY_MS, &rules).status,
            AddressStatus::Quarantined
        );
        let complaint = feedback(FeedbackKind::Complaint, ErrorReason::Unspecified, "c");
        let hard_after = feedback(FeedbackKind::HardBounce, ErrorReason::UserUnknown, "h2");
        assert_eq!(
            fold(&[(complaint, 0), (hard_after, 1)]).status,
            AddressStatus::Denylisted
        );
    }

    #[test]
    fn release_resets_everything() {
        let state = fold(&[
            (AddressEventKind::Manual(AddressStatus::Denylisted), 0),
            (AddressEventKind::Release, 1),
        ]);
        assert_eq!((state.status, state.error_count), (AddressStatus::Valid, 0));
    }

    #[test]
    fn ignored_changes_nothing() {
        let ignored = feedback(FeedbackKind::Ignored, ErrorReason::Unspecified, "i");
        let state = fold(&[(ignored, 5)]);
        assert_eq!((state.status, state.error_count), (AddressStatus::Valid, 0));
    }

    #[test]
    fn replay_gives_the_same_state_whatever_the_arrival_order() {
        let rules = QuarantineRules::default();
        let make = |seq: u64, kind: AddressEventKind, at: i64| AddressEvent {
            sequence: seq,
            kind,
            occurred_at: at,
            recorded_at: 0,
            old_status: AddressStatus::Valid,
            new_status: AddressStatus::Valid,
            context: ctx(),
            folded_at: at,
            checkpoint: None,
            rules: None,
        };
        let in_order: Vec<_> = (0..5)
            .map(|d| {
                make(
                    d + 1,
                    soft(&format!("e{d}")),
                    i64::try_from(d).unwrap_or(0) * DAY_MS,
                )
            })
            .collect();
        let mut reversed: Vec<_> = in_order.iter().rev().cloned().collect();
        let mut forward = in_order.clone();
        let a = replay(&mut forward, &rules);
        let b = replay(&mut reversed, &rules);
        assert_eq!(a.status, AddressStatus::Quarantined);
        assert_eq!((a.status, a.error_count), (b.status, b.error_count));
    }

    fn entry(sequence: u64, kind: AddressEventKind, at: i64) -> AddressEvent {
        AddressEvent {
            sequence,
            kind,
            occurred_at: at,
            recorded_at: at,
            old_status: AddressStatus::Valid,
            new_status: AddressStatus::Valid,
            context: ctx(),
            folded_at: at,
            checkpoint: None,
            rules: None,
        }
    }

    fn hard(id: &str) -> AddressEventKind {
        feedback(FeedbackKind::HardBounce, ErrorReason::UserUnknown, id)
    }

    #[test]
    fn only_valid_and_with_errors_are_usable() {
        assert!(AddressStatus::Valid.is_usable());
        assert!(AddressStatus::WithErrors.is_usable());
        assert!(!AddressStatus::Quarantined.is_usable());
        assert!(!AddressStatus::Denylisted.is_usable());
    }

    #[test]
    fn a_soft_bounce_leaves_quarantined_and_denylisted_addresses_as_they_are() {
        for (block, status) in [
            (hard("h"), AddressStatus::Quarantined),
            (
                feedback(FeedbackKind::Complaint, ErrorReason::Unspecified, "c"),
                AddressStatus::Denylisted,
            ),
            (
                AddressEventKind::Manual(AddressStatus::Quarantined),
                AddressStatus::Quarantined,
            ),
            (
                AddressEventKind::Manual(AddressStatus::Denylisted),
                AddressStatus::Denylisted,
            ),
        ] {
            let before = fold(&[(block.clone(), 0)]);
            let after = fold(&[(block, 0), (soft("s"), 2 * DAY_MS)]);
            assert_eq!(
                after,
                AddressState {
                    last_event_at: Some(2 * DAY_MS),
                    ..before
                }
            );
            assert_eq!((after.status, after.error_count), (status, 0));
        }
    }

    #[test]
    fn a_release_is_folded_after_every_event_received_before_it() {
        const FUTURE: i64 = 3 * 60 * 1000;
        let now = 10 * DAY_MS;
        let bounced = fold(&[(hard("h"), now + FUTURE)]);
        // A release at `now` goes after the bounce dated 3 minutes ahead.
        let release = AddressEventKind::Release;
        assert_eq!(fold_time(&release, now, &bounced, false), now + FUTURE);
        // A release later than every event keeps its own time.
        assert_eq!(
            fold_time(&release, now + 2 * FUTURE, &bounced, false),
            now + 2 * FUTURE
        );
        // Nothing seen yet: its own time.
        assert_eq!(
            fold_time(&release, now, &AddressState::default(), false),
            now
        );
        // Other events keep their event time, unless beyond the horizon.
        assert_eq!(fold_time(&soft("s"), now, &bounced, false), now);
        assert_eq!(fold_time(&soft("s"), now, &bounced, true), now + FUTURE);
        assert_eq!(
            fold_time(&soft("s"), now + 2 * FUTURE, &bounced, true),
            now + 2 * FUTURE
        );

        // Replayed in key order, the release still lifts the bounce.
        let rules = QuarantineRules::default();
        let mut log = vec![entry(1, hard("h"), now + FUTURE), {
            let mut e = entry(2, release.clone(), now);
            e.folded_at = fold_time(&release, now, &bounced, false);
            e
        }];
        let state = replay(&mut log, &rules);
        assert_eq!(state.status, AddressStatus::Valid);
        // A feedback event later than the release, received after it, stays.
        let late = refold(
            AddressState::default(),
            log,
            entry(3, hard("h2"), now + 2 * FUTURE),
            &rules,
        );
        assert_eq!(late.state.status, AddressStatus::Quarantined);
    }

    #[test]
    fn each_event_is_folded_under_the_rules_it_was_received_with() {
        let five = QuarantineRules::default();
        let two = QuarantineRules {
            soft_error_threshold: 2,
            ..five
        };
        // Three counted soft bounces under a threshold of 5.
        let log: Vec<_> = (0..3u64)
            .map(|d| {
                let at = i64::try_from(d).unwrap_or(0) * DAY_MS;
                AddressEvent {
                    rules: Some(five),
                    ..entry(d + 1, soft(&format!("s{d}")), at)
                }
            })
            .collect();
        // The threshold drops to 2; an IGNORED event arrives late.
        let ignored = AddressEvent {
            rules: Some(two),
            ..entry(
                4,
                feedback(FeedbackKind::Ignored, ErrorReason::Unspecified, "i"),
                DAY_MS / 2,
            )
        };
        let refolded = refold(AddressState::default(), log.clone(), ignored.clone(), &two);
        assert_eq!(
            (refolded.state.status, refolded.state.error_count),
            (AddressStatus::WithErrors, 3)
        );
        let mut all = log.clone();
        all.push(ignored);
        let replayed = replay(&mut all, &two);
        assert_eq!(
            (replayed.status, replayed.error_count),
            (AddressStatus::WithErrors, 3)
        );
        // Entries without rules (stored before they were kept) take the fold's.
        let mut bare: Vec<_> = log
            .into_iter()
            .map(|e| AddressEvent { rules: None, ..e })
            .collect();
        assert_eq!(replay(&mut bare, &two).status, AddressStatus::Quarantined);
        assert_eq!(replay(&mut bare, &five).status, AddressStatus::WithErrors);
        // A soft bounce received under the new rules is judged by them.
        let fourth = AddressEvent {
            rules: Some(two),
            ..entry(5, soft("s3"), 3 * DAY_MS)
        };
        let mut kept: Vec<_> = bare
            .into_iter()
            .map(|e| AddressEvent {
                rules: Some(five),
                ..e
            })
            .collect();
        kept.push(fourth);
        assert_eq!(replay(&mut kept, &five).status, AddressStatus::Quarantined);
    }

    #[test]
    fn a_manual_status_never_replaces_a_stronger_one() {
        let quarantine = AddressEventKind::Manual(AddressStatus::Quarantined);
        let denylist = AddressEventKind::Manual(AddressStatus::Denylisted);
        let with = |status| AddressState {
            status,
            ..AddressState::default()
        };
        // At the door: the same or a weaker status changes nothing.
        assert!(quarantine.is_noop_for(&with(AddressStatus::Denylisted)));
        assert!(quarantine.is_noop_for(&with(AddressStatus::Quarantined)));
        assert!(!quarantine.is_noop_for(&with(AddressStatus::WithErrors)));
        assert!(!quarantine.is_noop_for(&with(AddressStatus::Valid)));
        assert!(denylist.is_noop_for(&with(AddressStatus::Denylisted)));
        assert!(!denylist.is_noop_for(&with(AddressStatus::Quarantined)));
        // Feedback always counts; a release of a VALID address with no
        // errors changes nothing, of anything else it does.
        assert!(!soft("s").is_noop_for(&with(AddressStatus::Denylisted)));
        assert!(AddressEventKind::Release.is_noop_for(&with(AddressStatus::Valid)));
        assert!(!AddressEventKind::Release.is_noop_for(&with(AddressStatus::WithErrors)));
        assert!(!AddressEventKind::Release.is_noop_for(&AddressState {
            error_count: 1,
            ..with(AddressStatus::Valid)
        }));

        // In the fold: a late manual QUARANTINED after a complaint keeps it
        // DENYLISTED, with the complaint's reason.
        let complaint = feedback(FeedbackKind::Complaint, ErrorReason::Unspecified, "c");
        let state = fold(&[(complaint, 0), (quarantine.clone(), 1)]);
        assert_eq!(state.status, AddressStatus::Denylisted);
        assert_eq!(state.last_reason, "complaint");
        assert_eq!(state.updated_at, Some(0));
        // The same status again takes the operator's reason, not a new time.
        let operator = ChangeContext::new(Source::Operator, "ops", "checked").expect("valid");
        let mut state = fold(&[(hard("h"), 0)]);
        state.apply(&quarantine, 5, &operator, &QuarantineRules::default());
        assert_eq!(
            (state.status, state.last_reason.as_str(), state.updated_at),
            (AddressStatus::Quarantined, "checked", Some(0))
        );
        // A stronger one replaces a weaker one.
        state.apply(&denylist, 6, &operator, &QuarantineRules::default());
        assert_eq!(
            (state.status, state.updated_at),
            (AddressStatus::Denylisted, Some(6))
        );
    }

    #[test]
    fn the_late_event_horizon_is_fourteen_days_and_a_thousand_events() {
        let limits = LogLimits::default();
        assert_eq!(limits.horizon, Duration::from_secs(14 * 24 * 60 * 60));
        assert_eq!(limits.events_max, 1000);
        assert_eq!(limits.cutoff(20 * DAY_MS), 6 * DAY_MS);
        assert_eq!(limits.cutoff(i64::MIN + 1), i64::MIN);
    }

    #[test]
    fn refold_rewrites_the_checkpoints_after_the_late_event_and_the_new_ones() {
        let rules = QuarantineRules::default();
        let ignored = |n: u64| {
            feedback(
                FeedbackKind::Ignored,
                ErrorReason::Unspecified,
                &format!("i{n}"),
            )
        };
        // 70 entries, one a second; 6 and 61 carry a (stale) checkpoint.
        let after: Vec<_> = (1..=70u64)
            .map(|seq| {
                let at = i64::try_from(seq).unwrap_or(0) * 1000;
                let kind = if seq % 10 == 0 {
                    soft(&format!("s{seq}"))
                } else {
                    ignored(seq)
                };
                let mut e = entry(seq, kind, at);
                if seq == 6 || seq == 61 {
                    e.checkpoint = Some(Box::new(AddressState::default()));
                }
                e
            })
            .collect();
        // A late soft bounce between the 45th and the 46th.
        let late = entry(71, soft("late"), 45_500);
        let refolded = refold(AddressState::default(), after.clone(), late.clone(), &rules);
        // The 38th gained one (32 entries after the 6th); the 61st's is
        // rewritten (after the new event); the 6th's, before it, is not.
        let rewritten: Vec<u64> = refolded.rewritten.iter().map(|e| e.sequence).collect();
        assert_eq!(rewritten, [38, 61]);
        assert_eq!(refolded.since_checkpoint, 9);
        assert_eq!(refolded.event.sequence, 71);
        assert_eq!(refolded.event.checkpoint, None);
        // Each checkpoint is the fold up to its entry, the new event included.
        let mut all = after.clone();
        all.push(late.clone());
        for e in &refolded.rewritten {
            let mut upto: Vec<_> = all.iter().filter(|x| x.key() <= e.key()).cloned().collect();
            let mut expected = replay(&mut upto, &rules);
            expected.log_seq = upto.iter().map(|x| x.sequence).max().unwrap_or(0);
            assert_eq!(e.checkpoint.as_deref(), Some(&expected), "{}", e.sequence);
        }
        let whole = replay(&mut all, &rules);
        assert_eq!(refolded.state, whole);
        assert_eq!(whole.error_count, 1);

        // The 32nd entry after a checkpoint, when it is the new event, carries one.
        let short: Vec<_> = (1..=40u64)
            .map(|seq| entry(seq, ignored(seq), i64::try_from(seq).unwrap_or(0) * 1000))
            .collect();
        let refolded = refold(
            AddressState::default(),
            short,
            entry(41, soft("late"), 31_500),
            &rules,
        );
        assert!(refolded.event.checkpoint.is_some());
        assert!(refolded.rewritten.is_empty());
        assert_eq!(refolded.since_checkpoint, 9);
    }
}
