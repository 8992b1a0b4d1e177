//! `consent.v1.EligibilityService`: the hot path.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::{
    access::Access,
    convert::{self, Check},
};
use crate::{
    app::{App, Delivery},
    engine::{Channel, ProfileId, ServiceId, Summary, Tenant},
    error::Error,
    pb::{self, eligibility_service_server::EligibilityService},
};

/// Most profile ids in one `BatchCheckEligibility` request or stream chunk.
pub const BATCH_PROFILE_IDS_MAX: usize = 10_000;
/// Answered chunks a stream buffers before it stops reading (back-pressure).
const STREAM_CHUNKS_BUFFERED: usize = 2;

/// Serves eligibility checks.
#[derive(Debug, Clone)]
pub(crate) struct EligibilityApi {
    /// The application.
    pub(crate) app: App,
}

/// Checks a list of ids: its length first (a clear limit error), then each id.
/// `required` makes an empty list invalid (a batch); a stream chunk may be empty.
fn profile_ids(
    check: &mut Check,
    raw: &[String],
    required: bool,
) -> Result<Option<Vec<ProfileId>>, Error> {
    if required && raw.is_empty() {
        check.violation("profile_ids", "at least one profile id is required");
        return Ok(None);
    }
    if raw.len() > BATCH_PROFILE_IDS_MAX {
        return Err(Error::ListTooLong {
            field: "profile_ids",
            len: raw.len(),
            limit: BATCH_PROFILE_IDS_MAX,
        });
    }
    Ok(check.profile_ids("profile_ids", raw))
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

#[tonic::async_trait]
impl EligibilityService for EligibilityApi {
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
        let delivery = self.app.delivery(&tenant, channel, service.as_ref())?;
        let decision = self.app.check_one(&tenant, &id, &delivery)?;
        Ok(Response::new(pb::CheckEligibilityResponse {
            decision: Some(convert::decision_to_pb(id, decision)),
        }))
    }

    async fn batch_check_eligibility(
        &self,
        request: Request<pb::BatchCheckEligibilityRequest>,
    ) -> Result<Response<pb::BatchCheckEligibilityResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let ids = profile_ids(&mut check, &req.profile_ids, true)?;
        let target = target(&mut check, req.channel, &req.service_id);
        let (tenant, (channel, service), ids) = check.finish((tenant, target, ids))?;
        let delivery = self.app.delivery(&tenant, channel, service.as_ref())?;
        let (decisions, summary) = self.app.check(&tenant, ids, &delivery).await?;
        Ok(Response::new(pb::BatchCheckEligibilityResponse {
            decisions: decisions
                .into_iter()
                .map(|(id, d)| convert::decision_to_pb(id, d))
                .collect(),
            summary: Some(convert::summary_to_pb(&summary)),
        }))
    }

    type StreamEligibilityStream = ReceiverStream<Result<pb::StreamEligibilityResponse, Status>>;

    async fn stream_eligibility(
        &self,
        request: Request<Streaming<pb::StreamEligibilityRequest>>,
    ) -> Result<Response<Self::StreamEligibilityStream>, Status> {
        let access = Access::of(&request, &self.app);
        let mut inbound = request.into_inner();
        let (answers, stream) = mpsc::channel(STREAM_CHUNKS_BUFFERED);
        let mut audience = Audience {
            access,
            app: self.app.clone(),
            scope: None,
            total: Summary::default(),
        };
        let work = async move {
            loop {
                let chunk = match inbound.message().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        break;
                    }
                };
                let answer = audience.answer(chunk).await.map_err(Status::from);
                let failed = answer.is_err();
                // `send` waits while the client is behind: we read no more until it catches up.
                if answers.send(answer).await.is_err() || failed {
                    break;
                }
            }
        };
        tokio::spawn(work.instrument(tracing::Span::current()));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// The state of one `StreamEligibility` call.
struct Audience {
    /// The caller.
    access: Access,
    /// The application.
    app: App,
    /// The tenant and delivery fixed by the first chunk.
    scope: Option<(Tenant, Delivery)>,
    /// The counts of every decision so far.
    total: Summary,
}

impl Audience {
    async fn answer(
        &mut self,
        chunk: pb::StreamEligibilityRequest,
    ) -> Result<pb::StreamEligibilityResponse, Error> {
        let mut check = Check::default();
        let ids = profile_ids(&mut check, &chunk.profile_ids, false)?;
        let (tenant, delivery, ids) = match &self.scope {
            None => {
                let tenant = self.access.tenant(&mut check, &chunk.tenant)?;
                let target = target(&mut check, chunk.channel, &chunk.service_id);
                let (tenant, (channel, service), ids) = check.finish((tenant, target, ids))?;
                let delivery = self.app.delivery(&tenant, channel, service.as_ref())?;
                (tenant, delivery, ids)
            }
            Some((tenant, delivery)) => {
                if !chunk.tenant.is_empty() && chunk.tenant != tenant.as_str() {
                    check.violation("tenant", "may not change within a stream");
                }
                if chunk.channel != 0
                    && chunk.channel != i32::from(convert::channel_to_pb(delivery.channel))
                {
                    check.violation("channel", "may not change within a stream");
                }
                let service = delivery.service.as_ref().map_or("", |s| s.as_str());
                if !chunk.service_id.is_empty() && chunk.service_id != service {
                    check.violation("service_id", "may not change within a stream");
                }
                let (ids,) = check.finish((ids,))?;
                (tenant.clone(), delivery.clone(), ids)
            }
        };
        let (decisions, summary) = self.app.check(&tenant, ids, &delivery).await?;
        self.scope = Some((tenant, delivery));
        self.total.merge(&summary);
        Ok(pb::StreamEligibilityResponse {
            decisions: decisions
                .into_iter()
                .map(|(id, d)| convert::decision_to_pb(id, d))
                .collect(),
            chunk_summary: Some(convert::summary_to_pb(&summary)),
            total_summary: Some(convert::summary_to_pb(&self.total)),
        })
    }
}
