//! `consent.v1.EligibilityService`: the hot path.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::convert::{self, Check};
use crate::{
    app::App,
    engine::{Channel, ProfileId, Summary, Tenant},
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

#[tonic::async_trait]
impl EligibilityService for EligibilityApi {
    async fn check_eligibility(
        &self,
        request: Request<pb::CheckEligibilityRequest>,
    ) -> Result<Response<pb::CheckEligibilityResponse>, Status> {
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = check.tenant(&req.tenant);
        let id = check.profile_id("profile_id", &req.profile_id);
        let channel = check.channel("channel", req.channel);
        let (tenant, id, channel) = check.finish((tenant, id, channel))?;
        let decision = self.app.check_one(&tenant, &id, channel)?;
        Ok(Response::new(pb::CheckEligibilityResponse {
            decision: Some(convert::decision_to_pb(id, decision)),
        }))
    }

    async fn batch_check_eligibility(
        &self,
        request: Request<pb::BatchCheckEligibilityRequest>,
    ) -> Result<Response<pb::BatchCheckEligibilityResponse>, Status> {
        let req = request.into_inner();
        let mut check = Check::default();
        let ids = profile_ids(&mut check, &req.profile_ids, true)?;
        let tenant = check.tenant(&req.tenant);
        let channel = check.channel("channel", req.channel);
        let (tenant, channel, ids) = check.finish((tenant, channel, ids))?;
        let (decisions, summary) = self.app.check(&tenant, ids, channel).await?;
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
        let mut inbound = request.into_inner();
        let (answers, stream) = mpsc::channel(STREAM_CHUNKS_BUFFERED);
        let mut audience = Audience {
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
    /// The application.
    app: App,
    /// The tenant and channel fixed by the first chunk.
    scope: Option<(Tenant, Channel)>,
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
        let scope = match &self.scope {
            None => {
                let tenant = check.tenant(&chunk.tenant);
                let channel = check.channel("channel", chunk.channel);
                tenant.zip(channel)
            }
            Some((tenant, channel)) => {
                if !chunk.tenant.is_empty() && chunk.tenant != tenant.as_str() {
                    check.violation("tenant", "may not change within a stream");
                }
                if chunk.channel != 0
                    && chunk.channel != i32::from(convert::channel_to_pb(*channel))
                {
                    check.violation("channel", "may not change within a stream");
                }
                Some((tenant.clone(), *channel))
            }
        };
        let ((tenant, channel), ids) = check.finish((scope, ids))?;
        self.scope = Some((tenant.clone(), channel));
        let (decisions, summary) = self.app.check(&tenant, ids, channel).await?;
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
