//! Tenant settings: regimes per channel and quarantine rule overrides.

use super::{App, Written};
use crate::{
    engine::{ChangeContext, QuarantineRules, Region, SettingsUpdate, Tenant, TenantSettings},
    error::Result,
    store::Lock,
};

impl App {
    /// Where the tenant's phone numbers in national form are read, if it set
    /// a region (from memory: the decision index holds every tenant's settings).
    pub fn default_region(&self, tenant: Option<&Tenant>) -> Option<Region> {
        tenant.and_then(|t| self.index.tenant_settings(t).default_region)
    }

    /// A tenant's settings (the defaults when it set none).
    pub async fn tenant_settings(&self, tenant: &Tenant) -> Result<TenantSettings> {
        Ok(self
            .store
            .tenant_settings(tenant)
            .await?
            .unwrap_or_default())
    }

    /// Changes a tenant's settings. Durable when it returns.
    pub async fn update_tenant_settings(
        &self,
        tenant: &Tenant,
        update: &SettingsUpdate,
        context: &ChangeContext,
    ) -> Result<Written<TenantSettings>> {
        let now = self.now();
        let mut tx = self
            .begin(vec![Lock::TenantSettings(tenant.clone())])
            .await?;
        let mut settings = tx.tenant_settings(tenant).await?.unwrap_or_default();
        let changed = settings.apply(update, now);
        if changed {
            tx.put_tenant_settings(tenant, &settings);
        }
        let position = tx.commit().await?;
        if changed {
            tracing::info!(
                source = ?context.source,
                principal = ?context.principal,
                actor = ?context.actor,
                reason = ?context.reason,
                settings = ?settings,
                "tenant settings changed"
            );
        }
        self.settle(position).await?;
        Ok(Written {
            value: settings,
            changed,
        })
    }

    /// The quarantine rules in force for a tenant.
    pub(crate) async fn rules(&self, tenant: &Tenant) -> Result<QuarantineRules> {
        Ok(self
            .tenant_settings(tenant)
            .await?
            .rules(&self.settings.rules))
    }
}
