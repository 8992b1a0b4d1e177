//! Who is calling: the authenticated caller of a request, as handlers need
//! it. Every handler starts with [`Access::of`], checks the tenant with
//! [`Access::tenant`] before it touches the store, and stamps every change
//! context with [`Access::context`].

use tonic::Request;

use super::{auth_layer, convert::Check};
use crate::{
    app::App,
    auth::{Caller, Role},
    engine::{ChangeContext, Source, Tenant, UnixMillis},
    error::Error,
    pb,
};

/// The caller of one request and the time it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// The caller, as the auth layer found it.
    caller: Caller,
    /// When the request is handled.
    now: UnixMillis,
}

impl Access {
    /// The caller of `request` (see [`auth_layer::caller`]: a request that did
    /// not pass the auth layer may act in no tenant).
    pub(crate) fn of<T>(request: &Request<T>, app: &App) -> Self {
        Self {
            caller: auth_layer::caller(request),
            now: app.now(),
        }
    }

    /// The request's tenant: parsed (a violation when invalid) and allowed
    /// for the caller (PERMISSION_DENIED otherwise, before anything is read,
    /// so the answer is the same whether the target exists or not).
    pub(crate) fn tenant(&self, check: &mut Check, raw: &str) -> Result<Option<Tenant>, Error> {
        let Some(tenant) = check.tenant(raw) else {
            return Ok(None);
        };
        self.caller.check_tenant(&tenant)?;
        Ok(Some(tenant))
    }

    /// The request's change context, stamped with the caller: `principal` is
    /// the key's name whatever the client sent, and a landing-page key's
    /// changes are always recorded with source LANDING_PAGE.
    pub(crate) fn context(
        &self,
        check: &mut Check,
        raw: Option<&pb::ChangeContext>,
    ) -> Option<ChangeContext> {
        let forced = (self.caller.role == Role::LandingPage).then_some(Source::LandingPage);
        let mut context = check.context(raw, forced, self.now)?;
        context.principal = self.caller.actor().unwrap_or_default().to_owned();
        Some(context)
    }
}
