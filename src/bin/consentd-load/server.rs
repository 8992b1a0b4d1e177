//! The server under load: one given by `--addr` (consentd, or any server with
//! consentd's message shapes), or `consentd serve` started here and stopped
//! at the end. Its CPU time and resident memory are read from `/proc` when
//! its pid is known.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::Error;

/// How often health is asked while waiting for SERVING.
const HEALTH_POLL: Duration = Duration::from_millis(20);

/// Which server to load, and how to start one.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// A running server to load (consentd, or a server with its message
    /// shapes). Without it, `consentd serve` is started here and stopped at
    /// the end.
    #[arg(long)]
    pub(crate) addr: Option<SocketAddr>,
    /// The pid of the server given by --addr, to read its CPU time and RSS.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// The consentd binary to start (default: the one next to this binary).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Data directory of the started server (`bench`, `soak`, `feedback`:
    /// default a new one under the system's temporary directory, removed at
    /// the end; `batch`, `stream`, `check`: default the seed directory, see
    /// `seed`).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// An extra flag for `consentd serve` (repeat it for several:
    /// `--server-arg=--request-timeout=60s`).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) server_arg: Vec<String>,
    /// How long to wait for a started server to listen, and then for the
    /// server's health to report SERVING (a server that builds an index
    /// first may take a while with many profiles).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub(crate) serving_timeout: Duration,
    /// `RUST_LOG` of a started server (default `info`); set by a mode, not a flag.
    #[arg(skip)]
    pub(crate) log_filter: Option<String>,
}

/// The server being loaded: given, or started (and stopped on drop).
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) pid: Option<u32>,
    child: Option<Child>,
    /// A data directory this process created, removed on drop.
    temp_dir: Option<PathBuf>,
    /// The data directory, when known (to report its size).
    data_dir: Option<PathBuf>,
    /// When the started server was spawned.
    spawned_at: Option<Instant>,
    /// Records deleted by the started server's retention sweeps, from its
    /// log (`retention sweep removed=N`, logged at debug level: see
    /// [`Target::log_filter`]).
    swept: Arc<AtomicU64>,
    /// Compactions of the started server's store, from its log (`store compacted`).
    compactions: Arc<AtomicU64>,
}

/// Bytes of sled's log file in the store generation in use in `data_dir`.
pub(crate) fn db_bytes(data_dir: &Path) -> Option<u64> {
    let generation = match std::fs::read_to_string(data_dir.join("CURRENT")) {
        Ok(name) => data_dir.join(name.trim_end()),
        Err(_) => data_dir.to_path_buf(),
    };
    Some(std::fs::metadata(generation.join("db")).ok()?.len())
}

/// The `consentd` binary: `--server-bin`, or the one next to this binary.
pub(crate) fn consentd_bin(server_bin: Option<&Path>) -> Result<PathBuf, Error> {
    match server_bin {
        Some(bin) => Ok(bin.to_path_buf()),
        None => Ok(std::env::current_exe()?.with_file_name("consentd")),
    }
}

impl Server {
    /// Uses the server at `--addr`, or starts `consentd serve` on
    /// `--data-dir` (a fresh temporary directory without it).
    pub(crate) fn start(target: &Target) -> Result<Server, Error> {
        if let Some(addr) = target.addr {
            return Ok(Server {
                addr,
                pid: target.server_pid,
                child: None,
                temp_dir: None,
                data_dir: target.data_dir.clone(),
                spawned_at: None,
                swept: Arc::default(),
                compactions: Arc::default(),
            });
        }
        let bin = consentd_bin(target.server_bin.as_deref())?;
        let (data_dir, temp_dir) = match &target.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir =
                    std::env::temp_dir().join(format!("consentd-load-{}", std::process::id()));
                (dir.clone(), Some(dir))
            }
        };
        let spawned_at = Instant::now();
        let mut child = Command::new(&bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(&target.server_arg)
            .env("RUST_LOG", target.log_filter.as_deref().unwrap_or("info"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (found, listening) = std::sync::mpsc::channel();
        let swept = Arc::new(AtomicU64::new(0));
        let swept_in_log = Arc::clone(&swept);
        let compactions = Arc::new(AtomicU64::new(0));
        let compactions_in_log = Arc::clone(&compactions);
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(found) = found.take()
                {
                    let _ = found.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                } else if line.contains("retention sweep")
                    && let Some(n) = line
                        .split("removed=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|n| n.parse::<u64>().ok())
                {
                    swept_in_log.fetch_add(n, Ordering::Relaxed);
                } else if line.contains("store compacted") {
                    compactions_in_log.fetch_add(1, Ordering::Relaxed);
                    eprintln!("server: {line}");
                } else if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("server: {line}");
                }
            }
        });
        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: Some(child.id()),
            child: Some(child),
            temp_dir,
            data_dir: Some(data_dir.clone()),
            spawned_at: Some(spawned_at),
            swept,
            compactions,
        };
        let text = listening
            .recv_timeout(target.serving_timeout)
            .map_err(|_| "the server did not start listening")?;
        server.addr = text.parse()?;
        eprintln!(
            "started {} (pid {}) on {}, data in {}",
            bin.display(),
            server.pid.unwrap_or(0),
            server.addr,
            data_dir.display()
        );
        Ok(server)
    }

    /// Waits until the server's health (`grpc.health.v1`, the whole server
    /// and the eligibility service) reports SERVING, as a server that builds
    /// an index at start-up does only once it is ready. A server without
    /// the health service is taken as ready. Returns the server's age then:
    /// the time since this process spawned it, or, for a server given by
    /// `--addr` with `--server-pid`, the age of that process (its start-up
    /// time when it was started just before).
    pub(crate) async fn wait_serving(&self, timeout: Duration) -> Result<Option<Duration>, Error> {
        let deadline = Instant::now() + timeout;
        let mut health = HealthClient::new(connect(self.addr).await?);
        for service in ["", "consent.v1.EligibilityService"] {
            loop {
                let asked = health
                    .check(HealthCheckRequest {
                        service: service.to_owned(),
                    })
                    .await;
                match asked {
                    Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => break,
                    Ok(_) => {}
                    // No health service, or no status for this service name.
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unimplemented | tonic::Code::NotFound
                        ) =>
                    {
                        break;
                    }
                    Err(status) => return Err(format!("health check: {status}").into()),
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the server at {} did not report SERVING within {timeout:?}",
                        self.addr
                    )
                    .into());
                }
                tokio::time::sleep(HEALTH_POLL).await;
            }
        }
        Ok(match self.spawned_at {
            Some(at) => Some(at.elapsed()),
            None => self.pid.and_then(process_age),
        })
    }

    /// Bytes of the files in the data directory.
    pub(crate) fn data_bytes(&self) -> Option<u64> {
        Some(dir_bytes(self.data_dir.as_ref()?))
    }

    /// The data directory, when known.
    pub(crate) fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Bytes of sled's log file, `db` (the rest of the directory is its
    /// configuration and page-table snapshots), in the generation that
    /// `CURRENT` names (`gen-N/db`), or in the data directory itself.
    pub(crate) fn db_bytes(&self) -> Option<u64> {
        db_bytes(self.data_dir.as_ref()?)
    }

    /// Compactions of the started server's store so far (from its log).
    pub(crate) fn compactions(&self) -> u64 {
        self.compactions.load(Ordering::Relaxed)
    }

    /// Records the started server's retention sweeps deleted so far (from
    /// its log; 0 for a server given by `--addr`, or without debug logging).
    pub(crate) fn swept(&self) -> u64 {
        self.swept.load(Ordering::Relaxed)
    }

    /// CPU time the server has used (user + system), from /proc/<pid>/stat.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        cpu_time(&self.pid?.to_string())
    }

    /// The server's resident set size in KiB, from /proc/<pid>/status.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid?)
    }

    /// Stops a server this process started (SIGTERM: it drains, flushes and
    /// exits 0) and waits for it off the runtime's one thread, which must go
    /// on running the client connections' tasks so that they close when the
    /// server asks them to; a blocking wait there would hold the server up
    /// for its whole grace period.
    pub(crate) async fn stop(mut self) {
        self.shut_down().await;
    }

    /// [`Server::stop`], keeping the data directory until `self` is
    /// dropped (to read it once no server holds it).
    pub(crate) async fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

impl Drop for Server {
    /// The fallback of [`Server::stop`] (on an error): SIGTERM and a
    /// blocking wait.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the server drains, flushes and exits 0.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        if let Some(dir) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Bytes of the files under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// CPU time (user + system) of process `pid` (or `self`), from /proc/<pid>/stat.
pub(crate) fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in clock ticks of 1/100 s (USER_HZ) on every common platform.
    Some(Duration::from_millis(ticks * 10))
}

/// How long process `pid` has been running, from /proc/<pid>/stat and
/// /proc/uptime (to the clock tick, 10 ms).
pub(crate) fn process_age(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `starttime`, field 22: clock ticks after boot; the 20th after the command name.
    let started: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let up_s: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let age_s = up_s - started as f64 / 100.0;
    Some(Duration::from_secs_f64(age_s.max(0.0)))
}

/// The resident set size of process `pid` in KiB, from /proc/<pid>/status.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of the server and of this process between two moments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    server: Option<Duration>,
    client: Option<Duration>,
}

impl CpuMark {
    pub(crate) fn now(server: &Server) -> Self {
        Self {
            server: server.cpu_time(),
            client: cpu_time("self"),
        }
    }

    /// (server, client) CPU time used since `self`.
    pub(crate) fn since(self, server: &Server) -> (Option<Duration>, Option<Duration>) {
        let to = CpuMark::now(server);
        let delta = |from: Option<Duration>, to: Option<Duration>| {
            from.zip(to).map(|(from, to)| to.saturating_sub(from))
        };
        (delta(self.server, to.server), delta(self.client, to.client))
    }
}

/// Samples a process's RSS at an interval until dropped or stopped.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<(u64, u64)>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`; `None` without a pid.
    pub(crate) fn start(pid: Option<u32>, every: Duration) -> Option<Self> {
        let pid = pid?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut range: Option<(u64, u64)> = None;
            let mut interval = tokio::time::interval(every);
            while !stopped.load(Ordering::Relaxed) {
                interval.tick().await;
                if let Some(kib) = rss_kib(pid) {
                    range = Some(range.map_or((kib, kib), |(lo, hi)| (lo.min(kib), hi.max(kib))));
                }
            }
            range
        });
        Some(Self { stop, task })
    }

    /// The lowest and highest RSS seen, in KiB.
    pub(crate) async fn finish(self) -> Option<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.ok().flatten()
    }
}

pub(crate) async fn connect(addr: SocketAddr) -> Result<Channel, Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}
