//! Profiles: create or replace addresses; read.

use super::{App, Written};
use crate::{
    engine::{Address, Profile, ProfileAddresses, ProfileId, Tenant},
    error::{Error, Result},
    store::Lock,
};

impl App {
    /// Creates a profile or replaces its addresses (consent is kept).
    /// `changed` is true when it was created. Durable when it returns.
    ///
    /// An address the profile did not have before that an erased person
    /// had opted out with opts the profile out of that scope, where it has
    /// no preference of its own (see `erasure.rs`), with a history entry.
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
        let (mut profile, created, known) = match tx.profile(tenant, id).await? {
            Some(mut profile) => {
                let known: Vec<Address> = profile.all_addresses().cloned().collect();
                profile.set_addresses(addresses, now);
                (profile, false, known)
            }
            None => (Profile::new(id.clone(), addresses, now), true, Vec::new()),
        };
        let entries = Self::apply_tombstones(&mut *tx, tenant, &mut profile, &known, now).await?;
        // The entries first, then the profile that counts them.
        for entry in &entries {
            tx.append_history(tenant, id, entry);
        }
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
