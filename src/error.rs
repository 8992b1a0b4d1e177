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
    /// The store failed. The cause is logged; the caller sees an opaque message.
    #[error("storage error")]
    Storage(#[from] crate::store::StoreError),
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
