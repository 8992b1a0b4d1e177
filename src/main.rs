//! The `consentd` binary: parses the command line, starts tracing, opens the
//! store, binds the listener and hands over to `consentd::server::run`; or
//! runs one of the data tools (export, import, import-suppressions, backup),
//! whose work is in `consentd::data`.

mod tools;

/// mimalloc instead of the system allocator: allocation was 11% of the
/// server's CPU samples on the write path (docs/performance.md, "Durable writes").
/// Built with `no_thp`: mimalloc otherwise asks for transparent huge pages on
/// its arenas, and partly used 2 MiB pages added about 45 MiB to the RSS of a
/// server with 1,000,000 profiles, for no measurable gain in speed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use consentd::{
    app::{
        COMPACTION_RATIO_DEFAULT, CONCURRENT_STREAMS_MAX_DEFAULT, CONNECTIONS_MAX_DEFAULT,
        LinkSettings, WATCH_MAX_STREAMS_DEFAULT, WATCH_RETENTION_CHANGES_DEFAULT, WatchSettings,
    },
    auth::{KeySet, Role, Security, TenantScope, TlsPem},
    clock::SystemClock,
    connection::ConnectionLimits,
    engine::{ADDRESS_LOG_EVENTS_MAX_DEFAULT, CHECKPOINT_EVERY, LogLimits, QuarantineRules},
    links::LinkKeys,
    server::{self, App, Settings},
    store::{
        CompactionPolicy,
        postgres::{PgOptions, PgStore, redact},
    },
    web::{IpNet, PageSettings, RATE_PER_IP_DEFAULT, RATE_PER_LINK_DEFAULT},
};
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration that cannot be served (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// consentd: the consent-decision service. Answers "may we contact this
/// profile, on this channel, now?" over gRPC, from opt-ins/opt-outs and
/// address quarantine that it stores itself (sled, embedded).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (with health and reflection) until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Write every record of a data directory (no server may hold it) as JSON lines.
    Export(tools::ExportArgs),
    /// Restore an export or backup into a data directory (no server may hold it).
    Import(tools::ImportArgs),
    /// Quarantine or denylist the addresses of a CSV suppression list (no server may hold the directory).
    ImportSuppressions(tools::ImportSuppressionsArgs),
    /// Fetch a consistent backup from a running server (AdminService.Backup).
    Backup(tools::BackupArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a new random API key (once) and the key-file entry that accepts it.
    Generate(GenerateArgs),
    /// Print a new link key: a `[[key]]` entry to append to the --link-keys
    /// file (the last key seals new links; keep the older ones so that links
    /// already sent keep working until they expire).
    GenerateLinkKey(GenerateLinkKeyArgs),
}

#[derive(Debug, Args)]
struct GenerateLinkKeyArgs {
    /// The key's id: 1 to 32 ASCII letters, digits, '.', '_' or '-' (e.g. the month, 2026-12).
    #[arg(long)]
    id: String,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// The key's name: who uses it. It is the actor of the key's changes in history.
    #[arg(long)]
    name: String,
    /// admin, operator, delivery, landing_page or tracking.
    #[arg(long, value_parser = Role::parse)]
    role: Role,
    /// A tenant the key may act in; repeat for several, or '*' for all.
    #[arg(long = "tenant", required = true)]
    tenants: Vec<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port (the log says which).
    #[arg(long, env = "CONSENTD_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the embedded store; created if missing. One process at a time.
    /// Not used with --database-url.
    #[arg(long, env = "CONSENTD_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Keep the state in PostgreSQL instead (postgres://USER:PASSWORD@HOST:PORT/DB,
    /// ?sslmode=require for TLS): any number of consentd replicas may serve
    /// one database. The schema is created or upgraded at start-up.
    #[arg(long, env = "CONSENTD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// PEM file of the certificate authorities of the database's TLS
    /// certificate (added to the system's).
    #[arg(long, env = "CONSENTD_DATABASE_CA", requires = "database_url")]
    database_ca: Option<PathBuf>,
    /// Connections to PostgreSQL in the pool.
    #[arg(
        long,
        env = "CONSENTD_DATABASE_POOL_SIZE",
        default_value_t = 32,
        requires = "database_url"
    )]
    database_pool_size: usize,
    /// How often a replica reads the database's change feed when it has
    /// written nothing itself: the longest another replica's change takes to
    /// reach this one's decisions while the database answers.
    #[arg(long, env = "CONSENTD_FEED_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    feed_interval: Duration,
    /// A replica that has not read the change feed for longer than this
    /// refuses eligibility decisions (UNAVAILABLE, health NOT_SERVING) until
    /// it has: it fails closed rather than decide on stale consent.
    #[arg(long, env = "CONSENTD_MAX_STALENESS", default_value = "2s", value_parser = humantime::parse_duration)]
    max_staleness: Duration,
    /// Soft errors counted before an address is quarantined (tenants without their own setting; see TenantService).
    #[arg(long, env = "CONSENTD_SOFT_ERROR_THRESHOLD", default_value_t = 5)]
    soft_error_threshold: u32,
    /// At most one soft error is counted per interval (e.g. 1d, 12h).
    #[arg(long, env = "CONSENTD_SIGNIFICANT_ERROR_INTERVAL", default_value = "1d", value_parser = humantime::parse_duration)]
    significant_error_interval: Duration,
    /// A WITH_ERRORS address whose last counted error is older than this returns to VALID.
    #[arg(long, env = "CONSENTD_ERROR_RESET_PERIOD", default_value = "10d", value_parser = humantime::parse_duration)]
    error_reset_period: Duration,
    /// The reset period when the last counted error was MAILBOX_FULL.
    #[arg(long, env = "CONSENTD_MAILBOX_FULL_RESET_PERIOD", default_value = "30d", value_parser = humantime::parse_duration)]
    mailbox_full_reset_period: Duration,
    /// Late-event horizon: an address keeps the events of this long (by
    /// event time) to place late feedback in order; older events are folded
    /// into a checkpoint and dropped, as are feedback event-id markers.
    #[arg(long, env = "CONSENTD_LATE_EVENT_HORIZON", default_value = "14d", value_parser = humantime::parse_duration)]
    late_event_horizon: Duration,
    /// Time between two retention sweeps, which delete feedback event-id
    /// markers older than the horizon and confirmation tokens past their expiry.
    #[arg(long, env = "CONSENTD_RETENTION_SWEEP_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    retention_sweep_interval: Duration,
    /// sled never gives disk space back by itself: the store is compacted
    /// (its records copied into a fresh file while writes go on) once it
    /// takes more than this many times what a fresh copy would. 0: never.
    #[arg(long, env = "CONSENTD_COMPACTION_RATIO", default_value_t = COMPACTION_RATIO_DEFAULT, value_parser = parse_compaction_ratio)]
    compaction_ratio: u32,
    /// A store smaller than this on disk is never compacted (0: any size).
    #[arg(long, env = "CONSENTD_COMPACTION_MIN_SIZE", default_value = "64MiB", value_parser = parse_size_or_zero)]
    compaction_min_size: u64,
    /// Most events an address's log keeps, whatever their age.
    #[arg(long, env = "CONSENTD_ADDRESS_LOG_EVENTS_MAX", default_value_t = ADDRESS_LOG_EVENTS_MAX_DEFAULT)]
    address_log_events_max: u32,
    /// Size of the store page cache (sled), e.g. 16MiB. Decisions do not
    /// read it: they read the in-memory decision index. sled counts its cache loosely: its memory is about twice this, plus what it needs for a store of its size.
    #[arg(long, env = "CONSENTD_CACHE_SIZE", default_value = "16MiB", value_parser = parse_bytes)]
    cache_size: u64,
    /// How long a double opt-in confirmation token works after Subscribe.
    #[arg(long, env = "CONSENTD_CONFIRMATION_TOKEN_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    confirmation_token_ttl: Duration,
    /// How long one request may take; a slower one is cut off with CANCELLED ("Timeout expired", tonic's code for a server-side timeout).
    #[arg(long, env = "CONSENTD_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// How long in-flight requests get to finish at shutdown.
    #[arg(long, env = "CONSENTD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Concurrent requests (HTTP/2 streams) per client connection.
    #[arg(long, env = "CONSENTD_MAX_CONCURRENT_STREAMS", default_value_t = CONCURRENT_STREAMS_MAX_DEFAULT)]
    max_concurrent_streams: u32,
    /// Client connections open at once; a connection accepted beyond it is
    /// closed at once. Keep it below the open-file limit (`ulimit -n`).
    #[arg(long, env = "CONSENTD_MAX_CONNECTIONS", default_value_t = CONNECTIONS_MAX_DEFAULT)]
    max_connections: usize,
    /// A connection that has not sent its first request this long after it
    /// was accepted (TCP, TLS handshake, HTTP/2 preface, request headers) is closed.
    #[arg(long, env = "CONSENTD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[arg(long, env = "CONSENTD_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Time between two HTTP/2 keep-alive pings on a quiet connection.
    #[arg(long, env = "CONSENTD_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// A connection whose keep-alive ping is not answered within this is closed, with its requests.
    #[arg(long, env = "CONSENTD_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive_timeout: Duration,
    /// A stream (StreamEligibility, Backup) that waits this long for the
    /// client's next message, or for the client to take the next answer, is
    /// ended with DEADLINE_EXCEEDED.
    #[arg(long, env = "CONSENTD_STREAM_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    stream_idle_timeout: Duration,
    /// The longest a StreamEligibility stream may last; then it is ended with
    /// DEADLINE_EXCEEDED. (A backup has no maximum: it runs while its client reads.)
    #[arg(long, env = "CONSENTD_STREAM_MAX_DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    stream_max_duration: Duration,
    /// Watch (the change feed for clients) keeps committed changes this long;
    /// a start_token from before is answered WATCH_TOKEN_EXPIRED.
    #[arg(long, env = "CONSENTD_WATCH_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    watch_retention: Duration,
    /// Watch keeps at most this many of the newest committed transactions, whatever their age.
    #[arg(long, env = "CONSENTD_WATCH_RETENTION_CHANGES", default_value_t = WATCH_RETENTION_CHANGES_DEFAULT)]
    watch_retention_changes: u64,
    /// A watch with nothing new for its tenant sends a checkpoint (a message
    /// without changes, with the newest token) this often.
    #[arg(long, env = "CONSENTD_WATCH_CHECKPOINT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    watch_checkpoint_interval: Duration,
    /// Watches open at once, over all clients; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CONSENTD_WATCH_MAX_STREAMS", default_value_t = WATCH_MAX_STREAMS_DEFAULT)]
    watch_max_streams: usize,
    /// Serve the preference page (the page behind unsubscribe links, and
    /// RFC 8058 one-click unsubscribe) over HTTP on ADDR (off when not set).
    /// Put a TLS-terminating proxy in front of it; links start with --public-url.
    #[arg(long, env = "CONSENTD_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// What preference links start with: the address at which people reach
    /// --http-listen (https://prefs.example.com). Needed with --link-keys.
    #[arg(
        long,
        env = "CONSENTD_PUBLIC_URL",
        value_name = "URL",
        requires = "link_keys"
    )]
    public_url: Option<String>,
    /// The link key file (TOML; `consentd keys generate-link-key`): the last
    /// key seals new links, every key opens them. Needed with --public-url.
    #[arg(
        long,
        env = "CONSENTD_LINK_KEYS",
        value_name = "FILE",
        requires = "public_url"
    )]
    link_keys: Option<PathBuf>,
    /// How long a preference link works.
    #[arg(long, env = "CONSENTD_LINK_TTL", default_value = "60d", value_parser = humantime::parse_duration)]
    link_ttl: Duration,
    /// A proxy (address or network, e.g. 10.0.0.0/8) whose X-Forwarded-For
    /// header names the client of the preference page; repeat for several.
    /// Without it the header is ignored and the peer's address is recorded.
    #[arg(long = "http-trusted-proxy", env = "CONSENTD_HTTP_TRUSTED_PROXIES", value_delimiter = ',', value_parser = IpNet::parse, value_name = "NET")]
    http_trusted_proxies: Vec<IpNet>,
    /// Requests per minute to the preference page from one client address (IPv6: one /64).
    #[arg(long, env = "CONSENTD_HTTP_RATE_PER_IP", default_value_t = RATE_PER_IP_DEFAULT)]
    http_rate_per_ip: u32,
    /// Requests per minute to the preference page on one link.
    #[arg(long, env = "CONSENTD_HTTP_RATE_PER_LINK", default_value_t = RATE_PER_LINK_DEFAULT)]
    http_rate_per_link: u32,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (off when not set).
    #[arg(long, env = "CONSENTD_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// API key file (TOML): clients must then send `authorization: Bearer <key>`.
    /// Without it, access control is off and --listen must be a loopback address.
    #[arg(long, env = "CONSENTD_AUTH_KEYS")]
    auth_keys: Option<PathBuf>,
    /// Allow listening on a non-loopback address without --auth-keys: anyone who
    /// can reach the port may then read and change every tenant.
    #[arg(long, env = "CONSENTD_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, env = "CONSENTD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "CONSENTD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS. Needs --tls-cert.
    #[arg(long, env = "CONSENTD_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ServeArgs {
    /// Checks the values clap cannot, before anything is opened or bound.
    fn settings(&self) -> Result<Settings, String> {
        if self.soft_error_threshold == 0 {
            return Err("--soft-error-threshold must be at least 1".into());
        }
        if self.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.watch_retention_changes == 0 {
            return Err("--watch-retention-changes must be at least 1".into());
        }
        if self.address_log_events_max < 2 * CHECKPOINT_EVERY {
            return Err(format!(
                "--address-log-events-max must be at least {}",
                2 * CHECKPOINT_EVERY
            ));
        }
        for (flag, value) in [
            (
                "--significant-error-interval",
                self.significant_error_interval,
            ),
            ("--error-reset-period", self.error_reset_period),
            (
                "--mailbox-full-reset-period",
                self.mailbox_full_reset_period,
            ),
            ("--request-timeout", self.request_timeout),
            ("--confirmation-token-ttl", self.confirmation_token_ttl),
            ("--late-event-horizon", self.late_event_horizon),
            ("--retention-sweep-interval", self.retention_sweep_interval),
            ("--handshake-timeout", self.handshake_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--keepalive-interval", self.keepalive_interval),
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--stream-idle-timeout", self.stream_idle_timeout),
            ("--stream-max-duration", self.stream_max_duration),
            ("--feed-interval", self.feed_interval),
            ("--max-staleness", self.max_staleness),
            ("--watch-retention", self.watch_retention),
            (
                "--watch-checkpoint-interval",
                self.watch_checkpoint_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be longer than zero"));
            }
        }
        let security = self.security()?;
        Ok(Settings {
            security,
            rules: QuarantineRules {
                soft_error_threshold: self.soft_error_threshold,
                significant_error_interval: self.significant_error_interval,
                error_reset_period: self.error_reset_period,
                mailbox_full_reset_period: self.mailbox_full_reset_period,
            },
            log_limits: LogLimits {
                horizon: self.late_event_horizon,
                events_max: self.address_log_events_max,
            },
            confirmation_token_ttl: self.confirmation_token_ttl,
            request_timeout: self.request_timeout,
            shutdown_grace: self.shutdown_grace,
            max_concurrent_streams: self.max_concurrent_streams,
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                handshake_timeout: self.handshake_timeout,
                idle_timeout: self.idle_timeout,
            },
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            stream_max_duration: self.stream_max_duration,
            cache_bytes: Some(self.cache_size),
            retention_sweep_interval: self.retention_sweep_interval,
            compaction: CompactionPolicy {
                ratio: self.compaction_ratio,
                min_bytes: self.compaction_min_size,
            },
            max_staleness: self.max_staleness,
            watch: WatchSettings {
                retention: self.watch_retention,
                retention_changes: self.watch_retention_changes,
                checkpoint_interval: self.watch_checkpoint_interval,
                max_streams: self.watch_max_streams,
            },
            links: self.links()?,
            page: PageSettings {
                trusted_proxies: self.http_trusted_proxies.clone(),
                rate_per_ip: self.http_rate_per_ip,
                rate_per_link: self.http_rate_per_link,
                ..PageSettings::default()
            },
        })
    }

    /// The preference-link settings: the key file read and checked, the
    /// public address checked.
    fn links(&self) -> Result<Option<LinkSettings>, String> {
        let (Some(url), Some(file)) = (&self.public_url, &self.link_keys) else {
            return Ok(None);
        };
        let public_url = parse_public_url(url)?;
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--link-keys {}: {e}", file.display()))?;
        let keys =
            LinkKeys::parse(&text).map_err(|e| format!("--link-keys {}: {e}", file.display()))?;
        if self.link_ttl.is_zero() {
            return Err("--link-ttl must be longer than zero".into());
        }
        if self.http_rate_per_ip == 0 || self.http_rate_per_link == 0 {
            return Err("--http-rate-per-ip and --http-rate-per-link must be at least 1".into());
        }
        Ok(Some(LinkSettings {
            keys: Arc::new(keys),
            public_url,
            ttl: self.link_ttl,
        }))
    }
}

impl ServeArgs {
    /// Reads and checks the key file and TLS files, and refuses to serve
    /// without keys on an address other machines can reach.
    fn security(&self) -> Result<Security, String> {
        let keys = match &self.auth_keys {
            Some(path) => {
                Some(Arc::new(KeySet::load(path).map_err(|e| {
                    format!("--auth-keys {}: {e}", path.display())
                })?))
            }
            None => None,
        };
        if keys.is_none() && !self.listen.ip().is_loopback() && !self.insecure_no_auth {
            return Err(format!(
                "refusing to listen on {} without --auth-keys: anyone who can reach it could read \
                 and change every tenant. Give --auth-keys FILE (see `consentd keys generate`), \
                 listen on a loopback address such as 127.0.0.1, or pass --insecure-no-auth",
                self.listen
            ));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = TlsPem::load(cert, key, self.tls_client_ca.as_deref())?;
                server::check_tls(&tls)?;
                Some(Arc::new(tls))
            }
            (None, None) => None,
            // clap's `requires` makes these unreachable; refuse them anyway.
            _ => return Err("--tls-cert and --tls-key go together".to_owned()),
        };
        Ok(Security { keys, tls })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Export(args) => tools::export(&args),
        Command::Import(args) => tools::import(&args),
        Command::ImportSuppressions(args) => tools::import_suppressions(&args),
        Command::Backup(args) => tools::backup(&args),
        Command::Keys(KeysCommand::Generate(args)) => generate_key(&args),
        Command::Keys(KeysCommand::GenerateLinkKey(args)) => generate_link_key(&args),
    }
}

/// Prints a new link-key entry on stdout (`>> links.toml` appends it);
/// explanations go to stderr.
fn generate_link_key(args: &GenerateLinkKeyArgs) -> ExitCode {
    match consentd::links::generate_link_key(&args.id) {
        Ok(entry) => {
            eprintln!(
                "Append this entry to the --link-keys file (keep it secret, mode 0600) and \
                 restart the server: the last key in the file seals new links, and every key in \
                 it opens them, so keep the older keys until their links have expired (--link-ttl)."
            );
            print!("{entry}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Prints the new key on the first line of stdout, then a blank line, then the
/// key-file entry; explanations go to stderr.
fn generate_key(args: &GenerateArgs) -> ExitCode {
    let generated = TenantScope::parse(args.tenants.iter().map(String::as_str))
        .map_err(|e| format!("--tenant: {e}"))
        .and_then(|scope| consentd::auth::generate_key(&args.name, args.role, &scope));
    match generated {
        Ok(generated) => {
            eprintln!(
                "The key is on the first line below. It is shown once: give it to its user now. \
                 The server keeps only its SHA-256; add the [[key]] entry to the --auth-keys file \
                 and restart the server."
            );
            println!("{}\n\n{}", generated.key, generated.entry);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(message) => {
            tracing::error!("invalid configuration: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match &args.database_url {
            Some(url) => {
                let mut options = PgOptions::new(url.clone());
                options.ca_file.clone_from(&args.database_ca);
                options.pool_size = args.database_pool_size;
                options.feed_interval = args.feed_interval;
                match PgStore::connect(options).await {
                    Ok(store) => {
                        tracing::info!(database = %redact(url), "store open (PostgreSQL)");
                        App::with_store(Arc::new(store), settings, Arc::new(SystemClock))
                    }
                    Err(error) => {
                        tracing::error!(
                            "cannot open the PostgreSQL store at {}: {error}",
                            redact(url)
                        );
                        return ExitCode::FAILURE;
                    }
                }
            }
            None => match App::open(&args.data_dir, settings, Arc::new(SystemClock)) {
                Ok(app) => {
                    tracing::info!(data_dir = %args.data_dir.display(), "store open");
                    app
                }
                Err(error) => {
                    tracing::error!("cannot open the store: {error}");
                    return ExitCode::FAILURE;
                }
            },
        };
        if let Some(addr) = args.metrics_listen {
            match tokio::net::TcpListener::bind(addr).await {
                // Ends with the runtime, after `run` has returned.
                Ok(listener) => drop(tokio::spawn(consentd::metrics::serve(
                    app.metrics(),
                    listener,
                ))),
                Err(error) => {
                    tracing::error!("cannot listen for metrics on {addr}: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let page_listener = match args.http_listen {
            None => None,
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(error) => {
                    tracing::error!("cannot listen for the preference page on {addr}: {error}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!("cannot listen on {}: {error}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        match server::run_with_page(app, listener, page_listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("server failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The public address of the preference page: `http://` or `https://`, a
/// host, an optional path; no query or fragment; kept without a trailing `/`.
fn parse_public_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("--public-url {raw:?} must start with https:// (or http://)"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty()
        || url.len() > 512
        || !url.bytes().all(|b| b.is_ascii_graphic())
        || url.contains(['?', '#', '"', '\'', '<', '>', '\\'])
    {
        return Err(format!(
            "--public-url {raw:?} must be an address such as https://prefs.example.com (a host, \
             an optional path, no query, at most 512 characters)"
        ));
    }
    Ok(url.to_owned())
}

/// A byte size: a number with an optional unit (KiB, MiB, GiB; KB, MB, GB).
fn parse_bytes(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a size such as 64MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| format!("{raw:?} is too large"))?;
    if bytes < 1 << 20 {
        return Err(format!("{raw:?} is too small: at least 1MiB"));
    }
    Ok(bytes)
}

/// A byte size as [`parse_bytes`] reads it, or 0.
fn parse_size_or_zero(raw: &str) -> Result<u64, String> {
    if raw.trim() == "0" {
        Ok(0)
    } else {
        parse_bytes(raw)
    }
}

/// A compaction ratio: 0 (never), or 2 and up (a fresh copy already takes
/// more than its records' bytes, so 1 would compact at every sweep).
fn parse_compaction_ratio(raw: &str) -> Result<u32, String> {
    match raw.trim().parse::<u32>() {
        Ok(0) => Ok(0),
        Ok(ratio) if ratio >= 2 => Ok(ratio),
        _ => Err(format!(
            "{raw:?} is not 0 (never) or a whole number from 2 up"
        )),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_defaults_are_the_library_defaults() {
        let cli = Cli::try_parse_from(["consentd", "serve"]).expect("defaults parse");
        let Command::Serve(args) = cli.command else {
            panic!("parsed as serve");
        };
        let settings = args.settings().expect("defaults are valid");
        let defaults = Settings::default();
        assert_eq!(settings.rules, defaults.rules);
        assert_eq!(settings.request_timeout, defaults.request_timeout);
        assert_eq!(settings.shutdown_grace, defaults.shutdown_grace);
        assert_eq!(
            settings.max_concurrent_streams,
            defaults.max_concurrent_streams
        );
        assert_eq!(settings.compaction, defaults.compaction);
        assert_eq!(settings.connections, defaults.connections);
        assert_eq!(settings.keepalive_interval, defaults.keepalive_interval);
        assert_eq!(settings.keepalive_timeout, defaults.keepalive_timeout);
        assert_eq!(settings.stream_idle_timeout, defaults.stream_idle_timeout);
        assert_eq!(settings.stream_max_duration, defaults.stream_max_duration);
    }

    #[test]
    fn connection_and_stream_limits_are_read_from_flags() {
        let settings = serve_args(&[
            "consentd",
            "serve",
            "--max-connections",
            "7",
            "--handshake-timeout",
            "3s",
            "--idle-timeout",
            "2m",
            "--keepalive-interval",
            "20s",
            "--keepalive-timeout",
            "4s",
            "--stream-idle-timeout",
            "5s",
            "--stream-max-duration",
            "1h",
        ])
        .settings()
        .expect("valid");
        assert_eq!(
            settings.connections,
            ConnectionLimits {
                max_connections: 7,
                handshake_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(120),
            }
        );
        assert_eq!(settings.keepalive_interval, Duration::from_secs(20));
        assert_eq!(settings.keepalive_timeout, Duration::from_secs(4));
        assert_eq!(settings.stream_idle_timeout, Duration::from_secs(5));
        assert_eq!(settings.stream_max_duration, Duration::from_secs(3600));
        for flag in [
            "--handshake-timeout",
            "--idle-timeout",
            "--keepalive-interval",
            "--keepalive-timeout",
            "--stream-idle-timeout",
            "--stream-max-duration",
        ] {
            let refused = serve_args(&["consentd", "serve", flag, "0s"])
                .settings()
                .expect_err("zero refused");
            assert!(refused.contains(flag), "{refused}");
        }
        let refused = serve_args(&["consentd", "serve", "--max-connections", "0"])
            .settings()
            .expect_err("zero refused");
        assert!(refused.contains("--max-connections"), "{refused}");
    }

    #[test]
    fn bad_values_are_refused_before_anything_starts() {
        for bad in [
            &["consentd", "serve", "--soft-error-threshold", "0"][..],
            &["consentd", "serve", "--error-reset-period", "0s"][..],
        ] {
            let cli = Cli::try_parse_from(bad).expect("parses");
            let Command::Serve(args) = cli.command else {
                panic!("parsed as serve");
            };
            assert!(args.settings().is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["consentd", "serve", "--listen", "nowhere"]).is_err());
        for bad in ["1", "-1", "x", "2.5"] {
            assert!(
                Cli::try_parse_from(["consentd", "serve", "--compaction-ratio", bad]).is_err(),
                "--compaction-ratio {bad}"
            );
        }
    }

    #[test]
    fn the_compaction_minimum_is_a_size_or_zero() {
        for (raw, bytes) in [("0", 0), ("1MiB", 1 << 20), ("64MiB", 64 << 20)] {
            let args = serve_args(&["consentd", "serve", "--compaction-min-size", raw]);
            assert_eq!(args.settings().expect("valid").compaction.min_bytes, bytes);
        }
        assert!(
            Cli::try_parse_from(["consentd", "serve", "--compaction-min-size", "1KiB"]).is_err()
        );
    }

    #[test]
    fn the_compaction_ratio_is_never_or_two_and_up() {
        for (raw, ratio) in [("0", 0), ("2", 2), ("4", 4), ("10", 10)] {
            let args = serve_args(&["consentd", "serve", "--compaction-ratio", raw]);
            assert_eq!(args.settings().expect("valid").compaction.ratio, ratio);
        }
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(args).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("parsed as serve")
        };
        *args
    }

    #[test]
    fn no_keys_means_loopback_only_unless_insecure() {
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            assert!(
                serve_args(&["consentd", "serve", "--listen", listen])
                    .settings()
                    .is_ok()
            );
        }
        let refused = serve_args(&["consentd", "serve", "--listen", "0.0.0.0:0"])
            .settings()
            .expect_err("refused");
        assert!(refused.contains("--insecure-no-auth"), "{refused}");
        assert!(
            serve_args(&[
                "consentd",
                "serve",
                "--listen",
                "0.0.0.0:0",
                "--insecure-no-auth"
            ])
            .settings()
            .is_ok()
        );
    }

    #[test]
    fn tls_flags_need_each_other() {
        assert!(Cli::try_parse_from(["consentd", "serve", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["consentd", "serve", "--tls-key", "k.pem"]).is_err());
        assert!(Cli::try_parse_from(["consentd", "serve", "--tls-client-ca", "ca.pem"]).is_err());
        let missing = serve_args(&[
            "consentd",
            "serve",
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
        ])
        .settings()
        .expect_err("missing files");
        assert!(
            missing.starts_with("--tls-cert: cannot read /nonexistent/c.pem"),
            "{missing}"
        );
    }
}
