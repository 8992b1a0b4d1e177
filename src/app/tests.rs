//! App unit tests.
