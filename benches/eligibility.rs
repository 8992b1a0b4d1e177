//! The hot path, measured at three depths:
//! - `decide`: the pure rule for one profile (no I/O);
//! - `index_batch_10k`: a 10,000-recipient batch decided from the decision
//!   index through the application, into a sink that only counts;
//! - `grpc_batch_10k_full`, `grpc_batch_10k_basic`: the same batch end to end
//!   over gRPC on loopback, encoded, with each view.
//!
//! Run with `cargo bench --bench eligibility`. The store holds 100,000
//! profiles: 10% opted out of all channels, 5% with a quarantined email.

use std::{hint::black_box, sync::Arc, time::Duration};

use consentd::{
    app::{App, DecisionSink, Ids, Settings},
    clock::SystemClock,
    engine::{
        self, Address, AddressState, AddressStatus, ChangeContext, Channel, ConsentStatus, Profile,
        ProfileAddresses, ProfileId, Scope, Source, Tenant,
    },
    index::Verdict,
    pb::{self, eligibility_service_client::EligibilityServiceClient},
    store::{Lock, Store, sled::SledStore},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PROFILES: usize = 100_000;
const BATCH: usize = 10_000;

async fn populate(store: &dyn Store, tenant: &Tenant) {
    let ctx = ChangeContext::new(Source::Import, "bench", "").expect("valid context");
    for i in 0..PROFILES {
        let id = ProfileId::parse(&format!("p{i}")).expect("valid id");
        let email = Address::email(&format!("user{i}@example.com")).expect("valid email");
        let phone = Address::phone(&format!("+3361{i:07}")).expect("valid phone");
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
            .await
            .expect("begin");
        if i % 10 == 0
            && let Some(entry) =
                profile.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx, 0)
        {
            tx.append_history(tenant, &profile.id, &entry);
        }
        tx.put_profile(tenant, &profile);
        if i % 20 == 1 {
            let state = AddressState {
                status: AddressStatus::Quarantined,
                ..AddressState::default()
            };
            tx.put_address_state(tenant, &email, &state);
        }
        tx.commit().await.expect("commit");
    }
    store.sync().await.expect("sync");
}

/// Counts what it is given, so that the batch is decided but not encoded.
#[derive(Debug, Default)]
struct Count {
    eligible: usize,
    address_bytes: usize,
}

impl DecisionSink for Count {
    fn decided(&mut self, _id: &str, verdict: &Verdict<'_>) {
        if verdict.reasons.is_empty() {
            self.eligible += 1;
            self.address_bytes += verdict.addresses().map(str::len).sum::<usize>();
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
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open store"));
    runtime.block_on(populate(store.as_ref(), &tenant));
    let app = App::with_store(store, Settings::default(), Arc::new(SystemClock));
    runtime.block_on(app.start()).expect("index");
    let ids: Vec<ProfileId> = (0..BATCH)
        .map(|i| ProfileId::parse(&format!("p{}", i * 7 % PROFILES)).expect("valid id"))
        .collect();

    let mut group = c.benchmark_group("eligibility");
    group.measurement_time(Duration::from_secs(10));

    let profile = runtime
        .block_on(app.profile(&tenant, &ids[3]))
        .expect("profile exists");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decide", |b| {
        b.iter(|| {
            let decision: Result<_, std::convert::Infallible> = engine::decide(
                Some(black_box(&profile)),
                Channel::Email,
                engine::Policy::default(),
                |_| Ok((AddressStatus::Valid, false)),
            );
            black_box(decision)
        });
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    let delivery = runtime
        .block_on(app.delivery(&tenant, Some(Channel::Email), None))
        .expect("delivery");
    let shared_ids: Arc<dyn Ids> = Arc::new(ids.clone());
    group.bench_function("index_batch_10k", |b| {
        b.to_async(&runtime).iter(|| async {
            let decided = app
                .decide_many(&tenant, Arc::clone(&shared_ids), &delivery, |_| {
                    Count::default()
                })
                .await
                .expect("check");
            assert_eq!(decided.summary.total, BATCH as u64);
            black_box(
                decided
                    .parts
                    .iter()
                    .map(|c| c.eligible + c.address_bytes)
                    .sum::<usize>(),
            )
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
    for (name, view) in [
        ("grpc_batch_10k_full", pb::DecisionView::Full),
        ("grpc_batch_10k_basic", pb::DecisionView::Basic),
    ] {
        let request = pb::BatchCheckEligibilityRequest {
            tenant: tenant.as_str().to_owned(),
            channel: pb::Channel::Email.into(),
            profile_ids: ids.iter().map(|id| id.as_str().to_owned()).collect(),
            view: view.into(),
            ..Default::default()
        };
        group.bench_function(name, |b| {
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
    }
    group.finish();
    drop(client);
    let _ = stop.send(());
    let _ = runtime.block_on(server);
}

criterion_group!(eligibility, benches);
criterion_main!(eligibility);
