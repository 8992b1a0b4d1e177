//! Services and subscriptions, with double opt-in tokens.
//!
//! A subscription change writes, in one commit under the profile's lock:
//! the subscription, the history entry and the profile record that counts
//! it, and the token records it issues, uses or retires.
//!
//! Token retention ([`TokenRecord`]): a token superseded by a new one, or
//! whose pending subscription ends, is deleted with that change; a used or
//! unused token's record goes when the token expires (the retention sweep).

use super::{App, Page, Written};
use crate::{
    engine::{
        Change, ChangeContext, Channel, Profile, ProfileId, Service, ServiceId, Subscribed,
        Subscription, SubscriptionChange, SubscriptionStatus, Tenant, Token, TokenHash,
        TokenRecord, TokenRefusal, UnixMillis,
    },
    error::{Error, Result, TokenProblem},
    store::{Cursor, Lock, StoreError, Txn},
};

/// Most services one tenant may create.
pub const SERVICES_PER_TENANT_MAX: usize = 1000;

/// What a confirmation confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// Whose subscription.
    pub profile_id: ProfileId,
    /// The subscription, now ACTIVE.
    pub subscription: Subscription,
}

/// Numbers a subscription change as the profile's next history entry and
/// stages the entry, the profile and the subscription.
#[allow(clippy::too_many_arguments)]
fn record(
    tx: &mut (dyn Txn + '_),
    tenant: &Tenant,
    profile: &mut Profile,
    service: &Service,
    subscription: &Subscription,
    change: Option<SubscriptionChange>,
    context: &ChangeContext,
    now: UnixMillis,
) {
    if let Some(change) = change {
        let entry = profile.record(
            Change::Subscription {
                service_id: service.id.clone(),
                channel: service.channel,
                change,
            },
            context,
            now,
        );
        tx.append_history(tenant, &profile.id, &entry);
        tx.put_profile(tenant, profile);
    }
    tx.put_subscription(tenant, &profile.id, subscription);
}

/// Deletes the record of the token a subscription was waiting for, if any:
/// the change at hand supersedes it.
fn retire_pending(tx: &mut (dyn Txn + '_), tenant: &Tenant, current: Option<&Subscription>) {
    if let Some(pending) = current.and_then(|s| s.pending) {
        tx.delete_token(tenant, &pending.token_hash);
    }
}

/// Ends `profile`'s subscription to `service` in `tx`, staging the
/// subscription, its history entry and the retirement of a pending token.
/// The subscription after, and whether it changed (an ended or absent
/// subscription stays as it is).
pub(super) async fn unsubscribe_in(
    tx: &mut (dyn Txn + '_),
    tenant: &Tenant,
    profile: &mut Profile,
    service: &Service,
    context: &ChangeContext,
    now: UnixMillis,
) -> Result<Written<Option<Subscription>>> {
    let current = tx.subscription(tenant, &profile.id, &service.id).await?;
    Ok(match crate::engine::unsubscribe(current.as_ref(), now) {
        None => Written {
            value: current,
            changed: false,
        },
        Some((subscription, change)) => {
            retire_pending(tx, tenant, current.as_ref());
            record(
                tx,
                tenant,
                profile,
                service,
                &subscription,
                Some(change),
                context,
                now,
            );
            Written {
                value: Some(subscription),
                changed: true,
            }
        }
    })
}

/// Subscribes `profile` to `service` in `tx` when the service needs no
/// confirmation (no double opt-in), staging the subscription and its
/// history entry. Whether it changed: false for a service with double
/// opt-in (never subscribed this way) or a subscription already active.
pub(super) async fn subscribe_without_confirmation_in(
    tx: &mut (dyn Txn + '_),
    tenant: &Tenant,
    profile: &mut Profile,
    service: &Service,
    context: &ChangeContext,
    now: UnixMillis,
) -> Result<bool> {
    if service.double_opt_in {
        return Ok(false);
    }
    let current = tx.subscription(tenant, &profile.id, &service.id).await?;
    // Without double opt-in no token is made: the closure is never called.
    let subscribed = crate::engine::subscribe(current.as_ref(), service, now, 0, || {
        Token::from_random([0; crate::engine::TOKEN_BYTES])
    });
    let Some(change) = subscribed.change else {
        return Ok(false);
    };
    record(
        tx,
        tenant,
        profile,
        service,
        &subscribed.subscription,
        Some(change),
        context,
        now,
    );
    Ok(true)
}

impl App {
    /// Creates a service. Durable when it returns; a service that exists
    /// already, or a tenant that has the most services, is reported once
    /// that state is durable.
    pub async fn create_service(
        &self,
        tenant: &Tenant,
        id: ServiceId,
        name: String,
        channel: Channel,
        double_opt_in: bool,
        context: &ChangeContext,
    ) -> Result<Service> {
        let service = Service {
            id,
            name,
            channel,
            double_opt_in,
            created_at: self.now(),
        };
        let mut tx = self.begin(vec![Lock::Services(tenant.clone())]).await?;
        if let Some(existing) = tx.service(tenant, &service.id).await? {
            drop(tx);
            self.sync().await?;
            return Err(Error::ServiceExists(existing.id.as_str().to_owned()));
        }
        if tx.service_count(tenant).await? >= SERVICES_PER_TENANT_MAX {
            // Reports state too: answered once the services it counts are durable.
            drop(tx);
            self.sync().await?;
            return Err(Error::TooManyServices(SERVICES_PER_TENANT_MAX));
        }
        tx.put_service(tenant, &service);
        let position = tx.commit().await?;
        tracing::info!(
            service_id = service.id.as_str(),
            principal = ?context.principal,
            actor = ?context.actor,
            "service created"
        );
        self.settle(position).await?;
        Ok(service)
    }

    /// A service, or `ServiceNotFound`.
    pub async fn service(&self, tenant: &Tenant, id: &ServiceId) -> Result<Service> {
        self.store
            .service(tenant, id)
            .await?
            .ok_or_else(|| Error::ServiceNotFound(id.as_str().to_owned()))
    }

    /// A page of a tenant's services.
    pub async fn services(
        &self,
        tenant: &Tenant,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<Service, Vec<u8>>> {
        let after = after.map(Cursor);
        let page = self.store.services(tenant, after.as_ref(), limit).await?;
        Ok(Page {
            items: page.items,
            next: page.next.map(|c| c.0),
        })
    }

    /// Subscribes a profile to a service; with double opt-in the result
    /// carries the token to send. Durable when it returns.
    pub async fn subscribe(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
        context: &ChangeContext,
    ) -> Result<Written<Subscribed>> {
        let service = self.service(tenant, service).await?;
        let ttl_ms =
            i64::try_from(self.settings.confirmation_token_ttl.as_millis()).unwrap_or(i64::MAX);
        let mut random = [0u8; crate::engine::TOKEN_BYTES];
        getrandom::fill(&mut random)
            .map_err(|e| Error::Unavailable(format!("no randomness for a token: {e}")))?;
        let now = self.now();
        let (mut tx, mut record_of) = self.begin_on_profile(tenant, profile).await?;
        let current = tx.subscription(tenant, profile, &service.id).await?;
        let subscribed = crate::engine::subscribe(current.as_ref(), &service, now, ttl_ms, || {
            Token::from_random(random)
        });
        let changed = subscribed.change.is_some() || subscribed.token.is_some();
        if changed {
            if let Some(sent) = &subscribed.token {
                retire_pending(tx.as_mut(), tenant, current.as_ref());
                tx.put_token(
                    tenant,
                    &sent.hash(),
                    &TokenRecord {
                        profile_id: profile.clone(),
                        service_id: service.id.clone(),
                        used_at: None,
                        expires_at: now.saturating_add(ttl_ms),
                    },
                );
            }
            record(
                tx.as_mut(),
                tenant,
                &mut record_of,
                &service,
                &subscribed.subscription,
                subscribed.change.clone(),
                context,
                now,
            );
        }
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(Written {
            value: subscribed,
            changed,
        })
    }

    /// Confirms a pending subscription by its token. Durable when it
    /// returns; a refused token changes nothing (and is answered once the
    /// state it reports is durable).
    pub async fn confirm_subscription(
        &self,
        tenant: &Tenant,
        token: &TokenHash,
        context: &ChangeContext,
    ) -> Result<Confirmed> {
        let now = self.now();
        // Whose token it is, then that profile's lock with the token's.
        let owner = {
            let mut tx = self
                .begin(vec![Lock::Token(tenant.clone(), *token)])
                .await?;
            tx.token(tenant, token).await?
        };
        let Some(owner) = owner else {
            self.sync().await?;
            return Err(Error::TokenNotFound);
        };
        let mut tx = self
            .begin(vec![
                Lock::Profile(tenant.clone(), owner.profile_id.clone()),
                Lock::Token(tenant.clone(), *token),
            ])
            .await?;
        // Read again under both locks: a concurrent confirmation may have used it.
        let issued = match tx.token(tenant, token).await? {
            Some(issued) if issued.profile_id == owner.profile_id => issued,
            _ => {
                drop(tx);
                self.sync().await?;
                return Err(Error::TokenNotFound);
            }
        };
        let current = tx
            .subscription(tenant, &issued.profile_id, &issued.service_id)
            .await?;
        let (subscription, change) =
            match crate::engine::confirm(current.as_ref(), token, issued.used_at, now) {
                Ok(confirmed) => confirmed,
                Err(refusal) => {
                    drop(tx);
                    self.sync().await?;
                    return Err(Error::TokenRefused(match refusal {
                        TokenRefusal::Used => TokenProblem::Used,
                        TokenRefusal::Expired(at) => TokenProblem::Expired(at),
                        TokenRefusal::Superseded => TokenProblem::Superseded,
                    }));
                }
            };
        let (Some(mut profile), Some(service)) = (
            tx.profile(tenant, &issued.profile_id).await?,
            tx.service(tenant, &issued.service_id).await?,
        ) else {
            // The subscription exists, so its profile and service do: a
            // missing one is damage, not a user error.
            return Err(Error::Storage(StoreError::Corrupt {
                key: format!("token of profile {}", issued.profile_id.as_str()),
                reason: "its profile or service is missing".into(),
            }));
        };
        record(
            tx.as_mut(),
            tenant,
            &mut profile,
            &service,
            &subscription,
            Some(change),
            context,
            now,
        );
        // Kept until it expires, so that a second click says "already used".
        tx.put_token(
            tenant,
            token,
            &TokenRecord {
                used_at: Some(now),
                ..issued.clone()
            },
        );
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(Confirmed {
            profile_id: issued.profile_id,
            subscription,
        })
    }

    /// Unsubscribes a profile from a service. Durable when it returns.
    pub async fn unsubscribe(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
        context: &ChangeContext,
    ) -> Result<Written<Option<Subscription>>> {
        let service = self.service(tenant, service).await?;
        let now = self.now();
        let (mut tx, mut record_of) = self.begin_on_profile(tenant, profile).await?;
        let written =
            unsubscribe_in(tx.as_mut(), tenant, &mut record_of, &service, context, now).await?;
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(written)
    }

    /// A profile's subscriptions.
    pub async fn subscriptions(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
    ) -> Result<Vec<Subscription>> {
        self.profile(tenant, profile).await?;
        Ok(self.store.subscriptions(tenant, profile).await?)
    }

    /// A page of a service's subscribers, optionally only those with `status`.
    pub async fn subscribers(
        &self,
        tenant: &Tenant,
        service: &ServiceId,
        status: Option<SubscriptionStatus>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<(ProfileId, SubscriptionStatus), Vec<u8>>> {
        self.service(tenant, service).await?;
        let (store, tenant, service) = (self.store.clone(), tenant.clone(), service.clone());
        let page = self
            .off_workers(move || async move {
                let after = after.map(Cursor);
                Ok(store
                    .subscribers(&tenant, &service, after.as_ref(), limit)
                    .await?)
            })
            .await?;
        let items = page
            .items
            .into_iter()
            .filter(|(_, s)| status.is_none_or(|wanted| wanted == *s))
            .collect();
        Ok(Page {
            items,
            next: page.next.map(|c| c.0),
        })
    }
}
