//! Product-usage tracking opt-out, per organization (tenant).
//!
//! Product administrators opt users out of usage tracking and back in; the
//! server-side check drops tracking events of opted-out users, whatever a
//! client already collected.

use super::types::{ChangeContext, UnixMillis, UserId};

/// Most events in one `FilterUsageEvents` request.
pub const USAGE_EVENTS_MAX: usize = 10_000;
/// Largest opaque payload of one usage event, in bytes.
pub const USAGE_PAYLOAD_LEN_MAX: usize = 64 * 1024;

/// A user's opt-out of usage tracking: who did it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageOptOut {
    /// The user.
    pub user_id: UserId,
    /// When the user was opted out.
    pub opted_out_at: UnixMillis,
    /// Who opted the user out, how and why.
    pub context: ChangeContext,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_limits_are_those_documented() {
        assert_eq!(USAGE_EVENTS_MAX, 10_000);
        assert_eq!(USAGE_PAYLOAD_LEN_MAX, 65_536, "64 KiB");
    }
}
