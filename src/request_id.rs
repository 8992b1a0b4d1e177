//! Request ids: each gRPC request gets an `x-request-id`, taken from the
//! request when the client sent a usable one, otherwise generated (a UUID
//! v4). The id is recorded in the request's `rpc` span (field `request_id`,
//! declared in `server.rs`) and returned in the response headers, on
//! successes and errors alike (an error is a trailers-only response, so its
//! headers are its trailers too).
//!
//! A client-sent id is used as is when it is 1 to [`REQUEST_ID_LEN_MAX`]
//! printable ASCII characters (space to `~`); anything else is replaced, so
//! that logs never carry control characters or unbounded text from a client.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

/// The header, in requests and responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest client-sent id kept, in bytes.
pub const REQUEST_ID_LEN_MAX: usize = 128;

/// The id to use for a request that sent `sent`.
pub fn accept_or_generate(sent: Option<&HeaderValue>) -> HeaderValue {
    match sent {
        Some(value) if is_acceptable(value.as_bytes()) => value.clone(),
        _ => generate(),
    }
}

fn is_acceptable(id: &[u8]) -> bool {
    (1..=REQUEST_ID_LEN_MAX).contains(&id.len()) && id.iter().all(|b| (b' '..=b'~').contains(b))
}

/// A new UUID v4. Its randomness need not be secret (an id to find a
/// request in logs, not a token), so it comes from the thread's fast
/// generator rather than a system call per request.
fn generate() -> HeaderValue {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut text))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-uuid"))
}

/// Gives every request an id (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

/// The response future of [`RequestId`].
pub type ResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = accept_or_generate(request.headers().get(REQUEST_ID_HEADER));
        // Handlers and inner layers see the id that is logged and returned.
        request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            // Polled inside the `rpc` span that tonic's `trace_fn` made.
            if let Ok(text) = id.to_str() {
                tracing::Span::current().record("request_id", text);
            }
            let mut response = response.await?;
            response.headers_mut().insert(REQUEST_ID_HEADER, id);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_id_is_kept_and_anything_else_replaced() {
        let kept = HeaderValue::from_static("req-42 from checkout/EU");
        assert_eq!(accept_or_generate(Some(&kept)), kept);
        let longest = "a".repeat(REQUEST_ID_LEN_MAX);
        let longest = HeaderValue::from_str(&longest).expect("ASCII");
        assert_eq!(accept_or_generate(Some(&longest)), longest);

        let too_long = HeaderValue::from_str(&"a".repeat(REQUEST_ID_LEN_MAX + 1)).expect("ASCII");
        let empty = HeaderValue::from_static("");
        let tab = HeaderValue::from_static("a\tb");
        let non_ascii = HeaderValue::from_bytes("é".as_bytes()).expect("opaque bytes");
        for bad in [
            Some(&too_long),
            Some(&empty),
            Some(&tab),
            Some(&non_ascii),
            None,
        ] {
            let id = accept_or_generate(bad);
            assert_ne!(Some(&id), bad);
            let id = id.to_str().expect("generated ids are ASCII");
            let parsed = uuid::Uuid::parse_str(id).expect("a generated id is a UUID");
            assert_eq!(parsed.get_version_num(), 4);
        }
        assert_ne!(accept_or_generate(None), accept_or_generate(None));
    }
}
