//! The preference page and its links: sealing a link, reading what the page
//! shows, and applying what the person submitted or a one-click unsubscribe.
//!
//! The web edge (`crate::web`) parses HTTP and renders HTML; the rules of
//! what a form changes are in `engine::preferences`; here they run over the
//! store, in one commit under the profile's lock, through the same engine
//! calls as the RPCs (`Profile::set_consent`, `engine::unsubscribe`).

use std::{sync::Arc, time::Duration};

use super::{
    App,
    subscriptions::{SERVICES_PER_TENANT_MAX, subscribe_without_confirmation_in, unsubscribe_in},
};
use crate::{
    engine::{
        ChangeContext, ConsentStatus, PageChoice, Profile, ProfileId, Scope, Service, Subscription,
        Tenant, TenantSettings, UnixMillis, preference_changes,
    },
    error::{Error, Result},
    links::{LinkClaims, LinkKeys, LinkRefusal, LinkScope},
};

/// Default lifetime of a preference link.
pub const LINK_TTL_DEFAULT: Duration = Duration::from_secs(60 * 24 * 60 * 60);
/// The page languages; the first is the default.
pub const PAGE_LANGUAGES: [&str; 3] = ["en", "sv", "nl"];

/// How links are made: the keys and the address they start with.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The key file's keys.
    pub keys: Arc<LinkKeys>,
    /// What links start with (`https://prefs.example.com`, no trailing slash).
    pub public_url: String,
    /// How long a link works.
    pub ttl: Duration,
}

/// The links for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceLink {
    /// The preference page.
    pub url: String,
    /// The RFC 8058 one-click address.
    pub one_click_url: String,
    /// When they stop working.
    pub expires_at: UnixMillis,
}

/// What the preference page shows.
#[derive(Debug, Clone)]
pub struct Preferences {
    /// The profile, with its consent.
    pub profile: Profile,
    /// The tenant's settings (regimes, display name, privacy policy).
    pub settings: TenantSettings,
    /// The tenant's services (at most [`SERVICES_PER_TENANT_MAX`]), each
    /// with the profile's subscription to it.
    pub services: Vec<(Service, Option<Subscription>)>,
}

/// The path of a page link under the public address.
pub fn page_path(tenant: &Tenant, token: &str) -> String {
    format!("/p/{}/{token}", tenant.as_str())
}

/// The path of a one-click link under the public address.
pub fn one_click_path(tenant: &Tenant, token: &str) -> String {
    format!("/u/{}/{token}", tenant.as_str())
}

impl App {
    fn links(&self) -> Result<&LinkSettings> {
        self.settings
            .links
            .as_ref()
            .ok_or(Error::LinksNotConfigured)
    }

    /// Seals the links for one message to `profile`. The profile (and the
    /// service of a service scope) must exist; nothing is written.
    pub async fn preference_link(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
        scope: LinkScope,
        language: Option<&str>,
    ) -> Result<PreferenceLink> {
        let links = self.links()?;
        self.profile(tenant, profile).await?;
        if let LinkScope::Service(service) = &scope {
            self.service(tenant, service).await?;
        }
        let ttl = UnixMillis::try_from(links.ttl.as_millis()).unwrap_or(UnixMillis::MAX);
        let expires_at = self.now().saturating_add(ttl);
        let token = links.keys.seal(&LinkClaims {
            tenant: tenant.clone(),
            profile: profile.clone(),
            scope,
            expires_at,
        });
        let lang = language.map(|l| format!("?lang={l}")).unwrap_or_default();
        Ok(PreferenceLink {
            url: format!("{}{}{lang}", links.public_url, page_path(tenant, &token)),
            one_click_url: format!("{}{}", links.public_url, one_click_path(tenant, &token)),
            expires_at,
        })
    }

    /// Opens a link's token shown under `tenant`'s address.
    pub fn open_link(
        &self,
        tenant: &Tenant,
        token: &str,
    ) -> Result<LinkClaims, Option<LinkRefusal>> {
        let links = self.links().map_err(|_| None)?;
        links.keys.open(tenant, token, self.now()).map_err(Some)
    }

    /// A CSRF token for the form of the page opened by `token`.
    pub fn link_csrf(&self, token: &str) -> Result<String> {
        Ok(self.links()?.keys.csrf(token, self.now()))
    }

    /// Whether `csrf` belongs to the form of the page opened by `token`.
    pub fn link_csrf_valid(&self, token: &str, csrf: &str) -> bool {
        self.links()
            .is_ok_and(|links| links.keys.csrf_valid(token, csrf, self.now()))
    }

    /// What the preference page shows; `ProfileNotFound` when the profile is
    /// gone. What it reports is durable.
    pub async fn preferences(&self, tenant: &Tenant, id: &ProfileId) -> Result<Preferences> {
        let profile = self.profile(tenant, id).await?;
        let settings = self.tenant_settings(tenant).await?;
        let services = self.services_with_subscriptions(tenant, id).await?;
        self.settle(self.store.position()).await?;
        Ok(Preferences {
            profile,
            settings,
            services,
        })
    }

    /// The tenant's services, each with `id`'s subscription to it.
    async fn services_with_subscriptions(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
    ) -> Result<Vec<(Service, Option<Subscription>)>> {
        let mut subscriptions = self.store.subscriptions(tenant, id).await?;
        // At most SERVICES_PER_TENANT_MAX: one page holds them all.
        let services = self
            .store
            .services(tenant, None, SERVICES_PER_TENANT_MAX)
            .await?
            .items;
        Ok(services
            .into_iter()
            .map(|service| {
                let at = subscriptions
                    .iter()
                    .position(|s| s.service_id == service.id);
                let subscription = at.map(|at| subscriptions.swap_remove(at));
                (service, subscription)
            })
            .collect())
    }

    /// Applies what the person submitted on the page: every change in one
    /// commit under the profile's lock, each recorded in history with
    /// `context`. Returns how many changes were written (0 when the form
    /// matched the state). Durable when it returns.
    pub async fn set_preferences(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        choice: &PageChoice,
        context: &ChangeContext,
    ) -> Result<usize> {
        let settings = self.tenant_settings(tenant).await?;
        let now = self.now();
        let (mut tx, mut profile) = self.begin_on_profile(tenant, id).await?;
        // Subscriptions change only under the profile's lock, held here.
        let services = self.services_with_subscriptions(tenant, id).await?;
        let changes = preference_changes(&profile.consent, &settings, &services, choice);
        let mut written = 0;
        for &(scope, status) in &changes.consent {
            if status == ConsentStatus::OptedIn {
                context
                    .require_proof()
                    .map_err(|missing| Error::invalid(missing[0].0, missing[0].1.0.clone()))?;
            }
            if let Some(entry) = profile.set_consent(scope, status, context, now) {
                tx.append_history(tenant, id, &entry);
                written += 1;
            }
        }
        tx.put_profile(tenant, &profile);
        for service_id in &changes.unsubscribe {
            // Services are never deleted; one that is missing changes nothing.
            if let Some(service) = tx.service(tenant, service_id).await? {
                let ended =
                    unsubscribe_in(tx.as_mut(), tenant, &mut profile, &service, context, now)
                        .await?;
                written += usize::from(ended.changed);
            }
        }
        for service_id in &changes.subscribe {
            if let Some(service) = tx.service(tenant, service_id).await? {
                context
                    .require_proof()
                    .map_err(|missing| Error::invalid(missing[0].0, missing[0].1.0.clone()))?;
                let begun = subscribe_without_confirmation_in(
                    tx.as_mut(),
                    tenant,
                    &mut profile,
                    &service,
                    context,
                    now,
                )
                .await?;
                written += usize::from(begun);
            }
        }
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(written)
    }

    /// An RFC 8058 one-click unsubscribe: opts the profile out of the
    /// link's scope, or ends its subscription to the link's service.
    /// Returns whether anything changed (a repeat changes nothing and adds
    /// no history). A profile that is gone is not an error: there is
    /// nothing left to contact.
    pub async fn one_click_unsubscribe(
        &self,
        claims: &LinkClaims,
        context: &ChangeContext,
    ) -> Result<bool> {
        let (tenant, id) = (&claims.tenant, &claims.profile);
        let written = match &claims.scope {
            LinkScope::AllChannels => {
                self.set_consent(
                    tenant,
                    id,
                    Scope::AllChannels,
                    ConsentStatus::OptedOut,
                    context,
                )
                .await
            }
            LinkScope::Channel(channel) => {
                self.set_consent(
                    tenant,
                    id,
                    Scope::Channel(*channel),
                    ConsentStatus::OptedOut,
                    context,
                )
                .await
            }
            LinkScope::Service(service) => {
                return match self.unsubscribe(tenant, id, service, context).await {
                    Ok(written) => Ok(written.changed),
                    Err(Error::ProfileNotFound(_) | Error::ServiceNotFound(_)) => Ok(false),
                    Err(error) => Err(error),
                };
            }
        };
        match written {
            Ok(written) => Ok(written.changed),
            Err(Error::ProfileNotFound(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }
}
