//! Per-tenant settings: the consent regime of each channel and the
//! quarantine rule parameters.
//!
//! A tenant that set nothing gets the OPT_OUT regime on every channel and the
//! server's quarantine rules (its flags). Each quarantine parameter a tenant
//! sets overrides the server's for that tenant only.

use std::time::Duration;

use super::address::Region;
use super::quarantine::QuarantineRules;
use super::types::{Channel, Invalid, UnixMillis};

/// Longest quarantine period a tenant may set (about ten years): a longer one
/// is almost certainly a unit mistake.
pub const RULE_PERIOD_MAX: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Most soft errors a tenant may require before quarantine.
pub const SOFT_ERROR_THRESHOLD_MAX: u32 = 1000;

/// Whether a channel needs an explicit opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Regime {
    /// A profile may be contacted unless it opted out (the default).
    #[default]
    OptOut,
    /// A profile may be contacted only after it opted in to the channel (SMS
    /// marketing, EU e-mail marketing).
    OptIn,
}

/// The quarantine parameters a tenant set; `None` takes the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleOverrides {
    /// Soft errors counted before an address is quarantined.
    pub soft_error_threshold: Option<u32>,
    /// At most one soft error is counted per interval.
    pub significant_error_interval: Option<Duration>,
    /// A WITH_ERRORS address returns to VALID after this.
    pub error_reset_period: Option<Duration>,
    /// The reset period after a MAILBOX_FULL error.
    pub mailbox_full_reset_period: Option<Duration>,
}

impl RuleOverrides {
    /// Checks each given parameter; returns the offending field name.
    pub fn validate(&self) -> Result<(), (&'static str, Invalid)> {
        if let Some(n) = self.soft_error_threshold
            && !(1..=SOFT_ERROR_THRESHOLD_MAX).contains(&n)
        {
            return Err((
                "soft_error_threshold",
                Invalid(format!(
                    "soft_error_threshold must be 1 to {SOFT_ERROR_THRESHOLD_MAX}, not {n}"
                )),
            ));
        }
        for (field, period) in [
            (
                "significant_error_interval",
                self.significant_error_interval,
            ),
            ("error_reset_period", self.error_reset_period),
            ("mailbox_full_reset_period", self.mailbox_full_reset_period),
        ] {
            if let Some(p) = period
                && (p.is_zero() || p > RULE_PERIOD_MAX)
            {
                return Err((
                    field,
                    Invalid(format!(
                        "{field} must be more than 0 and at most 3650 days, not {}s",
                        p.as_secs()
                    )),
                ));
            }
        }
        Ok(())
    }

    /// Sets every parameter that `update` gives.
    fn merge(&mut self, update: &RuleOverrides) {
        let RuleOverrides {
            soft_error_threshold,
            significant_error_interval,
            error_reset_period,
            mailbox_full_reset_period,
        } = *update;
        self.soft_error_threshold = soft_error_threshold.or(self.soft_error_threshold);
        self.significant_error_interval =
            significant_error_interval.or(self.significant_error_interval);
        self.error_reset_period = error_reset_period.or(self.error_reset_period);
        self.mailbox_full_reset_period =
            mailbox_full_reset_period.or(self.mailbox_full_reset_period);
    }
}

/// A tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantSettings {
    /// The regime of each channel, indexed by [`Channel::index`].
    pub regimes: [Regime; 5],
    /// The quarantine parameters the tenant set.
    pub rules: RuleOverrides,
    /// When the settings last changed; `None` if never.
    pub updated_at: Option<UnixMillis>,
    /// Where phone numbers written in national form (`06 12 34 56 78`)
    /// are read; `None`: only international numbers are accepted.
    pub default_region: Option<Region>,
}

/// A change of settings: only what is given changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SettingsUpdate {
    /// Channels whose regime is set.
    pub regimes: Vec<(Channel, Regime)>,
    /// Quarantine parameters that are set.
    pub rules: RuleOverrides,
    /// Drop every quarantine override first (back to the server's rules).
    pub reset_rules: bool,
    /// The default region to set: `Some(None)` clears it, `None` leaves it.
    pub default_region: Option<Option<Region>>,
}

impl TenantSettings {
    /// The regime of a channel.
    pub fn regime(&self, channel: Channel) -> Regime {
        self.regimes[channel.index()]
    }

    /// The quarantine rules in force: the tenant's parameters over the server's.
    pub fn rules(&self, server: &QuarantineRules) -> QuarantineRules {
        let o = &self.rules;
        QuarantineRules {
            soft_error_threshold: o
                .soft_error_threshold
                .unwrap_or(server.soft_error_threshold),
            significant_error_interval: o
                .significant_error_interval
                .unwrap_or(server.significant_error_interval),
            error_reset_period: o.error_reset_period.unwrap_or(server.error_reset_period),
            mailbox_full_reset_period: o
                .mailbox_full_reset_period
                .unwrap_or(server.mailbox_full_reset_period),
        }
    }

    /// Applies an update. Returns whether anything changed.
    pub fn apply(&mut self, update: &SettingsUpdate, now: UnixMillis) -> bool {
        let before = self.clone();
        for &(channel, regime) in &update.regimes {
            self.regimes[channel.index()] = regime;
        }
        if update.reset_rules {
            self.rules = RuleOverrides::default();
        }
        self.rules.merge(&update.rules);
        if let Some(region) = update.default_region {
            self.default_region = region;
        }
        let changed = *self != before;
        if changed {
            self.updated_at = Some(now);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn tenants_inherit_the_server_rules_parameter_by_parameter() {
        let server = QuarantineRules::default();
        let mut settings = TenantSettings::default();
        assert_eq!(settings.rules(&server), server);
        let update = SettingsUpdate {
            rules: RuleOverrides {
                soft_error_threshold: Some(2),
                ..RuleOverrides::default()
            },
            ..SettingsUpdate::default()
        };
        assert!(settings.apply(&update, 7));
        let rules = settings.rules(&server);
        assert_eq!(rules.soft_error_threshold, 2);
        assert_eq!(rules.error_reset_period, server.error_reset_period);
        assert_eq!(settings.updated_at, Some(7));
        assert!(
            !settings.apply(&update, 8),
            "the same update changes nothing"
        );
        assert_eq!(settings.updated_at, Some(7));
        let reset = SettingsUpdate {
            reset_rules: true,
            ..SettingsUpdate::default()
        };
        assert!(settings.apply(&reset, 9));
        assert_eq!(settings.rules(&server), server);
    }

    #[test]
    fn rule_parameters_are_bounded_at_both_ends() {
        assert_eq!(RULE_PERIOD_MAX, DAY * 3650);
        let threshold = |n| RuleOverrides {
            soft_error_threshold: Some(n),
            ..RuleOverrides::default()
        };
        for n in [1, 5, SOFT_ERROR_THRESHOLD_MAX] {
            assert!(threshold(n).validate().is_ok(), "{n}");
        }
        for n in [0, SOFT_ERROR_THRESHOLD_MAX + 1] {
            let (field, _) = threshold(n).validate().expect_err("out of range");
            assert_eq!(field, "soft_error_threshold", "{n}");
        }
        let ms = Duration::from_millis(1);
        for (field, with) in [
            (
                "significant_error_interval",
                (|p| RuleOverrides {
                    significant_error_interval: Some(p),
                    ..RuleOverrides::default()
                }) as fn(Duration) -> RuleOverrides,
            ),
            ("error_reset_period", |p| RuleOverrides {
                error_reset_period: Some(p),
                ..RuleOverrides::default()
            }),
            ("mailbox_full_reset_period", |p| RuleOverrides {
                mailbox_full_reset_period: Some(p),
                ..RuleOverrides::default()
            }),
        ] {
            for ok in [ms, DAY, RULE_PERIOD_MAX] {
                assert!(with(ok).validate().is_ok(), "{field} {ok:?}");
            }
            for bad in [Duration::ZERO, RULE_PERIOD_MAX + ms] {
                let (named, _) = with(bad).validate().expect_err("out of range");
                assert_eq!(named, field, "{bad:?}");
            }
        }
        assert!(RuleOverrides::default().validate().is_ok());
    }

    #[test]
    fn regimes_change_only_where_given() {
        let mut settings = TenantSettings::default();
        settings.apply(
            &SettingsUpdate {
                regimes: vec![(Channel::Sms, Regime::OptIn)],
                ..SettingsUpdate::default()
            },
            1,
        );
        assert_eq!(settings.regime(Channel::Sms), Regime::OptIn);
        assert_eq!(settings.regime(Channel::Email), Regime::OptOut);
    }

    #[test]
    fn the_default_region_is_set_cleared_or_left() {
        let fr = Region::parse("FR").ok();
        let mut settings = TenantSettings::default();
        let set = SettingsUpdate {
            default_region: Some(fr),
            ..SettingsUpdate::default()
        };
        assert!(settings.apply(&set, 1));
        assert_eq!(settings.default_region, fr);
        assert!(!settings.apply(&set, 2), "the same region changes nothing");
        assert!(!settings.apply(&SettingsUpdate::default(), 3));
        assert_eq!(settings.default_region, fr, "left as it was");
        let clear = SettingsUpdate {
            default_region: Some(None),
            ..SettingsUpdate::default()
        };
        assert!(settings.apply(&clear, 4));
        assert_eq!(
            (settings.default_region, settings.updated_at),
            (None, Some(4))
        );
    }

    #[test]
    fn overrides_are_bounded() {
        let bad = |o: RuleOverrides| o.validate().map_err(|(f, _)| f);
        assert_eq!(
            bad(RuleOverrides {
                soft_error_threshold: Some(0),
                ..RuleOverrides::default()
            }),
            Err("soft_error_threshold")
        );
        assert_eq!(
            bad(RuleOverrides {
                error_reset_period: Some(Duration::ZERO),
                ..RuleOverrides::default()
            }),
            Err("error_reset_period")
        );
        assert_eq!(
            bad(RuleOverrides {
                mailbox_full_reset_period: Some(DAY * 4000),
                ..RuleOverrides::default()
            }),
            Err("mailbox_full_reset_period")
        );
        assert_eq!(
            bad(RuleOverrides {
                significant_error_interval: Some(DAY),
                ..RuleOverrides::default()
            }),
            Ok(())
        );
    }
}
