//! The access-control layer: a tower middleware in front of every service.
//!
//! For a `consent.v1` path it reads `authorization: Bearer <key>`, finds the
//! key's [`Caller`] and checks that its role may call the method; it answers
//! `UNAUTHENTICATED` or `PERMISSION_DENIED` itself (a trailers-only gRPC
//! response, with the same `ErrorInfo` as every other error), or puts the
//! `Caller` in the request's extensions for the handler, with the
//! `authorization` header removed. Health and
//! reflection pass untouched. With access control off, every request gets
//! [`Caller::unrestricted`].

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response, header::AUTHORIZATION};
use tonic::Status;
use tower::{Layer, Service};

use crate::{
    auth::{BEARER_KEY_LEN_MAX, Caller, KeySet, is_protected},
    error::Error,
};

/// The caller of a request, as the auth layer found it. Never panics: a
/// request that did not pass the layer (which cannot happen through
/// `server::run`) gets [`Caller::deny_all`], which may act in no tenant.
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::deny_all)
}

/// Adds [`AuthService`] around the services; `keys` of `None` turns access control off.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    /// The accepted keys, shared by every connection.
    keys: Option<Arc<KeySet>>,
}

impl AuthLayer {
    /// A layer that accepts `keys`, or lets everything through when `None`.
    pub(crate) fn new(keys: Option<Arc<KeySet>>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// The middleware made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    /// The wrapped services.
    inner: S,
    /// The accepted keys; `None`: access control is off.
    keys: Option<Arc<KeySet>>,
}

/// The future of [`AuthService::call`]: the inner service's, or a refusal.
type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, E>> + Send + 'static>>;

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match admit(
            self.keys.as_deref(),
            request.uri().path(),
            request.headers(),
        ) {
            Ok(Some(caller)) => {
                // The key has done its job; handlers never see it.
                request.headers_mut().remove(AUTHORIZATION);
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Ok(None) => Box::pin(self.inner.call(request)),
            Err(error) => {
                let status = Status::from(error);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Decides a request: `Some(caller)` to pass with that caller, `None` to pass
/// an open path (health, reflection) untouched, or the error to answer with.
fn admit(keys: Option<&KeySet>, path: &str, headers: &HeaderMap) -> Result<Option<Caller>, Error> {
    let Some(keys) = keys else {
        return Ok(Some(Caller::unrestricted()));
    };
    if !is_protected(path) {
        return Ok(None);
    }
    let key = bearer_key(headers)?;
    let Some(caller) = keys.authenticate(key) else {
        return Err(Error::Unauthenticated(
            "unknown API key; send `authorization: Bearer <key>` with a key from the server's \
             key file"
                .to_owned(),
        ));
    };
    caller.check_method(path)?;
    Ok(Some(caller))
}

/// The key of the one `authorization: Bearer <key>` header.
fn bearer_key(headers: &HeaderMap) -> Result<&str, Error> {
    let unauthenticated = |what: &str| Err(Error::Unauthenticated(what.to_owned()));
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return unauthenticated("missing authorization header; send `authorization: Bearer <key>`");
    };
    if values.next().is_some() {
        return unauthenticated(
            "more than one authorization header; send exactly one `authorization: Bearer <key>`",
        );
    }
    let Ok(value) = value.to_str() else {
        return unauthenticated(
            "malformed authorization header: it is not visible ASCII; send `authorization: \
             Bearer <key>`",
        );
    };
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    let key = match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
        _ => {
            return unauthenticated(
                "malformed authorization header: expected the Bearer scheme; send \
                 `authorization: Bearer <key>`",
            );
        }
    };
    if key.is_empty() {
        return unauthenticated("malformed authorization header: the key after `Bearer` is empty");
    }
    if key.len() > BEARER_KEY_LEN_MAX {
        return Err(Error::Unauthenticated(format!(
            "malformed authorization header: the key is longer than {BEARER_KEY_LEN_MAX} bytes"
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::auth::{Role, sha256_hex};

    fn keys() -> KeySet {
        KeySet::parse(&format!(
            "[[key]]\nname = \"mta\"\nsha256 = \"{}\"\nrole = \"delivery\"\ntenants = [\"acme\"]\n",
            sha256_hex("secret")
        ))
        .expect("valid key file")
    }

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_static(v));
        }
        map
    }

    const CHECK: &str = "/consent.v1.EligibilityService/CheckEligibility";

    fn refusal(values: &[&'static str], path: &str) -> (tonic::Code, String) {
        let keys = keys();
        let error = admit(Some(&keys), path, &headers(values)).expect_err("refused");
        let status = Status::from(error);
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn bad_authorization_headers_are_unauthenticated() {
        use tonic::Code::Unauthenticated;
        for (values, says) in [
            (&[][..], "missing authorization header"),
            (&["Basic c2VjcmV0"][..], "expected the Bearer scheme"),
            (&["Bearer"][..], "expected the Bearer scheme"),
            (&["Bearer    "][..], "is empty"),
            (&["secret"][..], "expected the Bearer scheme"),
            (&["Bearer wrong"][..], "unknown API key"),
            (&["Bearer secret", "Bearer secret"][..], "more than one"),
        ] {
            let (code, message) = refusal(values, CHECK);
            assert_eq!(code, Unauthenticated, "{values:?}");
            assert!(message.contains(says), "{values:?}: {message}");
        }
        let long: &'static str = "x".repeat(BEARER_KEY_LEN_MAX + 1).leak();
        let mut map = HeaderMap::new();
        map.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {long}")).expect("ascii"),
        );
        let error = admit(Some(&keys()), CHECK, &map).expect_err("too long");
        assert!(error.to_string().contains("longer than"), "{error}");
    }

    #[test]
    fn a_known_key_passes_with_its_caller_or_is_denied_by_role() {
        let keys = keys();
        for scheme in ["Bearer secret", "bearer secret", "BEARER  secret "] {
            let caller = admit(Some(&keys), CHECK, &headers(&[scheme]))
                .expect("admitted")
                .expect("a caller");
            assert_eq!(caller.actor(), Some("mta"));
            assert_eq!(caller.role, Role::Delivery);
        }
        let (code, message) = refusal(&["Bearer secret"], "/consent.v1.ProfileService/GetProfile");
        assert_eq!(code, tonic::Code::PermissionDenied);
        assert!(message.contains("role delivery"), "{message}");
        assert!(
            message.contains("/consent.v1.ProfileService/GetProfile"),
            "{message}"
        );
    }

    #[test]
    fn open_paths_and_auth_off() {
        let keys = keys();
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(
                admit(Some(&keys), path, &HeaderMap::new()).expect("open"),
                None
            );
        }
        let caller = admit(None, CHECK, &HeaderMap::new())
            .expect("admitted")
            .expect("a caller");
        assert_eq!(caller, Caller::unrestricted());
    }

    /// What reached the inner service: its caller, and whether the key was still there.
    type Seen = (Option<Caller>, bool);

    /// An inner service that records what reached it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<std::sync::Mutex<Vec<Seen>>>);

    impl Service<Request<()>> for Recorder {
        type Response = Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            let seen = (
                request.extensions().get::<Caller>().cloned(),
                request.headers().contains_key(AUTHORIZATION),
            );
            self.0.lock().expect("not poisoned").push(seen);
            std::future::ready(Ok(Response::new(tonic::body::Body::default())))
        }
    }

    fn request(path: &str, authorization: Option<&'static str>) -> Request<()> {
        let mut builder = Request::builder().uri(path);
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).expect("a valid request")
    }

    #[tokio::test]
    async fn the_service_passes_the_caller_without_the_key_or_answers_itself() {
        let recorder = Recorder::default();
        let mut service = AuthLayer::new(Some(Arc::new(keys()))).layer(recorder.clone());

        let response = service
            .call(request(CHECK, Some("Bearer secret")))
            .await
            .expect("infallible");
        assert_eq!(
            response.headers().get("grpc-status"),
            None,
            "passed through"
        );
        let refused = service
            .call(request(CHECK, Some("Bearer wrong")))
            .await
            .expect("infallible");
        let status = Status::from_header_map(refused.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        service
            .call(request(
                "/grpc.health.v1.Health/Check",
                Some("Bearer wrong"),
            ))
            .await
            .expect("infallible");

        let seen = recorder.0.lock().expect("not poisoned").clone();
        assert_eq!(
            seen.len(),
            2,
            "the refused request never reached the services"
        );
        let (caller, has_key) = &seen[0];
        assert_eq!(caller.as_ref().and_then(Caller::actor), Some("mta"));
        assert!(!has_key, "the key is removed before the handler");
        assert_eq!(seen[1], (None, true), "open paths pass untouched");
    }

    #[test]
    fn a_handler_without_a_caller_gets_one_that_may_do_nothing() {
        let request = tonic::Request::new(());
        assert_eq!(caller(&request), Caller::deny_all());
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(Caller::unrestricted());
        assert_eq!(caller(&request), Caller::unrestricted());
    }
}
