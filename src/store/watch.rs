//! The committed-change log that clients watch (`consent.v1.WatchService`):
//! the same changes as the feed that keeps the decision index fresh, kept
//! for a while after they were delivered and found again by a token.
//!
//! A token is where a client stands: "every change up to here was seen".
//! Tokens are text, opaque to clients, and each store makes its own:
//!
//! - the embedded store (and the one in memory) numbers its commits densely
//!   (`Position`) and keeps `w.<store id>.<position>`: a read after position
//!   `p` expects `p + 1` next, so a gap means retention removed what the
//!   client still needed (expired), never a silent skip;
//! - PostgreSQL keeps transaction-id snapshots (see `postgres/watch.rs`).
//!
//! Invariant: a read hands out only durable changes, in commit order, and
//! never skips one: what it cannot hand out is an error (expired, resync).

use super::{Change, Result, StoreError};
use crate::engine::{Tenant, UnixMillis};

/// The first part of every token, so that a token of another format or
/// version is recognised as such.
const TOKEN_PREFIX: &str = "w1";
/// Tokens longer than this are refused unread.
pub const TOKEN_LEN_MAX: usize = 16 * 1024;

/// One committed transaction's changes of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEntry {
    /// The token that resumes after this transaction.
    pub token: String,
    /// When the transaction was recorded (the committing server's clock).
    pub recorded_at: UnixMillis,
    /// Its changes of the tenant asked for, in the order written.
    pub changes: Vec<Change>,
}

/// What a read of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchRead {
    /// The durable transactions after the token (none: nothing new), and the
    /// token after everything read, other tenants' transactions included.
    Changes {
        /// The transactions with changes of the tenant, in commit order.
        entries: Vec<WatchEntry>,
        /// Resumes after everything this read covered.
        through: String,
        /// More may follow at once (the read stopped at its limit).
        more: bool,
    },
    /// Retention removed changes the token has not seen.
    Expired,
    /// The token cannot be followed on: the store it came from is gone or
    /// was replaced (another store, a crash of the embedded store, a
    /// restart of the database). Why, for a human.
    Resync(String),
    /// Not a token (what is wrong, for a human).
    Malformed(String),
}

/// A store's identity in its tokens: 16 hex digits.
pub(crate) fn new_store_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A dense-position token.
pub(crate) fn position_token(store_id: &str, position: u64) -> String {
    format!("{TOKEN_PREFIX}.s.{store_id}.{position}")
}

/// What a token of a dense-position store says.
pub(crate) enum PositionToken {
    /// The position after which to read.
    At(u64),
    /// Another answer than a read ([`WatchRead::Resync`] or [`WatchRead::Malformed`]).
    Refused(WatchRead),
}

/// Reads a dense-position token of the store `store_id`.
pub(crate) fn parse_position_token(token: &str, store_id: &str) -> PositionToken {
    let mut parts = token.split('.');
    let (Some(version), Some(kind), Some(id), Some(position), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return refused_kind(token);
    };
    if version != TOKEN_PREFIX {
        return refused_kind(token);
    }
    if kind != "s" {
        return PositionToken::Refused(WatchRead::Resync(
            "the token comes from another kind of store".into(),
        ));
    }
    let Ok(position) = position.parse::<u64>() else {
        return refused_kind(token);
    };
    if id != store_id {
        return PositionToken::Refused(WatchRead::Resync(
            "the token comes from another store (or one that was replaced since, or that \
             restarted after a crash)"
                .into(),
        ));
    }
    PositionToken::At(position)
}

/// The refusal of a token of another format (a PostgreSQL token on the
/// embedded store is another store's, not a malformed one).
fn refused_kind(token: &str) -> PositionToken {
    if token.starts_with(&format!("{TOKEN_PREFIX}.p.")) {
        PositionToken::Refused(WatchRead::Resync(
            "the token comes from another kind of store".into(),
        ))
    } else {
        PositionToken::Refused(WatchRead::Malformed(
            "not a watch token: pass a token exactly as a WatchResponse carried it".into(),
        ))
    }
}

/// One logged transaction of a dense-position store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    /// Its position.
    pub(crate) position: u64,
    /// When it was recorded.
    pub(crate) recorded_at: UnixMillis,
    /// Its changes (every tenant's).
    pub(crate) changes: Vec<Change>,
}

/// Encodes a logged transaction's value: recorded-at (i64, big-endian),
/// then the changes in the feed codec.
pub(crate) fn encode_logged(recorded_at: UnixMillis, changes: &[Change]) -> Vec<u8> {
    let body = super::codec::encode_changes(changes);
    let mut value = Vec::with_capacity(8 + body.len());
    value.extend_from_slice(&recorded_at.to_be_bytes());
    value.extend_from_slice(&body);
    value
}

/// Decodes [`encode_logged`].
pub(crate) fn decode_logged(position: u64, value: &[u8]) -> Result<Logged> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("watch log position {position}"),
        reason,
    };
    let (time, body) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("shorter than its time".into()))?;
    let changes = super::codec::decode_changes(body).map_err(|e| corrupt(e.to_string()))?;
    Ok(Logged {
        position,
        recorded_at: i64::from_be_bytes(*time),
        changes,
    })
}

/// The changes of `tenant` among `changes`.
pub(crate) fn of_tenant(changes: Vec<Change>, tenant: &Tenant) -> Vec<Change> {
    changes
        .into_iter()
        .filter(|change| change.tenant() == Some(tenant))
        .collect()
}

/// Whether retention removes the transaction at `position`, recorded at
/// `recorded_at`, of a dense-position log whose newest is `last` (which
/// always stays).
pub(crate) fn retention_removes(
    position: u64,
    recorded_at: UnixMillis,
    last: u64,
    retention: super::ChangeRetention,
) -> bool {
    position < last
        && (recorded_at < retention.before || last - position >= retention.keep_max.max(1))
}

/// A read of a dense-position log: `logged` yields the transactions after
/// `after` in position order (at most `limit + 1` are taken), `durable` is
/// the last position that may be handed out.
pub(crate) fn read_dense(
    store_id: &str,
    after: u64,
    durable: u64,
    tenant: &Tenant,
    limit: usize,
    logged: impl Iterator<Item = Result<Logged>>,
) -> Result<WatchRead> {
    if after > durable {
        return Ok(WatchRead::Resync(
            "the token is ahead of this store: it comes from another store, or from changes \
             a crash of this one lost before they were durable"
                .into(),
        ));
    }
    let mut entries = Vec::new();
    let mut through = after;
    let mut read = 0usize;
    let mut more = false;
    for item in logged {
        let logged = item?;
        if logged.position > durable {
            break;
        }
        if logged.position != through + 1 {
            // Retention removed what lies between (positions are dense).
            return Ok(WatchRead::Expired);
        }
        if logged.changes.iter().any(|c| matches!(c, Change::Reset)) {
            // Before the limit: a read of nothing finds it too.
            return Ok(WatchRead::Resync(
                "the store's state was replaced since the token (a restart after a crash)".into(),
            ));
        }
        if read == limit {
            more = true;
            break;
        }
        read += 1;
        through = logged.position;
        let changes = of_tenant(logged.changes, tenant);
        if !changes.is_empty() {
            entries.push(WatchEntry {
                token: position_token(store_id, logged.position),
                recorded_at: logged.recorded_at,
                changes,
            });
        }
    }
    if through < durable && read == 0 && !more {
        // Nothing at `after + 1` although later positions are durable.
        return Ok(WatchRead::Expired);
    }
    Ok(WatchRead::Changes {
        entries,
        through: position_token(store_id, through),
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::UserId;

    fn change(tenant: &str, n: u32) -> Change {
        Change::UsageOptOut {
            tenant: Tenant::parse(tenant).expect("valid"),
            user_id: UserId::parse(&format!("u{n}")).expect("valid"),
            opted_out: true,
        }
    }

    fn logged(position: u64, tenant: &str) -> Result<Logged> {
        Ok(Logged {
            position,
            recorded_at: 1_000 + i64::try_from(position).expect("small"),
            changes: vec![change(tenant, u32::try_from(position).expect("small"))],
        })
    }

    fn tenant(name: &str) -> Tenant {
        Tenant::parse(name).expect("valid")
    }

    #[test]
    fn a_read_hands_out_the_tenant_s_changes_up_to_the_durable_position() {
        let log = [
            logged(4, "a"),
            logged(5, "b"),
            logged(6, "a"),
            logged(7, "a"),
        ];
        let read = read_dense("id", 3, 6, &tenant("a"), 10, log.into_iter());
        let WatchRead::Changes {
            entries,
            through,
            more,
        } = read.expect("read")
        else {
            panic!("a read of changes");
        };
        assert_eq!(
            entries.iter().map(|e| e.token.as_str()).collect::<Vec<_>>(),
            ["w1.s.id.4", "w1.s.id.6"],
            "tenant b's transaction is skipped, position 7 is not durable"
        );
        assert_eq!(entries[0].recorded_at, 1_004);
        assert_eq!(through, "w1.s.id.6");
        assert!(!more);
    }

    #[test]
    fn a_read_stops_at_its_limit_and_says_more_follow() {
        let log = [logged(1, "a"), logged(2, "a"), logged(3, "a")];
        let WatchRead::Changes {
            entries,
            through,
            more,
        } = read_dense("id", 0, 3, &tenant("a"), 2, log.into_iter()).expect("read")
        else {
            panic!("a read of changes");
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(through, "w1.s.id.2");
        assert!(more);
    }

    #[test]
    fn a_gap_is_expired_never_a_skip() {
        let log = [logged(5, "a")];
        assert_eq!(
            read_dense("id", 3, 5, &tenant("a"), 10, log.into_iter()).expect("read"),
            WatchRead::Expired
        );
        assert_eq!(
            read_dense("id", 3, 5, &tenant("a"), 10, std::iter::empty()).expect("read"),
            WatchRead::Expired,
            "everything after the token was removed"
        );
        assert!(matches!(
            read_dense("id", 5, 5, &tenant("a"), 10, std::iter::empty()).expect("read"),
            WatchRead::Changes { ref entries, .. } if entries.is_empty()
        ));
    }

    #[test]
    fn a_token_ahead_of_the_store_or_across_a_reset_asks_for_a_resync() {
        assert!(matches!(
            read_dense("id", 9, 5, &tenant("a"), 10, std::iter::empty()).expect("read"),
            WatchRead::Resync(_)
        ));
        let reset = Ok(Logged {
            position: 2,
            recorded_at: 0,
            changes: vec![Change::Reset],
        });
        assert!(matches!(
            read_dense("id", 1, 2, &tenant("a"), 10, [reset.clone()].into_iter()).expect("read"),
            WatchRead::Resync(_)
        ));
        assert!(
            matches!(
                read_dense("id", 1, 2, &tenant("a"), 0, [reset].into_iter()).expect("read"),
                WatchRead::Resync(_)
            ),
            "a read of nothing finds it too"
        );
    }

    #[test]
    fn tokens_name_their_store() {
        assert!(matches!(
            parse_position_token(&position_token("abc", 7), "abc"),
            PositionToken::At(7)
        ));
        for (token, resync) in [
            (position_token("other", 7), true),
            ("w1.p.1.2:3:.2:3:.-.0".to_owned(), true),
            ("w1.s.abc".to_owned(), false),
            ("w1.s.abc.x".to_owned(), false),
            ("w2.s.abc.7".to_owned(), false),
            (String::new(), false),
        ] {
            match parse_position_token(&token, "abc") {
                PositionToken::Refused(WatchRead::Resync(_)) => assert!(resync, "{token}"),
                PositionToken::Refused(WatchRead::Malformed(_)) => assert!(!resync, "{token}"),
                _ => panic!("{token} accepted"),
            }
        }
    }

    #[test]
    fn retention_removes_by_age_or_count_and_never_the_newest() {
        use crate::store::ChangeRetention;
        let by_age = ChangeRetention {
            before: 100,
            keep_max: u64::MAX,
        };
        assert!(retention_removes(1, 99, 5, by_age));
        assert!(!retention_removes(1, 100, 5, by_age));
        assert!(!retention_removes(5, 0, 5, by_age), "the newest stays");
        let by_count = ChangeRetention {
            before: i64::MIN,
            keep_max: 2,
        };
        assert!(retention_removes(3, 0, 5, by_count));
        assert!(!retention_removes(4, 0, 5, by_count), "the two newest stay");
        let keep_none = ChangeRetention {
            before: i64::MIN,
            keep_max: 0,
        };
        assert!(!retention_removes(5, 0, 5, keep_none), "the newest stays");
        assert!(!retention_removes(1, 0, 5, ChangeRetention::KEEP_ALL));
    }

    #[test]
    fn logged_values_round_trip() {
        let changes = vec![change("a", 1), change("b", 2)];
        let value = encode_logged(-5, &changes);
        assert_eq!(
            decode_logged(3, &value).expect("decodes"),
            Logged {
                position: 3,
                recorded_at: -5,
                changes
            }
        );
        assert!(decode_logged(3, &value[..4]).is_err());
    }
}
