//! Consent: opt in, opt out, and the history that records every change.

use super::{App, Page, Written, page_by_key};
use crate::{
    engine::{
        Address, AddressConsent, ChangeContext, Channel, ConsentHistoryEntry, ConsentStatus,
        Profile, ProfileId, Scope, Tenant,
    },
    error::{Error, Result},
    store::Lock,
};

impl App {
    /// Opts a profile in or out of a scope. Durable when it returns, also
    /// when it changed nothing (the state it reports may have been written by
    /// a request not yet acknowledged).
    pub async fn set_consent(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        scope: Scope,
        status: ConsentStatus,
        context: &ChangeContext,
    ) -> Result<Written<Profile>> {
        let now = self.now();
        let (mut tx, mut profile) = self.begin_on_profile(tenant, id).await?;
        let changed = match profile.set_consent(scope, status, context, now) {
            Some(entry) => {
                // The entry first, then the profile that counts it (see
                // `store::sled`: a store may write them as two inserts).
                tx.append_history(tenant, id, &entry);
                tx.put_profile(tenant, &profile);
                true
            }
            None => false,
        };
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(Written {
            value: profile,
            changed,
        })
    }

    /// A page of a profile's consent history, newest first; the cursor is the
    /// sequence number to continue below.
    pub async fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<ConsentHistoryEntry, u64>> {
        self.profile(tenant, id).await?;
        let (store, tenant, id) = (self.store.clone(), tenant.clone(), id.clone());
        let items = self
            .off_workers(move || async move {
                Ok(store
                    .consent_history(&tenant, &id, before, limit + 1)
                    .await?)
            })
            .await?;
        Ok(page_by_key(items, limit, |e| e.sequence))
    }

    /// Opts an address out of a channel (`opted_out`), or back in. Durable
    /// when it returns, also when it changed nothing. The channel must use
    /// the address's kind (the edge checks it first).
    pub async fn set_address_consent(
        &self,
        tenant: &Tenant,
        address: &Address,
        channel: Channel,
        opted_out: bool,
        context: &ChangeContext,
    ) -> Result<Written<AddressConsent>> {
        let now = self.now();
        let mut tx = self
            .begin(vec![Lock::Address(tenant.clone(), address.clone())])
            .await?;
        let mut consent = tx
            .address_consent(tenant, address)
            .await?
            .unwrap_or_default();
        let changed = consent
            .set(address, channel, opted_out, now, context)
            .map_err(|invalid| Error::invalid("channel", invalid.0))?;
        if changed {
            tx.put_address_consent(tenant, address, &consent);
        }
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(Written {
            value: consent,
            changed,
        })
    }

    /// An address's opt-outs (none when it never had one). What it reports
    /// is durable: it waits for every change committed before the read.
    pub async fn address_consent(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<AddressConsent> {
        let consent = self.store.address_consent(tenant, address).await?;
        self.settle(self.store.position()).await?;
        Ok(consent.unwrap_or_default())
    }
}
