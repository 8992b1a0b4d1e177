//! Eligibility: may a delivery contact these profiles on this channel, now?
//!
//! Every decision reads the decision index only (never the store), which
//! holds only durable state. A batch is split into parts decided on the
//! blocking pool side by side; each part hands its decisions, as they are
//! made, to a [`DecisionSink`] of the caller's (the gRPC edge encodes them
//! straight into the response), so no decision is built as a value.

use std::sync::Arc;

use super::App;
use crate::{
    engine::{Address, Channel, Decision, ProfileId, Reasons, ServiceId, Summary, Tenant},
    error::{Error, Result},
    index::{Delivery, Lookup, Verdict, empty_lookup},
};

/// A batch is split into parts of at least this many ids, one per core.
pub const BATCH_PART_MIN: usize = 1024;
/// Decisions made under one hold of a tenant's read lock: a change to the
/// tenant waits at most this long.
const DECISIONS_PER_LOCK: usize = 1024;

/// The profile ids of a batch, however the caller holds them.
pub trait Ids: Send + Sync + 'static {
    /// How many.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `i`-th id.
    fn id(&self, i: usize) -> &str;
}

impl Ids for Vec<ProfileId> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn id(&self, i: usize) -> &str {
        self[i].as_str()
    }
}

/// Where a part's decisions go, in order.
pub trait DecisionSink: Send + 'static {
    /// One decision.
    fn decided(&mut self, id: &str, verdict: &Verdict<'_>);
}

/// The result of a batch: each part's sink in order, and the counts.
#[derive(Debug)]
pub struct Decided<S> {
    /// The parts' sinks, in the order of the ids.
    pub parts: Vec<S>,
    /// The counts of every decision.
    pub summary: Summary,
}

/// Decides ids `range` into `sink`, taking the tenant's read lock for
/// stretches of [`DECISIONS_PER_LOCK`].
fn decide_part<S: DecisionSink>(
    index: &Option<Arc<crate::index::TenantIndex>>,
    delivery: &Delivery,
    ids: &dyn Ids,
    range: std::ops::Range<usize>,
    sink: &mut S,
) -> Summary {
    let mut summary = Summary::default();
    let mut i = range.start;
    while i < range.end {
        let stretch = i..(i + DECISIONS_PER_LOCK).min(range.end);
        let lookup: Lookup<'_> = match index {
            Some(index) => index.lookup(delivery),
            None => empty_lookup(delivery),
        };
        lookup.decide_each(
            stretch.len(),
            |k| ids.id(stretch.start + k),
            |id, verdict| {
                summary.count(verdict.reasons.primary());
                sink.decided(id, verdict);
            },
        );
        i = stretch.end;
    }
    summary
}

impl App {
    /// What a delivery on `channel`, or of `service`, checks: the channel
    /// (the service's when one is given), the tenant's regime for it, and the
    /// service. A channel that differs from the service's is invalid.
    pub async fn delivery(
        &self,
        tenant: &Tenant,
        channel: Option<Channel>,
        service: Option<&ServiceId>,
    ) -> Result<Delivery> {
        self.ready_to_decide().await?;
        let service = service
            .map(|id| {
                self.index
                    .service(tenant, id)
                    .ok_or_else(|| Error::ServiceNotFound(id.as_str().to_owned()))
            })
            .transpose()?;
        let channel = match (channel, &service) {
            (Some(channel), Some(service)) if channel != service.channel => {
                return Err(Error::invalid(
                    "channel",
                    format!(
                        "service '{}' is delivered on {}; leave channel unspecified or give that one",
                        service.id.as_str(),
                        service.channel.api_name()
                    ),
                ));
            }
            (_, Some(service)) => service.channel,
            (Some(channel), None) => channel,
            (None, None) => {
                return Err(Error::invalid(
                    "channel",
                    format!(
                        "is required unless service_id is given: one of {}",
                        Channel::api_names()
                    ),
                ));
            }
        };
        let regime = self.index.tenant_settings(tenant).regime(channel);
        Ok(Delivery {
            channel,
            regime,
            service: service.map(|s| s.id),
        })
    }

    /// Decides for every id, in order, into one sink per part (made by
    /// `sink`, given the part's length). A large batch is split across the
    /// cores: its first part is decided here, the others on the blocking
    /// pool at the same time; a small one is decided here. A part takes a
    /// few milliseconds at most (5,000 decisions), so the worker is not held long.
    pub async fn decide_many<S: DecisionSink>(
        &self,
        tenant: &Tenant,
        ids: Arc<dyn Ids>,
        delivery: &Delivery,
        sink: impl Fn(usize) -> S,
    ) -> Result<Decided<S>> {
        self.ready_to_decide().await?;
        let index = self.index.tenant_index(tenant);
        let len = ids.len();
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let part_len = len.div_ceil(workers).max(BATCH_PART_MIN);
        let decided = if len <= part_len {
            let mut part = sink(len);
            let summary = decide_part(&index, delivery, ids.as_ref(), 0..len, &mut part);
            Decided {
                parts: vec![part],
                summary,
            }
        } else {
            // Every part but the first starts now on the blocking pool; the
            // first is decided here meanwhile (one thread hand-off fewer);
            // they are collected in order.
            let running: Vec<_> = (part_len..len)
                .step_by(part_len)
                .map(|start| {
                    let range = start..(start + part_len).min(len);
                    let mut part = sink(range.len());
                    let (index, ids, delivery) =
                        (index.clone(), Arc::clone(&ids), delivery.clone());
                    let span = tracing::Span::current();
                    tokio::task::spawn_blocking(move || {
                        let _entered = span.enter();
                        let summary =
                            decide_part(&index, &delivery, ids.as_ref(), range, &mut part);
                        (part, summary)
                    })
                })
                .collect();
            let mut first = sink(part_len);
            let summary = decide_part(&index, delivery, ids.as_ref(), 0..part_len, &mut first);
            let mut decided = Decided {
                parts: Vec::with_capacity(running.len() + 1),
                summary,
            };
            decided.parts.push(first);
            for part in running {
                let (part, summary) = part
                    .await
                    .map_err(|join| Error::Unavailable(format!("worker failed: {join}")))?;
                decided.parts.push(part);
                decided.summary.merge(&summary);
            }
            decided
        };
        self.metrics.decisions(delivery.channel, &decided.summary);
        Ok(decided)
    }

    /// Decides for one profile.
    pub async fn check_one(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        delivery: &Delivery,
    ) -> Result<Decision> {
        self.ready_to_decide().await?;
        let index = self.index.tenant_index(tenant);
        let lookup = match &index {
            Some(index) => index.lookup(delivery),
            None => empty_lookup(delivery),
        };
        let verdict = lookup.decide(id.as_str());
        let decision = Decision {
            reasons: verdict.reasons.iter().collect(),
            addresses: verdict.addresses().map(str::to_owned).collect(),
        };
        drop(lookup);
        self.metrics.decision(delivery.channel, &decision);
        Ok(decision)
    }

    /// Decides for addresses without profiles on the delivery's channel:
    /// from each address's status and opt-outs in the index, under the
    /// same rule as profiles ([`crate::engine::judge`]). Returns the
    /// reasons of each, in order, and the summary.
    pub async fn check_addresses(
        &self,
        tenant: &Tenant,
        addresses: &[Address],
        delivery: &Delivery,
    ) -> Result<(Vec<Reasons>, Summary)> {
        self.ready_to_decide().await?;
        let index = self.index.tenant_index(tenant);
        let mut reasons = Vec::with_capacity(addresses.len());
        let mut summary = Summary::default();
        for stretch in addresses.chunks(DECISIONS_PER_LOCK) {
            let lookup = match &index {
                Some(index) => index.lookup(delivery),
                None => empty_lookup(delivery),
            };
            for address in stretch {
                let decided = lookup.decide_address(address);
                summary.count(decided.primary());
                reasons.push(decided);
            }
        }
        Ok((reasons, summary))
    }
}
