//! `consent.v1.SubscriptionService`.

use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert::{self, Check},
    page::{self, TokenKind},
};
use crate::{
    app::App,
    engine::{self, SERVICE_NAME_LEN_MAX, Token},
    pb::{self, subscription_service_server::SubscriptionService},
};

/// Serves services and subscriptions.
#[derive(Debug, Clone)]
pub(crate) struct SubscriptionApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl SubscriptionService for SubscriptionApi {
    async fn create_service(
        &self,
        request: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::CreateServiceResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let id = check.service_id("service_id", &req.service_id);
        let name = check.field(
            "name",
            engine::parse_name(&req.name, "name", SERVICE_NAME_LEN_MAX),
        );
        let channel = check.channel("channel", req.channel);
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, id, name, channel, context) =
            check.finish((tenant, id, name, channel, context))?;
        let service = self
            .app
            .create_service(&tenant, id, name, channel, req.double_opt_in, &context)
            .await?;
        Ok(Response::new(pb::CreateServiceResponse {
            service: Some(convert::service_to_pb(&service)),
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let query: [&[u8]; 1] = [req.tenant.as_bytes()];
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let limit = check.page_size(req.page_size, page::PAGE_SIZE_DEFAULT, page::PAGE_SIZE_MAX);
        let after = check.field(
            "page_token",
            page::decode(TokenKind::Services, &query, &req.page_token),
        );
        let (tenant, limit, after) = check.finish((tenant, limit, after))?;
        let page = self.app.services(&tenant, after, limit).await?;
        Ok(Response::new(pb::ListServicesResponse {
            services: page.items.iter().map(convert::service_to_pb).collect(),
            next_page_token: page
                .next
                .map(|cursor| page::encode(TokenKind::Services, &query, &cursor))
                .unwrap_or_default(),
        }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let profile = check.profile_id("profile_id", &req.profile_id);
        let service = check.service_id("service_id", &req.service_id);
        let context = access.context(&mut check, req.context.as_ref());
        check.consent_proof(context.as_ref());
        let (tenant, profile, service, context) =
            check.finish((tenant, profile, service, context))?;
        let written = self
            .app
            .subscribe(&tenant, &profile, &service, &context)
            .await?;
        Ok(Response::new(pb::SubscribeResponse {
            changed: written.changed,
            subscription: Some(convert::subscription_to_pb(&written.value.subscription)),
            confirmation_token: written
                .value
                .token
                .as_ref()
                .map(Token::to_text)
                .unwrap_or_default(),
        }))
    }

    async fn confirm_subscription(
        &self,
        request: Request<pb::ConfirmSubscriptionRequest>,
    ) -> Result<Response<pb::ConfirmSubscriptionResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let token = check.field("token", Token::parse(&req.token));
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, token, context) = check.finish((tenant, token, context))?;
        let confirmed = self
            .app
            .confirm_subscription(&tenant, &token.hash(), &context)
            .await?;
        Ok(Response::new(pb::ConfirmSubscriptionResponse {
            profile_id: confirmed.profile_id.as_str().to_owned(),
            subscription: Some(convert::subscription_to_pb(&confirmed.subscription)),
        }))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let profile = check.profile_id("profile_id", &req.profile_id);
        let service = check.service_id("service_id", &req.service_id);
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, profile, service, context) =
            check.finish((tenant, profile, service, context))?;
        let written = self
            .app
            .unsubscribe(&tenant, &profile, &service, &context)
            .await?;
        Ok(Response::new(pb::UnsubscribeResponse {
            changed: written.changed,
            subscription: written.value.as_ref().map(convert::subscription_to_pb),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let profile = check.profile_id("profile_id", &req.profile_id);
        let (tenant, profile) = check.finish((tenant, profile))?;
        let subscriptions = self.app.subscriptions(&tenant, &profile).await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subscriptions
                .iter()
                .map(convert::subscription_to_pb)
                .collect(),
        }))
    }

    async fn list_subscribers(
        &self,
        request: Request<pb::ListSubscribersRequest>,
    ) -> Result<Response<pb::ListSubscribersResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let status_bytes = req.status.to_be_bytes();
        let query: [&[u8]; 3] = [
            req.tenant.as_bytes(),
            req.service_id.as_bytes(),
            &status_bytes,
        ];
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let service = check.service_id("service_id", &req.service_id);
        let status = check.subscription_status_filter("status", req.status);
        let limit = check.page_size(req.page_size, page::PAGE_SIZE_DEFAULT, page::PAGE_SIZE_MAX);
        let after = check.field(
            "page_token",
            page::decode(TokenKind::Subscribers, &query, &req.page_token),
        );
        let (tenant, service, status, limit, after) =
            check.finish((tenant, service, status, limit, after))?;
        let page = self
            .app
            .subscribers(&tenant, &service, status, after, limit)
            .await?;
        Ok(Response::new(pb::ListSubscribersResponse {
            subscribers: page
                .items
                .iter()
                .map(|(id, status)| pb::Subscriber {
                    profile_id: id.as_str().to_owned(),
                    status: convert::subscription_status_to_pb(*status).into(),
                })
                .collect(),
            next_page_token: page
                .next
                .map(|cursor| page::encode(TokenKind::Subscribers, &query, &cursor))
                .unwrap_or_default(),
        }))
    }
}
