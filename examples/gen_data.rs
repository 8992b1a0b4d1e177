//! Generates inputs for measuring the data tools (see "Data tools" in docs/performance.md):
//!
//! ```sh
//! # A suppression list of N rows (CSV, with a header row) on stdout:
//! cargo run --release --example gen_data -- suppressions 1000000 > list.csv
//! # A data directory with N profiles, each with an e-mail address and a
//! # phone number, every 10th opted out of all channels, every 20th address bounced:
//! cargo run --release --example gen_data -- profiles 100000 DIR
//! ```

use std::{
    io::{BufWriter, Write as _},
    path::Path,
    process::ExitCode,
};

use consentd::{
    engine::{
        Address, AddressState, AddressStatus, ChangeContext, ConsentStatus, ErrorReason, Profile,
        ProfileAddresses, ProfileId, Scope, Source, Tenant,
    },
    store::{Lock, Store, sled::SledStore},
};

const REASONS: [&str; 6] = [
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "unsubscribed",
    "spam",
    "manual",
];

fn suppressions(rows: u64) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "email,reason,created")?;
    for i in 0..rows {
        let reason = REASONS[usize::try_from(i % 6).unwrap_or(0)];
        let day = 1 + i % 28;
        writeln!(
            out,
            "user{i}@example{}.com,{reason},2025-01-{day:02}",
            i % 97
        )?;
    }
    out.flush()
}

fn profiles(count: u64, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = SledStore::open(dir)?;
    let tenant = Tenant::parse("acme").map_err(|e| e.0)?;
    let context = ChangeContext::new(Source::Import, "gen_data", "").map_err(|(_, e)| e.0)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for i in 0..count {
            let id = ProfileId::parse(&format!("profile-{i}")).map_err(|e| e.0)?;
            let email = Address::email(&format!("user{i}@example.com")).map_err(|e| e.0)?;
            let phone = Address::phone(&format!("+3361{i:07}")).map_err(|e| e.0)?;
            let addresses = ProfileAddresses {
                emails: vec![email.clone()],
                phones: vec![phone],
                ..ProfileAddresses::default()
            };
            let mut profile = Profile::new(id.clone(), addresses, 0);
            let mut tx = store
                .begin(vec![
                    Lock::Profile(tenant.clone(), id),
                    Lock::Address(tenant.clone(), email.clone()),
                ])
                .await?;
            if i % 10 == 0
                && let Some(entry) =
                    profile.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &context, 1)
            {
                tx.append_history(&tenant, &profile.id, &entry);
            }
            tx.put_profile(&tenant, &profile);
            if i % 20 == 0 {
                // A hard bounce's outcome (the generator writes the state, not the event).
                let state = AddressState {
                    status: AddressStatus::Quarantined,
                    last_error_reason: ErrorReason::UserUnknown,
                    last_reason: "hard bounce".into(),
                    updated_at: Some(2),
                    last_event_at: Some(2),
                    ..AddressState::default()
                };
                tx.put_address_state(&tenant, &email, &state);
            }
            tx.commit().await?;
        }
        store.sync().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let count = |s: &str| s.parse::<u64>().ok();
    let result: Result<(), Box<dyn std::error::Error>> =
        match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
            ["suppressions", n] if count(n).is_some() => {
                suppressions(count(n).unwrap_or(0)).map_err(Into::into)
            }
            ["profiles", n, dir] if count(n).is_some() => {
                profiles(count(n).unwrap_or(0), Path::new(dir))
            }
            _ => Err("usage: gen_data suppressions N | gen_data profiles N DIR".into()),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
