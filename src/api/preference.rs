//! `consent.v1.PreferenceService`: the links to the preference page.

use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert::{self, Check},
};
use crate::{
    app::{App, PAGE_LANGUAGES},
    links::LinkScope,
    pb::{self, preference_service_server::PreferenceService},
};

/// The List-Unsubscribe-Post header value (RFC 8058).
const LIST_UNSUBSCRIBE_POST: &str = "List-Unsubscribe=One-Click";

/// Serves preference links.
#[derive(Debug, Clone)]
pub(crate) struct PreferenceApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl PreferenceService for PreferenceApi {
    async fn create_preference_link(
        &self,
        request: Request<pb::CreatePreferenceLinkRequest>,
    ) -> Result<Response<pb::CreatePreferenceLinkResponse>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let profile = check.profile_id("profile_id", &req.profile_id);
        let scope = match (req.channel, req.service_id.is_empty()) {
            (0, true) => Some(LinkScope::AllChannels),
            (0, false) => check
                .service_id("service_id", &req.service_id)
                .map(LinkScope::Service),
            (_, true) => check
                .channel("channel", req.channel)
                .map(LinkScope::Channel),
            (_, false) => {
                check.violation(
                    "service_id",
                    "give channel or service_id (the one-click scope), not both",
                );
                None
            }
        };
        let language = match req.language.trim() {
            "" => Some(None),
            lang if PAGE_LANGUAGES.contains(&lang) => Some(Some(lang.to_owned())),
            other => {
                check.violation(
                    "language",
                    format!(
                        "{other:?} is not a language of the page: one of {}, or empty",
                        PAGE_LANGUAGES.join(", ")
                    ),
                );
                None
            }
        };
        let (tenant, profile, scope, language) =
            check.finish((tenant, profile, scope, language))?;
        let link = self
            .app
            .preference_link(&tenant, &profile, scope, language.as_deref())
            .await?;
        Ok(Response::new(pb::CreatePreferenceLinkResponse {
            list_unsubscribe: format!("<{}>", link.one_click_url),
            list_unsubscribe_post: LIST_UNSUBSCRIBE_POST.to_owned(),
            url: link.url,
            one_click_url: link.one_click_url,
            expires_at: Some(convert::timestamp(link.expires_at)),
        }))
    }
}
