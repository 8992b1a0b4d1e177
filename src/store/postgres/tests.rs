//! The PostgreSQL store against the conformance suite, each test in a
//! schema of its own on the database that `CONSENTD_TEST_DATABASE_URL`
//! names. Without it the tests skip and say so, except under `CI=true`,
//! where they fail: CI starts a cluster (`tools/pg/cluster`).

use std::sync::Arc;

use super::{PgOptions, PgStore};
use crate::store::Store;

/// The test database's URL, if there is one; panics under CI without one.
pub(crate) fn test_database_url() -> Option<String> {
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

/// A schema of its own, dropped with the guard.
pub(crate) struct Schema {
    url: String,
    pub(crate) name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Dropped on a thread of its own, not waited for: the test's
        // runtime may be the one that must run its connections' ROLLBACKs
        // before the schema's locks are free.
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    for _ in 0..30 {
                        let dropped = client
                            .batch_execute(&format!(
                                "SET lock_timeout = '2s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                            ))
                            .await;
                        if dropped.is_ok() {
                            break;
                        }
                    }
                }
            });
        });
    }
}

/// Creates a fresh schema on the test database.
pub(crate) async fn fresh_schema(url: &str) -> Schema {
    let name = format!("consentd_test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .expect("create a schema");
    Schema {
        url: url.to_owned(),
        name,
    }
}

/// A store on a fresh schema, or `None` (skipped).
pub(crate) async fn fresh() -> Option<(Arc<dyn Store>, Schema)> {
    let url = test_database_url()?;
    let schema = fresh_schema(&url).await;
    let mut options = PgOptions::new(url);
    options.schema = Some(schema.name.clone());
    options.pool_size = 8;
    let store = PgStore::connect(options).await.expect("connect the store");
    Some((Arc::new(store), schema))
}

crate::store::conformance::conformance_suite!(match fresh().await {
    Some(made) => made,
    None => return,
});

#[tokio::test]
async fn a_database_with_a_newer_schema_is_refused() {
    let Some(url) = test_database_url() else {
        return;
    };
    let schema = fresh_schema(&url).await;
    let mut options = PgOptions::new(url.clone());
    options.schema = Some(schema.name.clone());
    drop(
        PgStore::connect(options.clone())
            .await
            .expect("first start"),
    );
    // Again: nothing to apply.
    drop(
        PgStore::connect(options.clone())
            .await
            .expect("second start"),
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "INSERT INTO {}.consentd_schema (version) VALUES ({})",
            schema.name,
            super::SCHEMA_VERSION + 1
        ))
        .await
        .expect("pretend a newer consentd upgraded it");
    let refused = PgStore::connect(options).await.expect_err("newer schema");
    assert!(
        refused.to_string().contains("newer than this build knows"),
        "{refused}"
    );
}

#[test]
fn a_url_is_shown_without_its_password() {
    let shown = super::redact("postgres://consentd:s3cret@db.example:5432/consent?sslmode=require");
    assert_eq!(shown, "postgres://consentd@db.example/consent");
    assert!(!super::redact("host=db password=s3cret user=u dbname=d").contains("s3cret"));
}

#[test]
fn advisory_keys_are_the_same_in_every_process_and_differ_per_lock() {
    use crate::store::Lock;
    let t = crate::engine::Tenant::parse("t").expect("valid");
    let a = Lock::Profile(
        t.clone(),
        crate::engine::ProfileId::parse("p1").expect("valid"),
    );
    let b = Lock::Profile(
        t.clone(),
        crate::engine::ProfileId::parse("p2").expect("valid"),
    );
    let c = Lock::UsageUser(t, crate::engine::UserId::parse("p1").expect("valid"));
    // Pinned: another build must compute the same key, or two replicas of
    // different versions would not exclude each other.
    assert_eq!(super::advisory_key(&a), super::advisory_key(&a.clone()));
    assert_ne!(super::advisory_key(&a), super::advisory_key(&b));
    assert_ne!(super::advisory_key(&a), super::advisory_key(&c));
}
