//! Services and subscriptions, with double opt-in tokens.
//!
//! A subscription change writes, in one batch: the subscription record, the
//! service's subscriber index entry, the profile record (its history
//! sequence) and the history entry, and the token record when a token is
//! issued or used. Every such write holds the profile's lock stripe.

use super::{Result, Store, Written, codec, corrupt, keys};
use crate::engine::{
    Change, ChangeContext, Profile, ProfileId, Service, ServiceId, Subscribed, Subscription,
    SubscriptionChange, SubscriptionStatus, Tenant, Token, TokenHash, TokenRefusal, UnixMillis,
};
use codec::{CodecError, TokenRecord};

/// A page of a service's subscribers and the cursor after it.
pub type SubscriberPage = (Vec<(ProfileId, SubscriptionStatus)>, Option<Vec<u8>>);

/// Most services one tenant may create.
pub const SERVICES_PER_TENANT_MAX: usize = 1000;

/// The outcome of creating a service.
#[derive(Debug)]
pub enum Created {
    /// It was created.
    Created(Service),
    /// A service with this id exists already (it is returned, unchanged).
    Exists(Service),
    /// The tenant has [`SERVICES_PER_TENANT_MAX`] services already.
    TooMany,
}

/// Why a confirmation token confirmed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmRefusal {
    /// No such token (in this tenant).
    Unknown,
    /// The token exists but cannot be used.
    Refused(TokenRefusal),
}

/// What a confirmation confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// Whose subscription.
    pub profile_id: ProfileId,
    /// The subscription, now ACTIVE.
    pub subscription: Subscription,
}

impl Store {
    /// A service, or `None`.
    pub fn service(&self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>> {
        let key = keys::service(tenant, id);
        self.db
            .get(&key)?
            .map(|bytes| codec::decode_service(id.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    /// Creates a service unless one with its id exists.
    pub fn create_service(&self, tenant: &Tenant, service: Service) -> Result<Created> {
        let key = keys::service(tenant, &service.id);
        // One stripe for every service of the tenant: the count check and the
        // insert must not interleave with another creation.
        let prefix = keys::services_prefix(tenant);
        let _guard = self.lock(&[&prefix])?;
        if let Some(existing) = self.service(tenant, &service.id)? {
            return Ok(Created::Exists(existing));
        }
        if self.db.scan_prefix(&prefix).keys().count() >= SERVICES_PER_TENANT_MAX {
            return Ok(Created::TooMany);
        }
        let mut batch = sled::Batch::default();
        batch.insert(key, codec::encode_service(&service));
        self.apply(batch)?;
        Ok(Created::Created(service))
    }

    /// A page of a tenant's services, by id.
    pub fn services(
        &self,
        tenant: &Tenant,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Service>, Option<Vec<u8>>)> {
        let prefix = keys::services_prefix(tenant);
        let (entries, next) = self.scan_page(&prefix, after, limit)?;
        let items = entries
            .into_iter()
            .map(|(key, value)| {
                let id = utf8_tail(&key, prefix.len())?;
                codec::decode_service(ServiceId::from_trusted(id), &value).map_err(corrupt(&key))
            })
            .collect::<Result<_>>()?;
        Ok((items, next))
    }

    /// A profile's subscription to a service, or `None`. One point read.
    pub fn subscription(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
    ) -> Result<Option<Subscription>> {
        let key = keys::subscription(tenant, profile, service);
        self.db
            .get(&key)?
            .map(|bytes| codec::decode_subscription(service.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    /// Every subscription of a profile (at most one per service), by service id.
    pub fn subscriptions(&self, tenant: &Tenant, profile: &ProfileId) -> Result<Vec<Subscription>> {
        let prefix = keys::subscriptions_prefix(tenant, profile);
        self.db
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item?;
                let id = utf8_tail(&key, prefix.len())?;
                codec::decode_subscription(ServiceId::from_trusted(id), &value)
                    .map_err(corrupt(&key))
            })
            .collect()
    }

    /// A page of a service's subscribers with their status, by profile id.
    pub fn subscribers(
        &self,
        tenant: &Tenant,
        service: &ServiceId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<SubscriberPage> {
        let prefix = keys::subscribers_prefix(tenant, service);
        let (entries, next) = self.scan_page(&prefix, after, limit)?;
        let items = entries
            .into_iter()
            .map(|(key, value)| {
                let id = utf8_tail(&key, prefix.len())?;
                let status = codec::decode_subscription_status(&value).map_err(corrupt(&key))?;
                Ok((ProfileId::from_trusted(id), status))
            })
            .collect::<Result<_>>()?;
        Ok((items, next))
    }

    /// Subscribes a profile to a service (see [`crate::engine::subscribe`]).
    /// `None` when the profile does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &self,
        tenant: &Tenant,
        profile_id: &ProfileId,
        service: &Service,
        context: &ChangeContext,
        now: UnixMillis,
        token_ttl_ms: i64,
        token: impl FnOnce() -> Token,
    ) -> Result<Option<Written<Subscribed>>> {
        let profile_key = keys::profile(tenant, profile_id);
        let _guard = self.lock(&[&profile_key])?;
        let Some(mut profile) = self.profile(tenant, profile_id)? else {
            return Ok(None);
        };
        let current = self.subscription(tenant, profile_id, &service.id)?;
        let subscribed =
            crate::engine::subscribe(current.as_ref(), service, now, token_ttl_ms, token);
        let mut batch = sled::Batch::default();
        let changed = subscribed.change.is_some() || subscribed.token.is_some();
        if let Some(change) = &subscribed.change {
            let change = SubscriptionChange::clone(change);
            let history = History {
                tenant,
                profile_id,
                context,
                now,
            };
            history.record(&mut batch, &mut profile, service, change);
        }
        if let Some(sent) = &subscribed.token {
            let record = TokenRecord {
                profile_id: profile_id.clone(),
                service_id: service.id.clone(),
                used_at: None,
            };
            batch.insert(
                keys::token(tenant, &sent.hash()),
                codec::encode_token(&record),
            );
        }
        if changed {
            put_subscription(&mut batch, tenant, profile_id, &subscribed.subscription);
            self.apply(batch)?;
        }
        Ok(Some(Written {
            value: subscribed,
            changed,
        }))
    }

    /// Confirms the pending subscription that the token with hash `hash`
    /// was sent for. A refused token changes nothing.
    pub fn confirm_subscription(
        &self,
        tenant: &Tenant,
        hash: &TokenHash,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> Result<Result<Written<Confirmed>, ConfirmRefusal>> {
        let token_key = keys::token(tenant, hash);
        let Some(record) = self.token_record(&token_key)? else {
            return Ok(Err(ConfirmRefusal::Unknown));
        };
        let profile_key = keys::profile(tenant, &record.profile_id);
        let _guard = self.lock(&[&profile_key, &token_key])?;
        // Read again under the lock: a concurrent confirmation may have used it.
        let Some(record) = self.token_record(&token_key)? else {
            return Ok(Err(ConfirmRefusal::Unknown));
        };
        let (profile_id, service_id) = (&record.profile_id, &record.service_id);
        let current = self.subscription(tenant, profile_id, service_id)?;
        let (subscription, change) =
            match crate::engine::confirm(current.as_ref(), hash, record.used_at, now) {
                Ok(confirmed) => confirmed,
                Err(refusal) => return Ok(Err(ConfirmRefusal::Refused(refusal))),
            };
        let (Some(mut profile), Some(service)) = (
            self.profile(tenant, profile_id)?,
            self.service(tenant, service_id)?,
        ) else {
            // The subscription exists, so its profile and service do: a
            // missing one is damage, not a user error.
            return Err(corrupt(&token_key)(CodecError::Truncated));
        };
        let mut batch = sled::Batch::default();
        let history = History {
            tenant,
            profile_id,
            context,
            now,
        };
        history.record(&mut batch, &mut profile, &service, change);
        put_subscription(&mut batch, tenant, profile_id, &subscription);
        let used = TokenRecord {
            used_at: Some(now),
            ..record.clone()
        };
        batch.insert(token_key, codec::encode_token(&used));
        self.apply(batch)?;
        Ok(Ok(Written {
            value: Confirmed {
                profile_id: record.profile_id,
                subscription,
            },
            changed: true,
        }))
    }

    /// Unsubscribes a profile from a service; `None` when the profile does
    /// not exist. The value is the subscription afterwards (`None`: never subscribed).
    pub fn unsubscribe(
        &self,
        tenant: &Tenant,
        profile_id: &ProfileId,
        service: &Service,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> Result<Option<Written<Option<Subscription>>>> {
        let profile_key = keys::profile(tenant, profile_id);
        let _guard = self.lock(&[&profile_key])?;
        let Some(mut profile) = self.profile(tenant, profile_id)? else {
            return Ok(None);
        };
        let current = self.subscription(tenant, profile_id, &service.id)?;
        let Some((subscription, change)) = crate::engine::unsubscribe(current.as_ref(), now) else {
            return Ok(Some(Written {
                value: current,
                changed: false,
            }));
        };
        let mut batch = sled::Batch::default();
        let history = History {
            tenant,
            profile_id,
            context,
            now,
        };
        history.record(&mut batch, &mut profile, service, change);
        put_subscription(&mut batch, tenant, profile_id, &subscription);
        self.apply(batch)?;
        Ok(Some(Written {
            value: Some(subscription),
            changed: true,
        }))
    }

    fn token_record(&self, key: &[u8]) -> Result<Option<TokenRecord>> {
        self.db
            .get(key)?
            .map(|bytes| codec::decode_token(&bytes).map_err(corrupt(key)))
            .transpose()
    }
}

/// Where a subscription change goes in a profile's history.
struct History<'a> {
    tenant: &'a Tenant,
    profile_id: &'a ProfileId,
    context: &'a ChangeContext,
    now: UnixMillis,
}

impl History<'_> {
    /// Numbers the change as the profile's next history entry and adds the
    /// entry and the profile record (its new sequence) to `batch`.
    fn record(
        &self,
        batch: &mut sled::Batch,
        profile: &mut Profile,
        service: &Service,
        change: SubscriptionChange,
    ) {
        let entry = profile.record(
            Change::Subscription {
                service_id: service.id.clone(),
                channel: service.channel,
                change,
            },
            self.context,
            self.now,
        );
        batch.insert(
            keys::profile(self.tenant, self.profile_id),
            codec::encode_profile(profile),
        );
        batch.insert(
            keys::consent_log(self.tenant, self.profile_id, entry.sequence),
            codec::encode_consent_entry(&entry),
        );
    }
}

/// Writes a subscription and its subscriber index entry.
fn put_subscription(
    batch: &mut sled::Batch,
    tenant: &Tenant,
    profile_id: &ProfileId,
    subscription: &Subscription,
) {
    batch.insert(
        keys::subscription(tenant, profile_id, &subscription.service_id),
        codec::encode_subscription(subscription),
    );
    batch.insert(
        keys::subscriber(tenant, &subscription.service_id, profile_id),
        vec![codec::subscription_status_byte(subscription.status)],
    );
}

/// The UTF-8 text of a key after `start`.
fn utf8_tail(key: &[u8], start: usize) -> Result<String> {
    let tail = key.get(start..).unwrap_or_default();
    std::str::from_utf8(tail)
        .map(str::to_owned)
        .map_err(|_| corrupt(key)(CodecError::Utf8))
}
