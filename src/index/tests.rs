//! Index unit tests.
