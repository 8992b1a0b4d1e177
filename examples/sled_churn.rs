//! Does sled's data file level off when the live data does? A churn test of
//! sled alone, without consentd, to compare with the retention soak
//! (docs/performance.md, "Retention"):
//!
//! ```sh
//! # EVENTS FLUSH_EVERY (0: only sled's own flusher) KEYS (clustered|random) WRITES (single|batch) DIR
//! cargo run --release --example sled_churn -- 3000000 4 clustered single /tmp/churn
//! SCALE=10 CACHE_MIB=512 cargo run --release --example sled_churn -- 6000000 4 clustered batch /tmp/churn
//! ```
//!
//! 10,000 "state" records (300 bytes) are rewritten in turn, and each event
//! appends a 400-byte record and deletes the one written 24,000 events
//! earlier, so about 34,000 records (13 MiB) are live at any time; `SCALE`
//! multiplies both counts, and `CACHE_MIB` sets sled's cache (16 MiB).
//! `clustered` keys each event record under its state's key (as consentd's
//! address logs are); `random` spreads them over the whole key space (as
//! consentd's event-id markers are). `single` writes each record on its own;
//! `batch` writes an event's three changes as one `sled::Batch`, as consentd
//! commits a change. Every 200,000 events it prints the size of sled's `db`
//! file.

use std::{path::PathBuf, process::ExitCode, time::Instant};

/// Event records live at any time.
const WINDOW: u64 = 24_000;
/// State records, rewritten in turn.
const STATES: u64 = 10_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [events, flush_every, keys, writes, dir] = args.as_slice() else {
        eprintln!("usage: sled_churn EVENTS FLUSH_EVERY clustered|random single|batch DIR");
        return ExitCode::from(64);
    };
    let (Ok(events), Ok(flush_every)) = (events.parse::<u64>(), flush_every.parse::<u64>()) else {
        eprintln!("EVENTS and FLUSH_EVERY are numbers");
        return ExitCode::from(64);
    };
    let (Some(random), Some(batched)) = (
        either(keys, "clustered", "random", "KEYS"),
        either(writes, "single", "batch", "WRITES"),
    ) else {
        return ExitCode::from(64);
    };
    match churn(events, flush_every, random, batched, &PathBuf::from(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `value` is `yes` (rather than `no`); `None`, said, when it is neither.
fn either(value: &str, no: &str, yes: &str, name: &str) -> Option<bool> {
    match value {
        _ if value == no => Some(false),
        _ if value == yes => Some(true),
        _ => {
            eprintln!("{name} is {no} or {yes}");
            None
        }
    }
}

/// The key of event `i`: clustered under its state, or scattered by a hash.
fn event_key(i: u64, random: bool, states: u64) -> String {
    if random {
        // A fixed odd multiplier: a bijection of u64, so keys stay distinct.
        format!("e{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    } else {
        format!("g{:08}{i:012}", i % states)
    }
}

fn churn(
    events: u64,
    flush_every: u64,
    random: bool,
    batched: bool,
    dir: &PathBuf,
) -> sled::Result<()> {
    let scale: u64 = std::env::var("SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cache_mib: u64 = std::env::var("CACHE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let (states, window) = (STATES * scale, WINDOW * scale);
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_mib << 20)
        .open()?;
    let state = vec![7u8; 300];
    let event = vec![9u8; 400];
    let started = Instant::now();
    for i in 0..events {
        let state_key = format!("s{:08}", i % states);
        if batched {
            let mut batch = sled::Batch::default();
            batch.insert(state_key.as_bytes(), state.clone());
            batch.insert(event_key(i, random, states).as_bytes(), event.clone());
            if i >= window {
                batch.remove(event_key(i - window, random, states).as_bytes());
            }
            db.apply_batch(batch)?;
        } else {
            db.insert(state_key, state.clone())?;
            db.insert(event_key(i, random, states), event.clone())?;
            if i >= window {
                db.remove(event_key(i - window, random, states))?;
            }
        }
        if flush_every > 0 && i % flush_every == 0 {
            db.flush()?;
        }
        if i % 200_000 == 0 {
            let size = std::fs::metadata(dir.join("db")).map_or(0, |m| m.len());
            println!(
                "{i} events, {:.0} s: db {} MiB, {} records",
                started.elapsed().as_secs_f64(),
                size >> 20,
                db.len()
            );
        }
    }
    Ok(())
}
