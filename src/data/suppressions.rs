//! Import of suppression lists as other platforms export them (Mailchimp,
//! SendGrid, Adobe Campaign, ...): CSV with a header row, one address per row,
//! a reason and an optional date.
//!
//! Bounces quarantine the address; complaints, unsubscribes and manual
//! suppressions denylist it. Each row is one manual address event (source
//! IMPORT, the row's reason kept as the event's reason) recorded the way
//! `QuarantineAddress` records one, so that re-importing a file adds nothing:
//! an address that already has the status is left alone. A bounce never turns
//! a DENYLISTED address into QUARANTINED.

use std::{io::Read, time::Duration};

use chrono::{DateTime, NaiveDate, NaiveDateTime};

use tokio::runtime::Handle;

use super::DataError;
use crate::{
    app::{ManualEvent, Recording, record_manual},
    engine::{
        Address, AddressStatus, ChangeContext, LogLimits, QuarantineRules, Region, Source, Tenant,
        UnixMillis,
    },
    store::Store,
};

/// Header names (compared case-insensitively, with spaces, `-` and `_`
/// ignored) of the column that holds the address.
pub const ADDRESS_HEADERS: &[&str] = &[
    "address",
    "email",
    "emailaddress",
    "e-mail",
    "mail",
    "recipient",
    "phone",
    "phonenumber",
];
/// Header names of the column that holds the reason.
pub const REASON_HEADERS: &[&str] = &[
    "reason",
    "type",
    "suppressiontype",
    "suppressionreason",
    "category",
    "status",
];
/// Header names of the column that holds the date.
pub const DATE_HEADERS: &[&str] = &[
    "date",
    "created",
    "createdat",
    "timestamp",
    "time",
    "suppressedat",
    "lastchanged",
];
/// Rows recorded per bulk write (one `apply_batch` each, unless an address
/// repeats within it).
pub const BULK_ROWS: usize = 1000;
/// How far in the future a row's date may lie (clock skew), as for feedback.
pub const DATE_FUTURE_SKEW_MAX: Duration = crate::app::FEEDBACK_FUTURE_SKEW_MAX;

/// What a reason means for the address.
fn status_of(reason: &str) -> Option<AddressStatus> {
    let key: String = reason
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect();
    match key.as_str() {
        "bounce" | "bounced" | "hardbounce" | "softbounce" | "cleaned" | "invalid"
        | "quarantine" | "quarantined" => Some(AddressStatus::Quarantined),
        "complaint" | "spam" | "spamreport" | "abuse" | "unsubscribe" | "unsubscribed"
        | "unsub" | "optout" | "manual" | "block" | "blocked" | "denylist" | "denylisted" => {
            Some(AddressStatus::Denylisted)
        }
        _ => None,
    }
}

/// Parses a row's date: RFC 3339 (`2024-03-01T12:00:00Z`, with any offset),
/// `YYYY-MM-DD HH:MM:SS` (UTC), `YYYY-MM-DD` (midnight UTC) or Unix seconds.
pub fn parse_date(raw: &str) -> Result<UnixMillis, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_millis());
    }
    if !raw.is_empty()
        && raw.len() <= 12
        && raw.bytes().all(|b| b.is_ascii_digit())
        && let Ok(seconds) = raw.parse::<i64>()
    {
        return Ok(seconds.saturating_mul(1000));
    }
    Err(format!(
        "'{raw}' is not a date: use RFC 3339, YYYY-MM-DD, 'YYYY-MM-DD HH:MM:SS' or Unix seconds"
    ))
}

/// How an import runs.
#[derive(Debug, Clone)]
pub struct SuppressionImport {
    /// The tenant the addresses belong to.
    pub tenant: Tenant,
    /// Stored as the events' actor, e.g. `import-suppressions:bounces.csv`.
    pub actor: String,
    /// The reason for rows without one (or for a file without a reason column).
    pub default_reason: Option<String>,
    /// The time of the import (the events' `recorded_at`, and their
    /// `occurred_at` when a row has no date).
    pub now: UnixMillis,
    /// Quarantine rules, to read an address's status as of `now`.
    pub rules: QuarantineRules,
    /// How each address's log is kept.
    pub limits: LogLimits,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuppressionSummary {
    /// Data rows read (the header not counted).
    pub rows: u64,
    /// Addresses set to QUARANTINED.
    pub quarantined: u64,
    /// Addresses set to DENYLISTED.
    pub denylisted: u64,
    /// Rows whose address already had the status (or a stronger one).
    pub unchanged: u64,
    /// Rows rejected (each reported through `on_reject`).
    pub rejected: u64,
}

fn column(headers: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    headers.iter().position(|h| {
        let key: String = h
            .trim()
            .trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '_'))
            .flat_map(char::to_lowercase)
            .collect();
        names
            .iter()
            .any(|n| n.chars().filter(|c| *c != '-').eq(key.chars()))
    })
}

/// Imports a CSV suppression list into `store`. A row that cannot be used
/// (bad address, unknown reason, bad date) is reported to `on_reject` with its
/// line number and skipped; the rest is imported. `on_progress` gets the
/// bytes read so far. Writes are not durable until the caller runs
/// [`Store::sync`]. Store calls run on `runtime` (the caller is not async).
pub fn import_csv(
    store: &dyn Store,
    runtime: &Handle,
    input: impl Read,
    options: &SuppressionImport,
    mut on_reject: impl FnMut(u64, &str),
    mut on_progress: impl FnMut(u64),
) -> Result<SuppressionSummary, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| DataError::Input(format!("line 1: cannot read the header row: {e}")))?
        .clone();
    let address_col = column(&headers, ADDRESS_HEADERS).ok_or_else(|| {
        DataError::Input(format!(
            "line 1: no address column: name one of {}",
            ADDRESS_HEADERS.join(", ")
        ))
    })?;
    let reason_col = column(&headers, REASON_HEADERS);
    if reason_col.is_none() && options.default_reason.is_none() {
        return Err(DataError::Input(format!(
            "line 1: no reason column ({}); give --reason for a file without one",
            REASON_HEADERS.join(", ")
        )));
    }
    if let Some(reason) = &options.default_reason
        && status_of(reason).is_none()
    {
        return Err(DataError::Input(format!(
            "--reason '{reason}' is not a known reason"
        )));
    }
    let date_col = column(&headers, DATE_HEADERS);
    // Phone numbers in national form are read in the tenant's default region.
    let region = runtime
        .block_on(store.tenant_settings(&options.tenant))?
        .and_then(|settings| settings.default_region);
    let skew_ms = i64::try_from(DATE_FUTURE_SKEW_MAX.as_millis()).unwrap_or(i64::MAX);

    let mut summary = SuppressionSummary::default();
    let mut pending: Vec<ManualEvent> = Vec::with_capacity(BULK_ROWS);
    let mut row = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                summary.rows += 1;
                summary.rejected += 1;
                let line = e.position().map_or(line, csv::Position::line);
                on_reject(line, &format!("not a CSV row: {e}"));
                continue;
            }
        }
        let line = row.position().map_or(line, csv::Position::line);
        if row.iter().all(str::is_empty) {
            continue;
        }
        summary.rows += 1;
        match parse_row(
            &row,
            options,
            region,
            address_col,
            reason_col,
            date_col,
            skew_ms,
        ) {
            Ok(event) => pending.push(event),
            Err(reason) => {
                summary.rejected += 1;
                on_reject(line, &reason);
            }
        }
        if pending.len() == BULK_ROWS {
            record(store, runtime, options, &mut pending, &mut summary)?;
            on_progress(reader.position().byte());
        }
    }
    record(store, runtime, options, &mut pending, &mut summary)?;
    on_progress(reader.position().byte());
    Ok(summary)
}

/// Records the pending events in one bulk write and counts the outcome.
fn record(
    store: &dyn Store,
    runtime: &Handle,
    options: &SuppressionImport,
    pending: &mut Vec<ManualEvent>,
    summary: &mut SuppressionSummary,
) -> Result<(), DataError> {
    let how = Recording {
        rules: options.rules,
        limits: options.limits,
        now: options.now,
    };
    let recorded = runtime
        .block_on(record_manual(store, &options.tenant, pending, how))
        .map_err(DataError::from)?;
    for (event, recorded) in pending.iter().zip(recorded) {
        match (recorded, event.status) {
            (false, _) => summary.unchanged += 1,
            (true, AddressStatus::Quarantined) => summary.quarantined += 1,
            (true, _) => summary.denylisted += 1,
        }
    }
    pending.clear();
    Ok(())
}

/// Parses and validates one row into the event it records.
fn parse_row(
    row: &csv::StringRecord,
    options: &SuppressionImport,
    region: Option<Region>,
    address_col: usize,
    reason_col: Option<usize>,
    date_col: Option<usize>,
    skew_ms: i64,
) -> Result<ManualEvent, String> {
    let raw_address = row.get(address_col).unwrap_or_default();
    let address =
        Address::parse_in(None, raw_address, region).map_err(|e| format!("address: {e}"))?;
    let reason = match reason_col
        .and_then(|c| row.get(c))
        .filter(|r| !r.is_empty())
    {
        Some(reason) => reason,
        None => options
            .default_reason
            .as_deref()
            .ok_or_else(|| "reason: empty, and no --reason given".to_owned())?,
    };
    let status = status_of(reason).ok_or_else(|| {
        format!(
            "reason: '{reason}' is not known (bounce, hard_bounce, soft_bounce, complaint, \
             spam, unsubscribe, unsubscribed, manual, ...)"
        )
    })?;
    let occurred_at = match date_col.and_then(|c| row.get(c)).filter(|d| !d.is_empty()) {
        Some(date) => {
            let at = parse_date(date).map_err(|e| format!("date: {e}"))?;
            if at > options.now.saturating_add(skew_ms) {
                return Err(format!("date: '{date}' is in the future"));
            }
            at
        }
        None => options.now,
    };
    let context = ChangeContext::new(Source::Import, &options.actor, reason)
        .map_err(|(field, e)| format!("{field}: {e}"))?;
    Ok(ManualEvent {
        address,
        status,
        occurred_at,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_statuses() {
        for (reason, status) in [
            ("hard_bounce", Some(AddressStatus::Quarantined)),
            ("Soft Bounce", Some(AddressStatus::Quarantined)),
            ("bounce", Some(AddressStatus::Quarantined)),
            ("SPAM", Some(AddressStatus::Denylisted)),
            ("complaint", Some(AddressStatus::Denylisted)),
            ("unsubscribed", Some(AddressStatus::Denylisted)),
            ("manual", Some(AddressStatus::Denylisted)),
            ("vacation", None),
        ] {
            assert_eq!(status_of(reason), status, "{reason}");
        }
    }

    #[test]
    fn dates_in_every_accepted_form() {
        assert_eq!(parse_date("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_date("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(parse_date("1970-01-01 00:00:01"), Ok(1000));
        assert_eq!(parse_date("86400"), Ok(86_400_000));
        assert!(parse_date("01/02/2024").is_err());
        assert!(parse_date("").is_err());
    }

    #[test]
    fn header_names_match_loosely() {
        let headers = csv::StringRecord::from(vec!["Email Address", "Suppression-Type", "Created"]);
        assert_eq!(column(&headers, ADDRESS_HEADERS), Some(0));
        assert_eq!(column(&headers, REASON_HEADERS), Some(1));
        assert_eq!(column(&headers, DATE_HEADERS), Some(2));
    }

    /// A national number in a suppression list is read in the tenant's
    /// default region, like in every request; without a region, its row is
    /// refused with the advice to set one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn national_numbers_are_read_in_the_tenant_region() {
        use crate::{
            engine::{Region, SettingsUpdate, TenantSettings},
            store::{Lock, memory::MemoryStore},
        };
        let tenant = Tenant::parse("t").expect("valid");
        let options = SuppressionImport {
            tenant: tenant.clone(),
            actor: "test".into(),
            default_reason: Some("complaint".into()),
            now: 1_000,
            rules: QuarantineRules::default(),
            limits: LogLimits {
                horizon: std::time::Duration::from_secs(86_400),
                events_max: 100,
            },
        };
        let csv = "phone\n06 12 34 56 78\n";
        let store = MemoryStore::new();
        let runtime = Handle::current();
        let mut rejected = Vec::new();
        let summary = tokio::task::block_in_place(|| {
            import_csv(
                &store,
                &runtime,
                csv.as_bytes(),
                &options,
                |line, why| {
                    rejected.push((line, why.to_owned()));
                },
                |_| {},
            )
        })
        .expect("import");
        assert_eq!(summary.rejected, 1);
        assert!(rejected[0].1.contains("default_region"), "{rejected:?}");

        let mut tx = store
            .begin(vec![Lock::TenantSettings(tenant.clone())])
            .await
            .expect("begin");
        let mut settings = TenantSettings::default();
        settings.apply(
            &SettingsUpdate {
                default_region: Some(Region::parse("FR").ok()),
                ..SettingsUpdate::default()
            },
            1,
        );
        tx.put_tenant_settings(&tenant, &settings);
        tx.commit().await.expect("commit");
        let summary = tokio::task::block_in_place(|| {
            import_csv(
                &store,
                &runtime,
                csv.as_bytes(),
                &options,
                |_, why| panic!("{why}"),
                |_| {},
            )
        })
        .expect("import");
        assert_eq!(summary.denylisted, 1);
        let address = Address::phone("+33612345678").expect("valid");
        let state = store
            .address_state(&tenant, &address)
            .await
            .expect("read")
            .expect("state");
        assert_eq!(state.status, AddressStatus::Denylisted);
    }
}
