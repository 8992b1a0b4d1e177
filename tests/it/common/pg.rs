//! PostgreSQL for the integration tests: the database `CONSENTD_TEST_DATABASE_URL`
//! names (CI starts one with `tools/pg/cluster`), a schema per test.
//!
//! `CONSENTD_TEST_STORE=postgres` runs the in-process servers of the whole
//! harness on PostgreSQL instead of sled (CI does so for the tests that
//! matter for storage); the tests of several replicas run on it whenever
//! there is a database. Without one they skip and say so, except under
//! `CI=true`, where a missing database fails them.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The test database's URL; `None` (the caller skips) without one.
pub(crate) fn database_url() -> Option<String> {
    match std::env::var("CONSENTD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but CONSENTD_TEST_DATABASE_URL is not set: CI must start PostgreSQL \
                 (tools/pg/cluster)"
            );
            eprintln!(
                "skipped: no PostgreSQL (set CONSENTD_TEST_DATABASE_URL, e.g. from \
                 `tools/pg/cluster start /tmp/pg`)"
            );
            None
        }
    }
}

/// Whether the harness's servers run on PostgreSQL (`CONSENTD_TEST_STORE=postgres`).
pub(crate) fn harness_on_postgres() -> bool {
    std::env::var("CONSENTD_TEST_STORE").as_deref() == Ok("postgres")
}

/// The schema of a test's data directory: the same across restarts of
/// one test's server, different for every test.
pub(crate) fn schema_for(data_dir: &Path) -> String {
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("it_{hex}")
}

/// Creates `schema` if it is not there.
pub(crate) async fn create_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .expect("create the test's schema");
}

/// A PostgreSQL store on `schema` (created if missing).
pub(crate) async fn store(url: &str, schema: &str) -> consentd::store::postgres::PgStore {
    create_schema(url, schema).await;
    let mut options = consentd::store::postgres::PgOptions::new(url.to_owned());
    options.schema = Some(schema.to_owned());
    options.pool_size = 8;
    consentd::store::postgres::PgStore::connect(options)
        .await
        .expect("open the PostgreSQL store")
}
