//! `seed`: a data directory with N profiles in the data shape of the peers
//! (the Redis set-up and the no-op server that consentd is compared with),
//! drawn with the same generator as the Redis peer's `load`, so that both
//! hold the same data:
//!
//! - profile ids `0..N` as decimal strings, each with one e-mail address
//!   `u{i}@example.com`, or its neighbour's `u{i - i % 2}@example.com` (10 %);
//! - 5 % opted out of all channels, 3 % opted out of e-mail;
//! - 1 % of the draws hard-bounce the profile's address (QUARANTINED).
//!
//! The profiles are written as an export file (the JSON lines of
//! `consentd::data::record`, with the consent history entries and address
//! log entries a live server would have written) and read in with
//! `consentd import`, the fastest way in that checks every record. A marker
//! file in the directory names N and the tenant; a later run with the same
//! ones skips the work.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use consentd::data::record::{
    AddressEventRecord, AddressStateRecord, AddressStatusName, AddressTypeName, ChangeRecord,
    ConsentHistoryRecord, ConsentRecord, ConsentStatusName, ContextRecord, ErrorReasonName,
    EventKindRecord, FORMAT_NAME, FORMAT_VERSION, FeedbackEventIdRecord, FeedbackKindName, Header,
    LogRecord, MarkRecord, ProfileRecord, Record, ScopeName, SourceName,
};

use crate::{Error, server::consentd_bin};

/// The profiles seeded when no count is given.
pub(crate) const PROFILES_DEFAULT: u64 = 1_000_000;
/// The tenant of the seeded profiles.
pub(crate) const TENANT_DEFAULT: &str = "load";
/// The marker file a finished seed leaves in its data directory.
const MARKER: &str = ".consentd-load-seed";
/// The version of the data shape; a marker of another one is not reused.
const SHAPE: &str = "peers-xorshift-1";
/// The Redis peer's generator seed (`redis/src/main.rs`, `load`).
const RNG_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Where and what to seed.
#[derive(Debug, Args)]
pub(crate) struct SeedArgs {
    /// Profiles to create (ids `0..N`).
    #[arg(long, default_value_t = PROFILES_DEFAULT)]
    pub(crate) profiles: u64,
    /// Their tenant.
    #[arg(long, default_value = TENANT_DEFAULT)]
    pub(crate) tenant: String,
    /// The data directory (default: `consentd-load-seed-TENANT-N` under the
    /// system's temporary directory). It must be missing, empty or a seed of
    /// the same N and tenant (then nothing is done).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// The consentd binary that imports (default: the one next to this binary).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Keep the export file (`DIR.seed.jsonl`) after the import.
    #[arg(long)]
    pub(crate) keep_jsonl: bool,
}

/// The xorshift of the Redis peer.
pub(crate) fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Profile flags.
const OPTED_OUT_ALL: u8 = 1;
const OPTED_OUT_EMAIL: u8 = 2;
/// The profile's address is its neighbour's `u{i - i % 2}` (the same as its
/// own for an even i).
const NEIGHBOURS_ADDRESS: u8 = 4;

/// The drawn data: flags per profile, and which addresses are quarantined
/// (by the number in `u{j}@example.com`).
#[derive(Debug)]
struct Shape {
    flags: Vec<u8>,
    quarantined: Vec<bool>,
}

impl Shape {
    /// The same draws, in the same order, as the Redis peer's `load`.
    fn draw(profiles: usize) -> Self {
        let mut state = RNG_SEED;
        let mut flags = vec![0u8; profiles];
        let mut quarantined = vec![false; profiles];
        for (i, flag) in flags.iter_mut().enumerate() {
            let r = rng(&mut state) % 1000;
            if r < 50 {
                *flag |= OPTED_OUT_ALL;
            }
            if (50..80).contains(&r) {
                *flag |= OPTED_OUT_EMAIL;
            }
            if r >= 900 {
                *flag |= NEIGHBOURS_ADDRESS;
            }
            if rng(&mut state).is_multiple_of(100) {
                quarantined[address_number(i, *flag)] = true;
            }
        }
        Self { flags, quarantined }
    }
}

/// The number `j` of profile `i`'s address `u{j}@example.com`.
fn address_number(i: usize, flag: u8) -> usize {
    if flag & NEIGHBOURS_ADDRESS != 0 {
        i - i % 2
    } else {
        i
    }
}

fn address(j: usize) -> String {
    format!("u{j}@example.com")
}

/// What a directory holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DirState {
    /// Missing or empty: can be seeded.
    Empty,
    /// A finished seed of this many profiles for this tenant.
    Seeded { profiles: u64, tenant: String },
    /// Something else (another seed shape, or real data).
    Other,
}

pub(crate) fn dir_state(dir: &Path) -> DirState {
    let empty = std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
    if empty {
        return DirState::Empty;
    }
    let Ok(marker) = std::fs::read_to_string(dir.join(MARKER)) else {
        return DirState::Other;
    };
    let field = |name: &str| {
        marker
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    match (field("shape"), field("profiles"), field("tenant")) {
        (Some(shape), Some(profiles), Some(tenant)) if shape == SHAPE => match profiles.parse() {
            Ok(profiles) => DirState::Seeded { profiles, tenant },
            Err(_) => DirState::Other,
        },
        _ => DirState::Other,
    }
}

/// The seed directory used when none is given.
pub(crate) fn default_dir(profiles: u64, tenant: &str) -> PathBuf {
    std::env::temp_dir().join(format!("consentd-load-seed-{tenant}-{profiles}"))
}

pub(crate) fn seed(args: &SeedArgs) -> Result<(), Error> {
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_dir(args.profiles, &args.tenant));
    let bin = consentd_bin(args.server_bin.as_deref())?;
    ensure(&dir, args.profiles, &args.tenant, &bin, args.keep_jsonl)?;
    println!("{}", dir.display());
    Ok(())
}

/// Seeds `dir` unless it already holds this seed; refuses a directory that
/// holds anything else.
pub(crate) fn ensure(
    dir: &Path,
    profiles: u64,
    tenant: &str,
    consentd: &Path,
    keep_jsonl: bool,
) -> Result<(), Error> {
    match dir_state(dir) {
        DirState::Seeded {
            profiles: seeded,
            tenant: seeded_tenant,
        } if seeded == profiles && seeded_tenant == tenant => {
            eprintln!(
                "seed: {} already holds {profiles} profiles of tenant {tenant}",
                dir.display()
            );
            return Ok(());
        }
        DirState::Seeded {
            profiles: seeded,
            tenant: seeded_tenant,
        } => {
            return Err(format!(
                "{} holds a seed of {seeded} profiles of tenant {seeded_tenant}, not \
                 {profiles} of {tenant}: remove it or choose another --data-dir",
                dir.display()
            )
            .into());
        }
        DirState::Other => {
            return Err(format!(
                "{} is not empty and is not a seed of consentd-load: remove it or choose \
                 another --data-dir",
                dir.display()
            )
            .into());
        }
        DirState::Empty => {}
    }
    let count = usize::try_from(profiles).map_err(|_| "--profiles does not fit in memory")?;
    let start = Instant::now();
    let mut file_name = dir.file_name().ok_or("--data-dir has no name")?.to_owned();
    file_name.push(".seed.jsonl");
    let jsonl = dir.with_file_name(file_name);
    let written = write_export(&jsonl, count, tenant)?;
    let wrote_in = start.elapsed();
    eprintln!(
        "seed: wrote {} ({} records: {} profiles, {} opted out of all channels, {} of \
         e-mail, {} sharing their neighbour's address, {} quarantined addresses) in {:.1} s",
        jsonl.display(),
        written.records,
        profiles,
        written.opted_out_all,
        written.opted_out_email,
        written.sharing,
        written.quarantined,
        wrote_in.as_secs_f64()
    );
    let status = Command::new(consentd)
        .arg("import")
        .arg("--data-dir")
        .arg(dir)
        .arg(&jsonl)
        .status()
        .map_err(|e| format!("cannot run {} import: {e}", consentd.display()))?;
    if !status.success() {
        return Err(format!(
            "{} import exited with {status}; {} is left for a look",
            consentd.display(),
            jsonl.display()
        )
        .into());
    }
    std::fs::write(
        dir.join(MARKER),
        format!("shape={SHAPE} profiles={profiles} tenant={tenant}\n"),
    )?;
    if !keep_jsonl {
        std::fs::remove_file(&jsonl)?;
    }
    eprintln!(
        "seed: {} profiles in {} in {:.1} s (file {:.1} s, import {:.1} s)",
        profiles,
        dir.display(),
        start.elapsed().as_secs_f64(),
        wrote_in.as_secs_f64(),
        (start.elapsed() - wrote_in).as_secs_f64()
    );
    Ok(())
}

/// What [`write_export`] wrote.
#[derive(Debug, Default)]
struct Written {
    records: u64,
    opted_out_all: u64,
    opted_out_email: u64,
    sharing: u64,
    quarantined: u64,
}

fn unix_ms_now() -> Result<i64, Error> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
    )?)
}

fn context(source: SourceName) -> ContextRecord {
    ContextRecord {
        source,
        actor: "consentd-load seed".to_owned(),
        reason: String::new(),
        principal: String::new(),
        ip_address: None,
        user_agent: String::new(),
        notice_version: String::new(),
        collected_at_ms: None,
    }
}

/// Writes the export file, records in the export's order: profiles, their
/// consent history, address states, address log entries, feedback event ids.
fn write_export(path: &Path, profiles: usize, tenant: &str) -> Result<Written, Error> {
    let shape = Shape::draw(profiles);
    let now = unix_ms_now()?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut written = Written::default();
    let mut put = |record: &Record, written: &mut Written| -> Result<(), Error> {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
        written.records += 1;
        Ok(())
    };
    put(
        &Record::Header(Header {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            written_by: format!("consentd-load {}", env!("CARGO_PKG_VERSION")),
            created_at_ms: now,
            tenant: Some(tenant.to_owned()),
        }),
        &mut written,
    )?;
    let unset = MarkRecord {
        status: ConsentStatusName::NoPreference,
        changed_at_ms: None,
        source: None,
    };
    let opted_out = MarkRecord {
        status: ConsentStatusName::OptedOut,
        changed_at_ms: Some(now),
        source: Some(SourceName::Import),
    };
    for (i, &flag) in shape.flags.iter().enumerate() {
        let all = flag & OPTED_OUT_ALL != 0;
        let email = flag & OPTED_OUT_EMAIL != 0;
        written.opted_out_all += u64::from(all);
        written.opted_out_email += u64::from(email);
        written.sharing += u64::from(address_number(i, flag) != i);
        let record = ProfileRecord {
            tenant: tenant.to_owned(),
            profile_id: i.to_string(),
            emails: vec![address(address_number(i, flag))],
            phones: Vec::new(),
            push_tokens: Vec::new(),
            postal_address: String::new(),
            consent: ConsentRecord {
                all_channels: if all { opted_out } else { unset },
                email: if email { opted_out } else { unset },
                sms: unset,
                push: unset,
                voice: unset,
                direct_mail: unset,
            },
            history_seq: u64::from(all || email),
            created_at_ms: now,
            updated_at_ms: now,
        };
        put(&Record::Profile(record), &mut written)?;
    }
    for (i, &flag) in shape.flags.iter().enumerate() {
        let scope = match (flag & OPTED_OUT_ALL != 0, flag & OPTED_OUT_EMAIL != 0) {
            (true, _) => ScopeName::AllChannels,
            (false, true) => ScopeName::Email,
            (false, false) => continue,
        };
        let record = ConsentHistoryRecord {
            tenant: tenant.to_owned(),
            profile_id: i.to_string(),
            sequence: 1,
            changed_at_ms: now,
            change: ChangeRecord::Consent {
                scope,
                old_status: ConsentStatusName::NoPreference,
                new_status: ConsentStatusName::OptedOut,
            },
            context: context(SourceName::Import),
        };
        put(&Record::ConsentHistory(record), &mut written)?;
    }
    let quarantined: Vec<usize> = (0..profiles).filter(|&j| shape.quarantined[j]).collect();
    written.quarantined = quarantined.len() as u64;
    for &j in &quarantined {
        // As a hard bounce leaves it (src/engine/quarantine.rs).
        let record = AddressStateRecord {
            tenant: tenant.to_owned(),
            address_type: AddressTypeName::Email,
            address: address(j),
            status: AddressStatusName::Quarantined,
            error_count: 0,
            first_error_at_ms: None,
            last_error_at_ms: None,
            last_error_reason: ErrorReasonName::UserUnknown,
            last_reason: "hard bounce".to_owned(),
            updated_at_ms: Some(now),
            last_event_at_ms: Some(now),
            log_seq: 1,
            // One entry kept, no checkpoint yet, nothing dropped.
            log: Some(LogRecord {
                len: 1,
                since_checkpoint: 1,
                start_at_ms: None,
                start_sequence: None,
            }),
        };
        put(&Record::AddressState(record), &mut written)?;
    }
    for &j in &quarantined {
        let record = AddressEventRecord {
            tenant: tenant.to_owned(),
            address_type: AddressTypeName::Email,
            address: address(j),
            sequence: 1,
            event: EventKindRecord::Feedback {
                feedback_kind: FeedbackKindName::HardBounce,
                error_reason: ErrorReasonName::UserUnknown,
                event_id: format!("seed-{j}"),
            },
            occurred_at_ms: now,
            recorded_at_ms: now,
            old_status: AddressStatusName::Valid,
            new_status: AddressStatusName::Quarantined,
            context: context(SourceName::DeliveryFeedback),
            folded_at_ms: None,
            checkpoint: None,
            rules: None,
        };
        put(&Record::AddressEvent(record), &mut written)?;
    }
    for &j in &quarantined {
        let record = FeedbackEventIdRecord {
            tenant: tenant.to_owned(),
            event_id: format!("seed-{j}"),
            address_type: AddressTypeName::Email,
            address: address(j),
            recorded_at_ms: Some(now),
        };
        put(&Record::FeedbackEventId(record), &mut written)?;
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draws_follow_the_peers_proportions() {
        let shape = Shape::draw(100_000);
        let count = |bit: u8| shape.flags.iter().filter(|&&f| f & bit != 0).count();
        // 5 %, 3 %, 10 % and 1 %, within the noise of 100,000 draws.
        assert!((4_500..5_500).contains(&count(OPTED_OUT_ALL)));
        assert!((2_600..3_400).contains(&count(OPTED_OUT_EMAIL)));
        assert!((9_400..10_600).contains(&count(NEIGHBOURS_ADDRESS)));
        let quarantined = shape.quarantined.iter().filter(|&&q| q).count();
        assert!((850..1_150).contains(&quarantined), "{quarantined}");
        assert_eq!(address_number(7, NEIGHBOURS_ADDRESS), 6);
        assert_eq!(address_number(8, NEIGHBOURS_ADDRESS), 8);
    }

    #[test]
    fn a_marker_is_read_back_and_a_foreign_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("consentd-load-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(dir_state(&dir), DirState::Empty);
        std::fs::create_dir_all(&dir).expect("create");
        assert_eq!(dir_state(&dir), DirState::Empty);
        std::fs::write(dir.join("db"), b"x").expect("write");
        assert_eq!(dir_state(&dir), DirState::Other);
        std::fs::write(
            dir.join(MARKER),
            format!("shape={SHAPE} profiles=42 tenant=t\n"),
        )
        .expect("write");
        assert_eq!(
            dir_state(&dir),
            DirState::Seeded {
                profiles: 42,
                tenant: "t".to_owned()
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
