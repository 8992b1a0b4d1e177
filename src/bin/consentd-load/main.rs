//! `consentd-load`: a load generator for consentd, over gRPC, end to end.
//! It measures the targets of issue 11 and puts consentd beside its peers (a
//! Redis set-up and a no-op gRPC server with consentd's message shapes; see
//! `tools/bench/compare.sh`).
//!
//! - `bench`: acknowledged durable writes per second (`OptOut`/`OptIn`
//!   toggles, each of which writes a consent change and its history entry,
//!   then waits for the group commit) with 1, 16 and 64 concurrent clients
//!   (`--clients`, `--connections`), with p50/p99/max latency.
//! - `soak`: mixed writes and batch eligibility checks for a bounded time,
//!   reporting the server's resident memory (VmRSS) and data directory at
//!   intervals. `--workload retention` runs constant feedback, subscription,
//!   opt-in/out and check traffic at fixed rates over a fixed population,
//!   against a server with retention periods of a minute, and reports writes
//!   per second by kind, the history entries written and the records the
//!   retention sweeps deleted: state that retention bounds must level off.
//! - `seed`: a data directory with `--profiles N` (default 1,000,000)
//!   profiles in the peers' data shape (ids `0..N`, one e-mail address each,
//!   10 % sharing their neighbour's, 5 % opted out of all channels, 3 % of
//!   e-mail, 1 % of addresses hard-bounced), drawn as the Redis peer draws
//!   them and read in with `consentd import`. Kept: a later run with the same
//!   N and tenant does nothing.
//! - `batch`: BatchCheckEligibility of `--batch 10000` ids drawn uniformly
//!   from `0..N + N/50` (2 % unknown), `--in-flight 4` calls at once over
//!   `--connections 1`, for `--duration` after `--warmup`, `--view basic|full`:
//!   decisions/s, calls/s, p50/p99/max call latency, server and client CPU
//!   per 1,000 decisions, server RSS.
//! - `stream`: StreamEligibility of `--recipients 10000000` in `--chunk
//!   10000`-id chunks over `--streams 2` concurrent streams: decisions/s, and
//!   the server's RSS sampled during the run (lowest, highest).
//! - `check`: CheckEligibility, `--in-flight 64` over `--connections 4`:
//!   calls/s, p50/p99/max.
//! - `feedback`: RecordDeliveryFeedback for one hot address, `--events 20000`
//!   with event times 1 ms apart, `--in-flight 256` at once (so slightly out
//!   of order); `--late` makes every event older than those before it.
//!
//! Every mode works against `--addr HOST:PORT` (`--server-pid` lets it read
//! that server's CPU time and RSS from /proc), or, without it, starts
//! `consentd serve` itself (the binary next to this one) and stops it with
//! SIGTERM at the end: `bench`, `soak` and `feedback` on a fresh data
//! directory, `batch`, `stream` and `check` on the seed directory (seeded
//! first if needed). It waits for the server's health to report SERVING
//! before it loads it. `--kv` prints `key=value` lines instead of a table.
//!
//! The client shares the cores with the server it measures, so it costs
//! little and the same for every server: one thread; requests drawn and
//! encoded before measuring and sent as raw bytes; answers skimmed (decisions
//! counted, summaries read) rather than decoded, and checked: one decision
//! per id sent (`wire`). This is a tool, not a test: the numbers depend on
//! the machine.

/// mimalloc, like the server: the load generator shares the machine's cores
/// with the server it measures, so its own allocations should cost little.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod eligibility;
mod feedback;
mod report;
mod retention;
mod seed;
mod server;
mod wire;
mod writes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Load generator for consentd: durable writes, eligibility at scale,
/// delivery feedback, memory soak.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Acknowledged durable writes per second and latency, for each client count.
    Bench(writes::BenchArgs),
    /// Mixed writes and batch checks for a bounded time; reports the server's RSS.
    Soak(writes::SoakArgs),
    /// A data directory with N profiles in the peers' data shape (cached).
    Seed(seed::SeedArgs),
    /// BatchCheckEligibility throughput and latency.
    Batch(eligibility::BatchArgs),
    /// StreamEligibility throughput, and the server's RSS while it runs.
    Stream(eligibility::StreamArgs),
    /// CheckEligibility calls per second and latency.
    Check(eligibility::CheckArgs),
    /// RecordDeliveryFeedback for one hot address, in order or late.
    Feedback(feedback::FeedbackArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the load generator shares the cores with the server it
    // measures, so it takes at most one of them, and its tasks wake each
    // other without crossing threads (28 -> 20 µs of its own CPU per write
    // at 64 clients, against the default two-worker runtime).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Mode::Bench(args) => writes::bench(args).await,
            Mode::Soak(args) => writes::soak(args).await,
            Mode::Seed(args) => seed::seed(&args),
            Mode::Batch(args) => eligibility::batch(args).await,
            Mode::Stream(args) => eligibility::stream(args).await,
            Mode::Check(args) => eligibility::check(args).await,
            Mode::Feedback(args) => feedback::feedback(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consentd-load: {error}");
            ExitCode::FAILURE
        }
    }
}
