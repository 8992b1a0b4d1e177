//! Access control: API keys and their roles and tenants, the permission table
//! of every `consent.v1` RPC, key generation, and the TLS files.
//!
//! Nothing here names tonic: `api::auth_layer` reads the `authorization`
//! header, asks [`KeySet::authenticate`] who the caller is and
//! [`Caller::check_method`] whether its role may call the method, and puts the
//! [`Caller`] in the request's extensions. Handlers then call
//! [`Caller::check_tenant`] before they touch the store.
//!
//! # Why a linear, constant-time scan
//!
//! The key file holds SHA-256 digests, never keys. [`KeySet::authenticate`]
//! hashes the presented key and compares the digest with *every* entry
//! (XOR-OR of its four 64-bit words, then [`subtle::ConstantTimeEq`] against
//! zero), remembering the match with a constant-time select, so the time taken does not depend on which entry matched or on how
//! many leading bytes of a digest agree. A `HashMap` keyed by the digest would
//! also be acceptable (an attacker cannot choose digest prefixes without
//! inverting SHA-256), but its timing depends on hashing and bucket layout we
//! do not control. The scan is cheap (`cargo bench --bench auth`: about 0.16 µs
//! for one key, 4 µs for [`KEYS_MAX`] keys), so we keep the simpler argument.

use std::{collections::BTreeSet, fmt, fs, path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use sha2::{Digest as _, Sha256};
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use crate::{engine::Tenant, error::Error};

/// What every generated key starts with ("consentd key"), so that a leaked
/// key is recognisable by secret scanners.
pub const KEY_PREFIX: &str = "cdk_";
/// Random bytes in a generated key (256 bits), written as 64 hex digits.
pub const KEY_RANDOM_BYTES: usize = 32;
/// Longest bearer key accepted in a request; longer ones are refused unhashed.
pub const BEARER_KEY_LEN_MAX: usize = 512;
/// Most entries in a key file.
pub const KEYS_MAX: usize = 1000;
/// Longest key name. The name is the `actor` of the key's changes.
pub const KEY_NAME_LEN_MAX: usize = 128;
/// Every path under this prefix passes access control.
pub const PROTECTED_PATH_PREFIX: &str = "/consent.v1.";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything, in its tenants. `AdminService/Backup` needs `tenants = "*"`.
    Admin,
    /// Profiles, consent, quarantine, eligibility and subscriptions; not tenant
    /// settings, product usage or administration.
    Operator,
    /// Eligibility checks, `RecordDeliveryFeedback` and `OptOutAddress`
    /// (an SMS STOP reaches the delivery system).
    Delivery,
    /// What a public sign-up or unsubscribe page needs: `OptOut`, `OptIn`,
    /// `OptOutAddress`, `OptInAddress`, `Subscribe`, `Unsubscribe`,
    /// `ConfirmSubscription`.
    LandingPage,
    /// `CheckTracking` and `FilterUsageEvents`.
    Tracking,
}

impl Role {
    /// Every role, in the order the documentation lists them.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Delivery,
        Role::LandingPage,
        Role::Tracking,
    ];

    /// The role's name in key files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Delivery => "delivery",
            Role::LandingPage => "landing_page",
            Role::Tracking => "tracking",
        }
    }

    /// Parses a role name (`admin`, `operator`, `delivery`, `landing_page`, `tracking`).
    pub fn parse(raw: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or_else(|| {
                format!(
                    "unknown role '{raw}'; expected one of {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tenants a key may act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant (`tenants = "*"`).
    All,
    /// Only these (an empty set allows none).
    Only(BTreeSet<Tenant>),
}

impl TenantScope {
    /// Whether `tenant` is in the scope.
    pub fn contains(&self, tenant: &Tenant) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(tenants) => tenants.contains(tenant),
        }
    }

    /// Parses `*` (all) or a list of tenant names, as the CLI and key files write them.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<TenantScope, String> {
        let names: Vec<&str> = names.into_iter().collect();
        if names.is_empty() {
            return Err("at least one tenant is required (or \"*\" for all)".to_owned());
        }
        if names.contains(&"*") {
            if names.len() > 1 {
                return Err("\"*\" (all tenants) cannot be combined with tenant names".to_owned());
            }
            return Ok(TenantScope::All);
        }
        let mut tenants = BTreeSet::new();
        for name in names {
            let tenant = Tenant::parse(name).map_err(|e| format!("'{name}': {e}"))?;
            tenants.insert(tenant);
        }
        Ok(TenantScope::Only(tenants))
    }
}

/// Why a caller may not do what it asked. The message names the role or
/// tenant, never whether the target exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl From<Denied> for Error {
    fn from(denied: Denied) -> Self {
        Error::PermissionDenied(denied.0)
    }
}

/// Who is calling: the key's name, role and tenants. The auth layer puts one
/// in every request's extensions; `api::auth_layer::caller` reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (the `actor` of its changes); `None` when access control is off.
    pub name: Option<String>,
    /// What the key may do.
    pub role: Role,
    /// Where it may do it.
    pub tenants: TenantScope,
}

impl Caller {
    /// The caller of every request when access control is off: an admin of all tenants.
    pub fn unrestricted() -> Self {
        Self {
            name: None,
            role: Role::Admin,
            tenants: TenantScope::All,
        }
    }

    /// A caller that may act in no tenant: what a handler assumes when the auth
    /// layer left nothing behind (it always does; this is the fail-closed default).
    pub fn deny_all() -> Self {
        Self {
            name: None,
            role: Role::Tracking,
            tenants: TenantScope::Only(BTreeSet::new()),
        }
    }

    /// The key's name, which the history records as the actor of a change.
    pub fn actor(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the caller may act in `tenant`. Call it before touching the
    /// store, so that the answer is the same whether the target exists or not.
    pub fn check_tenant(&self, tenant: &Tenant) -> Result<(), Denied> {
        if self.tenants.contains(tenant) {
            Ok(())
        } else {
            Err(Denied(format!(
                "{} may not act in tenant '{}'",
                self.described(),
                tenant.as_str()
            )))
        }
    }

    /// Whether the caller's role may call the gRPC method at `path`
    /// (`/package.Service/Method`), following [`RPC_ROLES`].
    pub fn check_method(&self, path: &str) -> Result<(), Denied> {
        if ALL_TENANTS_ADMIN_RPCS.contains(&path) {
            return if self.role == Role::Admin && self.tenants == TenantScope::All {
                Ok(())
            } else {
                Err(Denied(format!(
                    "{} may not call {path}: it needs an admin key for all tenants (tenants = \"*\")",
                    self.described()
                )))
            };
        }
        if self.role == Role::Admin
            || roles_for(path).is_some_and(|roles| roles.contains(&self.role))
        {
            return Ok(());
        }
        Err(Denied(format!("{} may not call {path}", self.described())))
    }

    fn described(&self) -> String {
        match &self.name {
            Some(name) => format!("key '{name}' (role {})", self.role),
            None => format!("role {}", self.role),
        }
    }
}

/// The roles, besides `admin`, allowed to call each `consent.v1` RPC. A path
/// not listed here is for admins only. Some services are added by later
/// changes; the table is by path, so it can name them already.
pub const RPC_ROLES: &[(&str, &[Role])] = {
    use Role::{Delivery, LandingPage, Operator, Tracking};
    &[
        ("/consent.v1.ProfileService/UpsertProfile", &[Operator]),
        ("/consent.v1.ProfileService/GetProfile", &[Operator]),
        ("/consent.v1.ProfileService/EraseProfile", &[Operator]),
        ("/consent.v1.ProfileService/ExportProfileData", &[Operator]),
        (
            "/consent.v1.ConsentService/OptOut",
            &[Operator, LandingPage],
        ),
        ("/consent.v1.ConsentService/OptIn", &[Operator, LandingPage]),
        ("/consent.v1.ConsentService/GetConsent", &[Operator]),
        ("/consent.v1.ConsentService/ListConsentHistory", &[Operator]),
        (
            "/consent.v1.ConsentService/OptOutAddress",
            &[Operator, Delivery, LandingPage],
        ),
        (
            "/consent.v1.ConsentService/OptInAddress",
            &[Operator, LandingPage],
        ),
        ("/consent.v1.ConsentService/GetAddressConsent", &[Operator]),
        (
            "/consent.v1.QuarantineService/RecordDeliveryFeedback",
            &[Operator, Delivery],
        ),
        (
            "/consent.v1.QuarantineService/QuarantineAddress",
            &[Operator],
        ),
        ("/consent.v1.QuarantineService/ReleaseAddress", &[Operator]),
        (
            "/consent.v1.QuarantineService/GetAddressStatus",
            &[Operator],
        ),
        (
            "/consent.v1.QuarantineService/ListQuarantinedAddresses",
            &[Operator],
        ),
        (
            "/consent.v1.QuarantineService/ListAddressHistory",
            &[Operator],
        ),
        (
            "/consent.v1.EligibilityService/CheckEligibility",
            &[Operator, Delivery],
        ),
        (
            "/consent.v1.EligibilityService/BatchCheckEligibility",
            &[Operator, Delivery],
        ),
        (
            "/consent.v1.EligibilityService/StreamEligibility",
            &[Operator, Delivery],
        ),
        (
            "/consent.v1.EligibilityService/BatchCheckAddresses",
            &[Operator, Delivery],
        ),
        ("/consent.v1.TenantService/GetTenantSettings", &[]),
        ("/consent.v1.TenantService/UpdateTenantSettings", &[]),
        ("/consent.v1.SubscriptionService/CreateService", &[Operator]),
        ("/consent.v1.SubscriptionService/ListServices", &[Operator]),
        (
            "/consent.v1.SubscriptionService/Subscribe",
            &[Operator, LandingPage],
        ),
        (
            "/consent.v1.SubscriptionService/ConfirmSubscription",
            &[Operator, LandingPage],
        ),
        (
            "/consent.v1.SubscriptionService/Unsubscribe",
            &[Operator, LandingPage],
        ),
        (
            "/consent.v1.SubscriptionService/ListSubscriptions",
            &[Operator],
        ),
        (
            "/consent.v1.SubscriptionService/ListSubscribers",
            &[Operator],
        ),
        ("/consent.v1.ProductUsageService/OptOutUser", &[]),
        ("/consent.v1.ProductUsageService/OptInUser", &[]),
        ("/consent.v1.ProductUsageService/ListOptedOutUsers", &[]),
        ("/consent.v1.ProductUsageService/CheckTracking", &[Tracking]),
        (
            "/consent.v1.ProductUsageService/FilterUsageEvents",
            &[Tracking],
        ),
        ("/consent.v1.AdminService/Backup", &[]),
        ("/consent.v1.WatchService/Watch", &[Operator, Delivery]),
        (
            "/consent.v1.PreferenceService/CreatePreferenceLink",
            &[Operator, Delivery],
        ),
    ]
};

/// RPCs that act on every tenant at once: only an admin key with
/// `tenants = "*"` may call them.
pub const ALL_TENANTS_ADMIN_RPCS: &[&str] = &["/consent.v1.AdminService/Backup"];

/// The non-admin roles allowed to call `path`, or `None` for an unknown path.
fn roles_for(path: &str) -> Option<&'static [Role]> {
    RPC_ROLES
        .iter()
        .find(|(known, _)| *known == path)
        .map(|(_, roles)| *roles)
}

/// Whether requests to `path` pass access control (every `consent.v1` RPC;
/// health and reflection stay open).
pub fn is_protected(path: &str) -> bool {
    path.starts_with(PROTECTED_PATH_PREFIX)
}

/// One entry of the key file, validated.
#[derive(Clone)]
struct KeyEntry {
    /// The SHA-256 of the key, as four words for a quick constant-time comparison.
    sha256: [u64; 4],
    /// Who presents it.
    caller: Caller,
}

/// The API keys the server accepts: name, SHA-256, role and tenants of each.
#[derive(Clone)]
pub struct KeySet {
    /// Validated entries: unique names and unique digests.
    entries: Vec<KeyEntry>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: digests stay out of logs.
        f.debug_struct("KeySet")
            .field(
                "names",
                &self
                    .entries
                    .iter()
                    .filter_map(|e| e.caller.actor())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("{0}")]
    Syntax(String),
    /// An entry is invalid.
    #[error("key entry {index} (name '{name}'): {field}: {problem}")]
    Entry {
        /// 1-based position of the `[[key]]` entry.
        index: usize,
        /// Its name, as written.
        name: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The file holds no key, or too many.
    #[error("{0}")]
    Count(String),
}

/// The key file as written: `[[key]]` tables.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    #[serde(default)]
    key: Vec<RawKey>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    sha256: String,
    role: String,
    /// `"*"` or a list of tenant names; checked by hand for clear messages.
    tenants: toml::Value,
}

impl KeySet {
    /// Reads and validates a key file.
    pub fn load(path: &Path) -> Result<KeySet, KeyFileError> {
        let text = fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        KeySet::parse(&text)
    }

    /// Parses and validates the text of a key file.
    pub fn parse(text: &str) -> Result<KeySet, KeyFileError> {
        let raw: RawKeyFile =
            toml::from_str(text).map_err(|e| KeyFileError::Syntax(e.to_string()))?;
        if raw.key.is_empty() {
            return Err(KeyFileError::Count(
                "the key file has no [[key]] entry; add one (consentd keys generate prints it)"
                    .to_owned(),
            ));
        }
        if raw.key.len() > KEYS_MAX {
            return Err(KeyFileError::Count(format!(
                "the key file has {} entries, more than the limit of {KEYS_MAX}",
                raw.key.len()
            )));
        }
        let mut entries: Vec<KeyEntry> = Vec::with_capacity(raw.key.len());
        for (i, key) in raw.key.into_iter().enumerate() {
            let fail = |field: &'static str, problem: String| KeyFileError::Entry {
                index: i + 1,
                name: key.name.clone(),
                field,
                problem,
            };
            check_key_name(&key.name).map_err(|p| fail("name", p))?;
            if entries.iter().any(|e| e.caller.actor() == Some(&key.name)) {
                return Err(fail("name", "another entry has the same name".to_owned()));
            }
            let sha256 = words(&parse_sha256(&key.sha256).map_err(|p| fail("sha256", p))?);
            if entries.iter().any(|e| e.sha256 == sha256) {
                return Err(fail(
                    "sha256",
                    "another entry has the same key; each key must have one name".to_owned(),
                ));
            }
            let role = Role::parse(&key.role).map_err(|p| fail("role", p))?;
            let tenants = parse_tenants(&key.tenants).map_err(|p| fail("tenants", p))?;
            entries.push(KeyEntry {
                sha256,
                caller: Caller {
                    name: Some(key.name.clone()),
                    role,
                    tenants,
                },
            });
        }
        Ok(KeySet { entries })
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no key (never true of a parsed key file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller whose key this is, or `None` for an unknown key. Compares
    /// the key's SHA-256 with every entry in constant time (see the module docs).
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let digest = words(&Sha256::digest(presented.as_bytes()).into());
        let mut found = subtle::Choice::from(0);
        let mut index: u64 = 0;
        for (i, entry) in self.entries.iter().enumerate() {
            // XOR-OR over four words, no branch on the data; subtle decides the zero test.
            let difference = entry
                .sha256
                .iter()
                .zip(&digest)
                .fold(0u64, |acc, (a, b)| acc | (a ^ b));
            let matches = difference.ct_eq(&0);
            // Entries are at most KEYS_MAX, so the index always fits.
            let i = u64::try_from(i).unwrap_or(u64::MAX);
            index.conditional_assign(&i, matches);
            found |= matches;
        }
        if bool::from(found) {
            let index = usize::try_from(index).ok()?;
            self.entries.get(index).map(|entry| entry.caller.clone())
        } else {
            None
        }
    }
}

/// A digest as four big-endian words.
fn words(digest: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (word, bytes) in out.iter_mut().zip(digest.chunks_exact(8)) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(bytes);
        *word = u64::from_be_bytes(eight);
    }
    out
}

/// Checks a key name: 1 to [`KEY_NAME_LEN_MAX`] bytes of ASCII letters,
/// digits, `.`, `_`, `-`, `@`.
pub fn check_key_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > KEY_NAME_LEN_MAX {
        return Err(format!(
            "must be 1 to {KEY_NAME_LEN_MAX} bytes long, not {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err("may contain only ASCII letters, digits, '.', '_', '-' and '@'".to_owned());
    }
    Ok(())
}

fn parse_sha256(raw: &str) -> Result<[u8; 32], String> {
    let problem = || {
        format!(
            "must be 64 hexadecimal digits (the SHA-256 of the key, as `consentd keys generate` \
             prints it), not {} characters",
            raw.len()
        )
    };
    if raw.len() != 64 {
        return Err(problem());
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(raw.as_bytes().chunks_exact(2)) {
        let hi =
            hex_digit(pair[0]).ok_or_else(|| "contains a non-hexadecimal character".to_owned())?;
        let lo =
            hex_digit(pair[1]).ok_or_else(|| "contains a non-hexadecimal character".to_owned())?;
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_tenants(value: &toml::Value) -> Result<TenantScope, String> {
    match value {
        toml::Value::String(s) if s == "*" => Ok(TenantScope::All),
        toml::Value::String(s) => Err(format!(
            "must be \"*\" (all tenants) or a list such as [\"{s}\"]"
        )),
        toml::Value::Array(items) => {
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    toml::Value::String(s) if s == "*" => {
                        return Err("write tenants = \"*\" for all tenants, not a list".to_owned());
                    }
                    toml::Value::String(s) => names.push(s.as_str()),
                    other => {
                        return Err(format!(
                            "tenant names are strings, not {}",
                            other.type_str()
                        ));
                    }
                }
            }
            TenantScope::parse(names)
        }
        other => Err(format!(
            "must be \"*\" or a list of tenant names, not {}",
            other.type_str()
        )),
    }
}

/// Lower-case hex of the SHA-256 of a key, as the key file holds it.
pub fn sha256_hex(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A freshly generated key and the key-file entry that accepts it.
#[derive(Clone)]
pub struct GeneratedKey {
    /// The key: [`KEY_PREFIX`] and 64 hex digits. Shown once, never stored.
    pub key: String,
    /// The `[[key]]` entry to add to the key file (holds the SHA-256 only).
    pub entry: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key", &"<secret>")
            .field("entry", &self.entry)
            .finish()
    }
}

/// Generates a key of [`KEY_RANDOM_BYTES`] from the operating system's random
/// source and the key-file entry for it.
pub fn generate_key(name: &str, role: Role, tenants: &TenantScope) -> Result<GeneratedKey, String> {
    check_key_name(name).map_err(|p| format!("--name: {p}"))?;
    let mut random = [0u8; KEY_RANDOM_BYTES];
    getrandom::fill(&mut random)
        .map_err(|e| format!("the operating system's random source failed: {e}"))?;
    let key = format!("{KEY_PREFIX}{}", hex(&random));
    let tenants = match tenants {
        TenantScope::All => "\"*\"".to_owned(),
        TenantScope::Only(set) => format!(
            "[{}]",
            set.iter()
                .map(|t| format!("\"{}\"", t.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // Names and tenants are restricted to characters that need no TOML escaping.
    let entry = format!(
        "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\ntenants = {tenants}\n",
        sha256_hex(&key)
    );
    Ok(GeneratedKey { key, entry })
}

/// The server's certificate and key, and the CA of client certificates for
/// mutual TLS, in PEM, checked to parse.
#[derive(Clone)]
pub struct TlsPem {
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<u8>,
    /// The private key of the leaf certificate.
    pub key: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert_chain_bytes", &self.cert_chain.len())
            .field("key", &"<secret>")
            .field("mutual", &self.client_ca.is_some())
            .finish()
    }
}

impl TlsPem {
    /// Checks PEM contents: at least one certificate in the chain and in the
    /// client CA, and a private key.
    pub fn from_pem(
        cert_chain: Vec<u8>,
        key: Vec<u8>,
        client_ca: Option<Vec<u8>>,
    ) -> Result<TlsPem, String> {
        count_certificates(&cert_chain).map_err(|p| format!("--tls-cert: {p}"))?;
        PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            format!("--tls-key: no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}")
        })?;
        if let Some(ca) = &client_ca {
            count_certificates(ca).map_err(|p| format!("--tls-client-ca: {p}"))?;
        }
        Ok(TlsPem {
            cert_chain,
            key,
            client_ca,
        })
    }

    /// Reads and checks the files given to `--tls-cert`, `--tls-key` and `--tls-client-ca`.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsPem, String> {
        let read = |flag: &str, path: &Path| {
            fs::read(path).map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))
        };
        let cert = read("--tls-cert", cert)?;
        let key = read("--tls-key", key)?;
        let client_ca = client_ca
            .map(|path| read("--tls-client-ca", path))
            .transpose()?;
        TlsPem::from_pem(cert, key, client_ca)
    }
}

fn count_certificates(pem: &[u8]) -> Result<usize, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_owned());
    }
    Ok(certs.len())
}

/// How the server protects its API: the keys it accepts (`None`: access
/// control is off) and TLS (`None`: plaintext).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The accepted API keys; `None` lets every request through as [`Caller::unrestricted`].
    pub keys: Option<Arc<KeySet>>,
    /// The server's TLS files; `None` serves plaintext HTTP/2.
    pub tls: Option<Arc<TlsPem>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Tenant {
        Tenant::parse(name).expect("valid tenant")
    }

    fn caller(role: Role, tenants: TenantScope) -> Caller {
        Caller {
            name: Some("k".to_owned()),
            role,
            tenants,
        }
    }

    fn acme() -> TenantScope {
        TenantScope::parse(["acme"]).expect("valid scope")
    }

    /// The role table, written out per role: the RPCs each may call.
    #[test]
    fn permission_table_matches_the_role_definitions() {
        let services = |path: &str| path.split('/').nth(1).unwrap_or_default().to_owned();
        for (path, _) in RPC_ROLES {
            let service = services(path);
            let method = path.rsplit('/').next().unwrap_or_default();
            let expected = |role: Role| match role {
                Role::Admin => path != &"/consent.v1.AdminService/Backup",
                Role::Operator => matches!(
                    service.as_str(),
                    "consent.v1.ProfileService"
                        | "consent.v1.ConsentService"
                        | "consent.v1.QuarantineService"
                        | "consent.v1.EligibilityService"
                        | "consent.v1.SubscriptionService"
                        | "consent.v1.WatchService"
                        | "consent.v1.PreferenceService"
                ),
                Role::Delivery => matches!(
                    method,
                    "Watch"
                        | "CreatePreferenceLink"
                        | "CheckEligibility"
                        | "BatchCheckEligibility"
                        | "StreamEligibility"
                        | "BatchCheckAddresses"
                        | "RecordDeliveryFeedback"
                        | "OptOutAddress"
                ),
                Role::LandingPage => matches!(
                    method,
                    "OptOut"
                        | "OptIn"
                        | "OptOutAddress"
                        | "OptInAddress"
                        | "Subscribe"
                        | "Unsubscribe"
                        | "ConfirmSubscription"
                ),
                Role::Tracking => matches!(method, "CheckTracking" | "FilterUsageEvents"),
            };
            for role in Role::ALL {
                // An admin limited to some tenants: everything but Backup.
                let allowed = caller(role, acme()).check_method(path).is_ok();
                assert_eq!(allowed, expected(role), "{role} on {path}");
            }
        }
        assert_eq!(
            RPC_ROLES.len(),
            38,
            "every RPC of the issue is in the table"
        );
    }

    #[test]
    fn only_operators_and_admins_erase_or_export_a_profile() {
        for path in [
            "/consent.v1.ProfileService/EraseProfile",
            "/consent.v1.ProfileService/ExportProfileData",
        ] {
            for role in Role::ALL {
                let allowed = caller(role, acme()).check_method(path).is_ok();
                assert_eq!(
                    allowed,
                    matches!(role, Role::Admin | Role::Operator),
                    "{role} on {path}"
                );
            }
        }
    }

    #[test]
    fn backup_needs_an_admin_of_all_tenants() {
        let path = "/consent.v1.AdminService/Backup";
        assert!(
            caller(Role::Admin, TenantScope::All)
                .check_method(path)
                .is_ok()
        );
        let denied = caller(Role::Admin, acme())
            .check_method(path)
            .expect_err("denied");
        assert!(denied.0.contains("tenants = \"*\""), "{denied}");
        assert!(
            caller(Role::Operator, TenantScope::All)
                .check_method(path)
                .is_err()
        );
    }

    #[test]
    fn unknown_consent_paths_are_for_admins_only() {
        let path = "/consent.v1.NewService/NewMethod";
        assert!(caller(Role::Admin, acme()).check_method(path).is_ok());
        for role in [
            Role::Operator,
            Role::Delivery,
            Role::LandingPage,
            Role::Tracking,
        ] {
            let denied = caller(role, TenantScope::All)
                .check_method(path)
                .expect_err("denied");
            assert!(denied.0.contains(role.as_str()), "{denied}");
            assert!(denied.0.contains(path), "{denied}");
        }
        assert!(is_protected(path));
        assert!(!is_protected("/grpc.health.v1.Health/Check"));
        assert!(!is_protected(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
    }

    #[test]
    fn tenant_checks_follow_the_scope() {
        let c = caller(
            Role::Operator,
            TenantScope::parse(["acme", "beta"]).expect("scope"),
        );
        assert!(c.check_tenant(&tenant("acme")).is_ok());
        assert!(c.check_tenant(&tenant("beta")).is_ok());
        let denied = c.check_tenant(&tenant("other")).expect_err("denied");
        assert_eq!(
            denied.0,
            "key 'k' (role operator) may not act in tenant 'other'"
        );
        assert!(
            caller(Role::Tracking, TenantScope::All)
                .check_tenant(&tenant("x"))
                .is_ok()
        );
        assert!(Caller::unrestricted().check_tenant(&tenant("x")).is_ok());
        assert!(Caller::deny_all().check_tenant(&tenant("acme")).is_err());
        assert!(matches!(Error::from(denied), Error::PermissionDenied(_)));
    }

    fn file(entries: &[(&str, &str, &str, &str)]) -> String {
        entries
            .iter()
            .map(|(name, sha, role, tenants)| {
                format!("[[key]]\nname = \"{name}\"\nsha256 = \"{sha}\"\nrole = \"{role}\"\ntenants = {tenants}\n")
            })
            .collect()
    }

    #[test]
    fn keys_authenticate_by_their_hash() {
        let a = sha256_hex("key-a");
        let b = sha256_hex("key-b");
        let keys = KeySet::parse(&file(&[
            ("alpha", &a, "admin", "\"*\""),
            (
                "beta",
                &b.to_uppercase(),
                "delivery",
                "[\"acme\", \"beta\"]",
            ),
        ]))
        .expect("valid file");
        assert_eq!(keys.len(), 2);
        let alpha = keys.authenticate("key-a").expect("key a is known");
        assert_eq!(alpha.actor(), Some("alpha"));
        assert_eq!(alpha.role, Role::Admin);
        assert_eq!(alpha.tenants, TenantScope::All);
        let beta = keys.authenticate("key-b").expect("key b is known");
        assert_eq!(beta.actor(), Some("beta"));
        assert_eq!(beta.role, Role::Delivery);
        assert_eq!(
            beta.tenants,
            TenantScope::parse(["acme", "beta"]).expect("scope")
        );
        assert!(keys.authenticate("key-c").is_none());
        assert!(keys.authenticate("").is_none());
        assert!(keys.authenticate(&a).is_none(), "the hash is not the key");
    }

    #[test]
    fn bad_key_files_name_the_entry_and_field() {
        let good = sha256_hex("k");
        let other = sha256_hex("k2");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no [[key]] entry"),
            ("[[key]]\nname = \"a\"\n".to_owned(), "missing field"),
            (
                format!("{}extra = 1\n", file(&[("a", &good, "admin", "\"*\"")])),
                "unknown field",
            ),
            (
                file(&[("a", "abc", "admin", "\"*\"")]),
                "key entry 1 (name 'a'): sha256: must be 64",
            ),
            (
                file(&[("a", &"g".repeat(64), "admin", "\"*\"")]),
                "sha256: contains a non-hexadecimal",
            ),
            (
                file(&[("a", &good, "root", "\"*\"")]),
                "role: unknown role 'root'",
            ),
            (
                file(&[("a", &good, "admin", "[]")]),
                "tenants: at least one tenant",
            ),
            (
                file(&[("a", &good, "admin", "\"acme\"")]),
                "tenants: must be \"*\"",
            ),
            (
                file(&[("a", &good, "admin", "[\"bad tenant\"]")]),
                "tenants: 'bad tenant'",
            ),
            (
                file(&[("a", &good, "admin", "[\"*\"]")]),
                "tenants: write tenants = \"*\"",
            ),
            (
                file(&[("a", &good, "admin", "3")]),
                "tenants: must be \"*\" or a list",
            ),
            (file(&[("", &good, "admin", "\"*\"")]), "name: must be 1 to"),
            (
                file(&[("a b", &good, "admin", "\"*\"")]),
                "name: may contain only",
            ),
            (
                file(&[
                    ("a", &good, "admin", "\"*\""),
                    ("a", &other, "admin", "\"*\""),
                ]),
                "key entry 2 (name 'a'): name: another entry has the same name",
            ),
            (
                file(&[
                    ("a", &good, "admin", "\"*\""),
                    ("b", &good, "admin", "\"*\""),
                ]),
                "key entry 2 (name 'b'): sha256: another entry has the same key",
            ),
        ];
        for (text, expected) in cases {
            let error = KeySet::parse(&text).expect_err(&text).to_string();
            assert!(
                error.contains(expected),
                "{text:?}: {error:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn a_generated_entry_accepts_its_key() {
        let scope = TenantScope::parse(["acme", "beta"]).expect("scope");
        let generated = generate_key("mta-1", Role::Delivery, &scope).expect("generated");
        assert!(generated.key.starts_with(KEY_PREFIX));
        assert_eq!(generated.key.len(), KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES);
        let keys = KeySet::parse(&generated.entry).expect("the printed entry is a valid key file");
        let caller = keys
            .authenticate(&generated.key)
            .expect("the key is accepted");
        assert_eq!(caller.actor(), Some("mta-1"));
        assert_eq!(caller.role, Role::Delivery);
        assert_eq!(caller.tenants, scope);
        assert!(
            !generated.entry.contains(&generated.key),
            "the entry never holds the key"
        );
        let again = generate_key("mta-1", Role::Delivery, &scope).expect("generated");
        assert_ne!(again.key, generated.key);
        assert!(generate_key("bad name", Role::Admin, &TenantScope::All).is_err());
        assert!(format!("{generated:?}").contains("<secret>"));
    }

    #[test]
    fn roles_and_scopes_parse_strictly() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        assert!(Role::parse("Admin").is_err());
        assert_eq!(TenantScope::parse(["*"]), Ok(TenantScope::All));
        assert!(TenantScope::parse(["*", "acme"]).is_err());
        assert!(TenantScope::parse(Vec::<&str>::new()).is_err());
    }

    #[test]
    fn tls_pem_must_hold_a_certificate_and_a_key() {
        assert!(
            TlsPem::from_pem(b"garbage".to_vec(), b"garbage".to_vec(), None)
                .expect_err("no certificate")
                .starts_with("--tls-cert: ")
        );
    }
}
