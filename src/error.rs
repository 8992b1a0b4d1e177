//! The one error type of the service layer. Every failure a caller can see is
//! a variant here; `api::status` maps each to a gRPC status in one place.

use std::fmt;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `emails[2]` or `context.source`.
    pub field: String,
    /// What is wrong with it, for a human.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing was changed.
    #[error("invalid request: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A list is longer than its limit; nothing was changed.
    #[error("{field} has {len} entries, more than the limit of {limit}; split the request")]
    ListTooLong {
        /// The list field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The profile does not exist in the tenant.
    #[error("profile '{0}' not found in this tenant")]
    ProfileNotFound(String),
    /// The service does not exist in the tenant.
    #[error("service '{0}' not found in this tenant; create it with CreateService")]
    ServiceNotFound(String),
    /// A service with this id exists already.
    #[error("service '{0}' already exists in this tenant")]
    ServiceExists(String),
    /// The tenant has as many services as it may.
    #[error("this tenant has {0} services, the most allowed")]
    TooManyServices(usize),
    /// No confirmation token like this one was issued in the tenant.
    #[error("unknown confirmation token: it was not issued in this tenant")]
    TokenNotFound,
    /// The confirmation token exists but cannot confirm anything; nothing changed.
    #[error("{0}")]
    TokenRefused(TokenProblem),
    /// The request carries no valid API key (missing, malformed or unknown).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role or tenants do not allow the request. The message
    /// never says whether the target exists.
    #[error("{0}")]
    PermissionDenied(String),
    /// The server is shutting down or the store cannot take writes.
    #[error("{0}")]
    Unavailable(String),
    /// A stream was ended by one of its limits (`--stream-idle-timeout`,
    /// `--stream-max-duration`); what was answered before stands.
    #[error("{0}")]
    StreamCut(String),
    /// A watch token is older than the changes the server keeps.
    #[error(
        "the start_token is older than the changes this server keeps (--watch-retention): \
         resync (read the state you cache again), then watch from the token of the first \
         message of a Watch without start_token"
    )]
    WatchExpired,
    /// A watch token cannot be followed on (why, for a human).
    #[error(
        "{0}: resync (read the state you cache again), then watch from the token of the first \
         message of a Watch without start_token"
    )]
    WatchResync(String),
    /// As many watches are open as the server allows.
    #[error(
        "this server has {0} watches open, the most allowed (--watch-max-streams); retry later"
    )]
    TooManyWatches(usize),
    /// Preference links need `--public-url` and `--link-keys`.
    #[error(
        "this server makes no preference links: start it with --public-url and --link-keys \
         (see \"Preference page and unsubscribe links\" in the README)"
    )]
    LinksNotConfigured,
    /// The store failed. The cause is logged; the caller sees an opaque message.
    #[error("storage error")]
    Storage(#[from] crate::store::StoreError),
}

/// Why a confirmation token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// It confirmed its subscription already (tokens are single-use).
    Used,
    /// It expired (at this time, ms since the epoch).
    Expired(i64),
    /// A newer token was sent, or the subscription was cancelled.
    Superseded,
}

impl TokenProblem {
    /// The stable `ErrorInfo.reason`.
    pub fn reason(self) -> &'static str {
        match self {
            TokenProblem::Used => "TOKEN_ALREADY_USED",
            TokenProblem::Expired(_) => "TOKEN_EXPIRED",
            TokenProblem::Superseded => "TOKEN_SUPERSEDED",
        }
    }
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Used => f.write_str(
                "this confirmation token was used already; the subscription it confirmed is active",
            ),
            TokenProblem::Expired(at) => write!(
                f,
                "this confirmation token expired (at {} ms since the epoch); subscribe again to get a new one",
                at
            ),
            TokenProblem::Superseded => f.write_str(
                "this confirmation token is no longer valid: a newer one was sent, or the \
                 subscription was cancelled; use the newest token or subscribe again",
            ),
        }
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// An invalid-argument error about one field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

/// The result of a service-layer operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
