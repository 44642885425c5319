//! Options and results shared by every decomposition, modelled on TensorLy's decomposition
//! module: each method takes `rank`, `n_iter_max`, `tol`, `init` and a `seed` (TensorLy's
//! `random_state`), validated before any work starts, and returns its factors together with a
//! [`Convergence`] record.
use ndarray::Array2;

use crate::error::{GbtdError, Result};
use crate::real::Real;

/// How the factors of an iterative decomposition are initialised.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Init<T> {
    /// Leading left singular vectors of the unfoldings (HOSVD-style), the default.
    #[default]
    Svd,
    /// I.i.d. standard normal entries from the seeded generator (orthonormalised where the
    /// method needs orthonormal factors).
    Random,
    /// Factors given by the caller, one matrix per factorized mode, in the method's layout.
    Given(Vec<Array2<T>>),
}

impl<T> Init<T> {
    /// Parses `svd` or `random` (the CLI's `--init`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "svd" => Ok(Init::Svd),
            "random" => Ok(Init::Random),
            other => Err(GbtdError::Options(format!(
                "unknown init '{other}': expected 'svd' or 'random'"
            ))),
        }
    }
}

/// The iteration settings shared by all methods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterOptions {
    /// Maximum number of iterations (sweeps). 0 means initialisation only.
    pub n_iter_max: usize,
    /// Stop when the relative error decreases by less than `tol` between two sweeps
    /// (`|e_{k-1} − e_k| < tol`). `tol = 0` runs exactly `n_iter_max` sweeps.
    pub tol: f64,
    /// Seed of the generator used by random initialisation.
    pub seed: u64,
}

impl Default for IterOptions {
    fn default() -> Self {
        IterOptions {
            n_iter_max: 100,
            tol: 1e-8,
            seed: 0,
        }
    }
}

impl IterOptions {
    /// Rejects a negative or non-finite tolerance.
    pub fn validate(&self) -> Result<()> {
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(GbtdError::Options(format!(
                "tol must be a finite number >= 0, got {}",
                self.tol
            )));
        }
        Ok(())
    }
}

/// What an iterative method did: the relative reconstruction error `‖X − X̂‖/‖X‖` after
/// initialisation and after each sweep, the number of sweeps run, and whether the `tol`
/// criterion stopped it before `n_iter_max`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Convergence {
    /// `errors[0]` is the error of the initialisation, `errors[k]` the error after sweep `k`.
    pub errors: Vec<f64>,
    /// Number of sweeps run.
    pub iterations: usize,
    /// Whether the tolerance was met before `n_iter_max`.
    pub converged: bool,
}

impl Convergence {
    /// The final relative error (NaN if nothing was recorded).
    pub fn rel_error(&self) -> f64 {
        self.errors.last().copied().unwrap_or(f64::NAN)
    }

    /// Records one more error and reports whether iteration should stop under `tol`
    /// (only after at least one sweep).
    pub fn push(&mut self, err: f64, tol: f64) -> bool {
        self.errors.push(err);
        let n = self.errors.len();
        if n >= 2 && tol > 0.0 && (self.errors[n - 2] - err).abs() < tol {
            self.converged = true;
            return true;
        }
        false
    }
}

/// Checks a multilinear rank against the dimensions it factorizes: every `rank[k]` must be in
/// `1..=dims[k]`.
pub fn validate_ranks(rank: &[usize], dims: &[usize], what: &str) -> Result<()> {
    if rank.len() != dims.len() {
        return Err(GbtdError::Rank(format!(
            "{what}: {} ranks given for {} modes (dims {dims:?})",
            rank.len(),
            dims.len()
        )));
    }
    for (k, (&r, &d)) in rank.iter().zip(dims).enumerate() {
        if r == 0 {
            return Err(GbtdError::Rank(format!("{what}: rank of mode {k} is 0")));
        }
        if r > d {
            return Err(GbtdError::Rank(format!(
                "{what}: rank {r} of mode {k} is larger than its dimension {d}"
            )));
        }
    }
    Ok(())
}

/// Checks given initial factors: one per mode, each of shape `(dims[k], rank[k])`, all finite.
pub fn validate_given<T: Real>(factors: &[Array2<T>], dims: &[usize], rank: &[usize]) -> Result<()> {
    if factors.len() != dims.len() {
        return Err(GbtdError::Shape(format!(
            "{} initial factors given for {} modes",
            factors.len(),
            dims.len()
        )));
    }
    for (k, f) in factors.iter().enumerate() {
        if f.dim() != (dims[k], rank[k]) {
            return Err(GbtdError::Shape(format!(
                "initial factor {k} has shape {:?}, expected ({}, {})",
                f.dim(),
                dims[k],
                rank[k]
            )));
        }
        if f.iter().any(|v| !v.finite()) {
            return Err(GbtdError::NonFinite(format!("initial factor {k}")));
        }
    }
    Ok(())
}
