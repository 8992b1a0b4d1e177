//! The preference page and its links, over real HTTP to a real server:
//! `PreferenceService/CreatePreferenceLink`, the page (`GET`, the form's
//! `POST` with its CSRF token), RFC 8058 one-click unsubscribe, the neutral
//! page for every bad link, key rotation, rate limits, languages and the
//! proof recorded with each change.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use consentd::{
    app::LinkSettings,
    links::{LinkKeys, generate_link_key},
    pb::{
        ConsentStatus, CreatePreferenceLinkRequest, CreatePreferenceLinkResponse,
        CreateServiceRequest, ListSubscriptionsRequest, Source, SubscriptionStatus,
        UpdateTenantSettingsRequest, preference_service_client::PreferenceServiceClient,
        subscription_service_client::SubscriptionServiceClient,
        tenant_service_client::TenantServiceClient,
    },
    server::Settings,
    web::{IpNet, NOTICE_VERSION, ONE_CLICK_NOTICE_VERSION, PageSettings},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

use crate::common::{
    DAY_MS, TENANT, TestApp, channel_consent, consent_history, ctx, error_info, get_consent,
    operator, spawn_app, spawn_app_with, subscribed_to_new_service, upsert, upsert_in,
    violated_fields,
};

const PUBLIC_URL: &str = "https://prefs.example.com";

fn key_file(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| generate_link_key(id).expect("a link key"))
        .collect()
}

fn settings_with_keys(keys: &str) -> Settings {
    Settings {
        links: Some(LinkSettings {
            keys: Arc::new(LinkKeys::parse(keys).expect("a valid key file")),
            public_url: PUBLIC_URL.to_owned(),
            ttl: Duration::from_secs(60 * 24 * 60 * 60),
        }),
        ..Settings::default()
    }
}

async fn spawn_linked() -> TestApp {
    spawn_app_with(settings_with_keys(&key_file(&["k1"]))).await
}

/// One HTTP/1.1 exchange on a fresh connection.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the page");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: prefs.example.com\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request head");
    stream.write_all(body).await.expect("send the body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("the page answers in time")
        .expect("read the answer");
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn get(app: &TestApp, path: &str) -> Reply {
    http(app.page_addr, "GET", path, &[], b"").await
}

async fn post_form(app: &TestApp, path: &str, form: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    http(app.page_addr, "POST", path, &all, form.as_bytes()).await
}

async fn one_click(app: &TestApp, path: &str) -> Reply {
    post_form(app, path, "List-Unsubscribe=One-Click", &[]).await
}

async fn create_link(
    app: &TestApp,
    profile: &str,
    channel: i32,
    service: &str,
) -> Result<CreatePreferenceLinkResponse, tonic::Status> {
    PreferenceServiceClient::new(app.channel.clone())
        .create_preference_link(CreatePreferenceLinkRequest {
            tenant: TENANT.to_owned(),
            profile_id: profile.to_owned(),
            channel,
            service_id: service.to_owned(),
            language: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn link(app: &TestApp, profile: &str) -> CreatePreferenceLinkResponse {
    create_link(app, profile, 0, "").await.expect("a link")
}

/// The path of a link (what follows the public address).
fn path_of(url: &str) -> String {
    url.strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("{url} starts with {PUBLIC_URL}"))
        .to_owned()
}

/// The CSRF token of a page's form.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..].split('"').next().expect("its value").to_owned()
}

/// The form that keeps every box as the page shows it, except `untick`.
fn form_without(page: &str, untick: &[&str]) -> String {
    let mut form = format!("csrf={}&lang=en", csrf_of(page));
    for channel in ["email", "sms", "push", "voice", "direct_mail"] {
        let ticked = page.contains(&format!(
            "value=\"{channel}\" aria-describedby=\"ch-{channel}-state\" checked"
        ));
        if ticked && !untick.contains(&channel) {
            form.push_str(&format!("&ch={channel}"));
        }
    }
    form
}

/// The status of each of a profile's subscriptions, by service id.
async fn subscription_status(app: &TestApp, profile: &str, id: &str) -> Option<SubscriptionStatus> {
    SubscriptionServiceClient::new(app.channel.clone())
        .list_subscriptions(ListSubscriptionsRequest {
            tenant: TENANT.to_owned(),
            profile_id: profile.to_owned(),
        })
        .await
        .expect("ListSubscriptions")
        .into_inner()
        .subscriptions
        .iter()
        .find(|s| s.service_id == id)
        .map(|s| s.status())
}

/// Gives the tenant a display name and a privacy-policy address.
async fn brand(app: &TestApp, name: &str) {
    TenantServiceClient::new(app.channel.clone())
        .update_tenant_settings(UpdateTenantSettingsRequest {
            tenant: TENANT.to_owned(),
            display_name: Some(name.to_owned()),
            privacy_policy_url: Some("https://acme.example/privacy".to_owned()),
            context: operator("ops", "branding"),
            ..Default::default()
        })
        .await
        .expect("UpdateTenantSettings");
}

async fn history_len(app: &TestApp, id: &str) -> usize {
    consent_history(app, id, 100, "").await.entries.len()
}

#[tokio::test]
async fn create_preference_link_gives_the_page_the_one_click_address_and_the_headers() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    let link = create_link(&app, "p1", consentd::pb::Channel::Email as i32, "")
        .await
        .expect("a link");
    assert!(link.url.starts_with(&format!("{PUBLIC_URL}/p/{TENANT}/")));
    assert!(
        link.one_click_url
            .starts_with(&format!("{PUBLIC_URL}/u/{TENANT}/"))
    );
    assert_eq!(link.list_unsubscribe, format!("<{}>", link.one_click_url));
    assert_eq!(link.list_unsubscribe_post, "List-Unsubscribe=One-Click");
    assert!(
        !link.url.contains("p1"),
        "the profile id is not readable in the link"
    );
    let expires = crate::common::ms_of(link.expires_at.as_ref()).expect("expires_at");
    assert_eq!(expires, app.now_ms() + 60 * DAY_MS);

    let mut client = PreferenceServiceClient::new(app.channel.clone());
    let swedish = client
        .create_preference_link(CreatePreferenceLinkRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p1".to_owned(),
            language: "sv".to_owned(),
            ..Default::default()
        })
        .await
        .expect("a link")
        .into_inner();
    assert!(swedish.url.ends_with("?lang=sv"), "{}", swedish.url);

    let both = create_link(&app, "p1", 1, "news")
        .await
        .expect_err("both scopes");
    assert_eq!(both.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&both), ["service_id"]);
    let bad_lang = client
        .create_preference_link(CreatePreferenceLinkRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p1".to_owned(),
            language: "de".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("an unknown language");
    assert_eq!(violated_fields(&bad_lang), ["language"]);
    let absent = create_link(&app, "nobody", 0, "")
        .await
        .expect_err("no profile");
    assert_eq!(absent.code(), Code::NotFound);
    let no_service = create_link(&app, "p1", 0, "absent")
        .await
        .expect_err("no service");
    assert_eq!(error_info(&no_service).reason, "SERVICE_NOT_FOUND");
}

#[tokio::test]
async fn without_link_keys_no_link_is_made_and_every_page_is_the_neutral_one() {
    let app = spawn_app().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    let status = link_status(create_link(&app, "p1", 0, "").await);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status).reason, "LINKS_NOT_CONFIGURED");
    let page = get(&app, &format!("/p/{TENANT}/AQJrMQ")).await;
    assert_eq!(page.status, 404);
}

fn link_status(result: Result<CreatePreferenceLinkResponse, tonic::Status>) -> tonic::Status {
    result.expect_err("refused")
}

#[tokio::test]
async fn the_page_shows_the_state_with_strict_headers_and_a_get_changes_nothing() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    crate::common::opt_out(&app, "p1", consentd::pb::Channel::Sms).await;
    let before = history_len(&app, "p1").await;
    let link = link(&app, "p1").await;
    for path in [path_of(&link.url), path_of(&link.one_click_url)] {
        let page = get(&app, &path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(page.body.contains("<html lang=\"en\">"));
        assert!(
            page.body
                .contains("You asked not to be contacted this way."),
            "SMS is opted out"
        );
        assert!(
            page.body
                .contains("No choice made yet: you may be contacted this way.")
        );
        assert!(!page.body.contains("<script"), "no script at all");
        assert!(
            page.body.contains("<label for=\"ch-email\">"),
            "every box has its label"
        );
        let csp = page.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("script-src"));
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(page.header("x-frame-options"), Some("DENY"));
        assert_eq!(page.header("cache-control"), Some("no-store"));
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
        assert!(page.header("location").is_none(), "nothing redirects");
    }
    let head = http(app.page_addr, "HEAD", &path_of(&link.url), &[], b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(
        history_len(&app, "p1").await,
        before,
        "GET and HEAD change nothing"
    );
    let css = get(&app, "/assets/page.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type")
            .is_some_and(|t| t.starts_with("text/css"))
    );
    let put = http(app.page_addr, "PUT", &path_of(&link.url), &[], b"").await;
    assert_eq!(put.status, 405);
    assert_eq!(put.header("allow"), Some("GET, HEAD, POST"));
}

#[tokio::test]
async fn the_form_saves_only_what_changed_with_proof_captured_by_the_server() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    let link = link(&app, "p1").await;
    let path = path_of(&link.url);
    let page = get(&app, &path).await.body;
    let form = form_without(&page, &["email"]);
    let headers = [
        ("User-Agent", "Mozilla/5.0 (integration test)"),
        // Not from a trusted proxy: ignored.
        ("X-Forwarded-For", "203.0.113.9"),
    ];
    let saved = post_form(&app, &path, &form, &headers).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(saved.body.contains("Your preferences are saved"));
    let consent = get_consent(&app, "p1").await;
    let email = channel_consent(&consent, consentd::pb::Channel::Email);
    assert_eq!(email.effective_status(), ConsentStatus::OptedOut);
    let mark = email.mark.as_ref().expect("a mark");
    assert_eq!(mark.source(), Source::LandingPage);
    assert_eq!(
        channel_consent(&consent, consentd::pb::Channel::Sms).effective_status(),
        ConsentStatus::NoPreference,
        "only what changed is written"
    );
    let history = consent_history(&app, "p1", 10, "").await.entries;
    assert_eq!(history.len(), 1);
    let context = history[0].context.as_ref().expect("a context");
    assert_eq!(context.source(), Source::LandingPage);
    assert_eq!(context.ip_address, "127.0.0.1");
    assert_eq!(context.user_agent, "Mozilla/5.0 (integration test)");
    assert_eq!(context.notice_version, NOTICE_VERSION);

    let again = post_form(&app, &path, &form, &headers).await;
    assert_eq!(again.status, 200);
    assert!(again.body.contains("Nothing was changed"));
    assert_eq!(history_len(&app, "p1").await, 1, "a repeat adds no history");

    // Ticking the box again opts in: a consent given, with its proof.
    let page = get(&app, &path).await.body;
    let back = format!("{}&ch=email", form_without(&page, &[]));
    assert_eq!(post_form(&app, &path, &back, &headers).await.status, 200);
    let consent = get_consent(&app, "p1").await;
    assert_eq!(
        channel_consent(&consent, consentd::pb::Channel::Email).effective_status(),
        ConsentStatus::OptedIn
    );
}

#[tokio::test]
async fn unsubscribe_from_everything_and_services_on_the_page() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    for id in ["news", "offers"] {
        subscribed_to_new_service(&app, "p1", id, &format!("The {id} <letter>"), false).await;
    }
    let link = link(&app, "p1").await;
    let path = path_of(&link.url);
    let page = get(&app, &path).await.body;
    assert!(
        page.contains("The news &lt;letter&gt;"),
        "names are escaped"
    );
    assert!(page.contains("Subscribed"));
    // Keep "offers", drop "news", and unsubscribe from everything.
    let form = format!("{}&svc=offers&everything=on", form_without(&page, &[]));
    let saved = post_form(&app, &path, &form, &[]).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    let consent = get_consent(&app, "p1").await;
    assert_eq!(
        consent.all_channels.as_ref().map(|m| m.status()),
        Some(ConsentStatus::OptedOut)
    );
    assert_eq!(
        subscription_status(&app, "p1", "news").await,
        Some(SubscriptionStatus::Unsubscribed)
    );
    assert_eq!(
        subscription_status(&app, "p1", "offers").await,
        Some(SubscriptionStatus::Active)
    );
    let page = get(&app, &path).await.body;
    assert!(page.contains("id=\"everything\" name=\"everything\" value=\"on\" aria-describedby=\"everything-hint\" checked"));
}

#[tokio::test]
async fn a_form_without_its_csrf_token_or_with_another_link_s_changes_nothing() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    upsert(&app, "p2", &["p2@example.com"], &[]).await;
    let one = path_of(&link(&app, "p1").await.url);
    let two = path_of(&link(&app, "p2").await.url);
    let page_two = get(&app, &two).await.body;
    let foreign = form_without(&page_two, &["email"]);
    for (case, form) in [
        ("no token", "lang=en&ch=sms".to_owned()),
        ("a made-up token", "csrf=AAAA&ch=sms".to_owned()),
        ("another link's token", foreign),
    ] {
        let refused = post_form(&app, &one, &form, &[]).await;
        assert_eq!(refused.status, 403, "{case}");
        assert!(refused.body.contains("This form has expired"), "{case}");
    }
    assert_eq!(history_len(&app, "p1").await, 0);
    // The token works for its own link, and expires.
    let page_one = get(&app, &one).await.body;
    let form = form_without(&page_one, &["email"]);
    app.advance_ms(13 * 60 * 60 * 1000);
    assert_eq!(
        post_form(&app, &one, &form, &[]).await.status,
        403,
        "expired after 12 h"
    );
    assert_eq!(history_len(&app, "p1").await, 0);
    let wrong_type = http(
        app.page_addr,
        "POST",
        &one,
        &[("Content-Type", "text/plain")],
        b"x",
    )
    .await;
    assert_eq!(wrong_type.status, 415);
    let big = vec![b'a'; 20 * 1024];
    let too_big = http(
        app.page_addr,
        "POST",
        &one,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &big,
    )
    .await;
    assert_eq!(too_big.status, 413);
}

#[tokio::test]
async fn one_click_opts_out_of_the_link_s_scope_once_and_get_never_does() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    let email = create_link(&app, "p1", consentd::pb::Channel::Email as i32, "")
        .await
        .expect("a link");
    let path = path_of(&email.one_click_url);
    assert_eq!(get(&app, &path).await.status, 200);
    assert_eq!(
        history_len(&app, "p1").await,
        0,
        "a GET is a scanner's fetch: nothing changes"
    );
    let bad = post_form(&app, &path, "List-Unsubscribe=Maybe", &[]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(history_len(&app, "p1").await, 0);
    let done = one_click(&app, &path).await;
    assert_eq!(done.status, 200);
    assert!(done.body.is_empty(), "no page: {}", done.body);
    let consent = get_consent(&app, "p1").await;
    assert_eq!(
        channel_consent(&consent, consentd::pb::Channel::Email).effective_status(),
        ConsentStatus::OptedOut
    );
    assert_eq!(
        channel_consent(&consent, consentd::pb::Channel::Sms).effective_status(),
        ConsentStatus::NoPreference,
        "only the link's channel"
    );
    let history = consent_history(&app, "p1", 10, "").await.entries;
    assert_eq!(history.len(), 1);
    let context = history[0].context.as_ref().expect("a context");
    assert_eq!(context.source(), Source::LandingPage);
    assert_eq!(context.notice_version, ONE_CLICK_NOTICE_VERSION);
    assert_eq!(one_click(&app, &path).await.status, 200);
    assert_eq!(history_len(&app, "p1").await, 1, "a repeat adds no history");

    // Multipart, as RFC 8058 also allows; scope: every channel.
    let all = link(&app, "p1").await;
    let body = "--b1\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b1--\r\n";
    let done = http(
        app.page_addr,
        "POST",
        &path_of(&all.one_click_url),
        &[("Content-Type", "multipart/form-data; boundary=b1")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(done.status, 200);
    let consent = get_consent(&app, "p1").await;
    assert_eq!(
        consent.all_channels.as_ref().map(|m| m.status()),
        Some(ConsentStatus::OptedOut)
    );
}

#[tokio::test]
async fn one_click_on_a_service_link_ends_that_subscription() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    subscribed_to_new_service(&app, "p1", "news", "News", false).await;
    let link = create_link(&app, "p1", 0, "news").await.expect("a link");
    assert_eq!(
        one_click(&app, &path_of(&link.one_click_url)).await.status,
        200
    );
    assert_eq!(
        subscription_status(&app, "p1", "news").await,
        Some(SubscriptionStatus::Unsubscribed)
    );
    let consent = get_consent(&app, "p1").await;
    assert_eq!(
        channel_consent(&consent, consentd::pb::Channel::Email).effective_status(),
        ConsentStatus::NoPreference,
        "the channel stays as it was"
    );
}

#[tokio::test]
async fn forged_cut_expired_and_other_tenant_links_get_one_neutral_page() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    upsert_in(&app, "beta", "p1", "p1@example.com").await;
    let link = link(&app, "p1").await;
    let path = path_of(&link.url);
    let token = path.rsplit('/').next().expect("a token").to_owned();
    let mut forged = token.clone().into_bytes();
    let middle = forged.len() / 2;
    forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");
    let neutral = get(&app, &format!("/p/{TENANT}/not-a-token")).await;
    assert_eq!(neutral.status, 404);
    assert!(neutral.body.contains("This link does not work"));
    let cases = [
        ("forged", format!("/p/{TENANT}/{forged}")),
        (
            "cut short",
            format!("/p/{TENANT}/{}", &token[..token.len() - 4]),
        ),
        ("another tenant", format!("/p/beta/{token}")),
        ("an invalid tenant", format!("/p/no%20such/{token}")),
        ("too long", format!("/p/{TENANT}/{}", "A".repeat(2000))),
        ("no such page", "/elsewhere".to_owned()),
    ];
    for (case, path) in &cases {
        let page = get(&app, path).await;
        assert_eq!(
            (page.status, page.body.as_str()),
            (404, neutral.body.as_str()),
            "{case}"
        );
    }
    let one_click_forged = one_click(&app, &format!("/u/{TENANT}/{forged}")).await;
    assert_eq!(one_click_forged.status, 404);
    let one_click_beta = one_click(&app, &format!("/u/beta/{token}")).await;
    assert_eq!(one_click_beta.status, 404);
    assert_eq!(history_len(&app, "p1").await, 0);
    // Expired: 60 days later the same link is the same neutral page.
    assert_eq!(get(&app, &path).await.status, 200);
    app.advance_ms(60 * DAY_MS);
    let expired = get(&app, &path).await;
    assert_eq!((expired.status, expired.body), (404, neutral.body.clone()));
    assert_eq!(
        one_click(&app, &path_of(&link.one_click_url)).await.status,
        404
    );
    assert_eq!(history_len(&app, "p1").await, 0);
}

#[tokio::test]
async fn links_sealed_before_a_key_rotation_keep_working_until_the_key_is_removed() {
    let old_keys = key_file(&["2026-11"]);
    let new_key = key_file(&["2026-12"]);
    let old = spawn_app_with(settings_with_keys(&old_keys)).await;
    upsert(&old, "p1", &["p1@example.com"], &[]).await;
    let before = link(&old, "p1").await;
    // The rotated server: the old key still opens, the new one seals.
    let rotated = spawn_app_with(settings_with_keys(&format!("{old_keys}{new_key}"))).await;
    upsert(&rotated, "p1", &["p1@example.com"], &[]).await;
    assert_eq!(get(&rotated, &path_of(&before.url)).await.status, 200);
    let after = link(&rotated, "p1").await;
    assert_ne!(after.url, before.url);
    assert_eq!(get(&rotated, &path_of(&after.url)).await.status, 200);
    assert_eq!(
        get(&old, &path_of(&after.url)).await.status,
        404,
        "unknown key"
    );
    // The old key removed: its links stop working, the new ones go on.
    let retired = spawn_app_with(settings_with_keys(&new_key)).await;
    upsert(&retired, "p1", &["p1@example.com"], &[]).await;
    assert_eq!(get(&retired, &path_of(&before.url)).await.status, 404);
    assert_eq!(get(&retired, &path_of(&after.url)).await.status, 200);
}

#[tokio::test]
async fn requests_are_limited_per_link_and_per_address() {
    let mut settings = settings_with_keys(&key_file(&["k1"]));
    settings.page = PageSettings {
        rate_per_ip: 5,
        rate_per_link: 3,
        ..PageSettings::default()
    };
    let app = spawn_app_with(settings).await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    upsert(&app, "p2", &["p2@example.com"], &[]).await;
    let one = path_of(&link(&app, "p1").await.url);
    let two = path_of(&link(&app, "p2").await.url);
    for _ in 0..3 {
        assert_eq!(get(&app, &one).await.status, 200);
    }
    let limited = get(&app, &one).await;
    assert_eq!(limited.status, 429, "the fourth request on one link");
    assert_eq!(limited.header("retry-after"), Some("60"));
    assert!(limited.body.contains("Too many requests"));
    // Another link from the same address: the address has one request left.
    assert_eq!(get(&app, &two).await.status, 200);
    assert_eq!(
        get(&app, &two).await.status,
        429,
        "the sixth from one address"
    );
    assert_eq!(
        one_click(&app, &one.replace("/p/", "/u/")).await.status,
        429,
        "one-click counts too"
    );
    assert_eq!(history_len(&app, "p1").await, 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_recorded() {
    let mut settings = settings_with_keys(&key_file(&["k1"]));
    settings.page.trusted_proxies = vec![IpNet::parse("127.0.0.0/8").expect("a network")];
    let app = spawn_app_with(settings).await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    let path = path_of(&link(&app, "p1").await.url);
    let page = get(&app, &path).await.body;
    let forwarded = [("X-Forwarded-For", "198.51.100.1, 203.0.113.9, 127.0.0.2")];
    let saved = post_form(&app, &path, &form_without(&page, &["sms"]), &forwarded).await;
    assert_eq!(saved.status, 200);
    let history = consent_history(&app, "p1", 10, "").await.entries;
    let context = history[0].context.as_ref().expect("a context");
    assert_eq!(
        context.ip_address, "203.0.113.9",
        "the last address before the trusted proxies"
    );
}

#[tokio::test]
async fn the_page_speaks_english_swedish_and_dutch_and_shows_the_tenant() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    brand(&app, "Acme <Mail> & Co").await;
    let path = path_of(&link(&app, "p1").await.url);
    let page = |headers: &'static [(&'static str, &'static str)], query: &'static str| {
        let path = format!("{path}{query}");
        let addr = app.page_addr;
        async move { http(addr, "GET", &path, headers, b"").await }
    };
    let english = page(&[], "").await.body;
    assert!(english.contains("Your communication preferences"));
    assert!(english.contains("<strong>Acme &lt;Mail&gt; &amp; Co</strong>"));
    assert!(english.contains(
        "<a href=\"https://acme.example/privacy\" rel=\"noopener noreferrer\">Privacy policy</a>"
    ));
    let swedish = page(&[("Accept-Language", "sv-SE,sv;q=0.9,en;q=0.5")], "")
        .await
        .body;
    assert!(swedish.contains("<html lang=\"sv\">"));
    assert!(swedish.contains("Dina kommunikationsinställningar"));
    assert!(swedish.contains("Integritetspolicy"));
    let dutch = page(&[("Accept-Language", "sv")], "?lang=nl").await.body;
    assert!(dutch.contains("<html lang=\"nl\">"));
    assert!(dutch.contains("Uw communicatievoorkeuren"));
    let fallback = page(&[("Accept-Language", "de-DE")], "").await.body;
    assert!(fallback.contains("<html lang=\"en\">"));
    // The confirmation is in the form's language.
    let form = form_without(&swedish, &["push"]).replace("lang=en", "lang=sv");
    let saved = post_form(&app, &path, &form, &[]).await;
    assert!(
        saved.body.contains("Dina inställningar är sparade"),
        "{}",
        saved.body
    );
    // The neutral page too.
    let invalid = http(
        app.page_addr,
        "GET",
        &format!("/p/{TENANT}/bad"),
        &[("Accept-Language", "nl")],
        b"",
    )
    .await;
    assert!(invalid.body.contains("Deze link werkt niet"));
}

/// Where `npm ci --prefix tests/browser` puts playwright-core.
const PLAYWRIGHT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/browser/node_modules/playwright-core"
);
const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test]
#[ignore = "needs Debian's chromium and playwright-core: apt-get install chromium && npm ci --prefix tests/browser"]
async fn a_person_unticks_e_mail_in_a_real_browser_and_the_proof_is_kept() {
    for (tool, install) in [
        (CHROMIUM, "apt-get install chromium"),
        (PLAYWRIGHT, "npm ci --prefix tests/browser"),
    ] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: install it with `{install}` (.ci/run does)"
        );
    }
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    brand(&app, "Acme Newsletters").await;
    subscribed_to_new_service(&app, "p1", "weekly", "The weekly letter", false).await;
    let link = link(&app, "p1").await;
    let url = format!("http://{}{}", app.page_addr, path_of(&link.url));
    // CONSENTD_SCREENSHOT=docs/preference-page.png renews the README's picture.
    let screenshot = std::env::var("CONSENTD_SCREENSHOT").ok();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new("node");
        command
            .arg("tests/browser/preference_page.js")
            .arg(&url)
            .args(screenshot)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        command.output()
    })
    .await
    .expect("the browser task")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the browser run failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["heading"], "Your communication preferences");
    assert_eq!(
        seen["emailBefore"], true,
        "opt-out regime, no preference: ticked"
    );
    assert_eq!(
        seen["emailAfterSpace"], false,
        "Space on the focused box unticks it"
    );
    assert_eq!(seen["confirmation"], "Your preferences are saved");
    assert_eq!(seen["emailReloaded"], false);
    let user_agent = seen["userAgent"].as_str().expect("a user agent");
    assert!(user_agent.contains("Chrome"), "{user_agent}");

    let consent = get_consent(&app, "p1").await;
    let email = channel_consent(&consent, consentd::pb::Channel::Email);
    assert_eq!(email.effective_status(), ConsentStatus::OptedOut);
    assert_eq!(
        email.mark.as_ref().map(|m| m.source()),
        Some(Source::LandingPage)
    );
    let history = consent_history(&app, "p1", 10, "").await.entries;
    assert_eq!(history.len(), 2, "the subscription, then e-mail");
    let context = history[0].context.as_ref().expect("a context");
    assert_eq!(history[0].channel(), consentd::pb::Channel::Email);
    assert_eq!(context.source(), Source::LandingPage);
    assert_eq!(context.ip_address, "127.0.0.1");
    assert_eq!(context.user_agent, user_agent);
    assert_eq!(context.notice_version, NOTICE_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_links_made_with_a_generated_key_and_refuses_a_bad_key_file() {
    use crate::common::process::{CONSENTD_BIN, ServerProcess, after, connect};
    let generated = std::process::Command::new(CONSENTD_BIN)
        .args(["keys", "generate-link-key", "--id", "2026-12"])
        .output()
        .expect("run consentd");
    assert!(generated.status.success(), "{generated:?}");
    let entry = String::from_utf8(generated.stdout).expect("UTF-8");
    assert!(
        entry.starts_with("[[key]]\nid = \"2026-12\"\nsecret = \""),
        "{entry}"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let keys = dir.path().join("link-keys.toml");
    std::fs::write(&keys, &entry).expect("write the key file");
    let data = dir.path().join("data");
    let args = |keys: &std::path::Path, public: &str| {
        vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--http-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--public-url".to_owned(),
            public.to_owned(),
            "--link-keys".to_owned(),
            keys.display().to_string(),
        ]
    };
    let mut server = ServerProcess::start_with(&args(&keys, "https://prefs.example.com/"));
    let addr = server.wait_listening().await;
    let line = server.wait_for_line("preference page on http://").await;
    let page_addr: SocketAddr = after(&line, "preference page on http://")
        .parse()
        .expect("the page's address");
    let channel = connect(addr).await;
    consentd::pb::profile_service_client::ProfileServiceClient::new(channel.clone())
        .upsert_profile(consentd::pb::UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p1".to_owned(),
            emails: vec!["p1@example.com".to_owned()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("UpsertProfile");
    let link = PreferenceServiceClient::new(channel)
        .create_preference_link(CreatePreferenceLinkRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p1".to_owned(),
            ..Default::default()
        })
        .await
        .expect("a link")
        .into_inner();
    assert!(
        link.url.starts_with("https://prefs.example.com/p/acme/"),
        "the trailing slash of --public-url is dropped: {}",
        link.url
    );
    let page = http(page_addr, "GET", &path_of(&link.url), &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Your communication preferences"));
    server.terminate();
    let (status, _) = server.wait_stopped().await;
    assert!(status.success(), "{status:?}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("{entry}{entry}")).expect("write a bad key file");
    for (case, keys, public, expected) in [
        (
            "a key twice",
            &bad,
            "https://prefs.example.com",
            "key[1]: id \"2026-12\" is given twice",
        ),
        (
            "no scheme",
            &keys,
            "prefs.example.com",
            "--public-url \"prefs.example.com\" must start with https://",
        ),
        (
            "a query",
            &keys,
            "https://prefs.example.com/?a=b",
            "no query",
        ),
    ] {
        let mut refused = ServerProcess::start_with(&args(keys, public));
        let (status, stderr) = refused.wait_exit().await;
        assert_eq!(status.code(), Some(64), "{case}: {stderr}");
        assert!(stderr.contains(expected), "{case}: {stderr}");
    }
}

#[tokio::test]
async fn a_link_to_an_erased_profile_opens_the_neutral_page_and_one_click_recreates_nothing() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    let link = link(&app, "p1").await;
    let neutral = get(&app, &format!("/p/{TENANT}/not-a-token")).await.body;
    app.profiles
        .clone()
        .erase_profile(consentd::pb::EraseProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p1".to_owned(),
            context: operator("dpo", "erasure request"),
        })
        .await
        .expect("EraseProfile");
    let page = get(&app, &path_of(&link.url)).await;
    assert_eq!(
        (page.status, page.body),
        (404, neutral),
        "nothing says who existed"
    );
    let done = one_click(&app, &path_of(&link.one_click_url)).await;
    assert_eq!(done.status, 200, "nothing is left to contact");
    let profile = crate::common::get_profile(&app, "p1").await;
    assert_eq!(
        profile.expect_err("still erased").code(),
        Code::NotFound,
        "a one-click unsubscribe never creates a profile"
    );
}

#[tokio::test]
async fn the_page_subscribes_to_services_without_double_opt_in_only() {
    let app = spawn_linked().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    let mut subs = SubscriptionServiceClient::new(app.channel.clone());
    for (id, double_opt_in) in [("open", false), ("confirmed", true)] {
        subs.create_service(CreateServiceRequest {
            tenant: TENANT.to_owned(),
            service_id: id.to_owned(),
            name: format!("The {id} letter"),
            channel: consentd::pb::Channel::Email as i32,
            double_opt_in,
            context: operator("ops", "setup"),
        })
        .await
        .expect("CreateService");
    }
    let path = path_of(&link(&app, "p1").await.url);
    let page = get(&app, &path).await.body;
    assert!(
        page.contains("value=\"open\" aria-describedby=\"svc-"),
        "a box for the open service"
    );
    assert!(
        !page.contains("value=\"confirmed\""),
        "no box for double opt-in"
    );
    assert!(page.contains("you will be asked to confirm"));
    // Tick both: the form cannot subscribe to a double opt-in service, even by hand.
    let form = format!("{}&svc=open&svc=confirmed", form_without(&page, &[]));
    let saved = post_form(&app, &path, &form, &[("User-Agent", "test")]).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert_eq!(
        subscription_status(&app, "p1", "open").await,
        Some(SubscriptionStatus::Active)
    );
    assert_eq!(subscription_status(&app, "p1", "confirmed").await, None);
    let history = consent_history(&app, "p1", 10, "").await.entries;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].service_id, "open");
    let context = history[0].context.as_ref().expect("a context");
    assert_eq!(context.source(), Source::LandingPage);
    assert_eq!(
        context.notice_version, NOTICE_VERSION,
        "a consent given, with its proof"
    );
    let page = get(&app, &path).await.body;
    assert!(
        page.contains("aria-describedby=\"svc-0-state\" checked")
            || page.contains("aria-describedby=\"svc-1-state\" checked")
    );
}
