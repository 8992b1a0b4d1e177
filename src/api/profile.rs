//! `consent.v1.ProfileService` and `consent.v1.ConsentService`.

use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert::{self, Check},
    page::{self, TokenKind},
};
use crate::{
    app::App,
    data::subject::{SUBJECT_CONTENT_TYPE, SubjectDocument},
    engine::{ConsentStatus, Scope},
    pb::{self, consent_service_server::ConsentService, profile_service_server::ProfileService},
};

/// Serves profiles and consent.
#[derive(Debug, Clone)]
pub(crate) struct ProfileApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl ProfileService for ProfileApi {
    async fn upsert_profile(
        &self,
        request: Request<pb::UpsertProfileRequest>,
    ) -> Result<Response<pb::UpsertProfileResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let id = check.profile_id("profile_id", &req.profile_id);
        let addresses = check.profile_addresses(&req);
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, id, addresses, context) = check.finish((tenant, id, addresses, context))?;
        tracing::info!(
            profile_id = id.as_str(),
            source = ?context.source,
            actor = ?context.actor,
            reason = ?context.reason,
            "upsert profile"
        );
        let written = self.app.upsert_profile(&tenant, &id, addresses).await?;
        Ok(Response::new(pb::UpsertProfileResponse {
            profile: Some(convert::profile_to_pb(&written.value)),
            created: written.changed,
        }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let id = check.profile_id("profile_id", &req.profile_id);
        let (tenant, id) = check.finish((tenant, id))?;
        let profile = self.app.profile(&tenant, &id).await?;
        Ok(Response::new(pb::GetProfileResponse {
            profile: Some(convert::profile_to_pb(&profile)),
        }))
    }

    async fn erase_profile(
        &self,
        request: Request<pb::EraseProfileRequest>,
    ) -> Result<Response<pb::EraseProfileResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let id = check.profile_id("profile_id", &req.profile_id);
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, id, context) = check.finish((tenant, id, context))?;
        let erasure = self.app.erase_profile(&tenant, &id, &context).await?;
        // The log says that an erasure happened, never whom it erased.
        tracing::info!(
            source = ?context.source,
            tombstones = erasure.tombstones,
            history_entries = erasure.history_entries,
            subscriptions = erasure.subscriptions,
            "erased a profile"
        );
        Ok(Response::new(pb::EraseProfileResponse {
            erased_at: Some(convert::timestamp(erasure.erased_at)),
            tombstones: erasure.tombstones,
            history_entries: erasure.history_entries,
            subscriptions: erasure.subscriptions,
        }))
    }

    async fn export_profile_data(
        &self,
        request: Request<pb::ExportProfileDataRequest>,
    ) -> Result<Response<pb::ExportProfileDataResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let id = check.profile_id("profile_id", &req.profile_id);
        let (tenant, id) = check.finish((tenant, id))?;
        let data = self.app.export_profile_data(&tenant, &id).await?;
        let document = SubjectDocument::new(&tenant, &data).to_json();
        Ok(Response::new(pb::ExportProfileDataResponse {
            document,
            content_type: SUBJECT_CONTENT_TYPE.to_owned(),
        }))
    }
}

/// The fields shared by `OptOutRequest` and `OptInRequest`.
struct ConsentChange<'a> {
    tenant: &'a str,
    profile_id: &'a str,
    channel: i32,
    all_channels: bool,
    context: Option<&'a pb::ChangeContext>,
}

impl ProfileApi {
    async fn change_consent(
        &self,
        access: &Access,
        req: ConsentChange<'_>,
        status: ConsentStatus,
    ) -> Result<(bool, pb::ConsentState), Status> {
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, req.tenant)?;
        let id = check.profile_id("profile_id", req.profile_id);
        // A consent system must never guess the scope: exactly one of the two.
        let scope = match (req.channel, req.all_channels) {
            (0, true) => Some(Scope::AllChannels),
            (0, false) => {
                check.violation(
                    "channel",
                    format!(
                        "give a channel (one of {}), or all_channels = true",
                        crate::engine::Channel::api_names()
                    ),
                );
                None
            }
            (_, true) => {
                check.violation(
                    "all_channels",
                    "give a channel or all_channels = true, not both",
                );
                None
            }
            (raw, false) => check.channel("channel", raw).map(Scope::Channel),
        };
        let context = access.context(&mut check, req.context);
        if status == ConsentStatus::OptedIn {
            check.consent_proof(context.as_ref());
        }
        let (tenant, id, scope, context) = check.finish((tenant, id, scope, context))?;
        let written = self
            .app
            .set_consent(&tenant, &id, scope, status, &context)
            .await?;
        Ok((
            written.changed,
            convert::consent_to_pb(&written.value.consent),
        ))
    }

    /// OptOutAddress and OptInAddress: an address's opt-out of one channel.
    async fn change_address_consent(
        &self,
        access: &Access,
        req: AddressConsentChange<'_>,
        opted_out: bool,
    ) -> Result<(bool, pb::AddressConsent), Status> {
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let address = check.address(req.address, req.address_type);
        let channel = check.address_channel(req.channel, address.as_ref());
        let context = access.context(&mut check, req.context);
        if !opted_out {
            check.consent_proof(context.as_ref());
        }
        let (tenant, address, channel, context) =
            check.finish((tenant, address, channel, context))?;
        let written = self
            .app
            .set_address_consent(&tenant, &address, channel, opted_out, &context)
            .await?;
        Ok((
            written.changed,
            convert::address_consent_to_pb(&address, &written.value),
        ))
    }
}

/// The fields of an OptOutAddress or OptInAddress request.
struct AddressConsentChange<'a> {
    tenant: &'a str,
    address: &'a str,
    address_type: i32,
    channel: i32,
    context: Option<&'a pb::ChangeContext>,
}

#[tonic::async_trait]
impl ConsentService for ProfileApi {
    async fn opt_out(
        &self,
        request: Request<pb::OptOutRequest>,
    ) -> Result<Response<pb::OptOutResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let change = ConsentChange {
            tenant: &req.tenant,
            profile_id: &req.profile_id,
            channel: req.channel,
            all_channels: req.all_channels,
            context: req.context.as_ref(),
        };
        let (changed, consent) = self
            .change_consent(&access, change, ConsentStatus::OptedOut)
            .await?;
        Ok(Response::new(pb::OptOutResponse {
            changed,
            consent: Some(consent),
        }))
    }

    async fn opt_in(
        &self,
        request: Request<pb::OptInRequest>,
    ) -> Result<Response<pb::OptInResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let change = ConsentChange {
            tenant: &req.tenant,
            profile_id: &req.profile_id,
            channel: req.channel,
            all_channels: req.all_channels,
            context: req.context.as_ref(),
        };
        let (changed, consent) = self
            .change_consent(&access, change, ConsentStatus::OptedIn)
            .await?;
        Ok(Response::new(pb::OptInResponse {
            changed,
            consent: Some(consent),
        }))
    }

    async fn get_consent(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::GetConsentResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let id = check.profile_id("profile_id", &req.profile_id);
        let (tenant, id) = check.finish((tenant, id))?;
        let profile = self.app.profile(&tenant, &id).await?;
        Ok(Response::new(pb::GetConsentResponse {
            consent: Some(convert::consent_to_pb(&profile.consent)),
        }))
    }

    async fn opt_out_address(
        &self,
        request: Request<pb::OptOutAddressRequest>,
    ) -> Result<Response<pb::OptOutAddressResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let change = AddressConsentChange {
            tenant: &req.tenant,
            address: &req.address,
            address_type: req.address_type,
            channel: req.channel,
            context: req.context.as_ref(),
        };
        let (changed, consent) = self.change_address_consent(&access, change, true).await?;
        Ok(Response::new(pb::OptOutAddressResponse {
            changed,
            consent: Some(consent),
        }))
    }

    async fn opt_in_address(
        &self,
        request: Request<pb::OptInAddressRequest>,
    ) -> Result<Response<pb::OptInAddressResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let change = AddressConsentChange {
            tenant: &req.tenant,
            address: &req.address,
            address_type: req.address_type,
            channel: req.channel,
            context: req.context.as_ref(),
        };
        let (changed, consent) = self.change_address_consent(&access, change, false).await?;
        Ok(Response::new(pb::OptInAddressResponse {
            changed,
            consent: Some(consent),
        }))
    }

    async fn get_address_consent(
        &self,
        request: Request<pb::GetAddressConsentRequest>,
    ) -> Result<Response<pb::GetAddressConsentResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        check.read_phones_in(self.app.default_region(tenant.as_ref()));
        let address = check.address(&req.address, req.address_type);
        let (tenant, address) = check.finish((tenant, address))?;
        let consent = self.app.address_consent(&tenant, &address).await?;
        Ok(Response::new(pb::GetAddressConsentResponse {
            consent: Some(convert::address_consent_to_pb(&address, &consent)),
        }))
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let query: [&[u8]; 2] = [req.tenant.as_bytes(), req.profile_id.as_bytes()];
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let id = check.profile_id("profile_id", &req.profile_id);
        let limit = check.page_size(req.page_size, page::PAGE_SIZE_DEFAULT, page::PAGE_SIZE_MAX);
        let before = check.field(
            "page_token",
            page::decode_seq(TokenKind::ConsentHistory, &query, &req.page_token),
        );
        let (tenant, id, limit, before) = check.finish((tenant, id, limit, before))?;
        let page = self
            .app
            .consent_history(&tenant, &id, before, limit)
            .await?;
        Ok(Response::new(pb::ListConsentHistoryResponse {
            entries: page
                .items
                .iter()
                .map(convert::history_entry_to_pb)
                .collect(),
            next_page_token: page
                .next
                .map(|seq| page::encode_seq(TokenKind::ConsentHistory, &query, seq))
                .unwrap_or_default(),
        }))
    }
}
