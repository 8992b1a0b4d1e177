//! The data-tool subcommands of the binary: argument parsing, progress bars
//! on stderr (hidden when stderr is not a terminal), summaries and exit
//! codes. The work itself is in `consentd::data` and `consentd::api::fetch_backup`.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use clap::{Args, ValueEnum};
use consentd::{
    api::fetch_backup,
    data::{
        DataError, export::ExportSummary, export::write_records, import::import as import_lines,
        now_ms, record::Header, suppressions,
    },
    engine::{LogLimits, QuarantineRules, Tenant},
    store::{
        Store, StoreError,
        postgres::{PgOptions, PgStore, redact},
        sled::SledStore,
    },
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Exit code when the input as a whole is unusable or a tenant is invalid (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code when some lines or rows were rejected and the rest imported (sysexits EX_DATAERR).
const EXIT_REJECTED: u8 = 65;
/// How often a progress bar redraws.
const PROGRESS_REDRAW_PER_SECOND: u8 = 10;

/// `consentd export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Export only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// `consentd import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The export or backup file (JSON lines).
    file: PathBuf,
}

/// Which store a data tool works on: a data directory or a PostgreSQL database.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The data directory of the embedded store (created if missing); no
    /// server may be running on it.
    #[arg(
        long,
        required_unless_present = "database_url",
        conflicts_with = "database_url"
    )]
    data_dir: Option<PathBuf>,
    /// The PostgreSQL store instead (postgres://USER:PASSWORD@HOST:PORT/DB,
    /// with ?sslmode=require for TLS); servers may keep running on it.
    #[arg(long, env = "CONSENTD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// PEM file of the certificate authorities of the database's TLS certificate.
    #[arg(long, env = "CONSENTD_DATABASE_CA", requires = "database_url")]
    database_ca: Option<PathBuf>,
}

/// The formats `import-suppressions` reads.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SuppressionFormat {
    /// Comma-separated values with a header row.
    Csv,
}

/// `consentd import-suppressions`.
#[derive(Debug, Args)]
pub(crate) struct ImportSuppressionsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The tenant the addresses belong to.
    #[arg(long)]
    tenant: String,
    /// The file's format.
    #[arg(long, value_enum, default_value = "csv")]
    format: SuppressionFormat,
    /// The reason of rows without one, e.g. `hard_bounce` for a file of bounces with no reason column.
    #[arg(long)]
    reason: Option<String>,
    /// The suppression list.
    file: PathBuf,
}

/// `consentd backup`.
#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    server: String,
    /// Back up only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// The backup file; written as FILE.partial, then renamed once complete and on disk.
    #[arg(long, short)]
    output: PathBuf,
    /// Sent as `authorization: Bearer <key>`.
    #[arg(long, env = "CONSENTD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let target = ProgressDrawTarget::stderr_with_hz(PROGRESS_REDRAW_PER_SECOND);
    let bar = match len {
        Some(len) => ProgressBar::with_draw_target(Some(len), target).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {percent}% {bytes}/{total_bytes} ({eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::with_draw_target(None, target).with_style(
            ProgressStyle::with_template("{spinner} {msg} {human_pos} records ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    bar
}

fn tenant(raw: Option<&str>) -> Result<Option<Tenant>, ExitCode> {
    raw.map(|raw| {
        Tenant::parse(raw).map_err(|e| {
            eprintln!("error: --tenant: {e}");
            ExitCode::from(EXIT_USAGE)
        })
    })
    .transpose()
}

/// Opens the store the arguments name; a PostgreSQL store is connected
/// (and its schema brought up to date) on `runtime`.
fn open(args: &StoreArgs, runtime: &tokio::runtime::Runtime) -> Result<Box<dyn Store>, ExitCode> {
    if let Some(url) = &args.database_url {
        let mut options = PgOptions::new(url.clone());
        options.ca_file.clone_from(&args.database_ca);
        return match runtime.block_on(PgStore::connect(options)) {
            Ok(store) => Ok(Box::new(store)),
            Err(error) => {
                eprintln!(
                    "error: cannot open the PostgreSQL store at {}: {error}",
                    redact(url)
                );
                Err(ExitCode::FAILURE)
            }
        };
    }
    let dir = args.data_dir.as_deref().unwrap_or(Path::new("./data"));
    match SledStore::open(dir) {
        Ok(store) => Ok(Box::new(store)),
        Err(error) => {
            match error {
                StoreError::InUse { .. } => eprintln!(
                    "error: {error}\nA running server keeps its data directory: to copy its data \
                     while it serves, use `consentd backup --server http://HOST:PORT --output FILE`."
                ),
                _ => eprintln!("error: cannot open the store: {error}"),
            }
            Err(ExitCode::FAILURE)
        }
    }
}

/// The data tools' runtime: with worker threads, so that the tasks a store
/// spawns (the PostgreSQL pool's connections) run while the tool waits on a
/// handle (`Handle::block_on` drives nothing on a current-thread runtime).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Waits until everything written is on disk.
fn make_durable(store: &dyn Store, runtime: &tokio::runtime::Runtime) -> Result<(), ExitCode> {
    runtime.block_on(store.sync()).map_err(|e| {
        eprintln!("error: writes could not be made durable: {e}");
        ExitCode::FAILURE
    })
}

fn by_type(records: &std::collections::BTreeMap<&'static str, u64>) -> String {
    if records.is_empty() {
        return "none".to_owned();
    }
    records
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn failed(error: &DataError) -> ExitCode {
    eprintln!("error: {error}");
    match error {
        DataError::Input(_) => ExitCode::from(EXIT_USAGE),
        _ => ExitCode::FAILURE,
    }
}

pub(crate) fn export(args: &ExportArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        let tenant = tenant(args.tenant.as_deref())?;
        let runtime = runtime()?;
        let store = open(&args.store, &runtime)?;
        let started = Instant::now();
        let header = Header::new(tenant.as_ref(), now_ms());
        let progress = bar(None, "exporting");
        let (file, out): (Option<File>, Box<dyn std::io::Write>) = match &args.output {
            Some(path) => {
                let file = File::create(path).map_err(|e| {
                    eprintln!("error: cannot create {}: {e}", path.display());
                    ExitCode::FAILURE
                })?;
                let out = file.try_clone().map_err(|e| {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                })?;
                (Some(file), Box::new(out))
            }
            None => (None, Box::new(std::io::stdout().lock())),
        };
        let mut out = BufWriter::with_capacity(1 << 20, out);
        let mut lines = 0u64;
        let summary: ExportSummary = write_records(&header, store.dump(tenant.as_ref()), |line| {
            lines += 1;
            if lines.is_multiple_of(1024) {
                progress.set_position(lines);
            }
            out.write_all(line)
        })
        .map_err(|e| failed(&e))?;
        out.flush()
            .and_then(|()| file.as_ref().map_or(Ok(()), File::sync_all))
            .map_err(|e| {
                eprintln!("error: writing the export: {e}");
                ExitCode::FAILURE
            })?;
        progress.finish_and_clear();
        eprintln!(
            "exported {} records in {:.1} s: {}",
            summary.total(),
            started.elapsed().as_secs_f64(),
            by_type(&summary.records)
        );
        Ok(ExitCode::SUCCESS)
    };
    run().unwrap_or_else(|code| code)
}

pub(crate) fn import(args: &ImportArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        let file = File::open(&args.file).map_err(|e| {
            eprintln!("error: cannot open {}: {e}", args.file.display());
            ExitCode::FAILURE
        })?;
        let len = file.metadata().map(|m| m.len()).ok();
        let runtime = runtime()?;
        let store = open(&args.store, &runtime)?;
        let started = Instant::now();
        let progress = bar(len, "importing");
        let summary = import_lines(
            store.as_ref(),
            runtime.handle(),
            BufReader::with_capacity(1 << 20, file),
            |line, reason| progress.suspend(|| eprintln!("line {line}: rejected: {reason}")),
            |bytes| progress.set_position(bytes),
        )
        .map_err(|e| failed(&e))?;
        progress.finish_and_clear();
        make_durable(store.as_ref(), &runtime)?;
        eprintln!(
            "done: restored {} records in {:.1} s ({}); {} lines rejected",
            summary.total(),
            started.elapsed().as_secs_f64(),
            by_type(&summary.restored),
            summary.rejected
        );
        Ok(exit_for_rejected(summary.rejected))
    };
    run().unwrap_or_else(|code| code)
}

/// 65 when some lines or rows were rejected (the rest was imported), else 0.
fn exit_for_rejected(rejected: u64) -> ExitCode {
    if rejected > 0 {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn import_suppressions(args: &ImportSuppressionsArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        let Some(tenant) = tenant(Some(&args.tenant))? else {
            return Err(ExitCode::from(EXIT_USAGE));
        };
        let SuppressionFormat::Csv = args.format;
        let file = File::open(&args.file).map_err(|e| {
            eprintln!("error: cannot open {}: {e}", args.file.display());
            ExitCode::FAILURE
        })?;
        let len = file.metadata().map(|m| m.len()).ok();
        let runtime = runtime()?;
        let store = open(&args.store, &runtime)?;
        let name = args.file.file_name().map_or_else(
            || args.file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        // The tenant's own rules over the defaults (the server's flags are
        // not known here): each event recorded keeps them.
        let settings = runtime
            .block_on(store.tenant_settings(&tenant))
            .map_err(|e| {
                eprintln!("error: cannot read the tenant's settings: {e}");
                ExitCode::FAILURE
            })?
            .unwrap_or_default();
        let options = suppressions::SuppressionImport {
            rules: settings.rules(&QuarantineRules::default()),
            tenant,
            actor: format!("import-suppressions:{name}"),
            default_reason: args.reason.clone(),
            now: now_ms(),
            limits: LogLimits::default(),
        };
        let started = Instant::now();
        let progress = bar(len, "importing suppressions");
        let summary = suppressions::import_csv(
            store.as_ref(),
            runtime.handle(),
            BufReader::with_capacity(1 << 20, file),
            &options,
            |line, reason| progress.suspend(|| eprintln!("line {line}: rejected: {reason}")),
            |bytes| progress.set_position(bytes),
        )
        .map_err(|e| failed(&e))?;
        progress.finish_and_clear();
        make_durable(store.as_ref(), &runtime)?;
        eprintln!(
            "done: {} rows in {:.1} s: {} quarantined, {} denylisted, {} unchanged, {} rejected",
            summary.rows,
            started.elapsed().as_secs_f64(),
            summary.quarantined,
            summary.denylisted,
            summary.unchanged,
            summary.rejected
        );
        Ok(exit_for_rejected(summary.rejected))
    };
    run().unwrap_or_else(|code| code)
}

pub(crate) fn backup(args: &BackupArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        if let Some(raw) = &args.tenant {
            tenant(Some(raw))?;
        }
        let mut partial = args.output.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(|e| {
            eprintln!("error: cannot create {}: {e}", partial.display());
            ExitCode::FAILURE
        })?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let started = Instant::now();
        let progress = bar(Some(0), "backing up");
        progress.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {human_pos}/{human_len} records ({eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let fetched = runtime()?.block_on(fetch_backup(
            &args.server,
            args.tenant.as_deref(),
            args.api_key.as_deref(),
            |data, received, total| {
                progress.set_length(total);
                progress.set_position(received);
                out.write_all(data)
            },
        ));
        let records = fetched.map_err(|e| {
            progress.abandon();
            eprintln!(
                "error: backup failed: {e}; {} left incomplete",
                partial.display()
            );
            ExitCode::FAILURE
        })?;
        out.flush()
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&partial, &args.output))
            .map_err(|e| {
                eprintln!("error: writing {}: {e}", args.output.display());
                ExitCode::FAILURE
            })?;
        progress.finish_and_clear();
        eprintln!(
            "done: {records} records in {} in {:.1} s",
            args.output.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    };
    run().unwrap_or_else(|code| code)
}
