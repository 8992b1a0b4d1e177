//! `consent.v1.ProductUsageService`.

use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert::{self, Check},
    page::{self, TokenKind},
};
use crate::{
    app::App,
    engine::{ChangeContext, Tenant, USAGE_EVENTS_MAX, USAGE_PAYLOAD_LEN_MAX, UserId},
    error::Error,
    pb::{self, product_usage_service_server::ProductUsageService},
};

/// Serves product-usage tracking opt-outs.
#[derive(Debug, Clone)]
pub(crate) struct UsageApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl ProductUsageService for UsageApi {
    async fn opt_out_user(
        &self,
        request: Request<pb::OptOutUserRequest>,
    ) -> Result<Response<pb::OptOutUserResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let (tenant, user, context) =
            user_change(&access, &req.tenant, &req.user_id, req.context.as_ref())?;
        let written = self.app.opt_out_usage(&tenant, &user, &context).await?;
        Ok(Response::new(pb::OptOutUserResponse {
            changed: written.changed,
            opt_out: Some(convert::usage_opt_out_to_pb(&written.value)),
        }))
    }

    async fn opt_in_user(
        &self,
        request: Request<pb::OptInUserRequest>,
    ) -> Result<Response<pb::OptInUserResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let (tenant, user, context) =
            user_change(&access, &req.tenant, &req.user_id, req.context.as_ref())?;
        let written = self.app.opt_in_usage(&tenant, &user, &context).await?;
        Ok(Response::new(pb::OptInUserResponse {
            changed: written.changed,
        }))
    }

    async fn list_opted_out_users(
        &self,
        request: Request<pb::ListOptedOutUsersRequest>,
    ) -> Result<Response<pb::ListOptedOutUsersResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let query: [&[u8]; 1] = [req.tenant.as_bytes()];
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let limit = check.page_size(req.page_size, page::PAGE_SIZE_DEFAULT, page::PAGE_SIZE_MAX);
        let after = check.field(
            "page_token",
            page::decode(TokenKind::UsageOptOuts, &query, &req.page_token),
        );
        let (tenant, limit, after) = check.finish((tenant, limit, after))?;
        let page = self.app.usage_opt_outs(&tenant, after, limit).await?;
        Ok(Response::new(pb::ListOptedOutUsersResponse {
            opt_outs: page
                .items
                .iter()
                .map(convert::usage_opt_out_to_pb)
                .collect(),
            next_page_token: page
                .next
                .map(|cursor| page::encode(TokenKind::UsageOptOuts, &query, &cursor))
                .unwrap_or_default(),
        }))
    }

    async fn check_tracking(
        &self,
        request: Request<pb::CheckTrackingRequest>,
    ) -> Result<Response<pb::CheckTrackingResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let user = check.user_id("user_id", &req.user_id);
        let (tenant, user) = check.finish((tenant, user))?;
        Ok(Response::new(pb::CheckTrackingResponse {
            allowed: self.app.tracking_allowed(&tenant, &user).await?,
        }))
    }

    async fn filter_usage_events(
        &self,
        request: Request<pb::FilterUsageEventsRequest>,
    ) -> Result<Response<pb::FilterUsageEventsResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        if req.events.len() > USAGE_EVENTS_MAX {
            return Err(Error::ListTooLong {
                field: "events",
                len: req.events.len(),
                limit: USAGE_EVENTS_MAX,
            }
            .into());
        }
        if req.events.is_empty() {
            check.violation("events", "at least one event is required");
        }
        let mut users = Vec::with_capacity(req.events.len());
        for (i, event) in req.events.iter().enumerate() {
            match UserId::parse(&event.user_id) {
                Ok(user) => users.push(user),
                Err(invalid) => check.violation(format!("events[{i}].user_id"), invalid.0),
            }
            if event.payload.len() > USAGE_PAYLOAD_LEN_MAX {
                check.violation(
                    format!("events[{i}].payload"),
                    format!(
                        "is {} bytes; at most {USAGE_PAYLOAD_LEN_MAX} are allowed",
                        event.payload.len()
                    ),
                );
            }
        }
        let (tenant,) = check.finish((tenant,))?;
        let allowed = self.app.filter_tracking(&tenant, users).await?;
        let total = req.events.len();
        let kept_events: Vec<pb::UsageEvent> = req
            .events
            .into_iter()
            .zip(allowed)
            .filter_map(|(event, allowed)| allowed.then_some(event))
            .collect();
        let dropped_count = u64::try_from(total - kept_events.len()).unwrap_or(u64::MAX);
        Ok(Response::new(pb::FilterUsageEventsResponse {
            kept_events,
            dropped_count,
        }))
    }
}

/// The tenant, user and context of an opt-out or opt-in, each checked; every
/// invalid field is reported at once.
fn user_change(
    access: &Access,
    tenant: &str,
    user_id: &str,
    context: Option<&pb::ChangeContext>,
) -> Result<(Tenant, UserId, ChangeContext), Error> {
    let mut check = Check::default();
    let tenant = access.tenant(&mut check, tenant)?;
    let user = check.user_id("user_id", user_id);
    let context = access.context(&mut check, context);
    check.finish((tenant, user, context))
}
