//! Profiles: create or replace addresses; read.

use super::{App, Written};
use crate::{
    engine::{Profile, ProfileAddresses, ProfileId, Tenant},
    error::{Error, Result},
    store::Lock,
};

impl App {
    /// Creates a profile or replaces its addresses (consent is kept).
    /// `changed` is true when it was created. Durable when it returns.
    pub async fn upsert_profile(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        addresses: ProfileAddresses,
    ) -> Result<Written<Profile>> {
        let now = self.now();
        let mut tx = self
            .begin(vec![Lock::Profile(tenant.clone(), id.clone())])
            .await?;
        let (profile, created) = match tx.profile(tenant, id).await? {
            Some(mut profile) => {
                profile.set_addresses(addresses, now);
                (profile, false)
            }
            None => (Profile::new(id.clone(), addresses, now), true),
        };
        tx.put_profile(tenant, &profile);
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(Written {
            value: profile,
            changed: created,
        })
    }

    /// A profile, or `ProfileNotFound`.
    pub async fn profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Profile> {
        self.store
            .profile(tenant, id)
            .await?
            .ok_or_else(|| Error::ProfileNotFound(id.as_str().to_owned()))
    }
}
