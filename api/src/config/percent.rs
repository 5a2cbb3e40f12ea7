//! Istio's `Percent` message.

use serde::{Deserialize, Serialize};

use super::validate::{check_percent, Validate};
use super::FieldError;

/// A share of traffic, `{value: 12.5}`, from 0 to 100 inclusive.
/// `{}` is 0, as in Istio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percent {
    /// Percentage in 0..=100; fractions are allowed.
    pub value: f64,
}

impl Validate for Percent {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_percent(errors, &format!("{path}.value"), self.value);
    }
}
