//! Product-usage tracking opt-outs.

use std::collections::HashMap;

use super::{App, Page, Written};
use crate::{
    engine::{ChangeContext, Tenant, UsageOptOut, UserId},
    error::Result,
    store::{Cursor, Lock},
};

impl App {
    /// Opts a user out of usage tracking; a user already opted out keeps
    /// the first record. Durable when it returns.
    pub async fn opt_out_usage(
        &self,
        tenant: &Tenant,
        user: &UserId,
        context: &ChangeContext,
    ) -> Result<Written<UsageOptOut>> {
        let now = self.now();
        let mut tx = self
            .begin(vec![Lock::UsageUser(tenant.clone(), user.clone())])
            .await?;
        let (value, changed) = match tx.usage_opt_out(tenant, user).await? {
            Some(existing) => (existing, false),
            None => {
                let record = UsageOptOut {
                    user_id: user.clone(),
                    opted_out_at: now,
                    context: context.clone(),
                };
                tx.put_usage_opt_out(tenant, &record);
                (record, true)
            }
        };
        let position = tx.commit().await?;
        self.settle(position).await?;
        Ok(Written { value, changed })
    }

    /// Opts a user back in to usage tracking. Durable when it returns.
    pub async fn opt_in_usage(
        &self,
        tenant: &Tenant,
        user: &UserId,
        context: &ChangeContext,
    ) -> Result<Written<()>> {
        let mut tx = self
            .begin(vec![Lock::UsageUser(tenant.clone(), user.clone())])
            .await?;
        let changed = tx.usage_opt_out(tenant, user).await?.is_some();
        if changed {
            tx.delete_usage_opt_out(tenant, user);
        }
        let position = tx.commit().await?;
        if changed {
            tracing::info!(
                user_id = user.as_str(),
                principal = ?context.principal,
                actor = ?context.actor,
                reason = ?context.reason,
                "user opted back in to usage tracking"
            );
        }
        self.settle(position).await?;
        Ok(Written { value: (), changed })
    }

    /// A page of the users opted out of usage tracking.
    pub async fn usage_opt_outs(
        &self,
        tenant: &Tenant,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<UsageOptOut, Vec<u8>>> {
        let (store, tenant) = (self.store.clone(), tenant.clone());
        let page = self
            .off_workers(move || async move {
                let after = after.map(Cursor);
                Ok(store.usage_opt_outs(&tenant, after.as_ref(), limit).await?)
            })
            .await?;
        Ok(Page {
            items: page.items,
            next: page.next.map(|c| c.0),
        })
    }

    /// Whether a user's usage may be tracked.
    pub async fn tracking_allowed(&self, tenant: &Tenant, user: &UserId) -> Result<bool> {
        Ok(self.store.usage_opt_out(tenant, user).await?.is_none())
    }

    /// For each user (in order), whether their usage may be tracked: one
    /// point read per distinct user, off the async workers.
    pub async fn filter_tracking(&self, tenant: &Tenant, users: Vec<UserId>) -> Result<Vec<bool>> {
        let (store, tenant) = (self.store.clone(), tenant.clone());
        self.off_workers(move || async move {
            let mut seen: HashMap<UserId, bool> = HashMap::new();
            let mut allowed = Vec::with_capacity(users.len());
            for user in users {
                let ok = match seen.get(&user) {
                    Some(ok) => *ok,
                    None => {
                        let ok = store.usage_opt_out(&tenant, &user).await?.is_none();
                        seen.insert(user, ok);
                        ok
                    }
                };
                allowed.push(ok);
            }
            Ok(allowed)
        })
        .await
    }
}
