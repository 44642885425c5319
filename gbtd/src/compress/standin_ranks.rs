//! Temporary stand-in for `gbtd::ranks` (the `fixed` rule only), with the same API, until the
//! rank-rule module is merged.
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ndarray::ArrayViewD;

use crate::error::{GbtdError, Result};
use crate::real::Real;

/// A rank-selection rule, parsed from the CLI string (`fixed:a,b` only in this stand-in).
#[derive(Debug, Clone, PartialEq)]
pub enum RankRule {
    /// `fixed:a,b`: ranks for the factorized modes in order; `fixed:R` for CP.
    Fixed(Vec<usize>),
}

impl FromStr for RankRule {
    type Err = GbtdError;
    fn from_str(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("fixed:") else {
            return Err(GbtdError::Options(format!(
                "unknown rank rule '{s}': expected fixed:a,b"
            )));
        };
        let ranks: std::result::Result<Vec<usize>, _> = rest.split(',').map(|p| p.trim().parse()).collect();
        match ranks {
            Ok(r) if !r.is_empty() && !r.contains(&0) => Ok(RankRule::Fixed(r)),
            _ => Err(GbtdError::Options(format!(
                "rank rule '{s}': fixed needs positive integer ranks, e.g. fixed:64,32"
            ))),
        }
    }
}

impl fmt::Display for RankRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankRule::Fixed(r) => write!(
                f,
                "fixed:{}",
                r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

/// What the rule needs to know about one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpectra {
    /// The tensor's name.
    pub name: String,
    /// `(out, in, kh, kw)`.
    pub shape: Vec<usize>,
    /// The factorized modes.
    pub modes: Vec<usize>,
    /// Per factorized mode, descending (not computed by the stand-in).
    pub sq_singular_values: Vec<Vec<f64>>,
}

impl LayerSpectra {
    /// The layer's description (the stand-in computes no spectra).
    pub fn of<T: Real>(name: &str, x: &ArrayViewD<'_, T>, modes: &[usize]) -> Result<Self> {
        Ok(LayerSpectra {
            name: name.to_string(),
            shape: x.shape().to_vec(),
            modes: modes.to_vec(),
            sq_singular_values: Vec::new(),
        })
    }
}

/// How a method's parameter count depends on the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamModel {
    /// `o*r_o + i*r_i + r_o*r_i*kh*kw`.
    Tucker2,
    /// `R*(o*r_o + i*r_i + r_o*r_i*kh*kw)`.
    Btd {
        /// `R`.
        terms: usize,
    },
    /// `R*(o+i+kh+kw)`.
    Cp,
}

/// The rule's answer for one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankChoice {
    /// Ranks of the factorized modes (`[R]` for CP).
    Ranks(Vec<usize>),
    /// Why the layer is left as it is.
    Skip(String),
}

/// Per-layer overrides (none in the stand-in).
#[derive(Debug, Clone, Default)]
pub struct Overrides;

impl Overrides {
    /// No overrides.
    pub fn empty() -> Self {
        Overrides
    }

    /// Not supported by the stand-in.
    pub fn from_file(path: &Path) -> Result<Self> {
        Err(GbtdError::Options(format!(
            "{}: rank overrides are not supported yet",
            path.display()
        )))
    }
}

/// The fixed ranks for every layer.
pub fn choose_ranks(
    rule: &RankRule,
    layers: &[LayerSpectra],
    _model: &ParamModel,
    _overrides: &Overrides,
) -> Result<Vec<RankChoice>> {
    let RankRule::Fixed(r) = rule;
    Ok(layers.iter().map(|_| RankChoice::Ranks(r.clone())).collect())
}
