//! `consent.v1.WatchService`: the committed-change feed, streamed to a
//! client (see `app/watch.rs` for how a watch reads and waits).
//!
//! The stream's sender waits at most `--stream-idle-timeout` for the client
//! to take a message; a watch may otherwise last as long as the client
//! keeps up, and ends with an error (expired, resync) or when the client
//! goes away.

use tonic::{Request, Response, Status};

use super::{
    access::Access,
    convert::{
        Check, address_status_to_pb, address_type_to_pb, channel_to_pb, profile_to_pb,
        service_to_pb, subscription_status_to_pb, tenant_settings_to_pb, timestamp,
    },
    stream_limits::{Answers, StreamLimits, outbox},
};
use crate::{
    app::App,
    engine::{Channel, QuarantineRules},
    pb::{self, watch_change::Change as PbChange, watch_service_server::WatchService},
    store::{Change, WatchEntry},
};

/// Changes in one message at most (a larger transaction is split).
const CHANGES_PER_MESSAGE: usize = 256;
/// Messages queued ahead of the client.
const MESSAGES_BUFFERED: usize = 8;

/// Serves watches.
#[derive(Debug, Clone)]
pub(crate) struct WatchApi {
    /// The application.
    pub(crate) app: App,
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchStream = Answers<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let access = Access::of(&request, &self.app);
        let req = request.into_inner();
        let mut check = Check::default();
        let tenant = access.tenant(&mut check, &req.tenant)?;
        let (tenant,) = check.finish((tenant,))?;
        let from_now = req.start_token.is_empty();
        let start = (!from_now).then_some(req.start_token);
        let mut watch = self.app.watch(tenant, start).await?;
        let rules = self.app.settings().rules;
        let (mut answers, stream) = outbox(
            StreamLimits::idle_only(self.app.settings()),
            MESSAGES_BUFFERED,
        );
        let span = tracing::Span::current();
        let watching = async move {
            if from_now {
                let first = pb::WatchResponse {
                    changes: Vec::new(),
                    token: watch.token().to_owned(),
                };
                if answers.send(first).await.is_err() {
                    return;
                }
            }
            let mut before = watch.token().to_owned();
            loop {
                let step = match watch.next().await {
                    Ok(step) => step,
                    Err(error) => {
                        answers.end(Status::from(error));
                        return;
                    }
                };
                let messages = if step.entries.is_empty() {
                    vec![pb::WatchResponse {
                        changes: Vec::new(),
                        token: step.through.clone(),
                    }]
                } else {
                    messages(&step.entries, &before, &step.through, &rules)
                };
                for message in messages {
                    if answers.send(message).await.is_err() {
                        return;
                    }
                }
                before = step.through;
            }
        };
        tokio::spawn(tracing::Instrument::instrument(watching, span));
        Ok(Response::new(stream))
    }
}

/// The messages of a step's transactions: at most [`CHANGES_PER_MESSAGE`]
/// changes each, never a transaction split unless it is larger; a part
/// that does not end its transaction carries the token before it. The
/// last message carries `through`.
fn messages(
    entries: &[WatchEntry],
    before: &str,
    through: &str,
    rules: &QuarantineRules,
) -> Vec<pb::WatchResponse> {
    let mut out = Vec::new();
    let mut current: Vec<pb::WatchChange> = Vec::new();
    let mut token_before = before.to_owned();
    for entry in entries {
        if !current.is_empty() && current.len() + entry.changes.len() > CHANGES_PER_MESSAGE {
            out.push(pb::WatchResponse {
                changes: std::mem::take(&mut current),
                token: token_before.clone(),
            });
        }
        for change in &entry.changes {
            if current.len() == CHANGES_PER_MESSAGE {
                // Only inside a transaction larger than a message.
                out.push(pb::WatchResponse {
                    changes: std::mem::take(&mut current),
                    token: token_before.clone(),
                });
            }
            if let Some(change) = change_to_pb(change, entry.recorded_at, rules) {
                current.push(change);
            }
        }
        token_before.clone_from(&entry.token);
    }
    out.push(pb::WatchResponse {
        changes: current,
        token: through.to_owned(),
    });
    out
}

/// A change as clients see it (`None` for a [`Change::Reset`], which a read
/// turns into an error before it gets here).
fn change_to_pb(
    change: &Change,
    recorded_at: i64,
    rules: &QuarantineRules,
) -> Option<pb::WatchChange> {
    let change = match change {
        Change::Profile { profile, .. } => PbChange::Profile(profile_to_pb(profile)),
        Change::Address {
            address, status, ..
        } => PbChange::AddressStatus(pb::WatchAddressStatus {
            address: address.as_str().to_owned(),
            address_type: address_type_to_pb(address.kind()).into(),
            status: address_status_to_pb(*status).into(),
        }),
        Change::AddressConsent {
            address, opted_out, ..
        } => PbChange::AddressConsent(pb::WatchAddressConsent {
            address: address.as_str().to_owned(),
            address_type: address_type_to_pb(address.kind()).into(),
            opted_out_channels: Channel::ALL
                .iter()
                .filter(|channel| opted_out & (1 << channel.index()) != 0)
                .map(|&channel| channel_to_pb(channel).into())
                .collect(),
        }),
        Change::Subscription {
            profile_id,
            service_id,
            status,
            ..
        } => PbChange::Subscription(pb::WatchSubscription {
            profile_id: profile_id.as_str().to_owned(),
            service_id: service_id.as_str().to_owned(),
            status: subscription_status_to_pb(*status).into(),
        }),
        Change::UsageOptOut {
            user_id, opted_out, ..
        } => PbChange::UsageOptOut(pb::WatchUsageOptOut {
            user_id: user_id.as_str().to_owned(),
            opted_out: *opted_out,
        }),
        Change::TenantSettings { settings, .. } => {
            PbChange::TenantSettings(tenant_settings_to_pb(settings, rules))
        }
        Change::Service { service, .. } => PbChange::Service(service_to_pb(service)),
        Change::ProfileErased { profile_id, .. } => {
            PbChange::ProfileErased(pb::WatchProfileErased {
                profile_id: profile_id.as_str().to_owned(),
            })
        }
        Change::Reset => return None,
    };
    Some(pb::WatchChange {
        committed_at: Some(timestamp(recorded_at)),
        change: Some(change),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Tenant, UserId};

    fn entry(token: &str, changes: usize) -> WatchEntry {
        WatchEntry {
            token: token.into(),
            recorded_at: 0,
            changes: (0..changes)
                .map(|n| Change::UsageOptOut {
                    tenant: Tenant::parse("t").expect("valid"),
                    user_id: UserId::parse(&format!("u{n}")).expect("valid"),
                    opted_out: true,
                })
                .collect(),
        }
    }

    fn shape(messages: &[pb::WatchResponse]) -> Vec<(usize, &str)> {
        messages
            .iter()
            .map(|m| (m.changes.len(), m.token.as_str()))
            .collect()
    }

    #[test]
    fn transactions_share_messages_without_being_split() {
        let rules = QuarantineRules::default();
        let entries = [entry("a", 100), entry("b", 100), entry("c", 100)];
        let out = messages(&entries, "start", "end", &rules);
        assert_eq!(shape(&out), [(200, "b"), (100, "end")]);
    }

    #[test]
    fn a_large_transaction_is_split_and_its_first_parts_resume_before_it() {
        let rules = QuarantineRules::default();
        let entries = [entry("a", 10), entry("big", 600)];
        let out = messages(&entries, "start", "end", &rules);
        assert_eq!(
            shape(&out),
            [(10, "a"), (256, "a"), (256, "a"), (88, "end")],
            "the parts of `big` before its last resume after `a`"
        );
        assert_eq!(out.iter().map(|m| m.changes.len()).sum::<usize>(), 610);
    }
}
