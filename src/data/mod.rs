//! The data tools: logical export and import of the whole store, import of
//! suppression lists from other platforms, and the encoding that the online
//! backup streams.
//!
//! Everything here works on an open [`Store`](crate::store::Store) and domain
//! types; the CLI (`src/main.rs`) opens the data directory, draws the
//! progress bars and prints the summaries, and `api::admin` streams a backup.
//! Nothing here names tonic, prost or sled.

pub mod export;
pub mod import;
pub mod record;
pub mod subject;
pub mod suppressions;

use crate::store::StoreError;

/// Why a data tool stopped (a rejected line or row is not an error: it is
/// reported and counted, and the rest goes on).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the input or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The input as a whole cannot be used (no header, unknown version, no
    /// address column).
    #[error("{0}")]
    Input(String),
}

impl From<crate::error::Error> for DataError {
    fn from(error: crate::error::Error) -> Self {
        match error {
            crate::error::Error::Storage(e) => DataError::Store(e),
            other => DataError::Input(other.to_string()),
        }
    }
}

impl DataError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DataError {
        let what = what.into();
        move |source| DataError::Io { what, source }
    }
}

/// The current time in ms since the Unix epoch, from the system clock (the
/// data tools run outside the server, which has the injected clock).
pub fn now_ms() -> crate::engine::UnixMillis {
    use crate::clock::Clock as _;
    crate::clock::SystemClock.now_ms()
}
