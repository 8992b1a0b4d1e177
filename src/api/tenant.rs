//! `consent.v1.TenantService`.

use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert::{self, Check},
};
use crate::{
    app::App,
    pb::{self, tenant_service_server::TenantService},
};

/// Serves tenant settings.
#[derive(Debug, Clone)]
pub(crate) struct TenantApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn get_tenant_settings(
        &self,
        request: Request<pb::GetTenantSettingsRequest>,
    ) -> Result<Response<pb::GetTenantSettingsResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let (tenant,) = check.finish((tenant,))?;
        let settings = self.app.tenant_settings(&tenant).await?;
        Ok(Response::new(pb::GetTenantSettingsResponse {
            settings: Some(convert::tenant_settings_to_pb(
                &settings,
                &self.app.settings().rules,
            )),
        }))
    }

    async fn update_tenant_settings(
        &self,
        request: Request<pb::UpdateTenantSettingsRequest>,
    ) -> Result<Response<pb::UpdateTenantSettingsResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let update = check.settings_update(&req);
        let context = access.context(&mut check, req.context.as_ref());
        let (tenant, update, context) = check.finish((tenant, update, context))?;
        let written = self
            .app
            .update_tenant_settings(&tenant, &update, &context)
            .await?;
        Ok(Response::new(pb::UpdateTenantSettingsResponse {
            changed: written.changed,
            settings: Some(convert::tenant_settings_to_pb(
                &written.value,
                &self.app.settings().rules,
            )),
        }))
    }
}
