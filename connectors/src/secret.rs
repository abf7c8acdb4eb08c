//! A configuration value that must never reach a log (passwords, URLs with credentials).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that must never reach a log: `Debug` and `Display` print `***`, with the scheme kept for URLs
/// so that operators can still tell `postgres://***` from `sqlite://***`.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The real value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once("://") {
            Some((scheme, _)) => write!(f, "{scheme}://***"),
            None => f.write_str("***"),
        }
    }
}
