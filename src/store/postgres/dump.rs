//! Whole-store reads of the PostgreSQL store, each in one REPEATABLE READ
//! snapshot: the decision index's start-up load, dumps (export) and online
//! backups.
//!
//! Dumps are read by synchronous iterators (the data tools' interface): a
//! task on the runtime streams rows through a bounded channel, so that
//! nothing holds the whole store in memory.

use std::sync::mpsc;

use futures_util::{StreamExt, pin_mut};
use tokio::sync::oneshot;
use tokio_postgres::{Client, Row, types::ToSql};

use super::{Connector, db_error, sql};
use crate::engine::{AddressHash, EventId, ProfileId, SubscriptionStatus, Tenant};
use crate::store::{DumpItem, Loaded, Result, Snapshot, StoreError, codec};

/// Rows a dump reads ahead of its reader.
const DUMP_AHEAD: usize = 1_024;

/// Runs `query` and calls `each` with every row, streamed.
async fn each_row(
    client: &Client,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    mut each: impl FnMut(&Row) -> Result<bool>,
) -> Result<()> {
    let statement = client.prepare(query).await.map_err(db_error)?;
    let rows = client
        .query_raw(&statement, params.iter().copied())
        .await
        .map_err(db_error)?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(db_error)?;
        if !each(&row)? {
            break;
        }
    }
    Ok(())
}

/// Loads what decisions read, in one snapshot; returns the snapshot
/// (`pg_current_snapshot()` as text) that the feed continues after.
pub(super) async fn load_decision_state(
    client: &Client,
    visit: &mut (dyn FnMut(Loaded) + Send),
) -> Result<String> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(db_error)?;
    let result = load_in_snapshot(client, visit).await;
    let end = client.batch_execute("COMMIT").await.map_err(db_error);
    let snapshot = result?;
    end?;
    Ok(snapshot)
}

async fn load_in_snapshot(
    client: &Client,
    visit: &mut (dyn FnMut(Loaded) + Send),
) -> Result<String> {
    let snapshot: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .map_err(db_error)?
        .get(0);
    each_row(
        client,
        "SELECT tenant, value FROM consentd_tenant_settings",
        &[],
        |row| {
            let settings = sql::decode("tenant settings", &sql::bytes(row, 1)?, |v| {
                codec::decode_tenant_settings(v)
            })?;
            visit(Loaded::TenantSettings(sql::tenant(row, 0)?, settings));
            Ok(true)
        },
    )
    .await?;
    each_row(
        client,
        "SELECT tenant, service_id, value FROM consentd_services",
        &[],
        |row| {
            visit(Loaded::Service(sql::tenant(row, 0)?, sql::service(row, 1)?));
            Ok(true)
        },
    )
    .await?;
    each_row(
        client,
        "SELECT tenant, profile_id, value FROM consentd_profiles",
        &[],
        |row| {
            visit(Loaded::Profile(
                sql::tenant(row, 0)?,
                Box::new(sql::profile(row, 1)?),
            ));
            Ok(true)
        },
    )
    .await?;
    each_row(
        client,
        "SELECT tenant, kind, address, status FROM consentd_addresses WHERE status <> 1",
        &[],
        |row| {
            let status: i16 = row.try_get(3).map_err(|e| sql::corrupt("row", e))?;
            let status = u8::try_from(status)
                .ok()
                .and_then(|s| codec::address_status_from_byte(s).ok())
                .ok_or_else(|| sql::corrupt("address", format!("unknown status {status}")))?;
            visit(Loaded::Address(
                sql::tenant(row, 0)?,
                sql::address(row, 1, 2)?,
                status,
            ));
            Ok(true)
        },
    )
    .await?;
    each_row(
        client,
        "SELECT tenant, kind, address, value FROM consentd_address_consent",
        &[],
        |row| {
            let consent = sql::decode("address consent", &sql::bytes(row, 3)?, |v| {
                codec::decode_address_consent(v)
            })?;
            let mask = consent.mask();
            if mask != 0 {
                visit(Loaded::AddressConsent(
                    sql::tenant(row, 0)?,
                    sql::address(row, 1, 2)?,
                    mask,
                ));
            }
            Ok(true)
        },
    )
    .await?;
    each_row(
        client,
        "SELECT tenant, profile_id, service_id, status FROM consentd_subscriptions",
        &[],
        |row| {
            let status: i16 = row.try_get(3).map_err(|e| sql::corrupt("row", e))?;
            let status: SubscriptionStatus = u8::try_from(status)
                .ok()
                .and_then(|s| codec::decode_subscription_status(&[s]).ok())
                .ok_or_else(|| sql::corrupt("subscription", format!("unknown status {status}")))?;
            visit(Loaded::Subscription(
                sql::tenant(row, 0)?,
                ProfileId::from_trusted(sql::text(row, 1)?),
                crate::engine::ServiceId::from_trusted(sql::text(row, 2)?),
                status,
            ));
            Ok(true)
        },
    )
    .await?;
    Ok(snapshot)
}

/// The tables of a dump and how a row becomes an item, in the order a
/// restore needs them (profiles before their history is not required, but
/// the order is stable).
const DUMP_QUERIES: &[&str] = &[
    "SELECT tenant, value FROM consentd_tenant_settings WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant",
    "SELECT tenant, service_id, value FROM consentd_services WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, service_id",
    "SELECT tenant, profile_id, value FROM consentd_profiles WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, profile_id",
    "SELECT tenant, profile_id, value FROM consentd_history WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, profile_id, seq",
    "SELECT tenant, kind, address, value FROM consentd_addresses WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, kind, address",
    "SELECT tenant, kind, address, value FROM consentd_address_events WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, kind, address, event_time, seq",
    "SELECT tenant, kind, address, event_id, recorded_at FROM consentd_event_markers WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, event_id",
    "SELECT tenant, profile_id, service_id, value FROM consentd_subscriptions WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, profile_id, service_id",
    "SELECT tenant, hash, value FROM consentd_tokens WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, hash",
    "SELECT tenant, user_id, value FROM consentd_usage_opt_outs WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, user_id",
    "SELECT tenant, kind, address, value FROM consentd_address_consent WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, kind, address",
    "SELECT tenant, value FROM consentd_erasure_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant",
    "SELECT tenant, hash, value FROM consentd_tombstones WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, hash",
    "SELECT tenant, value FROM consentd_erasures WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, erased_at, id",
];

/// One row of `DUMP_QUERIES[table]` as a dump item.
fn item(table: usize, row: &Row) -> Result<DumpItem> {
    let tenant = sql::tenant(row, 0)?;
    Ok(match table {
        0 => DumpItem::TenantSettings {
            tenant,
            settings: sql::decode("tenant settings", &sql::bytes(row, 1)?, |v| {
                codec::decode_tenant_settings(v)
            })?,
        },
        1 => DumpItem::Service {
            tenant,
            service: sql::service(row, 1)?,
        },
        2 => DumpItem::Profile {
            tenant,
            profile: sql::profile(row, 1)?,
        },
        3 => DumpItem::ConsentEntry {
            tenant,
            profile_id: ProfileId::from_trusted(sql::text(row, 1)?),
            entry: sql::decode("history", &sql::bytes(row, 2)?, |v| {
                codec::decode_consent_entry(v)
            })?,
        },
        4 => DumpItem::AddressState {
            tenant,
            address: sql::address(row, 1, 2)?,
            state: sql::decode("address", &sql::bytes(row, 3)?, |v| {
                codec::decode_address_state(v)
            })?,
        },
        5 => DumpItem::AddressEvent {
            tenant,
            address: sql::address(row, 1, 2)?,
            event: sql::decode("address log", &sql::bytes(row, 3)?, |v| {
                codec::decode_address_event(v)
            })?,
        },
        6 => DumpItem::FeedbackEventId {
            tenant,
            address: sql::address(row, 1, 2)?,
            event_id: EventId::from_trusted(sql::text(row, 3)?),
            recorded_at: row.try_get(4).map_err(|e| sql::corrupt("row", e))?,
        },
        7 => DumpItem::Subscription {
            tenant,
            profile_id: ProfileId::from_trusted(sql::text(row, 1)?),
            subscription: sql::subscription(row, 2)?,
        },
        8 => DumpItem::ConfirmationToken {
            tenant,
            hash: sql::token_hash(row, 1)?,
            record: sql::token(&sql::bytes(row, 2)?)?,
        },
        9 => DumpItem::UsageOptOut {
            tenant,
            opt_out: sql::usage(row, 1)?,
        },
        10 => DumpItem::AddressConsent {
            tenant,
            address: sql::address(row, 1, 2)?,
            consent: sql::decode("address consent", &sql::bytes(row, 3)?, |v| {
                codec::decode_address_consent(v)
            })?,
        },
        11 => DumpItem::ErasureKey {
            tenant,
            key: sql::decode("erasure key", &sql::bytes(row, 1)?, |v| {
                codec::decode_erasure_key(v)
            })?,
        },
        12 => DumpItem::Tombstone {
            tenant,
            hash: AddressHash(sql::hash32(row, 1)?),
            tombstone: sql::decode("tombstone", &sql::bytes(row, 2)?, |v| {
                codec::decode_tombstone(v)
            })?,
        },
        _ => DumpItem::Erasure {
            tenant,
            erasure: sql::decode("erasure", &sql::bytes(row, 1)?, |v| {
                codec::decode_erasure(v)
            })?,
        },
    })
}

/// Streams every dump table through `client` (in its transaction) into `send`.
async fn stream_items(
    client: &Client,
    tenant: Option<&Tenant>,
    send: &mpsc::SyncSender<Result<DumpItem>>,
) -> Result<()> {
    let tenant = tenant.map(|t| t.as_str().to_owned());
    for (table, query) in DUMP_QUERIES.iter().enumerate() {
        let mut gone = false;
        each_row(client, query, &[&tenant], |row| {
            // The reader went away: stop reading.
            gone = send.send(item(table, row)).is_err();
            Ok(!gone)
        })
        .await?;
        if gone {
            break;
        }
    }
    Ok(())
}

/// How many records the dump tables hold for `tenant`.
async fn count_items(client: &Client, tenant: Option<&Tenant>) -> Result<usize> {
    let name = tenant.map(|t| t.as_str().to_owned());
    let mut count = 0usize;
    for query in DUMP_QUERIES {
        let counted = format!("SELECT count(*) FROM ({query}) AS records");
        let n: i64 = client
            .query_one(counted.as_str(), &[&name])
            .await
            .map_err(db_error)?
            .get(0);
        count = count.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
    }
    Ok(count)
}

/// A synchronous iterator over what a reader thread sends.
struct Received(mpsc::Receiver<Result<DumpItem>>);

impl Iterator for Received {
    type Item = Result<DumpItem>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.recv().ok()
    }
}

/// Where a reader thread sends the items of one read.
type ItemSender = mpsc::SyncSender<Result<DumpItem>>;

/// Starts a reader: a thread with a runtime and a connection of its own, in
/// one REPEATABLE READ transaction, so that a synchronous reader may block
/// on its items from any thread (an async worker included) without stopping
/// the connection that produces them. It counts the records first when
/// `ready` asks for the count, then streams the whole dump for each request,
/// and ends (closing its connection) once every request sender is gone.
fn spawn_reader(
    connector: Connector,
    tenant: Option<Tenant>,
    ready: Option<oneshot::Sender<Result<usize>>>,
) -> tokio::sync::mpsc::UnboundedSender<ItemSender> {
    let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel::<ItemSender>();
    let spawned = std::thread::Builder::new()
        .name("consentd-pg-dump".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let error = StoreError::io(error);
                    fail(ready, &mut incoming, &error);
                    return;
                }
            };
            runtime.block_on(async move {
                let opened = async {
                    let client = connector.connect().await?;
                    client
                        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        .await
                        .map_err(db_error)?;
                    let count = match &ready {
                        Some(_) => count_items(&client, tenant.as_ref()).await?,
                        None => 0,
                    };
                    Ok::<_, StoreError>((client, count))
                }
                .await;
                let client = match opened {
                    Ok((client, count)) => {
                        if let Some(ready) = ready {
                            let _ = ready.send(Ok(count));
                        }
                        client
                    }
                    Err(error) => {
                        fail(ready, &mut incoming, &error);
                        return;
                    }
                };
                while let Some(send) = incoming.recv().await {
                    if let Err(error) = stream_items(&client, tenant.as_ref(), &send).await {
                        let _ = send.send(Err(error));
                    }
                }
            });
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start a thread to read the database");
    }
    requests
}

/// Tells whoever waits that the reader could not start.
fn fail(
    ready: Option<oneshot::Sender<Result<usize>>>,
    incoming: &mut tokio::sync::mpsc::UnboundedReceiver<ItemSender>,
    error: &StoreError,
) {
    if let Some(ready) = ready {
        let _ = ready.send(Err(error.clone()));
    }
    while let Ok(send) = incoming.try_recv() {
        let _ = send.send(Err(error.clone()));
    }
}

/// Every record of `tenant` (all when `None`), in one snapshot.
pub(super) fn dump(
    connector: Connector,
    tenant: Option<Tenant>,
) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send> {
    let (send, receive) = mpsc::sync_channel(DUMP_AHEAD);
    let requests = spawn_reader(connector, tenant, None);
    if requests.send(send).is_err() {
        return Box::new(std::iter::once(Err(StoreError::io(std::io::Error::other(
            "the database reader stopped",
        )))));
    }
    Box::new(Received(receive))
}

/// An online backup's view: a reader thread holding one REPEATABLE READ
/// transaction; each `items` call reads the dump in it.
struct PgSnapshot {
    requests: tokio::sync::mpsc::UnboundedSender<ItemSender>,
    count: usize,
}

impl std::fmt::Debug for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSnapshot")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Snapshot for PgSnapshot {
    fn len(&self) -> usize {
        self.count
    }

    fn paused(&self) -> std::time::Duration {
        // Writes never wait for a PostgreSQL snapshot.
        std::time::Duration::ZERO
    }

    fn items(&self) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + '_> {
        let (send, receive) = mpsc::sync_channel(DUMP_AHEAD);
        if self.requests.send(send).is_err() {
            return Box::new(std::iter::once(Err(StoreError::io(std::io::Error::other(
                "the database reader stopped",
            )))));
        }
        Box::new(Received(receive))
    }
}

/// Takes a snapshot of `tenant`'s records (all when `None`) and counts them.
pub(super) async fn snapshot(
    connector: Connector,
    tenant: Option<Tenant>,
) -> Result<Box<dyn Snapshot>> {
    let (ready, counted) = oneshot::channel();
    let requests = spawn_reader(connector, tenant, Some(ready));
    let count = counted
        .await
        .map_err(|_| StoreError::io(std::io::Error::other("the database reader stopped")))??;
    Ok(Box::new(PgSnapshot { requests, count }))
}
