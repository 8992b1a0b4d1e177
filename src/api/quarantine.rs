//! `consent.v1.QuarantineService`.

use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert::{self, Check},
    page::{self, TokenKind},
};
use crate::{
    app::App,
    engine::{AddressStatus, EventId, Placement},
    pb::{self, quarantine_service_server::QuarantineService},
};

/// Serves address quarantine.
#[derive(Debug, Clone)]
pub(crate) struct QuarantineApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl QuarantineService for QuarantineApi {
    async fn record_delivery_feedback(
        &self,
        request: Request<pb::RecordDeliveryFeedbackRequest>,
    ) -> Result<Response<pb::RecordDeliveryFeedbackResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let address = check.address(&req.address, req.address_type);
        let kind = check.field("kind", convert::feedback_kind_from_pb(req.kind));
        let reason = check.field(
            "error_reason",
            convert::error_reason_from_pb(req.error_reason),
        );
        let event_id = check.field("event_id", EventId::parse(&req.event_id));
        let occurred_at = check.timestamp("occurred_at", req.occurred_at.as_ref());
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, address, kind, reason, event_id, occurred_at, context) = check.finish((
            tenant,
            address,
            kind,
            reason,
            event_id,
            occurred_at,
            context,
        ))?;
        let written = self
            .app
            .record_feedback(
                &tenant,
                &address,
                kind,
                reason,
                event_id,
                occurred_at,
                &context,
            )
            .await?;
        Ok(Response::new(pb::RecordDeliveryFeedbackResponse {
            recorded: written.changed,
            state: Some(convert::address_state_to_pb(&address, &written.state)),
            applied_in_arrival_order: written.placement == Some(Placement::ArrivalOrder),
        }))
    }

    async fn quarantine_address(
        &self,
        request: Request<pb::QuarantineAddressRequest>,
    ) -> Result<Response<pb::QuarantineAddressResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let address = check.address(&req.address, req.address_type);
        let allowed = [AddressStatus::Quarantined, AddressStatus::Denylisted];
        let status = check
            .field(
                "status",
                convert::address_status_from_pb(req.status, &allowed, false),
            )
            .flatten();
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, address, status, context) =
            check.finish((tenant, address, status, context))?;
        let written = self
            .app
            .quarantine_address(&tenant, &address, status, &context)
            .await?;
        Ok(Response::new(pb::QuarantineAddressResponse {
            changed: written.changed,
            state: Some(convert::address_state_to_pb(&address, &written.value)),
        }))
    }

    async fn release_address(
        &self,
        request: Request<pb::ReleaseAddressRequest>,
    ) -> Result<Response<pb::ReleaseAddressResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let address = check.address(&req.address, req.address_type);
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, address, context) = check.finish((tenant, address, context))?;
        let written = self
            .app
            .release_address(&tenant, &address, &context)
            .await?;
        Ok(Response::new(pb::ReleaseAddressResponse {
            changed: written.changed,
            state: Some(convert::address_state_to_pb(&address, &written.value)),
        }))
    }

    async fn get_address_status(
        &self,
        request: Request<pb::GetAddressStatusRequest>,
    ) -> Result<Response<pb::GetAddressStatusResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let address = check.address(&req.address, req.address_type);
        let (tenant, address) = check.finish((tenant, address))?;
        let state = self.app.address_state(&tenant, &address).await?;
        let (users, truncated) = self.app.address_users(&tenant, &address).await?;
        Ok(Response::new(pb::GetAddressStatusResponse {
            state: Some(convert::address_state_to_pb(&address, &state)),
            profile_ids: users.iter().map(|id| id.as_str().to_owned()).collect(),
            profile_ids_truncated: truncated,
        }))
    }

    async fn list_quarantined_addresses(
        &self,
        request: Request<pb::ListQuarantinedAddressesRequest>,
    ) -> Result<Response<pb::ListQuarantinedAddressesResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let status_bytes = req.status.to_be_bytes();
        let query: [&[u8]; 2] = [req.tenant.as_bytes(), &status_bytes];
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let allowed = [
            AddressStatus::WithErrors,
            AddressStatus::Quarantined,
            AddressStatus::Denylisted,
        ];
        let status = check.field(
            "status",
            convert::address_status_from_pb(req.status, &allowed, true),
        );
        let limit = check.page_size(req.page_size, page::PAGE_SIZE_DEFAULT, page::PAGE_SIZE_MAX);
        let after = check.field(
            "page_token",
            page::decode(TokenKind::Addresses, &query, &req.page_token),
        );
        let (tenant, status, limit, after) = check.finish((tenant, status, limit, after))?;
        let page = self
            .app
            .list_addresses(&tenant, status, after, limit)
            .await?;
        Ok(Response::new(pb::ListQuarantinedAddressesResponse {
            addresses: page
                .items
                .iter()
                .map(|(address, state)| convert::address_state_to_pb(address, state))
                .collect(),
            next_page_token: page
                .next
                .map(|cursor| page::encode(TokenKind::Addresses, &query, &cursor))
                .unwrap_or_default(),
        }))
    }

    async fn list_address_history(
        &self,
        request: Request<pb::ListAddressHistoryRequest>,
    ) -> Result<Response<pb::ListAddressHistoryResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let address = check.address(&req.address, req.address_type);
        let limit = check.page_size(req.page_size, page::PAGE_SIZE_DEFAULT, page::PAGE_SIZE_MAX);
        // Bound to the normalised address, so `A@X.COM` and `a@x.com` share tokens.
        let normalised = address
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let query: [&[u8]; 2] = [req.tenant.as_bytes(), normalised.as_bytes()];
        let before = check.field(
            "page_token",
            page::decode_event_key(TokenKind::AddressHistory, &query, &req.page_token),
        );
        let (tenant, address, limit, before) = check.finish((tenant, address, limit, before))?;
        let page = self
            .app
            .address_history(&tenant, &address, before, limit)
            .await?;
        Ok(Response::new(pb::ListAddressHistoryResponse {
            entries: page
                .items
                .iter()
                .map(convert::address_event_to_pb)
                .collect(),
            next_page_token: page
                .next
                .map(|key| page::encode_event_key(TokenKind::AddressHistory, &query, key))
                .unwrap_or_default(),
        }))
    }
}
