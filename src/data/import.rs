//! Import: JSON lines back into a store, each line validated before anything
//! of it is written.

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead, Read as _},
};

use super::{
    DataError,
    record::{Header, Record},
};
use crate::{
    engine::{Address, ErasureKey, LogMeta, Tenant},
    store::{DumpItem, Lock, Store},
};
use tokio::runtime::Handle;

/// Records restored per bulk write (lines are never split between writes).
pub const BATCH_RECORDS: usize = 1000;

/// Longest line accepted; a longer one is rejected (the largest real record,
/// a profile with every address at its limit, is about 20 KiB).
pub const LINE_LEN_MAX_BYTES: usize = 1024 * 1024;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// The file's header.
    pub header: Option<Header>,
    /// Records restored, per `type`.
    pub restored: BTreeMap<&'static str, u64>,
    /// Lines rejected (each reported through `on_reject`).
    pub rejected: u64,
}

impl ImportSummary {
    /// Records restored, all types together.
    pub fn total(&self) -> u64 {
        self.restored.values().sum()
    }
}

/// Restores every line of `input` into `store`. The first line must be a
/// header of a format version this build reads, or nothing is imported.
/// Every other line is parsed and validated in full, then restored with
/// others in atomic batches that never split a line; a line that fails is
/// reported to `on_reject` with its line number (from 1) and reason, and
/// nothing of it is written. `on_progress`
/// gets the bytes read so far. Restoring replaces records with the same key,
/// so importing a file twice gives the same state as importing it once.
/// Writes are not durable until the caller runs [`Store::sync`]. Store
/// calls run on `runtime` (the caller is not async).
pub fn import(
    store: &dyn Store,
    runtime: &Handle,
    mut input: impl BufRead,
    mut on_reject: impl FnMut(u64, &str),
    mut on_progress: impl FnMut(u64),
) -> Result<ImportSummary, DataError> {
    let mut summary = ImportSummary::default();
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut pending: Vec<(&'static str, DumpItem)> = Vec::with_capacity(BATCH_RECORDS);
    let mut respelled = Respelled::default();
    let mut bytes = 0u64;
    loop {
        buf.clear();
        let read = input
            .by_ref()
            .take(u64::try_from(LINE_LEN_MAX_BYTES + 2).unwrap_or(u64::MAX))
            .read_until(b'\n', &mut buf)
            .map_err(DataError::io("reading the import file"))?;
        if read == 0 {
            break;
        }
        line_no += 1;
        bytes += u64::try_from(read).unwrap_or(u64::MAX);
        if buf.last() != Some(&b'\n') && buf.len() > LINE_LEN_MAX_BYTES {
            // Skip the rest of the over-long line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let more = input
                    .by_ref()
                    .take(64 * 1024)
                    .read_until(b'\n', &mut rest)
                    .map_err(DataError::io("reading the import file"))?;
                bytes += u64::try_from(more).unwrap_or(u64::MAX);
                if more == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
            let reason = format!("longer than {LINE_LEN_MAX_BYTES} bytes");
            if line_no == 1 {
                return Err(DataError::Input(format!("line 1: {reason}")));
            }
            summary.rejected += 1;
            on_reject(line_no, &reason);
            continue;
        }
        let text = buf.trim_ascii();
        if line_no == 1 {
            summary.header = Some(header(text)?);
            continue;
        }
        if text.is_empty() {
            continue;
        }
        match parse_line(text) {
            Ok(Some((type_name, item, canonical))) => {
                if let DumpItem::ErasureKey { tenant, key } = &item {
                    same_erasure_key(store, runtime, tenant, key)
                        .map_err(|why| DataError::Input(format!("line {line_no}: {why}")))?;
                }
                let item = respelled.merge(store, runtime, &pending, item, canonical)?;
                pending.push((type_name, item));
            }
            Ok(None) => {}
            Err(reason) => {
                summary.rejected += 1;
                on_reject(line_no, &reason);
            }
        }
        if pending.len() == BATCH_RECORDS {
            restore(store, runtime, &mut pending, &mut summary)?;
            on_progress(bytes);
        }
    }
    restore(store, runtime, &mut pending, &mut summary)?;
    on_progress(bytes);
    if summary.header.is_none() {
        return Err(DataError::Input(
            "the file is empty: an export starts with a header line".to_owned(),
        ));
    }
    Ok(summary)
}

fn header(text: &[u8]) -> Result<Header, DataError> {
    let bad =
        |why: String| DataError::Input(format!("line 1: not a consentd export header: {why}"));
    match serde_json::from_slice::<Record>(text) {
        Ok(Record::Header(header)) => {
            header.check().map_err(bad)?;
            Ok(header)
        }
        Ok(other) => Err(bad(format!("found a '{}' record", other.type_name()))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Refuses a tenant's erasure secret when the store holds another one: its
/// tombstones were hashed with one of the two, and replacing the store's
/// would make every tombstone it holds unreachable (the people it kept
/// opted out would be contactable again), while keeping it would do the
/// same to the file's. The import stops there.
fn same_erasure_key(
    store: &dyn Store,
    runtime: &Handle,
    tenant: &Tenant,
    key: &ErasureKey,
) -> Result<(), String> {
    let held = runtime
        .block_on(async {
            let mut tx = store.begin(vec![Lock::ErasureKey(tenant.clone())]).await?;
            tx.erasure_key(tenant).await
        })
        .map_err(|e| e.to_string())?;
    match held {
        Some(held) if &held != key => Err(format!(
            "tenant '{}' already holds another erasure secret: the tombstones of this file and \
             those of the store were hashed with different secrets and cannot be merged; import \
             this tenant into a store without erasures of it",
            tenant.as_str()
        )),
        _ => Ok(()),
    }
}

/// Restores the pending records (whole lines only) and counts them.
fn restore(
    store: &dyn Store,
    runtime: &Handle,
    pending: &mut Vec<(&'static str, DumpItem)>,
    summary: &mut ImportSummary,
) -> Result<(), DataError> {
    let (types, items): (Vec<&'static str>, Vec<DumpItem>) = pending.drain(..).unzip();
    runtime.block_on(store.restore(&items))?;
    for type_name in types {
        *summary.restored.entry(type_name).or_default() += 1;
    }
    Ok(())
}

/// For the fuzz target `export_line` (not an API): parses and validates one
/// line of an export as `import` does; `Err` is the reason it is rejected.
#[doc(hidden)]
pub fn fuzz_parse_line(text: &[u8]) -> Result<bool, String> {
    parse_line(text).map(|item| item.is_some())
}

/// Parses and validates one line in full; `Err` is the reason it is
/// rejected. The flag says whether the line's address (if it has one) was
/// written in its canonical form.
fn parse_line(text: &[u8]) -> Result<Option<(&'static str, DumpItem, bool)>, String> {
    let record: Record = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let type_name = record.type_name();
    if type_name == "header" {
        return Err("a header is allowed only on line 1".to_owned());
    }
    let raw_address = match &record {
        Record::AddressState(r) => Some(r.address.clone()),
        _ => None,
    };
    let item = record
        .into_item()
        .map_err(|e| format!("{type_name}: {e}"))?;
    Ok(item.map(|item| {
        let canonical = match (&item, raw_address) {
            (DumpItem::AddressState { address, .. }, Some(raw)) => address.as_str() == raw,
            _ => true,
        };
        (type_name, item, canonical)
    }))
}

/// The addresses of an import (an export of an earlier version) that were
/// written in another spelling than today's canonical form. Two spellings
/// of one address merge as at a data directory's upgrade: the stricter state
/// wins (`AddressState::stricter`), the log counts both logs' entries. The
/// first state of an address written in its canonical form replaces what
/// the store had, as every record does.
#[derive(Default)]
struct Respelled(HashSet<(Tenant, Address)>);

impl Respelled {
    fn merge(
        &mut self,
        store: &dyn Store,
        runtime: &Handle,
        pending: &[(&'static str, DumpItem)],
        item: DumpItem,
        canonical: bool,
    ) -> Result<DumpItem, DataError> {
        let DumpItem::AddressState {
            tenant,
            address,
            state,
        } = item
        else {
            return Ok(item);
        };
        let key = (tenant, address);
        if canonical && !self.0.contains(&key) {
            let (tenant, address) = key;
            return Ok(DumpItem::AddressState {
                tenant,
                address,
                state,
            });
        }
        let earlier = pending.iter().rev().find_map(|(_, earlier)| match earlier {
            DumpItem::AddressState {
                tenant,
                address,
                state,
            } if (tenant, address) == (&key.0, &key.1) => Some(state.clone()),
            _ => None,
        });
        let earlier = match earlier {
            Some(state) => Some(state),
            None => runtime.block_on(store.address_state(&key.0, &key.1))?,
        };
        let state = match earlier {
            None => state,
            Some(earlier) => {
                let log = LogMeta {
                    len: earlier.log.len.saturating_add(state.log.len),
                    since_checkpoint: earlier.log.len.saturating_add(state.log.len),
                    start: earlier.log.start.or(state.log.start),
                };
                let log_seq = earlier.log_seq.max(state.log_seq);
                let mut merged = earlier.stricter(state);
                merged.log = log;
                merged.log_seq = log_seq;
                merged
            }
        };
        self.0.insert(key.clone());
        let (tenant, address) = key;
        Ok(DumpItem::AddressState {
            tenant,
            address,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        data::record::Header,
        engine::{AddressStatus, Tenant},
        store::memory::MemoryStore,
    };

    fn state_line(address: &str, status: &str, updated_at: i64, log_seq: u64) -> String {
        format!(
            r#"{{"type":"address_state","tenant":"t","address_type":"EMAIL","address":"{address}","status":"{status}","error_count":0,"first_error_at_ms":null,"last_error_at_ms":null,"last_error_reason":"UNSPECIFIED","last_reason":"{status}","updated_at_ms":{updated_at},"last_event_at_ms":null,"log_seq":{log_seq}}}"#
        )
    }

    async fn import_lines(store: &MemoryStore, lines: &[String]) -> ImportSummary {
        let header = serde_json::to_string(&Record::Header(Header::new(None, 1))).expect("json");
        let text = std::iter::once(header)
            .chain(lines.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n");
        let runtime = Handle::current();
        let store_ref: &dyn Store = store;
        tokio::task::block_in_place(|| {
            import(
                store_ref,
                &runtime,
                text.as_bytes(),
                |_, r| panic!("{r}"),
                |_| {},
            )
        })
        .expect("import")
    }

    /// A tenant's erasure secret is imported once, again the same, and never
    /// over another one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_erasure_secret_never_replaces_another() {
        let key = |byte: u8| {
            format!(
                r#"{{"type":"erasure_key","tenant":"t","key":"{}"}}"#,
                format!("{byte:02x}").repeat(32)
            )
        };
        let store = MemoryStore::new();
        assert_eq!(import_lines(&store, &[key(1)]).await.total(), 1);
        assert_eq!(import_lines(&store, &[key(1)]).await.total(), 1, "the same");
        let header = serde_json::to_string(&Record::Header(Header::new(None, 1))).expect("json");
        let text = format!("{header}\n{}\n", key(2));
        let runtime = Handle::current();
        let store_ref: &dyn Store = &store;
        let refused = tokio::task::block_in_place(|| {
            import(store_ref, &runtime, text.as_bytes(), |_, _| {}, |_| {})
        })
        .expect_err("another secret");
        assert!(
            refused.to_string().contains("line 2") && refused.to_string().contains("erasure"),
            "{refused}"
        );
        let mut tx = store
            .begin(vec![Lock::ErasureKey(Tenant::parse("t").expect("valid"))])
            .await
            .expect("begin");
        assert_eq!(
            tx.erasure_key(&Tenant::parse("t").expect("valid"))
                .await
                .expect("read"),
            Some(ErasureKey([1; 32])),
            "the store's secret stays"
        );
    }

    /// An export of an earlier version may hold two spellings of one
    /// address: in either order, they merge and the stricter state wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_spellings_of_one_address_merge_and_the_stricter_state_wins() {
        let t = Tenant::parse("t").expect("valid");
        let canonical = Address::email("user@bücher.de").expect("valid");
        let old = state_line("user@bücher.de", "DENYLISTED", 5, 2);
        let new = state_line("user@xn--bcher-kva.de", "QUARANTINED", 9, 3);
        for lines in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
            let store = MemoryStore::new();
            let summary = import_lines(&store, &lines).await;
            assert_eq!(summary.total(), 2);
            let state = store
                .address_state(&t, &canonical)
                .await
                .expect("read")
                .expect("state");
            assert_eq!(state.status, AddressStatus::Denylisted, "{lines:?}");
            assert_eq!(state.log_seq, 3, "the merged log numbers after both");
        }
        // Without another spelling, a record replaces what the store had,
        // as every record does.
        let store = MemoryStore::new();
        import_lines(&store, std::slice::from_ref(&old)).await;
        import_lines(
            &store,
            &[state_line("user@xn--bcher-kva.de", "VALID", 20, 4)],
        )
        .await;
        let state = store
            .address_state(&t, &canonical)
            .await
            .expect("read")
            .expect("state");
        assert_eq!(state.status, AddressStatus::Valid);
    }
}
