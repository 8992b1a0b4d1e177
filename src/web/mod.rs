//! The preference page's HTTP edge (`--http-listen`): the page behind every
//! unsubscribe link, and RFC 8058 one-click unsubscribe.
//!
//! Routes (the token is a sealed link from `PreferenceService`, see `links`):
//! - `GET /p/{tenant}/{token}`: the page (`?lang=en|sv|nl`); never changes anything;
//! - `POST /p/{tenant}/{token}`: the page's form (CSRF token bound to the link);
//! - `POST /u/{tenant}/{token}`: one-click unsubscribe, body
//!   `List-Unsubscribe=One-Click`; answers 200 without a page;
//! - `GET /u/{tenant}/{token}`: the page, as `/p/` (a mail scanner that
//!   follows the link changes nothing);
//! - `GET /assets/page.css`: the style sheet.
//!
//! Like `api`, this layer only parses and renders: what a form changes is
//! `engine::preference_changes`, applied by `App::set_preferences`.
//!
//! Every response carries strict security headers (a CSP without any
//! script, `frame-ancestors 'none'`, no referrer). Every request is bounded:
//! its head (16 KiB, read within 10 s), its body (16 KiB), its time (15 s),
//! and its rate, per client address and per link. Nothing redirects.

mod limits;
mod page;
mod text;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};

pub use limits::{IpNet, RateLimiter, client_ip, rate_key};
use text::Text;

use crate::{
    app::App,
    engine::{
        ChangeContext, Channel, PageChoice, Proof, ServiceId, Source, Tenant, USER_AGENT_LEN_MAX,
    },
    error::Error,
    links::{LINK_TOKEN_LEN_MAX, LinkClaims},
};

/// Default requests per minute from one client address (IPv6: one /64).
pub const RATE_PER_IP_DEFAULT: u32 = 60;
/// Default requests per minute on one link.
pub const RATE_PER_LINK_DEFAULT: u32 = 20;
/// Default connections open at once.
pub const CONNECTIONS_MAX_DEFAULT: usize = 256;
/// The longest request body (a form, a one-click POST).
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// The longest request head, and hyper's read buffer.
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most header lines in a request.
const HEADERS_MAX: usize = 64;
/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, body and work included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a connection stays open (keep-alive included).
const CONNECTION_MAX_AGE: Duration = Duration::from_secs(120);
/// How many addresses and links the rate limiters track at once.
const RATE_KEYS_MAX: usize = 100_000;
/// The window of the rate limits.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Pause after a failed accept (out of file descriptors).
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The version of the page's notice text, recorded with every change made
/// on it (proof of consent: which text the person saw). Change it whenever
/// the words in `text.rs` change.
pub const NOTICE_VERSION: &str = "consentd-preferences-2026-12";
/// The notice version recorded for a one-click unsubscribe.
pub const ONE_CLICK_NOTICE_VERSION: &str = "rfc8058-one-click";

/// The HTTP server's settings.
#[derive(Debug, Clone)]
pub struct PageSettings {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Requests per minute from one client address.
    pub rate_per_ip: u32,
    /// Requests per minute on one link.
    pub rate_per_link: u32,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for PageSettings {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            rate_per_ip: RATE_PER_IP_DEFAULT,
            rate_per_link: RATE_PER_LINK_DEFAULT,
            max_connections: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct Shared {
    app: App,
    per_ip: RateLimiter<IpAddr>,
    per_link: RateLimiter<[u8; 16]>,
}

/// Serves the page on `listener` until `stop` turns true; then stops
/// accepting, lets each connection finish its request, and returns once all
/// are closed or `grace` has passed.
pub async fn serve(app: App, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let settings = app.settings().page.clone();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("preference page on http://{addr}");
    }
    if app.settings().links.is_none() {
        tracing::warn!("--http-listen without --link-keys and --public-url: every link is refused");
    }
    let grace = app.settings().shutdown_grace;
    let shared = Arc::new(Shared {
        per_ip: RateLimiter::new(settings.rate_per_ip, RATE_WINDOW, RATE_KEYS_MAX),
        per_link: RateLimiter::new(settings.rate_per_link, RATE_WINDOW, RATE_KEYS_MAX),
        app,
    });
    let max = settings.max_connections.max(1);
    let connections = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "preference page: cannot accept a connection");
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move {
                    let response =
                        tokio::time::timeout(REQUEST_TIMEOUT, handle(&shared, peer, request))
                            .await
                            .unwrap_or_else(|_| {
                                let text = text::choose(None, None);
                                html(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    page::message(text, text.title, text.unavailable),
                                )
                            });
                    Ok::<_, Infallible>(secured(response))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(HEAD_BYTES_MAX)
                .max_headers(HEADERS_MAX);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "preference page: connection failed");
                    }
                }
                () = async {
                    tokio::select! {
                        () = stopped(&mut stop) => {},
                        () = tokio::time::sleep(CONNECTION_MAX_AGE) => {},
                    }
                } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    // Every connection holds a permit: all of them back means all closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("preference page: connections still open after the grace period");
    }
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard it returns is dropped here, not held across an await.
    let _ = stop.wait_for(|s| *s).await;
}

/// Adds the security headers every answer carries.
fn secured(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), interest-cohort=()",
        ),
        (
            header::HeaderName::from_static("x-robots-tag"),
            "noindex, nofollow",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Which page a path names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Style,
    Page { tenant: &'a str, token: &'a str },
    OneClick { tenant: &'a str, token: &'a str },
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if path == "/assets/page.css" {
        return Route::Style;
    }
    let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("p"), Some(tenant), Some(token), None) => Route::Page { tenant, token },
        (Some("u"), Some(tenant), Some(token), None) => Route::OneClick { tenant, token },
        _ => Route::Unknown,
    }
}

/// The `lang` parameter of a query string.
fn query_lang(query: Option<&str>) -> Option<String> {
    form_pairs(query.unwrap_or_default())
        .into_iter()
        .find(|(k, _)| k == "lang")
        .map(|(_, v)| v)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A link's key in the per-link rate limiter: a hash, not the token.
fn link_key(token: &str) -> [u8; 16] {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

async fn handle(
    shared: &Shared,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let lang = query_lang(parts.uri.query());
    let accept = header_str(&parts.headers, header::ACCEPT_LANGUAGE);
    let text = text::choose(lang.as_deref(), accept);
    let path = parts.uri.path().to_owned();
    let route = route(&path);
    if route == Route::Style {
        return match parts.method {
            Method::GET | Method::HEAD => {
                let mut response =
                    Response::new(Full::new(Bytes::from_static(page::STYLE.as_bytes())));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/css; charset=utf-8"),
                );
                headers.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                );
                response
            }
            _ => not_allowed("GET, HEAD"),
        };
    }
    let (tenant, token, one_click) = match route {
        Route::Page { tenant, token } => (tenant, token, false),
        Route::OneClick { tenant, token } => (tenant, token, true),
        Route::Style | Route::Unknown => {
            return html(StatusCode::NOT_FOUND, page::invalid(text));
        }
    };
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::POST) {
        return not_allowed("GET, HEAD, POST");
    }
    let ip = client_ip(
        peer.ip(),
        header_str(
            &parts.headers,
            header::HeaderName::from_static("x-forwarded-for"),
        ),
        &shared.app.settings().page.trusted_proxies,
    );
    let now = Instant::now();
    if !shared.per_ip.allow(rate_key(ip), now) || !shared.per_link.allow(link_key(token), now) {
        shared.app.metrics().page_request("rate_limited");
        let mut response = html(
            StatusCode::TOO_MANY_REQUESTS,
            page::message(text, text.busy_title, text.busy),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return response;
    }
    let claims = match open(&shared.app, tenant, token) {
        Some(claims) => claims,
        None => {
            shared.app.metrics().page_request("invalid_link");
            return html(StatusCode::NOT_FOUND, page::invalid(text));
        }
    };
    let user_agent = header_str(&parts.headers, header::USER_AGENT).unwrap_or_default();
    let context = |reason: &str, notice_version: &str| {
        let mut context = ChangeContext::new(Source::LandingPage, "", reason)
            .unwrap_or_else(|_| unreachable_context());
        context.proof = Proof {
            ip_address: Some(ip),
            user_agent: truncate(user_agent, USER_AGENT_LEN_MAX).to_owned(),
            notice_version: notice_version.to_owned(),
            collected_at: None,
        };
        context
    };
    let page_path = crate::app::page_path(&claims.tenant, token);
    match parts.method {
        Method::POST => {
            let body = match read_body(body).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let content_type = header_str(&parts.headers, header::CONTENT_TYPE).unwrap_or_default();
            if one_click {
                if !is_one_click(content_type, &body) {
                    shared.app.metrics().page_request("bad_one_click");
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "a one-click unsubscribe is a POST with the body List-Unsubscribe=One-Click (RFC 8058)\n",
                    );
                }
                let context = context("one-click unsubscribe (RFC 8058)", ONE_CLICK_NOTICE_VERSION);
                return match shared.app.one_click_unsubscribe(&claims, &context).await {
                    Ok(changed) => {
                        shared.app.metrics().page_request(if changed {
                            "one_click"
                        } else {
                            "one_click_repeat"
                        });
                        plain(StatusCode::OK, "")
                    }
                    Err(error) => failed(text, &error),
                };
            }
            submit(
                shared,
                text,
                &claims,
                token,
                &page_path,
                content_type,
                &body,
                &context("preference page", NOTICE_VERSION),
            )
            .await
        }
        _ => {
            show(
                shared,
                text,
                &claims,
                token,
                &page_path,
                None,
                StatusCode::OK,
            )
            .await
        }
    }
}

fn unreachable_context() -> ChangeContext {
    // `ChangeContext::new` refuses only texts over their limits; ours are short.
    ChangeContext {
        source: Source::LandingPage,
        actor: String::new(),
        reason: String::new(),
        principal: String::new(),
        proof: Proof::default(),
    }
}

fn open(app: &App, tenant: &str, token: &str) -> Option<LinkClaims> {
    if token.len() > LINK_TOKEN_LEN_MAX {
        return None;
    }
    let tenant = Tenant::parse(tenant).ok()?;
    match app.open_link(&tenant, token) {
        Ok(claims) => Some(claims),
        Err(refusal) => {
            tracing::info!(
                refusal = refusal.map_or("not_configured", |r| r.as_str()),
                "preference link refused"
            );
            None
        }
    }
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The text up to `max` bytes, cut at a character boundary.
fn truncate(raw: &str, max: usize) -> &str {
    if raw.len() <= max {
        return raw;
    }
    let mut end = max;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    &raw[..end]
}

async fn read_body(body: Incoming) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(body, BODY_BYTES_MAX).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than 16 KiB\n",
                ))
            } else {
                Err(plain(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read\n",
                ))
            }
        }
    }
}

/// Shows the page (a GET never changes anything).
async fn show(
    shared: &Shared,
    text: &Text,
    claims: &LinkClaims,
    token: &str,
    path: &str,
    message: Option<&str>,
    status: StatusCode,
) -> Response<Full<Bytes>> {
    match shared
        .app
        .preferences(&claims.tenant, &claims.profile)
        .await
    {
        Ok(prefs) => {
            let csrf = match shared.app.link_csrf(token) {
                Ok(csrf) => csrf,
                Err(error) => return failed(text, &error),
            };
            shared.app.metrics().page_request("shown");
            html(
                status,
                page::preferences(text, path, &prefs, &csrf, message),
            )
        }
        Err(error) => failed(text, &error),
    }
}

/// Applies a submitted form.
#[allow(clippy::too_many_arguments)]
async fn submit(
    shared: &Shared,
    text: &Text,
    claims: &LinkClaims,
    token: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    context: &ChangeContext,
) -> Response<Full<Bytes>> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the form is sent as application/x-www-form-urlencoded\n",
        );
    }
    let Ok(body) = std::str::from_utf8(body) else {
        return plain(StatusCode::BAD_REQUEST, "the form is not UTF-8\n");
    };
    let pairs = form_pairs(body);
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let text = field("lang").and_then(text::text).unwrap_or(text);
    let csrf = field("csrf").unwrap_or_default();
    if !shared.app.link_csrf_valid(token, csrf) {
        shared.app.metrics().page_request("csrf_refused");
        return show(
            shared,
            text,
            claims,
            token,
            path,
            Some(text.expired_form),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    let mut choice = PageChoice {
        everything_off: field("everything") == Some("on"),
        ..PageChoice::default()
    };
    for (name, value) in &pairs {
        match name.as_str() {
            "ch" => {
                if let Some(channel) = Channel::ALL.into_iter().find(|c| c.short_name() == value) {
                    choice.channels[channel.index()] = true;
                }
            }
            "svc" => {
                if let Ok(service) = ServiceId::parse(value) {
                    choice.services_ticked.push(service);
                }
            }
            _ => {}
        }
    }
    match shared
        .app
        .set_preferences(&claims.tenant, &claims.profile, &choice, context)
        .await
    {
        Ok(written) => {
            shared.app.metrics().page_request(if written > 0 {
                "saved"
            } else {
                "saved_unchanged"
            });
            let privacy = shared
                .app
                .tenant_settings(&claims.tenant)
                .await
                .map(|s| s.privacy_policy_url)
                .unwrap_or_default();
            html(
                StatusCode::OK,
                page::saved(text, path, written > 0, &privacy),
            )
        }
        Err(error) => failed(text, &error),
    }
}

/// The page for an error: the neutral invalid-link page when the profile is
/// gone, else "try again later" (the cause is logged).
fn failed(text: &Text, error: &Error) -> Response<Full<Bytes>> {
    match error {
        Error::ProfileNotFound(_) | Error::LinksNotConfigured => {
            html(StatusCode::NOT_FOUND, page::invalid(text))
        }
        error => {
            tracing::warn!(%error, "preference page: request failed");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                page::message(text, text.title, text.unavailable),
            )
        }
    }
}

/// The pairs of an `application/x-www-form-urlencoded` text (also a query
/// string), at most 512 of them.
fn form_pairs(raw: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .take(512)
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Whether a body is RFC 8058's `List-Unsubscribe=One-Click`, sent as
/// `application/x-www-form-urlencoded` or `multipart/form-data` (the RFC
/// allows both).
fn is_one_click(content_type: &str, body: &[u8]) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("multipart/form-data") {
        let Some(boundary) = content_type.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_owned())
        }) else {
            return false;
        };
        let Ok(body) = std::str::from_utf8(body) else {
            return false;
        };
        let delimiter = format!("--{boundary}");
        return body.split(delimiter.as_str()).any(|part| {
            let Some((head, value)) = part.split_once("\r\n\r\n") else {
                return false;
            };
            let named = head.lines().any(|line| {
                let lower = line.to_ascii_lowercase();
                lower.starts_with("content-disposition:")
                    && lower.contains("name=\"list-unsubscribe\"")
            });
            named && value.trim_end_matches(['\r', '\n']) == "One-Click"
        });
    }
    // Mail providers send the form type; some send none.
    if !media.is_empty() && !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return false;
    }
    std::str::from_utf8(body).is_ok_and(|body| {
        form_pairs(body.trim_end())
            .iter()
            .any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click")
    })
}

/// An entry point for the fuzz target `page_input` (not an API: hidden
/// from the docs, unused by the server): what the page makes of a request's
/// path, query, form body and one-click body. Returns how many form pairs
/// it read, so that nothing is optimised away.
#[doc(hidden)]
pub fn fuzz_page_input(path: &str, content_type: &str, body: &[u8]) -> usize {
    let _ = route(path);
    let _ = query_lang(Some(path));
    let _ = is_one_click(content_type, body);
    let _ = text::choose(Some(path), Some(content_type));
    let _ = truncate(path, path.len() / 2);
    std::str::from_utf8(body).map_or(0, |b| form_pairs(b).len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_the_page_the_one_click_address_and_nothing_else() {
        assert_eq!(route("/assets/page.css"), Route::Style);
        assert_eq!(
            route("/p/acme/tok"),
            Route::Page {
                tenant: "acme",
                token: "tok"
            }
        );
        assert_eq!(
            route("/u/acme/tok"),
            Route::OneClick {
                tenant: "acme",
                token: "tok"
            }
        );
        for unknown in [
            "/",
            "/p/acme",
            "/p/acme/tok/x",
            "/x/acme/tok",
            "//p/acme/tok",
        ] {
            assert_eq!(route(unknown), Route::Unknown, "{unknown}");
        }
    }

    #[test]
    fn one_click_bodies_are_recognised_in_both_encodings() {
        let form = "application/x-www-form-urlencoded";
        assert!(is_one_click(form, b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(form, b"List-Unsubscribe=One-Click\r\n"));
        assert!(is_one_click("", b"List-Unsubscribe=One-Click"));
        assert!(!is_one_click(form, b"List-Unsubscribe=Other"));
        assert!(!is_one_click(form, b""));
        assert!(!is_one_click("text/plain", b"List-Unsubscribe=One-Click"));
        let multipart = "multipart/form-data; boundary=XyZ";
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert!(is_one_click(multipart, body.as_bytes()));
        assert!(!is_one_click(
            multipart,
            body.replace("One-Click", "No").as_bytes()
        ));
        assert!(!is_one_click("multipart/form-data", body.as_bytes()));
    }

    #[test]
    fn form_pairs_decode_plus_and_percent() {
        assert_eq!(
            form_pairs("a=1&b=x+y%21&c&&d=%E2%9C%93"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y!".to_owned()),
                ("c".to_owned(), String::new()),
                ("d".to_owned(), "✓".to_owned()),
            ]
        );
        assert_eq!(form_pairs(&"a=1&".repeat(1000)).len(), 512);
        assert_eq!(query_lang(Some("x=1&lang=sv")), Some("sv".to_owned()));
        assert_eq!(query_lang(None), None);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aéb", 2), "a");
        assert_eq!(truncate("aéb", 3), "aé");
    }
}
