//! The schema, shipped in the binary and applied at start-up.
//!
//! `consentd_schema` holds the version applied. A store opens only a
//! database whose version this build knows: older versions are upgraded in
//! one transaction (under an advisory lock, so that replicas starting at
//! once apply it once), a newer one is refused.

use tokio_postgres::Client;

use super::{db_error, incompatible};
use crate::store::Result;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 3;

/// The advisory lock that serialises migrations (an arbitrary constant:
/// "consentd" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6e73_656e_7464;

/// Brings the schema to [`SCHEMA_VERSION`], or refuses a newer one.
pub(super) async fn migrate(client: &mut Client) -> Result<i32> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS consentd_schema (version integer NOT NULL)")
        .await
        .map_err(db_error)?;
    let found: Option<i32> = tx
        .query_opt("SELECT max(version) FROM consentd_schema", &[])
        .await
        .map_err(db_error)?
        .and_then(|row| row.get(0));
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        tx.rollback().await.map_err(db_error)?;
        return Err(incompatible(format!(
            "the database's consentd schema is version {found}, newer than this build knows \
             ({SCHEMA_VERSION}): run a consentd at least as new as the one that upgraded it"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql).await.map_err(db_error)?;
        tx.execute(
            "INSERT INTO consentd_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db_error)?;
        tracing::info!(version, "applied the PostgreSQL schema migration");
    }
    tx.commit().await.map_err(db_error)?;
    Ok(SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_has_its_migration() {
        assert_eq!(
            MIGRATIONS.len(),
            usize::try_from(SCHEMA_VERSION).unwrap_or(0)
        );
        assert!(MIGRATIONS.iter().all(|sql| sql.contains("CREATE")));
    }
}
