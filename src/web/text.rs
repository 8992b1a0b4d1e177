//! The page's words, in each language it speaks, and how a language is chosen.
//!
//! Adding a language: a `Text` constant here, its code in
//! `app::PAGE_LANGUAGES`, and a case in [`text`].

use crate::engine::Channel;

/// The words of one language.
#[derive(Debug)]
pub(crate) struct Text {
    /// The language code (`lang` attribute, `?lang=`).
    pub(crate) code: &'static str,
    pub(crate) title: &'static str,
    /// Followed by the tenant's display name, when it has one.
    pub(crate) intro_from: &'static str,
    pub(crate) intro: &'static str,
    pub(crate) channels: &'static str,
    pub(crate) channel_names: [&'static str; 5],
    pub(crate) opted_in: &'static str,
    pub(crate) opted_out: &'static str,
    pub(crate) no_preference_contacted: &'static str,
    pub(crate) no_preference_opt_in: &'static str,
    pub(crate) subscriptions: &'static str,
    pub(crate) subscribed: &'static str,
    pub(crate) pending: &'static str,
    pub(crate) unsubscribed: &'static str,
    pub(crate) not_subscribed: &'static str,
    pub(crate) confirm_to_subscribe: &'static str,
    pub(crate) everything: &'static str,
    pub(crate) everything_hint: &'static str,
    pub(crate) save: &'static str,
    pub(crate) proof_notice: &'static str,
    pub(crate) privacy: &'static str,
    pub(crate) saved_title: &'static str,
    pub(crate) saved: &'static str,
    pub(crate) unchanged: &'static str,
    pub(crate) back: &'static str,
    pub(crate) invalid_title: &'static str,
    pub(crate) invalid: &'static str,
    pub(crate) expired_form: &'static str,
    pub(crate) busy_title: &'static str,
    pub(crate) busy: &'static str,
    pub(crate) unavailable: &'static str,
    pub(crate) languages: &'static str,
}

impl Text {
    /// A channel's name.
    pub(crate) fn channel(&self, channel: Channel) -> &'static str {
        self.channel_names[channel.index()]
    }
}

const EN: Text = Text {
    code: "en",
    title: "Your communication preferences",
    intro_from: "Choose how you want to hear from",
    intro: "Choose how you want to hear from us.",
    channels: "Channels",
    channel_names: [
        "E-mail",
        "Text messages (SMS)",
        "Push notifications",
        "Phone calls",
        "Post",
    ],
    opted_in: "You agreed to be contacted this way.",
    opted_out: "You asked not to be contacted this way.",
    no_preference_contacted: "No choice made yet: you may be contacted this way.",
    no_preference_opt_in: "No choice made yet: you are contacted this way only if you agree.",
    subscriptions: "Subscriptions",
    subscribed: "Subscribed",
    pending: "Waiting for your confirmation",
    unsubscribed: "Unsubscribed",
    not_subscribed: "Not subscribed: tick to subscribe.",
    confirm_to_subscribe: "Not subscribed. To subscribe, sign up where you found it: you will be asked to confirm.",
    everything: "Unsubscribe from everything",
    everything_hint: "While this is ticked, you are not contacted on any channel, whatever is ticked above.",
    save: "Save my preferences",
    proof_notice: "When you save, we keep a record of your choice with the time, your IP address and your browser, as proof of what you chose.",
    privacy: "Privacy policy",
    saved_title: "Your preferences are saved",
    saved: "Thank you. Your choices are saved and take effect now.",
    unchanged: "Nothing was changed: your preferences were already as you chose.",
    back: "Back to my preferences",
    invalid_title: "This link does not work",
    invalid: "This link is not valid or has expired. To change your preferences, use the link in a recent message from us.",
    expired_form: "This form has expired. Please open your preferences again and make your choice once more.",
    busy_title: "Too many requests",
    busy: "Too many requests came from here. Please wait a minute and try again.",
    unavailable: "Your preferences cannot be changed right now. Please try again in a few minutes.",
    languages: "Language",
};

const SV: Text = Text {
    code: "sv",
    title: "Dina kommunikationsinställningar",
    intro_from: "Välj hur du vill få meddelanden från",
    intro: "Välj hur du vill få meddelanden från oss.",
    channels: "Kanaler",
    channel_names: ["E-post", "Sms", "Pushnotiser", "Telefonsamtal", "Brev"],
    opted_in: "Du har godkänt att bli kontaktad på det här sättet.",
    opted_out: "Du har bett att inte bli kontaktad på det här sättet.",
    no_preference_contacted: "Inget val gjort ännu: du kan bli kontaktad på det här sättet.",
    no_preference_opt_in: "Inget val gjort ännu: du kontaktas på det här sättet bara om du godkänner det.",
    subscriptions: "Prenumerationer",
    subscribed: "Prenumererar",
    pending: "Väntar på din bekräftelse",
    unsubscribed: "Avslutad",
    not_subscribed: "Prenumererar inte: kryssa i för att prenumerera.",
    confirm_to_subscribe: "Prenumererar inte. Anmäl dig där du hittade den, så får du bekräfta.",
    everything: "Avregistrera mig från allt",
    everything_hint: "Så länge detta är ikryssat kontaktas du inte i någon kanal, oavsett vad som är ikryssat ovan.",
    save: "Spara mina inställningar",
    proof_notice: "När du sparar behåller vi en uppgift om ditt val med tidpunkt, din IP-adress och din webbläsare, som bevis på vad du valde.",
    privacy: "Integritetspolicy",
    saved_title: "Dina inställningar är sparade",
    saved: "Tack. Dina val är sparade och gäller från och med nu.",
    unchanged: "Inget ändrades: dina inställningar var redan som du valde.",
    back: "Tillbaka till mina inställningar",
    invalid_title: "Länken fungerar inte",
    invalid: "Länken är ogiltig eller har gått ut. Använd länken i ett nyligen skickat meddelande från oss för att ändra dina inställningar.",
    expired_form: "Formuläret har gått ut. Öppna dina inställningar igen och gör ditt val en gång till.",
    busy_title: "För många förfrågningar",
    busy: "För många förfrågningar kom härifrån. Vänta en minut och försök igen.",
    unavailable: "Dina inställningar kan inte ändras just nu. Försök igen om några minuter.",
    languages: "Språk",
};

const NL: Text = Text {
    code: "nl",
    title: "Uw communicatievoorkeuren",
    intro_from: "Kies hoe u berichten wilt ontvangen van",
    intro: "Kies hoe u berichten van ons wilt ontvangen.",
    channels: "Kanalen",
    channel_names: [
        "E-mail",
        "Sms",
        "Pushmeldingen",
        "Telefoongesprekken",
        "Post",
    ],
    opted_in: "U hebt toestemming gegeven om zo benaderd te worden.",
    opted_out: "U hebt gevraagd om zo niet benaderd te worden.",
    no_preference_contacted: "Nog geen keuze gemaakt: u kunt zo benaderd worden.",
    no_preference_opt_in: "Nog geen keuze gemaakt: u wordt zo alleen benaderd als u toestemming geeft.",
    subscriptions: "Abonnementen",
    subscribed: "Geabonneerd",
    pending: "Wacht op uw bevestiging",
    unsubscribed: "Afgemeld",
    not_subscribed: "Niet geabonneerd: vink aan om u te abonneren.",
    confirm_to_subscribe: "Niet geabonneerd. Meld u aan waar u het vond; u wordt dan gevraagd te bevestigen.",
    everything: "Afmelden voor alles",
    everything_hint: "Zolang dit is aangevinkt, wordt u via geen enkel kanaal benaderd, wat hierboven ook is aangevinkt.",
    save: "Mijn voorkeuren opslaan",
    proof_notice: "Als u opslaat, bewaren we uw keuze met het tijdstip, uw IP-adres en uw browser, als bewijs van wat u koos.",
    privacy: "Privacybeleid",
    saved_title: "Uw voorkeuren zijn opgeslagen",
    saved: "Dank u. Uw keuzes zijn opgeslagen en gelden vanaf nu.",
    unchanged: "Er is niets gewijzigd: uw voorkeuren waren al zoals u koos.",
    back: "Terug naar mijn voorkeuren",
    invalid_title: "Deze link werkt niet",
    invalid: "Deze link is ongeldig of verlopen. Gebruik de link in een recent bericht van ons om uw voorkeuren te wijzigen.",
    expired_form: "Dit formulier is verlopen. Open uw voorkeuren opnieuw en maak uw keuze nog een keer.",
    busy_title: "Te veel verzoeken",
    busy: "Er kwamen te veel verzoeken van hier. Wacht een minuut en probeer het opnieuw.",
    unavailable: "Uw voorkeuren kunnen nu niet worden gewijzigd. Probeer het over een paar minuten opnieuw.",
    languages: "Taal",
};

/// The words of a language code; `None` for a language the page does not speak.
pub(crate) fn text(code: &str) -> Option<&'static Text> {
    match code {
        "en" => Some(&EN),
        "sv" => Some(&SV),
        "nl" => Some(&NL),
        _ => None,
    }
}

/// Every language, in the order the language links show them.
pub(crate) const ALL: [&Text; 3] = [&EN, &SV, &NL];

/// The language to answer in: `?lang=` when it names one the page speaks,
/// else the best of `Accept-Language` (by q-value, then order; `sv-SE`
/// matches `sv`), else English.
pub(crate) fn choose(query_lang: Option<&str>, accept_language: Option<&str>) -> &'static Text {
    if let Some(text) = query_lang.and_then(text) {
        return text;
    }
    let mut best: Option<(u16, &'static Text)> = None;
    for range in accept_language.unwrap_or_default().split(',').take(32) {
        let mut parts = range.split(';');
        let tag = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let primary = tag.split('-').next().unwrap_or_default();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .map_or(Some(1000), q_thousandths)
            .unwrap_or(0);
        if q == 0 {
            continue;
        }
        if let Some(text) = text(primary)
            && best.is_none_or(|(bq, _)| q > bq)
        {
            best = Some((q, text));
        }
    }
    best.map_or(&EN, |(_, text)| text)
}

/// A q-value (RFC 9110: `0`, `0.5`, `1.000`, at most three decimals) in
/// thousandths; `None` when it is not one.
fn q_thousandths(raw: &str) -> Option<u16> {
    let raw = raw.trim();
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_wins_then_the_best_accepted_language_then_english() {
        assert_eq!(choose(Some("nl"), Some("sv")).code, "nl");
        assert_eq!(choose(Some("de"), Some("sv-SE,sv;q=0.9")).code, "sv");
        assert_eq!(choose(None, Some("de-DE, nl;q=0.5, sv;q=0.7")).code, "sv");
        assert_eq!(choose(None, Some("nl;q=0.5, sv;q=0.5")).code, "nl");
        assert_eq!(choose(None, Some("NL-be")).code, "nl");
        assert_eq!(choose(None, Some("sv;q=0, nl;q=0.1")).code, "nl");
        assert_eq!(choose(None, Some("de, fr")).code, "en");
        assert_eq!(choose(None, Some("sv;q=abc")).code, "en");
        assert_eq!(choose(None, Some("sv;q=2")).code, "en");
        assert_eq!(choose(None, None).code, "en");
        assert_eq!(choose(Some(""), None).code, "en");
    }

    #[test]
    fn q_values_are_read_to_the_thousandth() {
        for (raw, q) in [
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.123", Some(123)),
            (" 0.05 ", Some(50)),
            ("1.5", None),
            ("2", None),
            ("0.1234", None),
            ("-0.5", None),
            ("0.x", None),
            ("", None),
        ] {
            assert_eq!(q_thousandths(raw), q, "{raw:?}");
        }
    }

    #[test]
    fn every_language_names_every_channel() {
        assert_eq!(EN.channel(Channel::Sms), "Text messages (SMS)");
        assert_eq!(SV.channel(Channel::DirectMail), "Brev");
        assert_eq!(NL.channel(Channel::Email), "E-mail");
        for text in ALL {
            assert!(text.channel_names.iter().all(|n| !n.is_empty()));
            assert_eq!(super::text(text.code).map(|t| t.code), Some(text.code));
        }
        assert_eq!(
            ALL.map(|t| t.code),
            crate::app::PAGE_LANGUAGES,
            "the app's list of languages is this module's"
        );
    }
}
