//! Opt-outs of an address, per channel: how mail and SMS systems keep their
//! suppression lists, by address, whether or not a profile uses it yet. An
//! SMS "STOP" from a number opts the number out of SMS and leaves voice
//! calls to it alone; an opted-out address is not used on that channel,
//! whichever profile has it, until the address is opted back in.
//!
//! Each channel keeps its last change with who made it, how, why and its
//! proof (the same [`ChangeContext`] as a profile's consent).

use super::address::{Address, AddressKind};
use super::types::{ChangeContext, Channel, Invalid, UnixMillis};

/// The last change of one channel of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressMark {
    /// True: opted out of the channel; false: opted back in.
    pub opted_out: bool,
    /// When it changed.
    pub changed_at: UnixMillis,
    /// Who changed it, how and why, with the proof.
    pub context: ChangeContext,
}

/// An address's opt-outs, per channel (indexed by [`Channel::index`]); a
/// channel never changed has no mark. (Boxed: most channels have none.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressConsent {
    /// The mark of each channel.
    pub channels: [Option<Box<AddressMark>>; 5],
}

impl AddressConsent {
    /// Whether the address is opted out of `channel`.
    pub fn opted_out(&self, channel: Channel) -> bool {
        self.channels[channel.index()]
            .as_ref()
            .is_some_and(|mark| mark.opted_out)
    }

    /// The channels opted out of, one bit per [`Channel::index`].
    pub fn mask(&self) -> u8 {
        Channel::ALL
            .iter()
            .filter(|&&channel| self.opted_out(channel))
            .fold(0, |mask, channel| mask | 1 << channel.index())
    }

    /// Opts `address` out of `channel` (or back in). Returns whether
    /// anything changed: asking for what already holds writes nothing.
    pub fn set(
        &mut self,
        address: &Address,
        channel: Channel,
        opted_out: bool,
        at: UnixMillis,
        context: &ChangeContext,
    ) -> Result<bool, Invalid> {
        check_channel(address.kind(), channel)?;
        if self.opted_out(channel) == opted_out {
            return Ok(false);
        }
        self.channels[channel.index()] = Some(Box::new(AddressMark {
            opted_out,
            changed_at: at,
            context: context.clone(),
        }));
        Ok(true)
    }
}

/// Refuses a channel that does not use this kind of address.
pub fn check_channel(kind: AddressKind, channel: Channel) -> Result<(), Invalid> {
    if channel.address_kind() == Some(kind) {
        return Ok(());
    }
    let (what, channels) = match kind {
        AddressKind::Email => ("an e-mail address", "CHANNEL_EMAIL"),
        AddressKind::Phone => ("a phone number", "CHANNEL_SMS or CHANNEL_VOICE"),
        AddressKind::PushToken => ("a push token", "CHANNEL_PUSH"),
    };
    Err(Invalid::new(format!(
        "{what} is used on {channels} only, not on this channel"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Source;

    fn ctx() -> ChangeContext {
        ChangeContext::new(Source::Api, "sms-gateway", "STOP").expect("valid")
    }

    #[test]
    fn a_stop_on_sms_leaves_voice_alone() {
        let phone = Address::phone("+33612345678").expect("valid");
        let mut consent = AddressConsent::default();
        assert_eq!(consent.set(&phone, Channel::Sms, true, 5, &ctx()), Ok(true));
        assert!(consent.opted_out(Channel::Sms));
        assert!(!consent.opted_out(Channel::Voice));
        assert_eq!(consent.mask(), 1 << Channel::Sms.index());
        assert_eq!(
            consent.set(&phone, Channel::Sms, true, 6, &ctx()),
            Ok(false),
            "again changes nothing"
        );
        let mark = consent.channels[Channel::Sms.index()]
            .clone()
            .expect("mark");
        assert_eq!((mark.opted_out, mark.changed_at), (true, 5));
        assert_eq!(
            consent.set(&phone, Channel::Voice, true, 7, &ctx()),
            Ok(true)
        );
        assert_eq!(
            consent.mask(),
            1 << Channel::Sms.index() | 1 << Channel::Voice.index()
        );
        assert_eq!(
            consent.set(&phone, Channel::Sms, false, 8, &ctx()),
            Ok(true)
        );
        assert!(!consent.opted_out(Channel::Sms));
        assert_eq!(consent.mask(), 1 << Channel::Voice.index());
        let lifted = consent.channels[Channel::Sms.index()]
            .clone()
            .expect("kept");
        assert_eq!(
            (lifted.opted_out, lifted.changed_at),
            (false, 8),
            "the opt-in is recorded"
        );
    }

    #[test]
    fn an_opt_in_that_lifts_nothing_writes_nothing() {
        let email = Address::email("a@x.io").expect("valid");
        let mut consent = AddressConsent::default();
        assert_eq!(
            consent.set(&email, Channel::Email, false, 1, &ctx()),
            Ok(false)
        );
        assert_eq!(consent, AddressConsent::default());
    }

    #[test]
    fn only_the_channels_of_the_address_kind() {
        let email = Address::email("a@x.io").expect("valid");
        let phone = Address::phone("+33612345678").expect("valid");
        let token = Address::push_token("tok").expect("valid");
        let mut consent = AddressConsent::default();
        for (address, channel) in [
            (&email, Channel::Sms),
            (&email, Channel::DirectMail),
            (&phone, Channel::Email),
            (&phone, Channel::Push),
            (&token, Channel::Voice),
        ] {
            assert!(
                consent.set(address, channel, true, 1, &ctx()).is_err(),
                "{address:?} on {channel:?}"
            );
        }
        assert_eq!(consent, AddressConsent::default());
        for (address, channel) in [
            (&email, Channel::Email),
            (&phone, Channel::Sms),
            (&phone, Channel::Voice),
            (&token, Channel::Push),
        ] {
            assert!(check_channel(address.kind(), channel).is_ok());
        }
    }
}
