//! Erasure and data-subject access: `EraseProfile` and
//! `ExportProfileData`.
//!
//! An erasure deletes a profile with its history, subscriptions, tokens and
//! address links, and keeps, for each of its addresses, only what the
//! person had opted out of, under the keyed hash of the address (see
//! `engine::erasure`). A profile that later gets such an address starts
//! opted out of that scope ([`App::apply_tombstones`], called by
//! `upsert_profile`).
//!
//! Why an upsert needs no lock of its own on the tombstones: an erasure
//! writes the tombstones of a profile other than the one created, so an
//! upsert that read before the erasure committed is ordered before it (the
//! profile existed before the erasure, and nothing is owed to it); one that
//! read after sees them. Two erasures of one tenant are serialised by
//! [`Lock::ErasureKey`], so that merging a tombstone and making the secret
//! never race.

use super::App;
use crate::{
    engine::{
        Address, AddressConsent, AddressState, ChangeContext, ConsentHistoryEntry,
        ERASURE_KEY_BYTES, Erasure, ErasureKey, Profile, ProfileId, Source, Subscription,
        TOMBSTONE_REASON, Tenant, Tombstone, UnixMillis,
    },
    error::{Error, Result},
    store::{Lock, Txn},
};

/// Most consent history entries in an `ExportProfileData` document, newest
/// first (the rest: `ListConsentHistory`).
pub const EXPORT_HISTORY_ENTRIES_MAX: usize = 1000;

/// The actor written in the history entry of a profile opted out by a
/// tombstone.
pub const TOMBSTONE_ACTOR: &str = "consentd";

/// Everything consentd holds about one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectData {
    /// When it was read.
    pub exported_at: UnixMillis,
    /// The profile.
    pub profile: Profile,
    /// Its consent history, newest first, at most
    /// [`EXPORT_HISTORY_ENTRIES_MAX`].
    pub history: Vec<ConsentHistoryEntry>,
    /// False when older entries were left out.
    pub history_complete: bool,
    /// Its subscriptions.
    pub subscriptions: Vec<Subscription>,
    /// Each of its addresses with its stored state and opt-outs (`None`:
    /// never recorded, which reads as VALID / none).
    pub addresses: Vec<(Address, Option<AddressState>, Option<AddressConsent>)>,
}

impl App {
    /// Erases a profile (see the module documentation). Durable when it
    /// returns; `ProfileNotFound` when there is no such profile (also for a
    /// retry of an erasure that succeeded).
    pub async fn erase_profile(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        context: &ChangeContext,
    ) -> Result<Erasure> {
        let mut random = [0u8; ERASURE_KEY_BYTES + 8];
        getrandom::fill(&mut random)
            .map_err(|e| Error::Unavailable(format!("no randomness for an erasure: {e}")))?;
        let now = self.now();
        let mut tx = self
            .begin(vec![
                Lock::Profile(tenant.clone(), id.clone()),
                Lock::ErasureKey(tenant.clone()),
            ])
            .await?;
        let profile = tx
            .profile(tenant, id)
            .await?
            .ok_or_else(|| Error::ProfileNotFound(id.as_str().to_owned()))?;
        // Under the profile's lock: no change of its subscriptions runs.
        let subscriptions = self.store.subscriptions(tenant, id).await?.len();
        let stones: Vec<(&Address, Tombstone)> = profile
            .all_addresses()
            .filter_map(|a| Tombstone::of(&profile, a).map(|t| (a, t)))
            .collect();
        if !stones.is_empty() {
            let key = match tx.erasure_key(tenant).await? {
                Some(key) => key,
                None => {
                    let mut secret = [0u8; ERASURE_KEY_BYTES];
                    secret.copy_from_slice(&random[..ERASURE_KEY_BYTES]);
                    let key = ErasureKey(secret);
                    tx.put_erasure_key(tenant, &key);
                    key
                }
            };
            for (address, stone) in &stones {
                let hash = key.hash(address);
                let kept = match tx.tombstone(tenant, &hash).await? {
                    Some(old) => old.union(*stone),
                    None => *stone,
                };
                tx.put_tombstone(tenant, &hash, &kept);
            }
        }
        tx.erase_profile(tenant, &profile).await?;
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(&random[ERASURE_KEY_BYTES..]);
        let erasure = Erasure {
            erased_at: now,
            id: u64::from_be_bytes(id_bytes),
            context: context.clone(),
            tombstones: u32::try_from(stones.len()).unwrap_or(u32::MAX),
            history_entries: profile.history_seq,
            subscriptions: u32::try_from(subscriptions).unwrap_or(u32::MAX),
        };
        tx.put_erasure(tenant, &erasure);
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(erasure)
    }

    /// Opts `profile` out of what the tombstones of its addresses that are
    /// not in `known` keep (see [`Tombstone::apply`]), in `tx`; returns the
    /// history entries to append before the profile is written.
    pub(super) async fn apply_tombstones(
        tx: &mut (dyn Txn + '_),
        tenant: &Tenant,
        profile: &mut Profile,
        known: &[Address],
        now: UnixMillis,
    ) -> Result<Vec<ConsentHistoryEntry>> {
        let fresh: Vec<Address> = profile
            .all_addresses()
            .filter(|a| !known.contains(a))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        // No secret: the tenant never erased anyone who had opted out.
        let Some(key) = tx.erasure_key(tenant).await? else {
            return Ok(Vec::new());
        };
        let mut kept = Tombstone::default();
        for address in &fresh {
            if let Some(stone) = tx.tombstone(tenant, &key.hash(address)).await? {
                kept = kept.union(stone);
            }
        }
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let context = ChangeContext::new(Source::Api, TOMBSTONE_ACTOR, TOMBSTONE_REASON)
            .map_err(|(field, invalid)| Error::invalid(field, invalid.0))?;
        Ok(kept.apply(profile, &context, now))
    }

    /// Everything held about one profile, for a data-subject access request.
    pub async fn export_profile_data(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
    ) -> Result<SubjectData> {
        let profile = self.profile(tenant, id).await?;
        let (store, t, pid) = (self.store.clone(), tenant.clone(), id.clone());
        let mut history = self
            .off_workers(move || async move {
                Ok(store
                    .consent_history(&t, &pid, None, EXPORT_HISTORY_ENTRIES_MAX + 1)
                    .await?)
            })
            .await?;
        let history_complete = history.len() <= EXPORT_HISTORY_ENTRIES_MAX;
        history.truncate(EXPORT_HISTORY_ENTRIES_MAX);
        let subscriptions = self.store.subscriptions(tenant, id).await?;
        let mut addresses = Vec::new();
        for address in profile.all_addresses() {
            let state = self.store.address_state(tenant, address).await?;
            let consent = self.store.address_consent(tenant, address).await?;
            addresses.push((address.clone(), state, consent));
        }
        // What it reports is durable.
        self.settle(self.store.position()).await?;
        Ok(SubjectData {
            exported_at: self.now(),
            profile,
            history,
            history_complete,
            subscriptions,
            addresses,
        })
    }
}
