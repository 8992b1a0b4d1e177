//! `consent.v1.EligibilityService`: the hot path.
//!
//! `BatchCheckEligibility` and `StreamEligibility` read and write the wire
//! format by hand (`wire.rs`), so their server is wired by hand too
//! ([`EligibilityServer`], as tonic's generated code would be, with our
//! codec); `CheckEligibility` uses prost.

mod wire;

use std::{sync::Arc, task::Poll};

use bytes::Bytes;
use tonic::{
    Request, Response, Status, Streaming,
    body::Body,
    codegen::{BoxFuture, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService, UnaryService},
};
use tracing::Instrument as _;

use super::{
    access::Access,
    convert::{self, Check},
    stream_limits::{Answers, StreamLimits, outbox},
};
use crate::{
    app::{App, Delivery, Ids},
    engine::{Channel, ProfileId, ServiceId, Summary, Tenant},
    error::Error,
    pb,
};
use wire::{Encoded, IdsCodec, IdsRequest, PartEncoder, View, summary_field};

/// Most profile ids in one `BatchCheckEligibility` request or stream chunk.
pub const BATCH_PROFILE_IDS_MAX: usize = 10_000;
/// Most addresses in one `BatchCheckAddresses` request.
pub(crate) const BATCH_ADDRESSES_MAX: usize = 10_000;
/// Answered chunks a stream buffers before it stops reading (back-pressure).
const STREAM_CHUNKS_BUFFERED: usize = 2;

/// Serves eligibility checks.
#[derive(Debug, Clone)]
pub(crate) struct EligibilityApi {
    /// The application.
    pub(crate) app: App,
}

/// Checks the ids of a request: their number first (a clear limit error),
/// then each id. `required` makes an empty list invalid (a batch); a stream
/// chunk may be empty.
fn check_ids(check: &mut Check, ids: &IdsRequest, required: bool) -> Result<(), Error> {
    if required && ids.is_empty() {
        check.violation("profile_ids", "at least one profile id is required");
        return Ok(());
    }
    if ids.len() > BATCH_PROFILE_IDS_MAX {
        return Err(Error::ListTooLong {
            field: "profile_ids",
            len: ids.len(),
            limit: BATCH_PROFILE_IDS_MAX,
        });
    }
    // The hot path: the field path is only formatted for an id that fails.
    for i in 0..ids.len() {
        if let Err(invalid) = ProfileId::check(ids.id(i)) {
            check.violation(format!("profile_ids[{i}]"), invalid.0);
        }
    }
    Ok(())
}

/// The channel (optional when a service is given) and the service of a check.
fn target(
    check: &mut Check,
    channel: i32,
    service_id: &str,
) -> Option<(Option<Channel>, Option<ServiceId>)> {
    let service = check.optional_service_id("service_id", service_id);
    let channel = match (channel, &service) {
        (0, Some(Some(_))) => Some(None),
        (raw, _) => check.channel("channel", raw).map(Some),
    };
    Some((channel?, service?))
}

/// The decision view asked for (unspecified: FULL).
fn view(check: &mut Check, raw: i32) -> Option<View> {
    match pb::DecisionView::try_from(raw) {
        Ok(pb::DecisionView::Unspecified | pb::DecisionView::Full) => Some(View::Full),
        Ok(pb::DecisionView::Basic) => Some(View::Basic),
        Err(_) => {
            check.violation(
                "view",
                format!(
                    "unknown value {raw}: one of DECISION_VIEW_FULL, DECISION_VIEW_BASIC, or leave it unspecified"
                ),
            );
            None
        }
    }
}

impl EligibilityApi {
    /// Decides for every id of `ids` and encodes the answer: the decisions
    /// (field 1), then the summaries given by `summaries`.
    async fn decide(
        &self,
        tenant: &Tenant,
        ids: Arc<IdsRequest>,
        delivery: &Delivery,
        view: View,
    ) -> Result<(Vec<Bytes>, Summary), Error> {
        let decided = self
            .app
            .decide_many(tenant, ids as Arc<dyn Ids>, delivery, |n| {
                PartEncoder::new(view, n)
            })
            .await?;
        let parts = decided.parts.into_iter().map(PartEncoder::finish).collect();
        Ok((parts, decided.summary))
    }

    async fn batch_check_addresses(
        &self,
        request: Request<pb::BatchCheckAddressesRequest>,
    ) -> Result<Response<pb::BatchCheckAddressesResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        if req.addresses.len() > BATCH_ADDRESSES_MAX {
            return Err(Error::ListTooLong {
                field: "addresses",
                len: req.addresses.len(),
                limit: BATCH_ADDRESSES_MAX,
            }
            .into());
        }
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let channel = check.channel("channel", req.channel);
        let kind = match channel.map(|c| (c, c.address_kind())) {
            Some((_, Some(kind))) => Some(kind),
            Some((_, None)) => {
                check.violation(
                    "channel",
                    "CHANNEL_DIRECT_MAIL has no address to check: give CHANNEL_EMAIL, \
                     CHANNEL_SMS, CHANNEL_VOICE or CHANNEL_PUSH",
                );
                None
            }
            None => None,
        };
        if req.addresses.is_empty() {
            check.violation("addresses", "at least one address is required");
        }
        let addresses = kind.and_then(|kind| check.each_address("addresses", &req.addresses, kind));
        let (tenant, channel, addresses) = check.finish((tenant, channel, addresses))?;
        let delivery = self.app.delivery(&tenant, Some(channel), None).await?;
        let (reasons, summary) = self
            .app
            .check_addresses(&tenant, &addresses, &delivery)
            .await?;
        let decisions = req
            .addresses
            .into_iter()
            .zip(addresses)
            .zip(reasons)
            .map(|((given, address), reasons)| pb::AddressDecision {
                address: given,
                canonical_address: address.as_str().to_owned(),
                eligible: reasons.is_empty(),
                reasons: reasons
                    .iter()
                    .map(|r| convert::exclusion_reason_to_pb(r).into())
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::BatchCheckAddressesResponse {
            decisions,
            summary: Some(convert::summary_to_pb(&summary)),
        }))
    }

    async fn check_eligibility(
        &self,
        request: Request<pb::CheckEligibilityRequest>,
    ) -> Result<Response<pb::CheckEligibilityResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let id = check.profile_id("profile_id", &req.profile_id);
        let target = target(&mut check, req.channel, &req.service_id);
        let (tenant, id, (channel, service)) = check.finish((tenant, id, target))?;
        let delivery = self
            .app
            .delivery(&tenant, channel, service.as_ref())
            .await?;
        let decision = self.app.check_one(&tenant, &id, &delivery).await?;
        Ok(Response::new(pb::CheckEligibilityResponse {
            decision: Some(convert::decision_to_pb(id, decision)),
        }))
    }

    async fn batch_check_eligibility(
        &self,
        request: Request<IdsRequest>,
    ) -> Result<Response<Encoded>, Status> {
        let access = Access::of(&request, &self.app);
        let req = Arc::new(request.into_inner());
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, req.tenant())?;
        check_ids(&mut check, &req, true)?;
        let target = target(&mut check, req.channel, req.service_id());
        let view = view(&mut check, req.view);
        let (tenant, (channel, service), view) = check.finish((tenant, target, view))?;
        let delivery = self
            .app
            .delivery(&tenant, channel, service.as_ref())
            .await?;
        let (mut parts, summary) = self.decide(&tenant, req, &delivery, view).await?;
        parts.push(summary_field(2, &summary));
        Ok(Response::new(Encoded(parts)))
    }

    async fn stream_eligibility(
        &self,
        request: Request<Streaming<IdsRequest>>,
    ) -> Result<Response<Answers<Encoded>>, Status> {
        let access = Access::of(&request, &self.app);
        let mut inbound = request.into_inner();
        let (mut answers, stream) = outbox(
            StreamLimits::start(self.app.settings()),
            STREAM_CHUNKS_BUFFERED,
        );
        let mut audience = Audience {
            access,
            api: self.clone(),
            scope: None,
            total: Summary::default(),
        };
        let work = async move {
            // A limit that ends the stream (the client too slow to send or
            // to read) drops its state and the answers not taken yet.
            while let Ok(received) = answers.receive(inbound.message()).await {
                let chunk = match received {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(status) => {
                        answers.end(status);
                        break;
                    }
                };
                match audience.answer(chunk).await {
                    // `send` waits while the client is behind: we read no more until it catches up.
                    Ok(answer) => {
                        if answers.send(answer).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        answers.end(Status::from(error));
                        break;
                    }
                }
            }
        };
        tokio::spawn(work.instrument(tracing::Span::current()));
        Ok(Response::new(stream))
    }
}

/// The state of one `StreamEligibility` call.
struct Audience {
    /// The caller.
    access: Access,
    /// The service.
    api: EligibilityApi,
    /// The tenant, delivery and view fixed by the first chunk.
    scope: Option<(Tenant, Delivery, View)>,
    /// The counts of every decision so far.
    total: Summary,
}

impl Audience {
    async fn answer(&mut self, chunk: IdsRequest) -> Result<Encoded, Error> {
        let mut check = Check::default();
        check_ids(&mut check, &chunk, false)?;
        let (tenant, delivery, view) = match &self.scope {
            None => {
                let tenant = self.access.tenant(&mut check, chunk.tenant())?;
                let target = target(&mut check, chunk.channel, chunk.service_id());
                let view = view(&mut check, chunk.view);
                let (tenant, (channel, service), view) = check.finish((tenant, target, view))?;
                let delivery = self
                    .api
                    .app
                    .delivery(&tenant, channel, service.as_ref())
                    .await?;
                (tenant, delivery, view)
            }
            Some((tenant, delivery, view)) => {
                if !chunk.tenant().is_empty() && chunk.tenant() != tenant.as_str() {
                    check.violation("tenant", "may not change within a stream");
                }
                if chunk.channel != 0
                    && chunk.channel != i32::from(convert::channel_to_pb(delivery.channel))
                {
                    check.violation("channel", "may not change within a stream");
                }
                let service = delivery.service.as_ref().map_or("", |s| s.as_str());
                if !chunk.service_id().is_empty() && chunk.service_id() != service {
                    check.violation("service_id", "may not change within a stream");
                }
                let asked = match pb::DecisionView::try_from(chunk.view) {
                    Ok(pb::DecisionView::Basic) => Some(View::Basic),
                    Ok(pb::DecisionView::Full) => Some(View::Full),
                    _ => None,
                };
                if asked.is_some_and(|asked| asked != *view) {
                    check.violation("view", "may not change within a stream");
                }
                check.finish((Some(()),))?;
                (tenant.clone(), delivery.clone(), *view)
            }
        };
        let (mut parts, summary) = self
            .api
            .decide(&tenant, Arc::new(chunk), &delivery, view)
            .await?;
        self.scope = Some((tenant, delivery, view));
        self.total.merge(&summary);
        parts.push(summary_field(2, &summary));
        parts.push(summary_field(3, &self.total));
        Ok(Encoded(parts))
    }
}

/// `consent.v1.EligibilityService`, wired by hand: tonic's generated server
/// with [`IdsCodec`] for the two batch methods.
#[derive(Debug, Clone)]
pub(crate) struct EligibilityServer {
    api: Arc<EligibilityApi>,
    decode_limit: usize,
    encode_limit: usize,
}

impl EligibilityServer {
    /// The server over `api`, with its message size limits.
    pub(crate) fn new(api: EligibilityApi, decode_limit: usize, encode_limit: usize) -> Self {
        Self {
            api: Arc::new(api),
            decode_limit,
            encode_limit,
        }
    }

    fn grpc<C: tonic::codec::Codec>(&self, codec: C) -> Grpc<C> {
        Grpc::new(codec)
            .apply_max_message_size_config(Some(self.decode_limit), Some(self.encode_limit))
    }
}

impl NamedService for EligibilityServer {
    const NAME: &'static str = "consent.v1.EligibilityService";
}

/// One method of the service.
struct Method<F>(Arc<EligibilityApi>, F);

impl<F, Req, Resp, Fut> UnaryService<Req> for Method<F>
where
    F: Fn(Arc<EligibilityApi>, Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Response<Resp>, Status>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        Box::pin((self.1)(Arc::clone(&self.0), request))
    }
}

/// `StreamEligibility`.
struct Streamed(Arc<EligibilityApi>);

impl StreamingService<IdsRequest> for Streamed {
    type Response = Encoded;
    type ResponseStream = Answers<Encoded>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<IdsRequest>>) -> Self::Future {
        let api = Arc::clone(&self.0);
        Box::pin(async move { api.stream_eligibility(request).await })
    }
}

impl<B> Service<http::Request<B>> for EligibilityServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let api = Arc::clone(&self.api);
        match request.uri().path() {
            "/consent.v1.EligibilityService/CheckEligibility" => {
                let mut grpc = self.grpc(crate::api::codec::Codec::<
                    pb::CheckEligibilityResponse,
                    pb::CheckEligibilityRequest,
                >::default());
                let method = Method(api, |api: Arc<EligibilityApi>, r| async move {
                    api.check_eligibility(r).await
                });
                Box::pin(async move { Ok(grpc.unary(method, request).await) })
            }
            "/consent.v1.EligibilityService/BatchCheckEligibility" => {
                let mut grpc = self.grpc(IdsCodec);
                let method = Method(api, |api: Arc<EligibilityApi>, r| async move {
                    api.batch_check_eligibility(r).await
                });
                Box::pin(async move { Ok(grpc.unary(method, request).await) })
            }
            "/consent.v1.EligibilityService/BatchCheckAddresses" => {
                let mut grpc = self.grpc(crate::api::codec::Codec::<
                    pb::BatchCheckAddressesResponse,
                    pb::BatchCheckAddressesRequest,
                >::default());
                let method = Method(api, |api: Arc<EligibilityApi>, r| async move {
                    api.batch_check_addresses(r).await
                });
                Box::pin(async move { Ok(grpc.unary(method, request).await) })
            }
            "/consent.v1.EligibilityService/StreamEligibility" => {
                let mut grpc = self.grpc(IdsCodec);
                Box::pin(async move { Ok(grpc.streaming(Streamed(api), request).await) })
            }
            _ => Box::pin(async move {
                Ok(
                    Status::unimplemented("no such method in consent.v1.EligibilityService")
                        .into_http(),
                )
            }),
        }
    }
}
