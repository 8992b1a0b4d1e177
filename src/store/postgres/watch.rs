//! The watch log of the PostgreSQL store: the rows of `consentd_changes`
//! (the feed that keeps every replica's index fresh), found again by
//! transaction-id snapshots, so that a token made by one replica resumes on
//! any other.
//!
//! A token holds the store (a hash of the database and schema names), the
//! database instance (`pg_postmaster_start_time()`, in microseconds), the snapshot `prev` whose every visible row the client
//! has seen, and, while a window of rows is read in parts, the snapshot
//! `cur` that ends the window and the last `(xid, id)` handed out in it.
//! A read hands out, in `(xid, id)` order, the rows visible in `cur` (the
//! read's own snapshot when the token has none) and not in `prev`: the same
//! selection as the index feed (`feed.rs`), so a row that commits after a
//! later one was read is found all the same.
//!
//! - Retention deletes old rows and records in `consentd_watch_horizon` a
//!   snapshot taken after the deletion, in which every deleted row is
//!   visible (deletions take turns, under an advisory lock, so the newest
//!   such snapshot sees what every earlier deletion deleted). A token whose
//!   `prev` does not see everything that snapshot sees may have missed a
//!   deleted row, and has expired ([`Snapshot::sees_all_of`]).
//! - After the database restarted, a transaction id may be given again
//!   (see `feed.rs`): a token of an earlier instance asks for a resync.

use deadpool_postgres::Object;

use super::db_error;
use crate::{
    engine::Tenant,
    store::{
        ChangeRetention, Result, StoreError, WatchEntry, WatchRead,
        watch::{self},
    },
};

/// A token of this store, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    /// The database and schema: 16 hex digits of their names' SHA-256.
    store: String,
    /// The database instance: its start time in microseconds.
    started: i64,
    /// Every row visible in this snapshot was seen.
    prev: String,
    /// The end of the window being read, with the last row handed out.
    window: Option<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    cur: String,
    after_xid: u64,
    after_id: i64,
}

impl Token {
    fn text(&self) -> String {
        match &self.window {
            None => format!("w1.p.{}.{}.{}.-.0.0", self.store, self.started, self.prev),
            Some(w) => format!(
                "w1.p.{}.{}.{}.{}.{}.{}",
                self.store, self.started, self.prev, w.cur, w.after_xid, w.after_id
            ),
        }
    }

    fn parse(text: &str) -> std::result::Result<Token, WatchRead> {
        let malformed = || {
            WatchRead::Malformed(
                "not a watch token: pass a token exactly as a WatchResponse carried it".into(),
            )
        };
        let parts: Vec<&str> = text.split('.').collect();
        match parts.as_slice() {
            ["w1", "p", store, started, prev, cur, after_xid, after_id] => {
                if store.len() != 16 || !store.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(malformed());
                }
                let started = started.parse().map_err(|_| malformed())?;
                let snapshot_ok = |s: &str| {
                    !s.is_empty()
                        && s.len() <= watch::TOKEN_LEN_MAX
                        && s.bytes()
                            .all(|b| b.is_ascii_digit() || b == b':' || b == b',')
                        && s.matches(':').count() == 2
                };
                if !snapshot_ok(prev) {
                    return Err(malformed());
                }
                let window = if *cur == "-" {
                    None
                } else {
                    if !snapshot_ok(cur) {
                        return Err(malformed());
                    }
                    Some(Window {
                        cur: (*cur).to_owned(),
                        after_xid: after_xid.parse().map_err(|_| malformed())?,
                        after_id: after_id.parse().map_err(|_| malformed())?,
                    })
                };
                Ok(Token {
                    store: (*store).to_owned(),
                    started,
                    prev: (*prev).to_owned(),
                    window,
                })
            }
            ["w1", "s", ..] => Err(WatchRead::Resync(
                "the token comes from another kind of store".into(),
            )),
            _ => Err(malformed()),
        }
    }
}

/// The database instance's start, in microseconds.
const STARTED: &str = "(extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint";
/// The names of the database and schema the store is in.
const WHERE: &str = "current_database() || '/' || current_schema()";

/// The store's identity in tokens, from [`WHERE`].
fn store_id(names: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(names.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token after everything committed now.
pub(super) async fn head(client: &mut Object) -> Result<String> {
    let row = client
        .query_one(
            &format!("SELECT {STARTED}, pg_current_snapshot()::text, {WHERE}"),
            &[],
        )
        .await
        .map_err(db_error)?;
    Ok(Token {
        store: store_id(row.get(2)),
        started: row.get(0),
        prev: row.get(1),
        window: None,
    }
    .text())
}

/// The committed transactions after `token`, at most `limit`.
pub(super) async fn read(
    client: &mut Object,
    token: &str,
    tenant: &Tenant,
    limit: usize,
) -> Result<WatchRead> {
    if token.len() > watch::TOKEN_LEN_MAX {
        return Ok(WatchRead::Malformed("the token is too long".into()));
    }
    let token = match Token::parse(token) {
        Ok(token) => token,
        Err(answer) => return Ok(answer),
    };
    let tx = super::snapshot_transaction(client).await?;
    let row = tx
        .query_one(
            &format!(
                "SELECT {STARTED}, pg_current_snapshot()::text,
                        (SELECT deleted_in FROM consentd_watch_horizon),
                        {WHERE}"
            ),
            &[],
        )
        .await
        .map_err(db_error)?;
    let started: i64 = row.get(0);
    let now: String = row.get(1);
    let horizon: Option<String> = row.get(2);
    let store = store_id(row.get(3));
    if store != token.store {
        return Ok(WatchRead::Resync(
            "the token comes from another store (another database or schema)".into(),
        ));
    }
    if started != token.started {
        return Ok(WatchRead::Resync(
            "the database restarted (or is another one) since the token: transaction ids may \
             have been given again"
                .into(),
        ));
    }
    if let Some(horizon) = horizon {
        let (Some(prev), Some(horizon)) = (Snapshot::parse(&token.prev), Snapshot::parse(&horizon))
        else {
            return Ok(WatchRead::Malformed("not a watch token".into()));
        };
        if !prev.sees_all_of(&horizon) {
            return Ok(WatchRead::Expired);
        }
    }
    let window = token.window.clone().unwrap_or(Window {
        cur: now,
        after_xid: 0,
        after_id: 0,
    });
    let limit_rows = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let statement = tx
        .prepare_cached(
            "SELECT id, xid::text, recorded_at, payload FROM consentd_changes
             WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
               AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
               AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
               AND (xid, id) > ($3::text::xid8, $4)
               AND $5 = ANY(tenants)
             ORDER BY consentd_changes.xid, id
             LIMIT $6",
        )
        .await
        .map_err(db_error)?;
    let rows = tx
        .query(
            &statement,
            &[
                &token.prev,
                &window.cur,
                &window.after_xid.to_string(),
                &window.after_id,
                &tenant.as_str(),
                &limit_rows,
            ],
        )
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    let more = rows.len() > limit;
    let mut entries = Vec::with_capacity(rows.len().min(limit));
    let mut last = None;
    for row in rows.iter().take(limit) {
        let id: i64 = row.get(0);
        let xid_text: String = row.get(1);
        let xid: u64 = xid_text.parse().map_err(|_| StoreError::Corrupt {
            key: format!("consentd_changes id {id}"),
            reason: format!("transaction id {xid_text:?}"),
        })?;
        let payload: Vec<u8> = row.get(3);
        let changes = super::row_changes(id, &payload)?;
        let at = Token {
            store: store.clone(),
            started,
            prev: token.prev.clone(),
            window: Some(Window {
                cur: window.cur.clone(),
                after_xid: xid,
                after_id: id,
            }),
        };
        let changes = watch::of_tenant(changes, tenant);
        if !changes.is_empty() {
            entries.push(WatchEntry {
                token: at.text(),
                recorded_at: row.get(2),
                changes,
            });
        }
        last = Some(at);
    }
    let through = if more {
        last.unwrap_or(token)
    } else {
        // The window is read to its end: the next starts after it.
        Token {
            store,
            started,
            prev: window.cur,
            window: None,
        }
    };
    Ok(WatchRead::Changes {
        entries,
        through: through.text(),
        more,
    })
}

/// Deletions of the watch log take turns under this advisory lock, so that
/// each one's horizon sees what the ones before deleted ("consentd-watch").
const RETENTION_LOCK: i64 = 0x636f_6e73_6e74_7763;

/// Deletes at most `limit` rows that `retention` lets go of (the newest
/// always stays) and records the horizon after them, in one transaction.
pub(super) async fn expire(
    client: &mut Object,
    retention: ChangeRetention,
    limit: i64,
) -> Result<u64> {
    if limit <= 0 {
        return Ok(0);
    }
    let keep = i64::try_from(retention.keep_max.max(1)).unwrap_or(i64::MAX);
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RETENTION_LOCK])
        .await
        .map_err(db_error)?;
    let gone = tx
        .execute(
            "DELETE FROM consentd_changes WHERE id IN (
                 SELECT id FROM consentd_changes,
                        (SELECT max(id) AS newest FROM consentd_changes) AS m
                 WHERE id < m.newest AND (recorded_at < $1 OR m.newest - id >= $2)
                 ORDER BY id LIMIT $3)",
            &[&retention.before, &keep, &limit],
        )
        .await
        .map_err(db_error)?;
    if gone > 0 {
        // A statement after the deletion: its snapshot sees every deleted row.
        tx.execute(
            "INSERT INTO consentd_watch_horizon (singleton, deleted_in)
             VALUES (true, pg_current_snapshot()::text)
             ON CONFLICT (singleton) DO UPDATE SET deleted_in = EXCLUDED.deleted_in",
            &[],
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(gone)
}

/// A transaction-id snapshot (`pg_snapshot`): the transactions below `xmin`
/// had ended, those from `xmax` on had not begun, and those in `xip` were
/// in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    /// Reads `xmin:xmax:xip,xip,…`.
    fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let xip = if xip.is_empty() {
            Vec::new()
        } else {
            xip.split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?
        };
        Some(Snapshot {
            xmin: xmin.parse().ok()?,
            xmax: xmax.parse().ok()?,
            xip,
        })
    }

    /// Whether every committed transaction visible in `other` is visible in
    /// this one (without knowing which ended in a commit: an in-progress
    /// transaction here that may have committed by `other` counts as unseen).
    fn sees_all_of(&self, other: &Snapshot) -> bool {
        other.xmax <= self.xmax
            && self
                .xip
                .iter()
                .all(|x| *x >= other.xmax || other.xip.contains(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_as_written() {
        for token in [
            Token {
                store: "0123456789abcdef".into(),
                started: 1_700_000_000_123_456,
                prev: "10:15:11,12".into(),
                window: None,
            },
            Token {
                store: store_id("db/schema"),
                started: 5,
                prev: "10:10:".into(),
                window: Some(Window {
                    cur: "12:14:13".into(),
                    after_xid: 12,
                    after_id: 99,
                }),
            },
        ] {
            assert_eq!(Token::parse(&token.text()), Ok(token));
        }
    }

    fn snapshot(text: &str) -> Snapshot {
        Snapshot::parse(text).expect("a snapshot")
    }

    #[test]
    fn a_snapshot_sees_what_an_earlier_one_saw() {
        assert_eq!(
            snapshot("10:15:11,12"),
            Snapshot {
                xmin: 10,
                xmax: 15,
                xip: vec![11, 12]
            }
        );
        assert_eq!(snapshot("7:7:").xip, Vec::<u64>::new());
        for bad in ["", "1:2", "1:2:3:4", "a:2:", "1:2:x", "1:2:3,"] {
            assert_eq!(Snapshot::parse(bad), None, "{bad}");
        }
        // A long transaction (5) runs in both; 11 ends in between.
        let earlier = snapshot("5:15:5,11,12");
        assert!(
            snapshot("5:20:5,12,17").sees_all_of(&earlier),
            "a later one"
        );
        assert!(earlier.sees_all_of(&earlier), "itself");
        // Not: 13 ran in the token's snapshot but had ended in the horizon's.
        assert!(!snapshot("5:15:5,11,12,13").sees_all_of(&earlier));
        // Not: the horizon saw transactions up to 15, the token only to 14.
        assert!(!snapshot("5:14:5,11,12").sees_all_of(&earlier));
        // Not: an earlier one, in which 14 still ran.
        assert!(!snapshot("5:15:5,11,12,14").sees_all_of(&earlier));
        // An in-progress transaction the horizon had not seen begin: fine.
        assert!(snapshot("5:20:5,16").sees_all_of(&earlier));
    }

    #[test]
    fn other_tokens_are_refused() {
        assert!(matches!(
            Token::parse("w1.s.0123456789abcdef.5"),
            Err(WatchRead::Resync(_))
        ));
        for text in [
            "",
            "w1.p.0123456789abcdef.x.1:2:.-.0.0",
            "w1.p.0123456789abcdef.1.1:2.-.0.0",
            "w1.p.0123456789abcdef.1.1:2:;drop.-.0.0",
            "w1.p.0123456789abcdef.1.1:2:.3:4:.x.0",
            "w1.p.0123456789abcdef.1.1:2:.-.0",
            "w1.p.0123456789abcdeg.1.1:2:.-.0.0",
            "w1.p.01234567.1.1:2:.-.0.0",
        ] {
            assert!(
                matches!(Token::parse(text), Err(WatchRead::Malformed(_))),
                "{text}"
            );
        }
    }
}
