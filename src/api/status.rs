//! The one place where errors become gRPC statuses (AIP-193): each carries an
//! `ErrorInfo` with a stable UPPER_SNAKE reason and domain `consentd`, and
//! invalid arguments carry a `BadRequest` naming every bad field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{error::Error, store::StoreError};

/// The `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "consentd";

fn status(
    code: Code,
    message: String,
    reason: &str,
    metadata: HashMap<String, String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        if !matches!(error, Error::Storage(_)) {
            // Debug, not Display: client text in the message (an address, an actor)
            // is escaped, so a newline or an ANSI escape cannot forge a log line.
            tracing::debug!(error = ?message, "request refused");
        }
        match error {
            Error::InvalidArgument(violations) => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                status(
                    Code::InvalidArgument,
                    message,
                    "VALIDATION_FAILED",
                    HashMap::new(),
                    details,
                )
            }
            Error::ListTooLong { field, len, limit } => {
                let details = ErrorDetails::with_bad_request_violation(
                    field,
                    format!("has {len} entries; at most {limit} are allowed"),
                );
                let metadata = HashMap::from([
                    ("field".to_owned(), field.to_owned()),
                    ("limit".to_owned(), limit.to_string()),
                    ("count".to_owned(), len.to_string()),
                ]);
                status(
                    Code::InvalidArgument,
                    message,
                    "BATCH_TOO_LARGE",
                    metadata,
                    details,
                )
            }
            Error::ProfileNotFound(id) => {
                let metadata = HashMap::from([("profile_id".to_owned(), id)]);
                status(
                    Code::NotFound,
                    message,
                    "PROFILE_NOT_FOUND",
                    metadata,
                    ErrorDetails::new(),
                )
            }
            Error::ServiceNotFound(id) => status(
                Code::NotFound,
                message,
                "SERVICE_NOT_FOUND",
                HashMap::from([("service_id".to_owned(), id)]),
                ErrorDetails::new(),
            ),
            Error::ServiceExists(id) => status(
                Code::AlreadyExists,
                message,
                "SERVICE_EXISTS",
                HashMap::from([("service_id".to_owned(), id)]),
                ErrorDetails::new(),
            ),
            Error::TooManyServices(limit) => status(
                Code::ResourceExhausted,
                message,
                "TOO_MANY_SERVICES",
                HashMap::from([("limit".to_owned(), limit.to_string())]),
                ErrorDetails::new(),
            ),
            Error::TokenNotFound => status(
                Code::NotFound,
                message,
                "TOKEN_NOT_FOUND",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::TokenRefused(problem) => status(
                Code::FailedPrecondition,
                message,
                problem.reason(),
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::Unauthenticated(_) => status(
                Code::Unauthenticated,
                message,
                "UNAUTHENTICATED",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::PermissionDenied(_) => status(
                Code::PermissionDenied,
                message,
                "PERMISSION_DENIED",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::Unavailable(_) => status(
                Code::Unavailable,
                message,
                "UNAVAILABLE",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::StreamCut(_) => status(
                Code::DeadlineExceeded,
                message,
                "STREAM_LIMIT",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::WatchExpired => status(
                Code::FailedPrecondition,
                message,
                "WATCH_TOKEN_EXPIRED",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::WatchResync(_) => status(
                Code::FailedPrecondition,
                message,
                "WATCH_RESYNC_REQUIRED",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::TooManyWatches(limit) => status(
                Code::ResourceExhausted,
                message,
                "TOO_MANY_WATCHES",
                HashMap::from([("limit".to_owned(), limit.to_string())]),
                ErrorDetails::new(),
            ),
            Error::LinksNotConfigured => status(
                Code::FailedPrecondition,
                message,
                "LINKS_NOT_CONFIGURED",
                HashMap::new(),
                ErrorDetails::new(),
            ),
            Error::Storage(store) => storage_status(&store),
        }
    }
}

fn storage_status(error: &StoreError) -> Status {
    // The cause chain goes to the log, not to the client.
    tracing::error!(error = %error, debug = ?error, "storage failure");
    if let StoreError::Failed(_) = error {
        return status(
            Code::Unavailable,
            // The first failed flush gets this answer too: not "earlier".
            "a flush to disk failed (disk full?): no write is acknowledged, and this server \
             accepts no write until it is restarted (writes not acknowledged may be lost; \
             acknowledged ones are safe); reads and eligibility checks go on"
                .to_owned(),
            "STORAGE_FAILED",
            HashMap::new(),
            ErrorDetails::new(),
        );
    }
    if error.is_transient() {
        status(
            Code::Unavailable,
            // sled keeps its first I/O error: later writes, and reads that
            // would rewrite a page, fail the same way until a restart.
            "the store hit an I/O error (disk full?): no write is acknowledged until the server \
             is restarted with space free; retry then (writes are idempotent)"
                .to_owned(),
            "STORAGE_UNAVAILABLE",
            HashMap::new(),
            ErrorDetails::new(),
        )
    } else {
        status(
            Code::Internal,
            "internal storage error; the server log has the details".to_owned(),
            "STORAGE_ERROR",
            HashMap::new(),
            ErrorDetails::new(),
        )
    }
}
