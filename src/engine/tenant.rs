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
    /// The name the preference page shows for the tenant (empty: none).
    pub display_name: String,
    /// The `https://` address of the tenant's privacy policy, linked from the
    /// preference page (empty: none).
    pub privacy_policy_url: String,
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
    /// The display name to set (`Some("")` clears it), checked by [`parse_display_name`].
    pub display_name: Option<String>,
    /// The privacy-policy address to set (`Some("")` clears it), checked by
    /// [`parse_privacy_policy_url`].
    pub privacy_policy_url: Option<String>,
}

/// Longest tenant display name, in bytes.
pub const DISPLAY_NAME_LEN_MAX: usize = 128;
/// Longest privacy-policy address, in bytes.
pub const PRIVACY_POLICY_URL_LEN_MAX: usize = 512;

/// A display name: trimmed, at most [`DISPLAY_NAME_LEN_MAX`] bytes, no
/// control characters; empty clears it.
pub fn parse_display_name(raw: &str) -> Result<String, Invalid> {
    let trimmed = raw.trim();
    if trimmed.len() > DISPLAY_NAME_LEN_MAX {
        return Err(Invalid(format!(
            "display_name must be at most {DISPLAY_NAME_LEN_MAX} bytes long, not {}",
            trimmed.len()
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Invalid(
            "display_name may not contain control characters".to_owned(),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A privacy-policy address: `https://` and a host, at most
/// [`PRIVACY_POLICY_URL_LEN_MAX`] bytes of printable ASCII without spaces,
/// quotes or angle brackets (it is put in a page's link); empty clears it.
pub fn parse_privacy_policy_url(raw: &str) -> Result<String, Invalid> {
    let url = raw.trim();
    if url.is_empty() {
        return Ok(String::new());
    }
    if url.len() > PRIVACY_POLICY_URL_LEN_MAX {
        return Err(Invalid(format!(
            "privacy_policy_url must be at most {PRIVACY_POLICY_URL_LEN_MAX} bytes long, not {}",
            url.len()
        )));
    }
    let host = url.strip_prefix("https://").unwrap_or_default();
    let host_end = host.find(['/', '?', '#']).unwrap_or(host.len());
    if host[..host_end].is_empty()
        || !url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`'))
    {
        return Err(Invalid(format!(
            "privacy_policy_url must be an https:// address of printable ASCII without quotes or angle brackets, not {url:?}"
        )));
    }
    Ok(url.to_owned())
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
        if let Some(name) = &update.display_name {
            self.display_name.clone_from(name);
        }
        if let Some(url) = &update.privacy_policy_url {
            self.privacy_policy_url.clone_from(url);
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
    fn the_page_branding_is_set_cleared_or_left() {
        let mut settings = TenantSettings::default();
        let set = SettingsUpdate {
            display_name: Some("Acme".to_owned()),
            privacy_policy_url: Some("https://acme.example/privacy".to_owned()),
            ..SettingsUpdate::default()
        };
        assert!(settings.apply(&set, 1));
        assert_eq!(settings.display_name, "Acme");
        assert_eq!(settings.privacy_policy_url, "https://acme.example/privacy");
        assert!(!settings.apply(&set, 2), "the same values change nothing");
        assert!(!settings.apply(&SettingsUpdate::default(), 3));
        let clear_name = SettingsUpdate {
            display_name: Some(String::new()),
            ..SettingsUpdate::default()
        };
        assert!(settings.apply(&clear_name, 4));
        assert_eq!(settings.display_name, "");
        assert_eq!(settings.privacy_policy_url, "https://acme.example/privacy");
    }

    #[test]
    fn display_names_and_privacy_addresses_are_checked() {
        assert_eq!(parse_display_name("  Acme AB "), Ok("Acme AB".to_owned()));
        assert_eq!(parse_display_name(""), Ok(String::new()));
        let longest = "é".repeat(DISPLAY_NAME_LEN_MAX / 2);
        assert_eq!(parse_display_name(&longest), Ok(longest.clone()));
        assert!(parse_display_name(&format!("{longest}a")).is_err());
        assert!(parse_display_name("Acme\nAB").is_err());

        for ok in [
            "https://acme.example/privacy",
            "https://acme.example",
            "https://acme.example/p?lang=sv#top",
        ] {
            assert_eq!(parse_privacy_policy_url(ok), Ok(ok.to_owned()), "{ok}");
        }
        assert_eq!(parse_privacy_policy_url(" "), Ok(String::new()));
        for bad in [
            "http://acme.example/privacy",
            "javascript:alert(1)",
            "https://",
            "https:///path",
            "https://acme.example/a b",
            "https://acme.example/\"x",
            "https://acme.example/<x>",
            "//acme.example/privacy",
        ] {
            assert!(parse_privacy_policy_url(bad).is_err(), "{bad}");
        }
        let path = "a".repeat(PRIVACY_POLICY_URL_LEN_MAX - "https://h/".len());
        assert!(parse_privacy_policy_url(&format!("https://h/{path}")).is_ok());
        assert!(parse_privacy_policy_url(&format!("https://h/{path}a")).is_err());
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
