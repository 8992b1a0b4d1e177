//! Access control and TLS against a real server: API keys (missing, wrong,
//! malformed), the role × RPC table, open health and reflection, TLS and
//! mutual TLS with certificates made here (rcgen), and the command line
//! (`keys generate`, refusing a public address without keys, bad files).

use std::{path::Path, sync::Arc, time::Duration};

use crate::common::{process::ServerProcess, *};
use consentd::{
    auth::{KeySet, Security, TlsPem},
    pb::{
        GetProfileRequest, ListQuarantinedAddressesRequest,
        profile_service_client::ProfileServiceClient,
        quarantine_service_client::QuarantineServiceClient,
    },
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use sha2::{Digest as _, Sha256};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel as GrpcChannel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// The key of each test caller: name, role, tenants (as written in the key file).
const KEYS: &[(&str, &str, &str)] = &[
    ("admin", "admin", "\"*\""),
    ("admin-acme", "admin", "[\"acme\"]"),
    ("operator", "operator", "[\"acme\"]"),
    ("delivery", "delivery", "[\"acme\"]"),
    ("landing_page", "landing_page", "[\"acme\"]"),
    ("tracking", "tracking", "[\"acme\"]"),
];

/// The secret of the key named `name` (tests only: real keys come from `keys generate`).
fn secret(name: &str) -> String {
    format!("test-secret-of-{name}")
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key file with every key of [`KEYS`].
fn key_file() -> String {
    KEYS.iter()
        .map(|(name, role, tenants)| {
            format!(
                "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\ntenants = {tenants}\n\n",
                sha256_hex(&secret(name))
            )
        })
        .collect()
}

fn keys() -> Security {
    Security {
        keys: Some(Arc::new(
            KeySet::parse(&key_file()).expect("valid key file"),
        )),
        tls: None,
    }
}

fn get_profile_request() -> GetProfileRequest {
    GetProfileRequest {
        tenant: TENANT.to_owned(),
        profile_id: "nobody".to_owned(),
    }
}

/// Asserts a refusal by the auth layer: the code, `ErrorInfo` domain
/// `consentd` with the code's name as reason, and words of the message.
fn assert_refused(case: &str, status: &Status, code: Code, says: &[&str]) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    let info = error_info(status);
    assert_eq!(info.domain, "consentd", "{case}: {status:?}");
    let reason = match code {
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        other => panic!("{case}: not a refusal code: {other:?}"),
    };
    assert_eq!(info.reason, reason, "{case}: {status:?}");
    for word in says {
        assert!(
            status.message().contains(word),
            "{case}: {:?} lacks {word:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn requests_without_a_valid_key_are_unauthenticated() {
    let app = spawn_app_secured(keys(), None).await;

    let none = app
        .profiles
        .clone()
        .get_profile(get_profile_request())
        .await
        .expect_err("no key");
    assert_refused(
        "no key",
        &none,
        Code::Unauthenticated,
        &["missing authorization header", "Bearer <key>"],
    );

    for (case, header, says) in [
        ("wrong key", "Bearer not-a-known-key", "unknown API key"),
        (
            "the SHA-256 instead of the key",
            &*format!("Bearer {}", sha256_hex(&secret("admin"))),
            "unknown API key",
        ),
        (
            "another scheme",
            &*format!("Basic {}", secret("admin")),
            "expected the Bearer scheme",
        ),
        ("no scheme", &*secret("admin"), "expected the Bearer scheme"),
        (
            "scheme without a key",
            "Bearer",
            "expected the Bearer scheme",
        ),
    ] {
        let client =
            ProfileServiceClient::with_interceptor(app.channel.clone(), Bearer::header(header));
        let status = client
            .clone()
            .get_profile(get_profile_request())
            .await
            .expect_err(case);
        assert_refused(case, &status, Code::Unauthenticated, &[says]);
        for key in [secret("admin"), "not-a-known-key".to_owned()] {
            assert!(
                !status.message().contains(&key),
                "{case}: the message must not echo the key: {status:?}"
            );
        }
    }

    // A known key gets through to the handler, which answers NOT_FOUND.
    let client = ProfileServiceClient::with_interceptor(
        app.channel.clone(),
        Bearer::new(&secret("operator")),
    );
    let status = client
        .clone()
        .get_profile(get_profile_request())
        .await
        .expect_err("no such profile");
    assert_profile_not_found("operator key", &status);
}

#[tokio::test]
async fn health_and_reflection_stay_open_without_a_key() {
    let app = spawn_app_secured(keys(), None).await;
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "consent.v1.ProfileService".to_owned(),
        })
        .await
        .expect("health needs no key")
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection needs no key")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("a reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "consent.v1.ProfileService"),
        "{list:?}"
    );
}

// ---------------------------------------------------------------------------
// The role × RPC table
// ---------------------------------------------------------------------------

/// A request message that sets only `tenant` (field 1 of every consent.v1 request).
#[derive(Clone, PartialEq, prost::Message)]
struct TenantOnly {
    #[prost(string, tag = "1")]
    tenant: String,
}

/// Any response message; its fields are skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyMessage {}

/// How an RPC is called.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Unary,
    /// A stream of requests (one is sent).
    ClientStream,
}

use Shape::{ClientStream, Unary};

/// Every RPC and the roles besides `admin` that may call it, as issue 3
/// defines them. New services add their rows here.
const RPC_TABLE: &[(&str, Shape, &[&str])] = &[
    (
        "/consent.v1.ProfileService/UpsertProfile",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.ProfileService/GetProfile",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.ProfileService/EraseProfile",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.ProfileService/ExportProfileData",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.ConsentService/OptOut",
        Unary,
        &["operator", "landing_page"],
    ),
    (
        "/consent.v1.ConsentService/OptIn",
        Unary,
        &["operator", "landing_page"],
    ),
    (
        "/consent.v1.ConsentService/GetConsent",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.ConsentService/ListConsentHistory",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.QuarantineService/RecordDeliveryFeedback",
        Unary,
        &["operator", "delivery"],
    ),
    (
        "/consent.v1.QuarantineService/QuarantineAddress",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.QuarantineService/ReleaseAddress",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.QuarantineService/GetAddressStatus",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.QuarantineService/ListQuarantinedAddresses",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.QuarantineService/ListAddressHistory",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.EligibilityService/CheckEligibility",
        Unary,
        &["operator", "delivery"],
    ),
    (
        "/consent.v1.EligibilityService/BatchCheckEligibility",
        Unary,
        &["operator", "delivery"],
    ),
    (
        "/consent.v1.EligibilityService/StreamEligibility",
        ClientStream,
        &["operator", "delivery"],
    ),
    ("/consent.v1.TenantService/GetTenantSettings", Unary, &[]),
    ("/consent.v1.TenantService/UpdateTenantSettings", Unary, &[]),
    (
        "/consent.v1.SubscriptionService/CreateService",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.SubscriptionService/ListServices",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.SubscriptionService/Subscribe",
        Unary,
        &["operator", "landing_page"],
    ),
    (
        "/consent.v1.SubscriptionService/ConfirmSubscription",
        Unary,
        &["operator", "landing_page"],
    ),
    (
        "/consent.v1.SubscriptionService/Unsubscribe",
        Unary,
        &["operator", "landing_page"],
    ),
    (
        "/consent.v1.SubscriptionService/ListSubscriptions",
        Unary,
        &["operator"],
    ),
    (
        "/consent.v1.SubscriptionService/ListSubscribers",
        Unary,
        &["operator"],
    ),
    ("/consent.v1.ProductUsageService/OptOutUser", Unary, &[]),
    ("/consent.v1.ProductUsageService/OptInUser", Unary, &[]),
    (
        "/consent.v1.ProductUsageService/ListOptedOutUsers",
        Unary,
        &[],
    ),
    (
        "/consent.v1.ProductUsageService/CheckTracking",
        Unary,
        &["tracking"],
    ),
    (
        "/consent.v1.ProductUsageService/FilterUsageEvents",
        Unary,
        &["tracking"],
    ),
];

/// The roles of the test keys, each with its key name.
const ROLE_KEYS: &[(&str, &str)] = &[
    ("admin", "admin-acme"),
    ("operator", "operator"),
    ("delivery", "delivery"),
    ("landing_page", "landing_page"),
    ("tracking", "tracking"),
];

/// Calls `path` with a request that names only the tenant, sending `key`.
/// Returns the status the call ended with (`Ok` when it succeeded).
async fn call(
    channel: &GrpcChannel,
    key: &str,
    path: &'static str,
    shape: Shape,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<TenantOnly, AnyMessage>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    let message = TenantOnly {
        tenant: TENANT.to_owned(),
    };
    let bearer: MetadataValue<_> = format!("Bearer {key}").parse().expect("ASCII");
    match shape {
        Unary => {
            let mut request = Request::new(message);
            request.metadata_mut().insert("authorization", bearer);
            grpc.unary(request, path, codec).await.map(|_| ())
        }
        ClientStream => {
            let mut request = Request::new(tokio_stream::iter(vec![message]));
            request.metadata_mut().insert("authorization", bearer);
            let mut answers = grpc.streaming(request, path, codec).await?.into_inner();
            answers.message().await.map(|_| ())
        }
    }
}

#[tokio::test]
async fn every_role_may_call_exactly_its_rpcs() {
    let app = spawn_app_secured(keys(), None).await;
    let mut problems = Vec::new();
    for &(path, shape, roles) in RPC_TABLE {
        for &(role, key_name) in ROLE_KEYS {
            let allowed = role == "admin" || roles.contains(&role);
            let result = call(&app.channel, &secret(key_name), path, shape).await;
            let case = format!("{role} on {path}");
            match (allowed, result) {
                (true, Ok(())) => {}
                (true, Err(status)) => {
                    // Any answer from the handler (INVALID_ARGUMENT for this
                    // near-empty request, NOT_FOUND, …) means the call got through.
                    if matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ) {
                        problems.push(format!("{case}: expected to pass, got {status:?}"));
                    }
                }
                (false, Ok(())) => {
                    problems.push(format!("{case}: expected PERMISSION_DENIED, got OK"))
                }
                (false, Err(status)) => {
                    if status.code() == Code::PermissionDenied {
                        assert_refused(
                            &case,
                            &status,
                            Code::PermissionDenied,
                            &[role, path, key_name],
                        );
                    } else {
                        problems.push(format!(
                            "{case}: expected PERMISSION_DENIED, got {status:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn unknown_consent_methods_are_for_admins_and_backup_for_admins_of_all_tenants() {
    let app = spawn_app_secured(keys(), None).await;
    for path in [
        "/consent.v1.AdminService/Backup",
        "/consent.v1.NoSuchService/Nothing",
    ] {
        // Past access control: Backup answers (here with the snapshot of an
        // empty store, or an error of the call's shape), an unknown method is
        // UNIMPLEMENTED; neither is an access-control refusal.
        let result = call(&app.channel, &secret("admin"), path, Unary).await;
        if path.contains("NoSuchService") {
            assert_eq!(
                result.as_ref().map_err(Status::code).err(),
                Some(Code::Unimplemented),
                "admin on {path}: {result:?}"
            );
        } else if let Err(status) = &result {
            assert!(
                !matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "admin on {path}: {status:?}"
            );
        }
        for name in ["operator", "delivery", "landing_page", "tracking"] {
            let status = call(&app.channel, &secret(name), path, Unary)
                .await
                .expect_err("denied");
            assert_refused(
                &format!("{name} on {path}"),
                &status,
                Code::PermissionDenied,
                &[path],
            );
        }
    }
    let status = call(
        &app.channel,
        &secret("admin-acme"),
        "/consent.v1.AdminService/Backup",
        Unary,
    )
    .await
    .expect_err("denied");
    assert_refused(
        "admin of one tenant on Backup",
        &status,
        Code::PermissionDenied,
        &["tenants = \"*\""],
    );
}

// ---------------------------------------------------------------------------
// TLS and mutual TLS
// ---------------------------------------------------------------------------

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `localhost` and its key, in PEM, for a server or a client.
    fn leaf(&self, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        (cert.pem(), key.serialize_pem())
    }
}

fn tls_security(ca: &Ca, client_ca: Option<&Ca>) -> Security {
    let (cert, key) = ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let tls = TlsPem::from_pem(
        cert.into_bytes(),
        key.into_bytes(),
        client_ca.map(|ca| ca.pem().into_bytes()),
    )
    .expect("valid TLS files");
    Security {
        keys: None,
        tls: Some(Arc::new(tls)),
    }
}

/// A client configuration that trusts `ca` and checks the name `localhost`.
fn client_tls(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost")
}

/// Connects and makes one health check; any failure is returned as text.
async fn health_over(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("health check: {e:?}"))
}

async fn list_quarantined(channel: GrpcChannel) -> Result<(), Status> {
    QuarantineServiceClient::new(channel)
        .list_quarantined_addresses(ListQuarantinedAddressesRequest {
            tenant: TENANT.to_owned(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let ca = Ca::new("consentd test CA");
    let app = spawn_app_secured(tls_security(&ca, None), Some(client_tls(&ca))).await;
    list_quarantined(app.channel.clone())
        .await
        .expect("an RPC over TLS");

    let plaintext = Endpoint::from_shared(format!("http://{}", app.addr)).expect("URI");
    assert!(
        health_over(plaintext).await.is_err(),
        "plaintext must fail on a TLS port"
    );

    let stranger = Ca::new("another CA");
    let untrusting = Endpoint::from_shared(format!("https://{}", app.addr))
        .expect("URI")
        .tls_config(client_tls(&stranger))
        .expect("client TLS");
    assert!(
        health_over(untrusting).await.is_err(),
        "a client that does not trust the server's CA must fail"
    );
}

#[tokio::test]
async fn over_tls_the_handshake_and_idle_timeouts_close_silent_connections_but_not_busy_ones() {
    use consentd::{
        connection::ConnectionLimits,
        pb::{StreamEligibilityRequest, eligibility_service_client::EligibilityServiceClient},
        server::Settings,
    };
    use tokio::io::AsyncReadExt as _;
    let ca = Ca::new("consentd test CA");
    let settings = Settings {
        security: tls_security(&ca, None),
        connections: ConnectionLimits {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        },
        ..Settings::default()
    };
    let app = spawn_app_secured_with(settings, Some(client_tls(&ca))).await;
    // A request over TLS that lasts longer than both timeouts: the server
    // sees it in flight (through TLS's connect info) and keeps the connection.
    let (chunks, outbound) = tokio::sync::mpsc::channel(4);
    let mut answers = EligibilityServiceClient::new(app.channel.clone())
        .stream_eligibility(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .expect("open the stream")
        .into_inner();
    tokio::time::sleep(Duration::from_secs(3)).await;
    chunks
        .send(StreamEligibilityRequest {
            tenant: TENANT.into(),
            channel: consentd::pb::Channel::Email.into(),
            profile_ids: vec!["p-1".into()],
            ..Default::default()
        })
        .await
        .expect("queue a chunk");
    let answer = answers
        .message()
        .await
        .expect("the connection is still open")
        .expect("an answer");
    assert_eq!(answer.decisions.len(), 1);
    drop((chunks, answers));
    // A socket that never starts its TLS handshake is closed.
    let mut silent = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a silent socket on the TLS port is still open after 10 s: {read:?}"
    );
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (cert, key) = client_ca.leaf(ExtendedKeyUsagePurpose::ClientAuth);
    let with_cert = client_tls(&server_ca).identity(Identity::from_pem(&cert, &key));
    let app = spawn_app_secured(tls_security(&server_ca, Some(&client_ca)), Some(with_cert)).await;
    list_quarantined(app.channel.clone())
        .await
        .expect("an RPC with a client certificate");

    let endpoint = |tls: ClientTlsConfig| {
        Endpoint::from_shared(format!("https://{}", app.addr))
            .expect("URI")
            .tls_config(tls)
            .expect("client TLS")
    };
    let refused = health_over(endpoint(client_tls(&server_ca))).await;
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused"
    );

    let stranger = Ca::new("another CA");
    let (cert, key) = stranger.leaf(ExtendedKeyUsagePurpose::ClientAuth);
    let refused = health_over(endpoint(
        client_tls(&server_ca).identity(Identity::from_pem(&cert, &key)),
    ))
    .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must be refused"
    );
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// Runs `consentd` with `args` to completion: (exit code, stdout, stderr).
fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run consentd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_key_is_accepted_by_a_server_given_its_entry() {
    let (code, stdout, stderr) = run_binary(&[
        "keys", "generate", "--name", "crm-sync", "--role", "operator", "--tenant", TENANT,
    ]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let (key, entry) = stdout
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("key, blank line, entry: {stdout:?}"));
    assert!(key.starts_with("cdk_") && key.len() >= 4 + 64, "{key:?}");
    assert!(!entry.contains(key), "the entry must not hold the key");
    assert!(entry.contains(&sha256_hex(key)), "{entry}");

    let dir = tempfile::tempdir().expect("temporary directory");
    let key_path = dir.path().join("keys.toml");
    std::fs::write(&key_path, entry).expect("write the key file");
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::start_with(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        path_str(&data_dir),
        "--auth-keys",
        path_str(&key_path),
    ]);
    let addr = server.wait_listening().await;
    assert!(
        server.stderr_text().contains("access control on"),
        "{}",
        server.stderr_text()
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("URI")
        .connect()
        .await
        .expect("connect");
    let status = ProfileServiceClient::with_interceptor(channel.clone(), Bearer::new(key))
        .get_profile(get_profile_request())
        .await
        .expect_err("no such profile");
    assert_profile_not_found("the generated key", &status);
    let status = ProfileServiceClient::new(channel)
        .get_profile(get_profile_request())
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let (code, _, stderr) = run_binary(&[
        "keys", "generate", "--name", "x", "--role", "root", "--tenant", "*",
    ]);
    assert_eq!(code, Some(2), "clap refuses an unknown role: {stderr}");
    assert!(stderr.contains("unknown role 'root'"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_needs_keys_or_insecure_no_auth() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = path_str(dir.path());
    let mut refused =
        ServerProcess::start_with(&["serve", "--listen", "0.0.0.0:0", "--data-dir", data_dir]);
    let (status, stderr) = refused.wait_exit().await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without --auth-keys")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );

    let mut insecure = ServerProcess::start_with(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data_dir,
        "--insecure-no-auth",
    ]);
    insecure.wait_listening().await;
    assert!(
        insecure.stderr_text().contains("access control is off"),
        "{}",
        insecure.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_and_tls_files_stop_the_server_with_exit_64() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a test file");
        path_str(&path).to_owned()
    };
    let bad_role = write(
        "bad-role.toml",
        &format!(
            "[[key]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"root\"\ntenants = \"*\"\n",
            sha256_hex("k")
        ),
    );
    let garbage = write("garbage.pem", "not a certificate");
    let ca = Ca::new("CA");
    let (cert, _) = ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let (_, other_key) = ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let cert = write("cert.pem", &cert);
    let other_key = write("other-key.pem", &other_key);
    let missing = path_str(&dir.path().join("missing.pem")).to_owned();
    let data_dir = path_str(&dir.path().join("data")).to_owned();

    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "unknown role",
            vec!["--auth-keys", &bad_role],
            "key entry 1 (name 'ops'): role: unknown role 'root'",
        ),
        (
            "missing key file",
            vec!["--auth-keys", &missing],
            "cannot read",
        ),
        (
            "missing certificate",
            vec!["--tls-cert", &missing, "--tls-key", &other_key],
            "--tls-cert: cannot read",
        ),
        (
            "not a certificate",
            vec!["--tls-cert", &garbage, "--tls-key", &other_key],
            "--tls-cert: no PEM certificate",
        ),
        (
            "not a key",
            vec!["--tls-cert", &cert, "--tls-key", &garbage],
            "--tls-key: no PEM private key",
        ),
        (
            "the key of another certificate",
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "the TLS certificate, key or client CA was refused",
        ),
        (
            "not a client CA",
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &other_key,
                "--tls-client-ca",
                &garbage,
            ],
            "--tls-client-ca: no PEM certificate",
        ),
    ];
    for (case, flags, says) in cases {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_dir];
        args.extend(flags);
        let (code, _, stderr) = run_binary(&args);
        assert_eq!(code, Some(64), "{case}: {stderr}");
        assert!(stderr.contains(says), "{case}: {stderr:?} lacks {says:?}");
    }

    let (code, _, stderr) = run_binary(&["serve", "--data-dir", &data_dir, "--tls-cert", &cert]);
    assert_eq!(
        code,
        Some(2),
        "a certificate without a key is a usage error: {stderr}"
    );
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Tenant isolation, the principal, and landing pages
// ---------------------------------------------------------------------------

/// A channel whose every request carries `authorization: Bearer <secret of key_name>`.
fn with_key(
    channel: &GrpcChannel,
    key_name: &str,
) -> tonic::service::interceptor::InterceptedService<
    GrpcChannel,
    impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone,
> {
    let bearer: MetadataValue<_> = format!("Bearer {}", secret(key_name))
        .parse()
        .expect("ASCII");
    tonic::service::interceptor::InterceptedService::new(
        channel.clone(),
        move |mut request: Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        },
    )
}

#[tokio::test]
async fn a_key_for_one_tenant_cannot_touch_another_even_knowing_the_ids() {
    use consentd::pb::{
        ChangeContext, Channel, CheckTrackingRequest, CreateServiceRequest,
        GetAddressStatusRequest, ListSubscribersRequest, OptOutRequest, OptOutUserRequest, Source,
        UpsertProfileRequest, consent_service_client::ConsentServiceClient,
        product_usage_service_client::ProductUsageServiceClient,
        subscription_service_client::SubscriptionServiceClient,
    };
    let app = spawn_app_secured(keys(), None).await;
    let root = with_key(&app.channel, "admin");
    let acme = with_key(&app.channel, "admin-acme");
    let context = || {
        Some(ChangeContext {
            source: Source::Operator as i32,
            ..Default::default()
        })
    };
    // Tenant "globex" has a profile, a service and an opted-out user.
    ProfileServiceClient::new(root.clone())
        .upsert_profile(UpsertProfileRequest {
            tenant: "globex".to_owned(),
            profile_id: "secret-profile".to_owned(),
            emails: vec!["ceo@globex.example".to_owned()],
            context: context(),
            ..Default::default()
        })
        .await
        .expect("admin of all tenants writes globex");
    SubscriptionServiceClient::new(root.clone())
        .create_service(CreateServiceRequest {
            tenant: "globex".to_owned(),
            service_id: "board-news".to_owned(),
            name: "Board news".to_owned(),
            channel: Channel::Email as i32,
            double_opt_in: false,
            context: context(),
        })
        .await
        .expect("create service");
    ProductUsageServiceClient::new(root.clone())
        .opt_out_user(OptOutUserRequest {
            tenant: "globex".to_owned(),
            user_id: "u1".to_owned(),
            context: context(),
        })
        .await
        .expect("opt out user");

    // An admin of "acme" gets PERMISSION_DENIED for globex, for ids that
    // exist and ids that do not alike.
    for profile_id in ["secret-profile", "no-such-profile"] {
        let read = ProfileServiceClient::new(acme.clone())
            .get_profile(GetProfileRequest {
                tenant: "globex".to_owned(),
                profile_id: profile_id.to_owned(),
            })
            .await
            .expect_err("other tenant");
        assert_refused("read", &read, Code::PermissionDenied, &["globex"]);
        let write = ConsentServiceClient::new(acme.clone())
            .opt_out(OptOutRequest {
                tenant: "globex".to_owned(),
                profile_id: profile_id.to_owned(),
                all_channels: true,
                context: context(),
                ..Default::default()
            })
            .await
            .expect_err("other tenant");
        assert_refused("write", &write, Code::PermissionDenied, &["globex"]);
    }
    let address = QuarantineServiceClient::new(acme.clone())
        .get_address_status(GetAddressStatusRequest {
            tenant: "globex".to_owned(),
            address: "ceo@globex.example".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("other tenant");
    assert_refused("address", &address, Code::PermissionDenied, &["globex"]);
    let subscribers = SubscriptionServiceClient::new(acme.clone())
        .list_subscribers(ListSubscribersRequest {
            tenant: "globex".to_owned(),
            service_id: "board-news".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("other tenant");
    assert_refused(
        "subscribers",
        &subscribers,
        Code::PermissionDenied,
        &["globex"],
    );
    let usage = ProductUsageServiceClient::new(acme.clone())
        .check_tracking(CheckTrackingRequest {
            tenant: "globex".to_owned(),
            user_id: "u1".to_owned(),
        })
        .await
        .expect_err("other tenant");
    assert_refused("usage", &usage, Code::PermissionDenied, &["globex"]);

    // Nothing changed in globex.
    let consent = ProfileServiceClient::new(root.clone())
        .get_profile(GetProfileRequest {
            tenant: "globex".to_owned(),
            profile_id: "secret-profile".to_owned(),
        })
        .await
        .expect("read")
        .into_inner()
        .profile
        .and_then(|p| p.consent)
        .and_then(|c| c.all_channels)
        .map(|m| m.status);
    assert_eq!(
        consent,
        Some(consentd::pb::ConsentStatus::NoPreference as i32)
    );
}

#[tokio::test]
async fn history_names_the_key_and_landing_pages_are_recorded_as_such() {
    use consentd::pb::{
        ChangeContext, Channel, ListConsentHistoryRequest, OptInRequest, OptOutRequest, Source,
        UpsertProfileRequest, consent_service_client::ConsentServiceClient,
    };
    let app = spawn_app_secured(keys(), None).await;
    let operator = with_key(&app.channel, "operator");
    let landing = with_key(&app.channel, "landing_page");
    ProfileServiceClient::new(operator.clone())
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: "jane".to_owned(),
            emails: vec!["jane@example.com".to_owned()],
            context: Some(ChangeContext {
                source: Source::Operator as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("upsert");
    ConsentServiceClient::new(operator.clone())
        .opt_out(OptOutRequest {
            tenant: TENANT.to_owned(),
            profile_id: "jane".to_owned(),
            channel: Channel::Sms as i32,
            context: Some(ChangeContext {
                source: Source::Operator as i32,
                actor: "alice@back-office".to_owned(),
                principal: "someone-else".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("operator opt-out");
    // A landing-page key's opt-in is recorded as LANDING_PAGE whatever it
    // says, and so needs its proof of consent.
    let opt_in = |context: ChangeContext| {
        let mut client = ConsentServiceClient::new(landing.clone());
        async move {
            client
                .opt_in(OptInRequest {
                    tenant: TENANT.to_owned(),
                    profile_id: "jane".to_owned(),
                    channel: Channel::Email as i32,
                    all_channels: false,
                    context: Some(context),
                })
                .await
        }
    };
    let refused = opt_in(ChangeContext {
        source: Source::Operator as i32,
        ..Default::default()
    })
    .await
    .expect_err("a landing page must prove consent");
    assert_validation_failed("landing opt-in", &refused, &["context.ip_address"]);
    opt_in(ChangeContext {
        source: Source::Operator as i32,
        actor: "jane@example.com".to_owned(),
        ip_address: "198.51.100.7".to_owned(),
        notice_version: "v2".to_owned(),
        ..Default::default()
    })
    .await
    .expect("landing-page opt-in with proof");

    let entries = ConsentServiceClient::new(operator.clone())
        .list_consent_history(ListConsentHistoryRequest {
            tenant: TENANT.to_owned(),
            profile_id: "jane".to_owned(),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .entries;
    let contexts: Vec<(String, String, i32)> = entries
        .into_iter()
        .map(|e| {
            let c = e.context.unwrap_or_default();
            (c.principal, c.actor, c.source)
        })
        .collect();
    assert_eq!(
        contexts,
        vec![
            (
                "landing_page".to_owned(),
                "jane@example.com".to_owned(),
                Source::LandingPage as i32
            ),
            (
                "operator".to_owned(),
                "alice@back-office".to_owned(),
                Source::Operator as i32
            ),
        ]
    );
}
