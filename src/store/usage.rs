//! Product-usage tracking opt-outs.

use super::{Result, Store, Written, codec, corrupt, keys};
use crate::engine::{ChangeContext, Tenant, UnixMillis, UsageOptOut, UserId};

impl Store {
    /// A user's usage opt-out, if opted out. One point read.
    pub fn usage_opt_out(&self, tenant: &Tenant, user: &UserId) -> Result<Option<UsageOptOut>> {
        let key = keys::usage_opt_out(tenant, user);
        self.db
            .get(&key)?
            .map(|bytes| codec::decode_usage_opt_out(user.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    /// Whether a user is opted out of usage tracking, without decoding the record.
    pub fn is_usage_opted_out(&self, tenant: &Tenant, user: &UserId) -> Result<bool> {
        Ok(self.db.contains_key(keys::usage_opt_out(tenant, user))?)
    }

    /// Opts a user out; a user already opted out keeps the first record.
    pub fn opt_out_usage(
        &self,
        tenant: &Tenant,
        user: &UserId,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> Result<Written<UsageOptOut>> {
        let key = keys::usage_opt_out(tenant, user);
        let _guard = self.lock(&[&key])?;
        if let Some(existing) = self.usage_opt_out(tenant, user)? {
            return Ok(Written {
                value: existing,
                changed: false,
            });
        }
        let record = UsageOptOut {
            user_id: user.clone(),
            opted_out_at: now,
            context: context.clone(),
        };
        let mut batch = sled::Batch::default();
        batch.insert(key, codec::encode_usage_opt_out(&record));
        self.apply(batch)?;
        Ok(Written {
            value: record,
            changed: true,
        })
    }

    /// Opts a user back in. `changed` is false when the user was not opted out.
    pub fn opt_in_usage(&self, tenant: &Tenant, user: &UserId) -> Result<Written<()>> {
        let key = keys::usage_opt_out(tenant, user);
        let _guard = self.lock(&[&key])?;
        let changed = self.db.contains_key(&key)?;
        if changed {
            let mut batch = sled::Batch::default();
            batch.remove(key);
            self.apply(batch)?;
        }
        Ok(Written { value: (), changed })
    }

    /// A page of the opted-out users, by user id.
    pub fn usage_opt_outs(
        &self,
        tenant: &Tenant,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<UsageOptOut>, Option<Vec<u8>>)> {
        let prefix = keys::usage_opt_outs_prefix(tenant);
        let (entries, next) = self.scan_page(&prefix, after, limit)?;
        let items = entries
            .into_iter()
            .map(|(key, value)| {
                let id = std::str::from_utf8(&key[prefix.len()..])
                    .map_err(|_| corrupt(&key)(codec::CodecError::Utf8))?;
                codec::decode_usage_opt_out(UserId::from_trusted(id.to_owned()), &value)
                    .map_err(corrupt(&key))
            })
            .collect::<Result<_>>()?;
        Ok((items, next))
    }
}
