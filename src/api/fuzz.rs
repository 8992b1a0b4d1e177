//! An entry point for the fuzz targets in `fuzz/` (not an API: hidden from
//! the docs, and nothing in the server uses it).
//!
//! [`RpcHarness`] answers gRPC requests the way the server does — the same
//! services, codec, validation and access-control layer (off) over an
//! in-memory store — without a network: a request is an HTTP/2-less
//! `http::Request` whose body is one gRPC frame. A streamed answer is read
//! up to its first message: a watch (which never ends by itself) answers
//! at once with its starting checkpoint, and checkpoints every millisecond.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

use super::{Services, auth_layer::AuthLayer};
use crate::{
    app::{App, Settings},
    clock::ManualClock,
    store::memory::MemoryStore,
};

/// The clock of the harness: 2026-01-01T00:00:00Z, standing still.
const HARNESS_NOW_MS: i64 = 1_767_225_600_000;

/// Every consent.v1 service's requests answered in one process.
#[derive(Debug)]
pub struct RpcHarness {
    runtime: tokio::runtime::Runtime,
    routes: super::auth_layer::AuthService<tonic::service::Routes>,
    methods: Vec<String>,
}

impl RpcHarness {
    /// A harness over a fresh in-memory store; `None` if the runtime or
    /// the decision index cannot start.
    pub fn new() -> Option<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let settings = Settings {
            watch: crate::app::WatchSettings {
                checkpoint_interval: std::time::Duration::from_millis(1),
                ..crate::app::WatchSettings::default()
            },
            ..Settings::default()
        };
        let app = App::with_store(
            Arc::new(MemoryStore::new()),
            settings,
            Arc::new(ManualClock::new(HARNESS_NOW_MS)),
        );
        runtime.block_on(app.start()).ok()?;
        let services = Services::new(&app);
        let routes = tonic::service::Routes::new(services.profile)
            .add_service(services.consent)
            .add_service(services.quarantine)
            .add_service(services.eligibility)
            .add_service(services.admin)
            .add_service(services.tenant)
            .add_service(services.subscription)
            .add_service(services.usage)
            .add_service(services.watch)
            .add_service(services.preference);
        Some(Self {
            runtime,
            routes: AuthLayer::new(None).layer(routes),
            methods: consent_methods(),
        })
    }

    /// The paths of every consent.v1 method (`/consent.v1.ProfileService/GetProfile`).
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// Sends `message` (the bytes of one request message) to `path` and
    /// returns the status code of the answer and the bytes of its body (of
    /// a stream: up to its first message).
    pub fn call(&mut self, path: &str, message: &[u8]) -> (tonic::Code, usize) {
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0);
        frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
        frame.put_slice(message);
        let Ok(request) = http::Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(Bytes::from(frame)))
        else {
            return (tonic::Code::Internal, 0);
        };
        let routes = &mut self.routes;
        self.runtime.block_on(async move {
            let ready = ServiceExt::<http::Request<Full<Bytes>>>::ready(routes).await;
            // Routes never fails (its error type is `Infallible`).
            let Ok(service) = ready;
            let Ok(response) = service.call(request).await;
            let (parts, mut body) = response.into_parts();
            let mut trailers = http::HeaderMap::new();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return (tonic::Code::Internal, len);
                };
                match frame.into_data() {
                    Ok(data) => {
                        len += data.len();
                        // The first message: enough of a stream.
                        break;
                    }
                    Err(frame) => {
                        if let Ok(found) = frame.into_trailers() {
                            trailers = found;
                        }
                    }
                }
            }
            let status = tonic::Status::from_header_map(&parts.headers)
                .or_else(|| tonic::Status::from_header_map(&trailers));
            (status.map_or(tonic::Code::Ok, |s| s.code()), len)
        })
    }
}

/// The path of every method of the consent.v1 descriptor set.
fn consent_methods() -> Vec<String> {
    use prost::Message as _;
    let set =
        prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_answers_as_the_server_does() {
        let mut harness = RpcHarness::new().expect("a harness");
        assert!(harness.methods().len() >= 30, "{:?}", harness.methods());
        // An empty GetProfileRequest: the tenant is missing.
        let (code, _) = harness.call("/consent.v1.ProfileService/GetProfile", &[]);
        assert_eq!(code, tonic::Code::InvalidArgument);
        // A string that is not UTF-8.
        let (code, _) = harness.call("/consent.v1.ProfileService/GetProfile", &[0x12, 0x01, 0xff]);
        assert_eq!(code, tonic::Code::InvalidArgument);
        let (code, _) = harness.call("/consent.v1.ProfileService/Nope", &[]);
        assert_eq!(code, tonic::Code::Unimplemented);
        let request = crate::pb::GetProfileRequest {
            tenant: "acme".to_owned(),
            profile_id: "nobody".to_owned(),
        };
        let (code, _) = harness.call(
            "/consent.v1.ProfileService/GetProfile",
            &prost::Message::encode_to_vec(&request),
        );
        assert_eq!(code, tonic::Code::NotFound);
        // A watch answers its first message and is left behind.
        let watch = crate::pb::WatchRequest {
            tenant: "acme".to_owned(),
            start_token: String::new(),
        };
        for _ in 0..3 {
            let (code, len) = harness.call(
                "/consent.v1.WatchService/Watch",
                &prost::Message::encode_to_vec(&watch),
            );
            assert_eq!(code, tonic::Code::Ok);
            assert!(len > 5, "a message: {len} bytes");
        }
        let (code, _) = harness.call("/consent.v1.WatchService/Watch", &[0x12, 0x01, b'x']);
        assert_eq!(
            code,
            tonic::Code::InvalidArgument,
            "no tenant, a malformed token"
        );
    }
}
