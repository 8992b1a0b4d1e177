//! Addresses and their one canonical form: whatever spelling a client sends
//! (an internationalised domain or its `xn--` form, fullwidth letters, NFD
//! accents, a phone number in national form or with a trunk prefix), the same
//! mailbox or number parses to the same [`Address`], so that a quarantine or
//! an opt-out recorded under one spelling cannot be dodged by another.
//!
//! - **E-mail** (RFC 5321 and RFC 6531): `local@domain`. The local part is a
//!   dot-atom (atoms of letters, digits, ``!#$%&'*+-/=?^_`{|}~`` and any
//!   non-ASCII character, joined by single dots); fullwidth forms are mapped
//!   to ASCII, then the part is lower-cased and put in Unicode NFC. Quoted
//!   local parts (`"a b"@x.com`) are refused: mail systems that send
//!   marketing do not accept them. The domain is mapped with UTS #46 (the
//!   `idna` crate, with the STD3 rules and DNS lengths) and kept in its ASCII
//!   form (`xn--…`), at least two labels, the last not all digits; domain
//!   literals (`[192.0.2.1]`) are refused. Control, invisible (default
//!   ignorable), bidi-control and white-space characters are refused anywhere.
//! - **Phone** (E.164): parsed with the `phonenumber` crate (a port of
//!   Google's libphonenumber): separators, a trunk prefix after the country
//!   code (`+33 (0)6…`) and the international call prefix (`0033…`, with a
//!   region) are understood, and a national number (`06 12 34 56 78`) is
//!   read in the tenant's default region. The country code must exist and
//!   the number must be 4 to 14 digits after it; the number is **not**
//!   checked against the ranges in use, so that a new range never refuses a
//!   STOP.
//! - **Push token**: trimmed, 1 to 512 bytes, no white space or control
//!   characters; compared exactly.

use std::{fmt, str::FromStr};

use unicode_normalization::UnicodeNormalization;

use super::types::{ADDRESS_INPUT_LEN_MAX, EMAIL_LEN_MAX, Invalid, PUSH_TOKEN_LEN_MAX, check_len};

/// Longest local part of an e-mail address, in bytes (RFC 5321, 4.5.3.1.1).
const LOCAL_PART_LEN_MAX: usize = 64;
/// Fewest digits of a national (significant) phone number.
const NATIONAL_DIGITS_MIN: usize = 4;
/// Most digits of an E.164 number, country code included.
const E164_DIGITS_MAX: usize = 15;

/// The kind of a quarantinable address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressKind {
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
    /// A push token.
    PushToken,
}

/// A region (ISO 3166-1 alpha-2, such as `FR`) in which phone numbers
/// written in national form are read: a tenant's default region.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(phonenumber::country::Id);

impl Region {
    /// Parses a region code: two ASCII letters that name a region with a
    /// numbering plan (case does not matter).
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let code = raw.trim().to_ascii_uppercase();
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::new(format!(
                "'{}' is not a region code: two letters (ISO 3166-1 alpha-2), such as FR or US",
                raw.trim()
            )));
        }
        phonenumber::country::Id::from_str(&code)
            .map(Self)
            .map_err(|_| {
                Invalid::new(format!(
                    "'{code}' is not a region with a phone numbering plan"
                ))
            })
    }

    /// The two-letter code, upper-case.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid address in its canonical form (see the module documentation):
/// two spellings of one mailbox or number are one `Address`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// What kind of address this is.
    kind: AddressKind,
    /// The canonical text.
    value: String,
}

impl Address {
    /// Parses an address of a known kind, or infers the kind when `kind` is
    /// `None`: an `@` makes an e-mail address; digits with phone separators
    /// and an optional leading `+` make a phone number. Phone numbers must be
    /// international (see [`Address::parse_in`] for national ones).
    ///
    /// ```
    /// use consentd::engine::{Address, AddressKind};
    ///
    /// let email = Address::parse(None, "  Jane.Doe@Example.COM ").unwrap();
    /// assert_eq!((email.kind(), email.as_str()), (AddressKind::Email, "jane.doe@example.com"));
    ///
    /// let phone = Address::parse(None, "+33 (0)6 12-34-56-78").unwrap();
    /// assert_eq!(phone.as_str(), "+33612345678");
    ///
    /// // A push token cannot be inferred: its type must be given.
    /// assert!(Address::parse(None, "f00dcafe").is_err());
    /// ```
    pub fn parse(kind: Option<AddressKind>, raw: &str) -> Result<Self, Invalid> {
        Self::parse_in(kind, raw, None)
    }

    /// Like [`Address::parse`], with phone numbers in national form read in
    /// `region` when there is one.
    ///
    /// ```
    /// use consentd::engine::{Address, Region};
    ///
    /// let fr = Region::parse("FR").unwrap();
    /// let phone = Address::parse_in(None, "06 12 34 56 78", Some(fr)).unwrap();
    /// assert_eq!(phone.as_str(), "+33612345678");
    /// ```
    pub fn parse_in(
        kind: Option<AddressKind>,
        raw: &str,
        region: Option<Region>,
    ) -> Result<Self, Invalid> {
        if raw.len() > ADDRESS_INPUT_LEN_MAX {
            return Err(Invalid::new(format!(
                "address must be at most {ADDRESS_INPUT_LEN_MAX} bytes long, not {}",
                raw.len()
            )));
        }
        let trimmed = raw.trim();
        let kind = match kind {
            Some(kind) => kind,
            None if trimmed.is_empty() => return Err(Invalid::new("address is required")),
            None if trimmed.contains(['@', '\u{FF20}']) => AddressKind::Email,
            None if looks_like_phone(trimmed) => AddressKind::Phone,
            None => {
                return Err(Invalid::new(
                    "cannot infer the address type: set address_type, or give an e-mail \
                     address (with '@') or a phone number (digits, with a leading '+' and \
                     the country code)",
                ));
            }
        };
        match kind {
            AddressKind::Email => Self::email(raw),
            AddressKind::Phone => Self::phone_in(raw, region),
            AddressKind::PushToken => Self::push_token(raw),
        }
    }

    /// Parses an e-mail address into its canonical form (see the module
    /// documentation).
    pub fn email(raw: &str) -> Result<Self, Invalid> {
        if raw.len() > ADDRESS_INPUT_LEN_MAX {
            return Err(Invalid::new(format!(
                "e-mail address must be at most {ADDRESS_INPUT_LEN_MAX} bytes long, not {}",
                raw.len()
            )));
        }
        let shown = raw.trim();
        if shown.is_empty() {
            return Err(Invalid::new("e-mail address is required"));
        }
        refuse_hidden_characters(shown, "e-mail address")?;
        let invalid =
            |why: &str| Invalid::new(format!("'{shown}' is not a valid e-mail address: {why}"));
        let text: String = shown.chars().map(narrow).collect();
        let (local, domain) = text
            .rsplit_once('@')
            .ok_or_else(|| invalid("it has no '@'"))?;
        if local.contains('@') || local.contains('"') {
            return Err(invalid(
                "quoted local parts and a second '@' are not accepted",
            ));
        }
        let local: String = local.to_lowercase().nfc().collect();
        check_local_part(&local).map_err(|why| invalid(&why))?;
        let domain = canonical_domain(domain).map_err(|why| invalid(&why))?;
        let value = format!("{local}@{domain}");
        check_len(&value, "e-mail address", 3, EMAIL_LEN_MAX)?;
        Ok(Self {
            kind: AddressKind::Email,
            value,
        })
    }

    /// Parses a phone number in international form (a leading `+` and the
    /// country code) into E.164.
    pub fn phone(raw: &str) -> Result<Self, Invalid> {
        Self::phone_in(raw, None)
    }

    /// Parses a phone number into E.164; a number in national form is read
    /// in `region`, and refused without one.
    pub fn phone_in(raw: &str, region: Option<Region>) -> Result<Self, Invalid> {
        if raw.len() > ADDRESS_INPUT_LEN_MAX {
            return Err(Invalid::new(format!(
                "phone number must be at most {ADDRESS_INPUT_LEN_MAX} bytes long, not {}",
                raw.len()
            )));
        }
        let shown = raw.trim();
        if shown.is_empty() {
            return Err(Invalid::new("phone number is required"));
        }
        refuse_hidden_characters(shown, "phone number")?;
        let text: String = shown.chars().map(narrow).collect();
        if !looks_like_phone(&text) {
            return Err(Invalid::new(format!(
                "'{shown}' is not a phone number: digits with spaces, '.', '-', '(' or ')', \
                 and a leading '+' and country code"
            )));
        }
        let international = text.starts_with('+');
        if !international && region.is_none() {
            return Err(Invalid::new(format!(
                "'{shown}' is a phone number in national form: write it with '+' and the \
                 country code (E.164, such as +33612345678), or set the tenant's default_region"
            )));
        }
        let number = phonenumber::parse(region.map(|r| r.0), &text)
            .map_err(|e| Invalid::new(format!("'{shown}' is not a valid phone number: {e}")))?;
        // (The library refuses a country calling code that does not exist.)
        let code = number.code().value();
        if number.extension().is_some() {
            return Err(Invalid::new(format!(
                "'{shown}' has an extension: give the number alone"
            )));
        }
        let national = number.national().to_string();
        let digits = code.to_string().len() + national.len();
        if national.len() < NATIONAL_DIGITS_MIN || digits > E164_DIGITS_MAX {
            return Err(Invalid::new(format!(
                "'{shown}' is not a valid phone number: E.164 allows {NATIONAL_DIGITS_MIN} to \
                 {} digits after the country code +{code}, not {}",
                E164_DIGITS_MAX - code.to_string().len(),
                national.len()
            )));
        }
        let value = format!("+{code}{national}");
        // The canonical form must read back as itself: a number that the
        // numbering plan reads one way here and another way in E.164 (a
        // too-short number whose digits look like a trunk prefix) has no
        // one identity, and is refused.
        let again = phonenumber::parse(None, &value)
            .ok()
            .map(|n| format!("+{}{}", n.code().value(), n.national()));
        if again.as_deref() != Some(value.as_str()) {
            return Err(Invalid::new(format!(
                "'{shown}' is not a valid phone number: it does not read as one E.164 number"
            )));
        }
        Ok(Self {
            kind: AddressKind::Phone,
            value,
        })
    }

    /// Parses a push token: trimmed, 1 to 512 bytes, no white space inside.
    pub fn push_token(raw: &str) -> Result<Self, Invalid> {
        let value = raw.trim();
        check_len(value, "push token", 1, PUSH_TOKEN_LEN_MAX)?;
        if value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
        {
            return Err(Invalid::new(
                "push token may not contain white space, control or invisible characters",
            ));
        }
        Ok(Self {
            kind: AddressKind::PushToken,
            value: value.to_owned(),
        })
    }

    /// The canonical form of an address stored by an earlier version:
    /// `None` when it already is canonical or no longer parses (an address
    /// that the rules of today refuse is kept as it was stored).
    pub fn recanonicalised(&self) -> Option<Address> {
        Address::parse(Some(self.kind), &self.value)
            .ok()
            .filter(|canonical| canonical != self)
    }

    /// Rebuilds an address that was valid when it was stored. Only the store calls this.
    pub(crate) fn from_trusted(kind: AddressKind, value: String) -> Self {
        Self { kind, value }
    }

    /// The kind of address.
    pub fn kind(&self) -> AddressKind {
        self.kind
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

/// Could `text` be a phone number: digits, phone separators, and at most a
/// leading `+`?
fn looks_like_phone(text: &str) -> bool {
    let body = text.strip_prefix(['+', '\u{FF0B}']).unwrap_or(text);
    body.chars().any(|c| narrow(c).is_ascii_digit())
        && body
            .chars()
            .map(narrow)
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '.' | '-' | '(' | ')' | '/'))
}

/// Maps a fullwidth ASCII form (U+FF01 to U+FF5E) to its ASCII character,
/// as the PRECIS width mapping does (RFC 8264, 9.4).
fn narrow(c: char) -> char {
    match u32::from(c) {
        code @ 0xFF01..=0xFF5E => char::from_u32(code - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// Characters that do not show, or that reorder what is shown: Unicode's
/// default ignorable code points (zero-width spaces and joiners, soft
/// hyphen, variation selectors, tags …) and the bidi controls.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Refuses control, invisible, bidi-control and white-space characters,
/// naming the first one found.
fn refuse_hidden_characters(text: &str, what: &str) -> Result<(), Invalid> {
    let phone = what == "phone number";
    match text
        .chars()
        .find(|&c| c.is_control() || is_invisible(c) || (c.is_whitespace() && !(phone && c == ' ')))
    {
        Some(c) => Err(Invalid::new(format!(
            "{what} may not contain U+{:04X} (control, invisible, bidi-control and \
             white-space characters are refused)",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// An RFC 5321 `atext` character, or any non-ASCII one (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Checks a lower-cased, NFC local part: a dot-atom of at most 64 bytes.
fn check_local_part(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("the part before '@' is empty".into());
    }
    if local.len() > LOCAL_PART_LEN_MAX {
        return Err(format!(
            "the part before '@' is {} bytes long; at most {LOCAL_PART_LEN_MAX}",
            local.len()
        ));
    }
    if local.split('.').any(str::is_empty) {
        return Err("the part before '@' may not start or end with '.' or have '..'".into());
    }
    if let Some(c) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(format!(
            "'{c}' is not allowed before '@' (letters, digits, and !#$%&'*+-/=?^_`{{|}}~ \
             between single dots)"
        ));
    }
    Ok(())
}

/// The domain in its canonical ASCII form (UTS #46 to ASCII, STD3 rules).
fn canonical_domain(domain: &str) -> Result<String, String> {
    if domain.starts_with('[') {
        return Err("domain literals ([…]) are not accepted".into());
    }
    // One trailing dot (a fully qualified name) is the same domain.
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err("the domain after '@' is empty".into());
    }
    // The STD3 rules and DNS lengths: labels of 1 to 63 ASCII letters,
    // digits and hyphens, no hyphen first or last, 253 bytes in all (the
    // library checks them; a test pins them).
    let ascii = idna::domain_to_ascii_strict(domain)
        .map_err(|_| format!("'{domain}' is not a valid domain name (IDNA, UTS #46)"))?;
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain needs at least two labels, such as example.com".into());
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label of the domain may not be all digits".into());
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(raw: &str) -> Result<String, Invalid> {
        Address::email(raw).map(|a| a.as_str().to_owned())
    }

    fn phone(raw: &str, region: Option<&str>) -> Result<String, Invalid> {
        let region = region.map(|r| Region::parse(r).expect("region"));
        Address::phone_in(raw, region).map(|a| a.as_str().to_owned())
    }

    #[test]
    fn emails_are_normalised_and_validated() {
        assert_eq!(
            email("  Foo.Bar@Example.COM "),
            Ok("foo.bar@example.com".to_owned())
        );
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@b",
            "a@-b.com",
            "a b@c.com",
            "a@b..com",
            "a@@b.com",
        ] {
            assert!(Address::email(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn one_mailbox_has_one_spelling() {
        let canonical = "user@xn--bcher-kva.de";
        for spelling in [
            "user@bücher.de",
            "user@xn--bcher-kva.de",
            "USER@BÜCHER.DE",
            "user@bu\u{308}cher.de",
            "user@bücher.de.",
            "\u{FF55}\u{FF53}\u{FF45}\u{FF52}@bücher.de",
            "user\u{FF20}bücher\u{FF0E}de",
        ] {
            assert_eq!(email(spelling).as_deref(), Ok(canonical), "{spelling:?}");
        }
        // NFC and NFD spell the same local part.
        assert_eq!(
            email("jos\u{e9}@example.com"),
            email("jose\u{301}@example.com")
        );
        assert_eq!(
            email("jose\u{301}@example.com").as_deref(),
            Ok("jos\u{e9}@example.com")
        );
        assert_eq!(
            email("\u{FF55}\u{FF53}\u{FF45}\u{FF52}@example.com").as_deref(),
            Ok("user@example.com")
        );
    }

    #[test]
    fn hidden_characters_are_refused() {
        for bad in [
            "us\u{200B}er@example.com",
            "us\u{200D}er@example.com",
            "\u{202E}resu@example.com",
            "user\u{2066}@example.com",
            "us\u{AD}er@example.com",
            "user@exa\u{200B}mple.com",
            "us\u{7}er@example.com",
            "us\u{E0041}er@example.com",
            "user\u{FE0F}@example.com",
        ] {
            let error = email(bad).expect_err(bad);
            assert!(error.0.contains("U+"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn white_space_is_refused_except_spaces_between_phone_digits() {
        let error = email("a b@x.com").expect_err("space");
        assert!(error.0.contains("U+0020"), "{error}");
        let error = phone("+33\u{A0}612345678", None).expect_err("no-break space");
        assert!(error.0.contains("U+00A0"), "{error}");
        assert!(phone("+33 6 12 34 56 78", None).is_ok());
    }

    #[test]
    fn what_real_mail_systems_refuse_is_refused() {
        for bad in [
            ".a.@x.com",
            "a.@x.com",
            ".a@x.com",
            "a..b@x.com",
            "a,b;c@x.com",
            "a\"b@x.com",
            "\"a b\"@x.com",
            "a(b)@x.com",
            "a[b]@x.com",
            "a\\b@x.com",
            "a:b@x.com",
            "a@1.2",
            "a@x.123",
            "a@[192.0.2.1]",
            "a@localhost",
            "a@x_y.com",
            "a@-x.com",
            "a@x-.com",
            &format!("{}@x.com", "l".repeat(65)),
            &format!("a@{}.com", "d".repeat(64)),
        ] {
            assert!(email(bad).is_err(), "{bad:?} should be refused");
        }
        for good in [
            "a.b@x.com",
            "a+tag@x.com",
            "o'brien@x.ie",
            "!#$%&'*+-/=?^_`{|}~@x.com",
            "ünïcødé@x.com",
            "用户@例子.广告",
            "a@x.co.uk",
            "a@1x.com",
            &format!("{}@x.com", "l".repeat(64)),
        ] {
            assert!(
                email(good).is_ok(),
                "{good:?} should be accepted: {:?}",
                email(good)
            );
        }
        assert_eq!(
            email("用户@例子.广告").as_deref(),
            Ok("用户@xn--fsqu00a.xn--4rr70v")
        );
    }

    /// The domain's rules are UTS #46's with the STD3 rules and DNS lengths,
    /// which `idna::domain_to_ascii_strict` applies (no check of ours
    /// repeats them): these cases pin them, so that a change of the library
    /// shows.
    #[test]
    fn a_domain_has_dns_lengths_and_only_letters_digits_and_inner_hyphens() {
        let label63 = "d".repeat(63);
        assert!(email(&format!("a@{label63}.com")).is_ok(), "63-byte label");
        for bad in [
            format!("a@{label63}d.com"),
            "a@x..com".to_owned(),
            "a@x_y.com".to_owned(),
            "a@x!y.com".to_owned(),
            "a@-x.com".to_owned(),
            "a@x-.com".to_owned(),
        ] {
            let error = email(&bad).expect_err(&bad);
            assert!(
                error.0.contains("not a valid domain name"),
                "{bad:?}: {error}"
            );
        }
        // 253 bytes at most; with "a@" that is one over an e-mail address's 254.
        let domain =
            |len: usize| format!("{label63}.{label63}.{label63}.{}", "d".repeat(len - 192));
        assert_eq!(
            email(&format!("a@{}", domain(252))).map(|a| a.len()),
            Ok(254)
        );
        let error = email(&format!("a@{}", domain(253))).expect_err("255 bytes");
        assert!(
            error.0.ends_with("must be 3 to 254 bytes long, not 255"),
            "{error}"
        );
        let error = email(&format!("a@{}", domain(254))).expect_err("254-byte domain");
        assert!(error.0.contains("not a valid domain name"), "{error}");
    }

    #[test]
    fn phones_are_normalised_to_e164() {
        assert_eq!(
            phone(" +33 (1) 23-45.67.89 ", None),
            Ok("+33123456789".to_owned())
        );
        for bad in [
            "+1234567890123456",
            "+0123456789",
            "+12345abc9",
            "+999 1234 5678",
            "+33 12",
        ] {
            assert!(phone(bad, None).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn one_number_has_one_spelling() {
        let canonical = Ok("+33612345678".to_owned());
        for (spelling, region) in [
            ("+33612345678", None),
            ("+33 6 12 34 56 78", None),
            ("+33 (0)6 12 34 56 78", None),
            ("+33 (0)6.12.34.56.78", None),
            ("\u{FF0B}33 6 12 34 56 78", None),
            ("06 12 34 56 78", Some("FR")),
            ("0033 6 12 34 56 78", Some("FR")),
            ("+33 6 12 34 56 78", Some("US")),
        ] {
            assert_eq!(
                phone(spelling, region),
                canonical,
                "{spelling:?} in {region:?}"
            );
        }
        assert_eq!(
            phone("(415) 555-2671", Some("US")),
            Ok("+14155552671".to_owned())
        );
        // The bounds: 4 digits after the country code (Niue), and 15 in all.
        assert_eq!(phone("+683 4002", None), Ok("+6834002".to_owned()));
        assert_eq!(
            phone("+882 123456789012", None),
            Ok("+882123456789012".to_owned())
        );
        let long = phone("+882 1234567890123", None).expect_err("16 digits");
        assert!(long.0.contains("4 to 12 digits"), "{long}");
        let unknown = phone("+999 1234 5678", None).expect_err("no such country code");
        assert!(unknown.0.contains("country code"), "{unknown}");
        assert_eq!(
            phone("+44 (0)20 7031 3000", None),
            Ok("+442070313000".to_owned())
        );
        // Italian numbers keep their leading 0: it is not a trunk prefix there.
        assert_eq!(
            phone("+39 06 1234 5678", None),
            Ok("+390612345678".to_owned())
        );
    }

    #[test]
    fn a_national_number_needs_a_region_and_says_so() {
        let error = phone("06 12 34 56 78", None).expect_err("no region");
        assert!(
            error.0.contains("national form") && error.0.contains("default_region"),
            "{error}"
        );
        let error = phone("+33 6 12\u{200B}34 56 78", None).expect_err("hidden");
        assert!(error.0.contains("U+200B"), "{error}");
        assert!(phone("+33 6 12 34 56 78 ext. 12", None).is_err());
    }

    #[test]
    fn regions_are_iso_codes_with_a_numbering_plan() {
        assert_eq!(
            Region::parse(" fr ").map(|r| r.to_string()),
            Ok("FR".to_owned())
        );
        for bad in ["", "F", "FRA", "F1", "ZZ", "été"] {
            assert!(Region::parse(bad).is_err(), "{bad:?}");
        }
        // Debug output shows a region as its code, as clients write it.
        let fr = Region::parse("fr").expect("region");
        assert_eq!(format!("{fr:?}"), "FR");
    }

    /// Each refusal says what is wrong, so that a client can fix it: the
    /// messages are part of the rules (mutation testing showed that a check
    /// could be skipped when a later one refused the same input for another
    /// reason).
    #[test]
    fn refusals_say_what_is_wrong() {
        let why = |kind, raw: &str| Address::parse(kind, raw).expect_err(raw).0;
        assert_eq!(why(None, "   "), "address is required");
        assert!(why(None, "token-without-type").contains("cannot infer"));
        assert!(why(Some(AddressKind::Email), "a@b@x.com").contains("second '@'"));
        assert!(why(Some(AddressKind::Email), "a\"b@x.com").contains("quoted"));
        let region = |raw| Region::parse(raw).expect_err(raw).0;
        assert!(region("FRA").contains("two letters"), "{}", region("FRA"));
        assert!(region("F1").contains("two letters"));
        assert!(region("ZZ").contains("numbering plan"));
    }

    /// Inputs are bounded before any work: at most 512 bytes as given
    /// (white space included), whatever the kind.
    #[test]
    fn inputs_are_bounded_as_given() {
        let padded = |address: &str, len: usize| format!("{address:<len$}");
        for (kind, address) in [
            (None, "a@x.io"),
            (Some(AddressKind::Email), "a@x.io"),
            (Some(AddressKind::Phone), "+33612345678"),
        ] {
            let at_limit = padded(address, ADDRESS_INPUT_LEN_MAX);
            assert_eq!(at_limit.len(), ADDRESS_INPUT_LEN_MAX);
            assert!(
                Address::parse(kind, &at_limit).is_ok(),
                "{kind:?} at the limit"
            );
            let over = padded(address, ADDRESS_INPUT_LEN_MAX + 1);
            let error = Address::parse(kind, &over).expect_err("over the limit");
            assert!(error.0.contains("at most 512 bytes"), "{kind:?}: {error}");
        }
        // The e-mail parser called alone bounds its input too.
        let over = padded("a@x.io", ADDRESS_INPUT_LEN_MAX + 1);
        assert!(
            Address::email(&over)
                .expect_err("over")
                .0
                .contains("at most 512")
        );
        assert!(Address::email(&padded("a@x.io", ADDRESS_INPUT_LEN_MAX)).is_ok());
        assert!(
            Address::phone(&padded("+33612345678", ADDRESS_INPUT_LEN_MAX + 1))
                .expect_err("over")
                .0
                .contains("at most 512")
        );
    }

    #[test]
    fn address_kind_is_inferred() {
        let kind = |raw| Address::parse(None, raw).map(|a| a.kind());
        assert_eq!(kind("a@b.io"), Ok(AddressKind::Email));
        assert_eq!(kind("+4915112345678"), Ok(AddressKind::Phone));
        assert!(kind("token-without-type").is_err());
        // A national number is known to be a phone number, and the error says what is missing.
        let error = Address::parse(None, "06 12 34 56 78").expect_err("national");
        assert!(error.0.contains("default_region"), "{error}");
        assert_eq!(
            Address::parse_in(None, "06 12 34 56 78", Region::parse("FR").ok()).map(|a| a.kind()),
            Ok(AddressKind::Phone)
        );
        assert_eq!(
            Address::parse(Some(AddressKind::PushToken), "tok").map(|a| a.kind()),
            Ok(AddressKind::PushToken)
        );
        assert!(Address::push_token("has space").is_err());
        assert!(Address::push_token("has\u{200B}zwsp").is_err());
    }

    #[test]
    fn stored_spellings_are_recanonicalised() {
        let old = Address::from_trusted(AddressKind::Phone, "+330612345678".into());
        assert_eq!(
            old.recanonicalised().map(|a| a.as_str().to_owned()),
            Some("+33612345678".to_owned())
        );
        let old = Address::from_trusted(AddressKind::Email, "user@bücher.de".into());
        assert_eq!(
            old.recanonicalised().map(|a| a.as_str().to_owned()),
            Some("user@xn--bcher-kva.de".to_owned())
        );
        let fine = Address::email("user@example.com").expect("valid");
        assert_eq!(fine.recanonicalised(), None);
        let refused_today = Address::from_trusted(AddressKind::Email, "a..b@x.com".into());
        assert_eq!(refused_today.recanonicalised(), None, "kept as stored");
    }

    proptest::proptest! {
        /// Whatever parses is canonical: parsing it again changes nothing.
        #[test]
        fn canonical_forms_are_fixed_points(
            raw in proptest::prop_oneof![
                "\\PC{0,40}@\\PC{1,30}",
                "[a-zA-Z0-9._+ü\u{301}-]{1,20}@[a-zA-Z0-9ü-]{1,10}\\.[a-zA-Z]{2,5}",
                "[+]?[0-9 .()-]{4,20}",
            ],
            region in proptest::option::of(proptest::sample::select(vec!["FR", "US", "DE", "GB", "IT", "SE"])),
        ) {
            let region = region.map(|r| Region::parse(r).expect("region"));
            if let Ok(address) = Address::parse_in(None, &raw, region) {
                let again = Address::parse(Some(address.kind()), address.as_str());
                proptest::prop_assert_eq!(again, Ok(address));
            }
        }
    }
}
