//! The hot path, measured at three depths:
//! - `decide`: the pure rule for one profile (no I/O);
//! - `profile_reads_10k`, `address_reads_10k`: the two kinds of sled point
//!   read a decision makes, one thread, 10,000 each;
//! - `app_check_10k`: a 10,000-recipient batch through the application and
//!   the sled store (one profile read + one address read per recipient);
//! - `grpc_batch_10k`: the same batch end to end over gRPC on loopback.
//!
//! Run with `cargo bench --bench eligibility`. The store holds 100,000
//! profiles: 10% opted out of all channels, 5% with a quarantined email.

use std::{hint::black_box, sync::Arc, time::Duration};

use consentd::{
    app::{App, Settings},
    clock::SystemClock,
    engine::{
        self, Address, AddressEventKind, AddressStatus, ChangeContext, Channel, ConsentStatus,
        ProfileAddresses, ProfileId, QuarantineRules, Scope, Source, Tenant,
    },
    pb::{self, eligibility_service_client::EligibilityServiceClient},
    store::Store,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PROFILES: usize = 100_000;
const BATCH: usize = 10_000;

fn populate(store: &Store, tenant: &Tenant) {
    let ctx = ChangeContext::new(Source::Import, "bench", "").expect("valid context");
    let rules = QuarantineRules::default();
    for i in 0..PROFILES {
        let id = ProfileId::parse(&format!("p{i}")).expect("valid id");
        let email = Address::email(&format!("user{i}@example.com")).expect("valid email");
        let phone = Address::phone(&format!("+3361{i:07}")).expect("valid phone");
        let addresses = ProfileAddresses {
            emails: vec![email.clone()],
            phones: vec![phone],
            ..ProfileAddresses::default()
        };
        store
            .upsert_profile(tenant, &id, addresses, 0)
            .expect("upsert");
        if i % 10 == 0 {
            store
                .set_consent(
                    tenant,
                    &id,
                    Scope::AllChannels,
                    ConsentStatus::OptedOut,
                    &ctx,
                    0,
                )
                .expect("opt out");
        }
        if i % 20 == 1 {
            let event = AddressEventKind::Manual(AddressStatus::Quarantined);
            store
                .record_address_event(tenant, &email, event, 0, &ctx, 0, &rules)
                .expect("quarantine");
        }
    }
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = Tenant::parse("bench").expect("valid tenant");
    let store = Store::open(dir.path()).expect("open store");
    populate(&store, &tenant);
    let app = App::with_store(store, Settings::default(), Arc::new(SystemClock));
    let ids: Vec<ProfileId> = (0..BATCH)
        .map(|i| ProfileId::parse(&format!("p{}", i * 7 % PROFILES)).expect("valid id"))
        .collect();

    let mut group = c.benchmark_group("eligibility");
    group.measurement_time(Duration::from_secs(10));

    let profile = app.profile(&tenant, &ids[3]).expect("profile exists");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decide", |b| {
        b.iter(|| {
            let decision: Result<_, std::convert::Infallible> = engine::decide(
                Some(black_box(&profile)),
                Channel::Email,
                engine::Policy::default(),
                |_| Ok(AddressStatus::Valid),
            );
            black_box(decision)
        });
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("profile_reads_10k", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(app.profile(&tenant, id).expect("read"));
            }
        });
    });
    let emails: Vec<Address> = (0..BATCH)
        .map(|i| Address::email(&format!("user{}@example.com", i * 7 % PROFILES)).expect("valid"))
        .collect();
    group.bench_function("address_reads_10k", |b| {
        b.iter(|| {
            for email in &emails {
                black_box(app.address_state(&tenant, email).expect("read"));
            }
        });
    });
    let delivery = app
        .delivery(&tenant, Some(Channel::Email), None)
        .expect("delivery");
    group.bench_function("app_check_10k", |b| {
        b.to_async(&runtime).iter(|| async {
            let (decisions, summary) = app
                .check(&tenant, ids.clone(), &delivery)
                .await
                .expect("check");
            assert_eq!(decisions.len(), BATCH);
            black_box(summary)
        });
    });

    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(consentd::server::run(app.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = runtime
        .block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .initial_stream_window_size(Some(2 * 1024 * 1024))
                .initial_connection_window_size(Some(8 * 1024 * 1024))
                .connect(),
        )
        .map(EligibilityServiceClient::new)
        .expect("connect")
        .max_decoding_message_size(64 * 1024 * 1024);
    let request = pb::BatchCheckEligibilityRequest {
        tenant: tenant.as_str().to_owned(),
        channel: pb::Channel::Email.into(),
        profile_ids: ids.iter().map(|id| id.as_str().to_owned()).collect(),
        ..Default::default()
    };
    group.bench_function("grpc_batch_10k", |b| {
        b.to_async(&runtime).iter(|| {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                let response = client
                    .batch_check_eligibility(request)
                    .await
                    .expect("batch")
                    .into_inner();
                assert_eq!(response.decisions.len(), BATCH);
                black_box(response.summary)
            }
        });
    });
    group.finish();
    drop(client);
    let _ = stop.send(());
    let _ = runtime.block_on(server);
}

criterion_group!(eligibility, benches);
criterion_main!(eligibility);
