//! Tenant settings.

use super::{Result, Store, Written, codec, corrupt, keys};
use crate::engine::{SettingsUpdate, Tenant, TenantSettings, UnixMillis};

impl Store {
    /// A tenant's settings; the defaults when it set nothing. One point read.
    pub fn tenant_settings(&self, tenant: &Tenant) -> Result<TenantSettings> {
        let key = keys::tenant_settings(tenant);
        match self.db.get(&key)? {
            None => Ok(TenantSettings::default()),
            Some(bytes) => codec::decode_tenant_settings(&bytes).map_err(corrupt(&key)),
        }
    }

    /// Applies an update to a tenant's settings.
    pub fn update_tenant_settings(
        &self,
        tenant: &Tenant,
        update: &SettingsUpdate,
        now: UnixMillis,
    ) -> Result<Written<TenantSettings>> {
        let key = keys::tenant_settings(tenant);
        let _guard = self.lock(&[&key])?;
        let mut settings = self.tenant_settings(tenant)?;
        let changed = settings.apply(update, now);
        if changed {
            let mut batch = sled::Batch::default();
            batch.insert(key, codec::encode_tenant_settings(&settings));
            self.apply(batch)?;
        }
        Ok(Written {
            value: settings,
            changed,
        })
    }
}
