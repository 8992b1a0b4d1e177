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

/// Uses transaction ids until the next one is at least `target`.
async fn burn_xids_until(client: &tokio_postgres::Client, target: u64) {
    let one = "BEGIN; SELECT pg_current_xact_id(); COMMIT;";
    loop {
        let now: String = client
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .expect("xid")
            .get(0);
        let now: u64 = now.parse().expect("a number");
        if now + 1 >= target {
            return;
        }
        let n = usize::try_from((target - now - 1).min(1_000)).unwrap_or(1_000);
        client.batch_execute(&one.repeat(n)).await.expect("burn");
    }
}

/// Transaction ids are numbers: `9xxx` comes before `10xxx` although it
/// sorts after it as text (the feed once ordered them as text).
#[tokio::test]
async fn the_feed_orders_changes_by_transaction_id_across_a_power_of_ten() {
    use crate::engine::{Profile, ProfileAddresses, ProfileId, Tenant};
    use crate::store::{Change, Committed, Lock};
    use std::sync::Mutex;
    let Some(url) = test_database_url() else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let now: String = client
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .expect("xid")
        .get(0);
    let now: u64 = now.parse().expect("a number");
    let digits = u32::try_from(now.to_string().len()).expect("a short number");
    let boundary = 10u64.pow(digits);
    if boundary - now > 200_000 {
        eprintln!("skipped: transaction id {now} is too far below {boundary}");
        return;
    }
    let Some((store, _schema)) = fresh().await else {
        return;
    };
    let t = Tenant::parse("t").expect("valid");
    let put = |email: &str| {
        let profile = Profile::new(
            ProfileId::parse("p").expect("valid"),
            ProfileAddresses {
                emails: vec![crate::engine::Address::email(email).expect("valid")],
                ..ProfileAddresses::default()
            },
            1,
        );
        let (store, t) = (Arc::clone(&store), t.clone());
        async move {
            let mut tx = store
                .begin(vec![Lock::Profile(t.clone(), profile.id.clone())])
                .await
                .expect("begin");
            tx.put_profile(&t, &profile);
            tx.commit().await.expect("commit");
        }
    };
    // Other tests take ids meanwhile: aim below the boundary, then past it.
    burn_xids_until(&client, boundary - 300).await;
    put("before@x.io").await;
    burn_xids_until(&client, boundary + 1).await;
    put("after@x.io").await;
    let seen: Arc<Mutex<Vec<Committed>>> = Arc::default();
    let sink_seen = Arc::clone(&seen);
    store
        .follow(
            store.position(),
            Box::new(move |batch: &[Committed]| {
                sink_seen.lock().expect("lock").extend_from_slice(batch);
            }),
        )
        .expect("follow");
    store.sync().await.expect("sync");
    let emails: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|c| c.changes.iter())
        .filter_map(|change| match change {
            Change::Profile { profile, .. } => Some(profile.emails[0].as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(emails, vec!["before@x.io", "after@x.io"]);
}
