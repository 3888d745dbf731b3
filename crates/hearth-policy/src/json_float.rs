//! JSON has no NaN or ±∞, so serde_json writes them as `null`. The policy reports such values
//! (a NaN sensor reading in a health verdict, `-∞` as "never switched"), so every non-optional
//! `f64` the agent's state carries reads `null` back as NaN with [`nan_if_null`]: whatever the
//! agent writes, a reader of the state can read.

use serde::{Deserialize, Deserializer};

/// Deserializes an `f64` that the writer may have written as `null` (a non-finite value) as NaN.
pub(crate) fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}
