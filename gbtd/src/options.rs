//! Options and results shared by every decomposition, modelled on TensorLy's decomposition
//! module: each method is one function taking one options struct (`rank`, `n_iter_max`, `tol`,
//! `init`, a `seed` — TensorLy's `random_state` — and an optional per-sweep [`Progress`]
//! callback; BTD also an [`Acceleration`]), validated before any work starts, and returns its
//! factors together with a [`Convergence`] record.
//!
//! | method | function | options |
//! | --- | --- | --- |
//! | Tucker / partial Tucker (HOOI) | [`crate::tucker::tucker`] | [`crate::tucker::TuckerOptions`] |
//! | CP (ALS) | [`crate::cp::parafac`] | [`crate::cp::CpOptions`] |
//! | block term decomposition (ALS) | [`crate::btd::btd`] | [`crate::btd::BtdOptions`] |
//! | collective factorization | [`crate::collective::collective_btd`] | [`crate::collective::CollectiveOptions`] |
//!
//! Each options type is built with `new(rank…)` and `with_*` setters, for example
//! `TuckerOptions::new(vec![64, 64]).with_modes(vec![0, 1]).with_progress(&bar)`.
use std::fmt;
use std::ops::ControlFlow;

use ndarray::Array2;

use crate::error::{GbtdError, Result};
use crate::real::Real;

/// What a progress callback is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'e> {
    /// Sweep `sweep` (from 1) of an iterative decomposition ended with relative error
    /// `rel_error = ‖X − X̂‖/‖X‖`.
    Sweep {
        /// The sweep number, from 1.
        sweep: usize,
        /// The relative error after it.
        rel_error: f64,
    },
    /// Layer `index` (from 0) of `count`, named `name`, starts stage `stage` of a whole-model
    /// compression ([`crate::compress`]).
    Layer {
        /// Which pass over the layers.
        stage: Stage,
        /// The layer's position, from 0.
        index: usize,
        /// The number of layers in this pass.
        count: usize,
        /// The layer's name.
        name: &'e str,
    },
}

/// Which pass of a whole-model compression an [`Event::Layer`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading a layer's weight and computing its unfolding spectra (for the rank rule).
    Spectra,
    /// Decomposing a layer's weight.
    Decompose,
    /// Running a layer and its chain side by side ([`crate::compress::verify`]).
    Verify,
}

#[derive(Clone, Copy, Default)]
enum Callback<'a> {
    #[default]
    None,
    Sweeps(&'a dyn Fn(usize, f64)),
    Events(&'a dyn Fn(Event<'_>) -> ControlFlow<()>),
}

/// The progress callback of every long-running function: the decompositions call it after each
/// sweep ([`Event::Sweep`]), a whole-model compression before each layer ([`Event::Layer`],
/// and the sweeps of each layer's decomposition). The callback takes `&self` (`Fn`), so a progress
/// bar (whose setters take `&self`) or a closure updating a `Cell`/`RefCell` serves as one.
///
/// A callback made with [`Progress::interruptible`] may stop the computation by returning
/// [`ControlFlow::Break`]: the function then returns [`GbtdError::Interrupted`] at that point
/// (between two sweeps, or before a layer), having allocated nothing more. This is how a caller
/// turns Ctrl-C (or a deadline) into a clean stop.
#[derive(Clone, Copy, Default)]
pub struct Progress<'a>(Callback<'a>);

impl<'a> Progress<'a> {
    /// No callback.
    pub fn none() -> Self {
        Progress(Callback::None)
    }

    /// Calls `f(sweep, rel_error)` after each sweep (and ignores other events).
    pub fn new(f: &'a dyn Fn(usize, f64)) -> Self {
        Progress(Callback::Sweeps(f))
    }

    /// Calls `f(event)` for every [`Event`]; `ControlFlow::Break(())` stops the computation with
    /// [`GbtdError::Interrupted`].
    pub fn interruptible(f: &'a dyn Fn(Event<'_>) -> ControlFlow<()>) -> Self {
        Progress(Callback::Events(f))
    }

    /// Reports sweep `sweep` with error `rel_error`; `Err(Interrupted)` if the callback asks to
    /// stop.
    pub(crate) fn sweep(&self, sweep: usize, rel_error: f64) -> Result<()> {
        match self.0 {
            Callback::None => Ok(()),
            Callback::Sweeps(f) => {
                f(sweep, rel_error);
                Ok(())
            }
            Callback::Events(f) => flow(f(Event::Sweep { sweep, rel_error })),
        }
    }

    /// Reports that layer `index` of `count` starts `stage`; `Err(Interrupted)` if the callback
    /// asks to stop.
    pub(crate) fn layer(&self, stage: Stage, index: usize, count: usize, name: &str) -> Result<()> {
        match self.0 {
            Callback::Events(f) => flow(f(Event::Layer {
                stage,
                index,
                count,
                name,
            })),
            _ => Ok(()),
        }
    }
}

fn flow(c: ControlFlow<()>) -> Result<()> {
    match c {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(GbtdError::Interrupted),
    }
}

impl fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Callback::None => "Progress(none)",
            Callback::Sweeps(_) => "Progress(sweeps)",
            Callback::Events(_) => "Progress(events)",
        })
    }
}

/// The `with_*` setters shared by the options of the iterative methods (each has the fields
/// `iter`, `init` and `progress`).
macro_rules! iterative_setters {
    ($name:ident) => {
        impl<'a, T> $name<'a, T> {
            /// The same options with other iteration settings (sweeps, tolerance, seed).
            pub fn with_iter(mut self, iter: $crate::options::IterOptions) -> Self {
                self.iter = iter;
                self
            }

            /// The same options with at most `n_iter_max` sweeps.
            pub fn with_n_iter_max(mut self, n_iter_max: usize) -> Self {
                self.iter.n_iter_max = n_iter_max;
                self
            }

            /// The same options with another tolerance (`0` runs all sweeps).
            pub fn with_tol(mut self, tol: f64) -> Self {
                self.iter.tol = tol;
                self
            }

            /// The same options with another seed of the random initialisation.
            pub fn with_seed(mut self, seed: u64) -> Self {
                self.iter.seed = seed;
                self
            }

            /// The same options with another initialisation.
            pub fn with_init(mut self, init: $crate::options::Init<T>) -> Self {
                self.init = init;
                self
            }

            /// The same options calling `progress(sweep, rel_error)` after each sweep.
            pub fn with_progress(mut self, progress: &'a dyn Fn(usize, f64)) -> Self {
                self.progress = $crate::options::Progress::new(progress);
                self
            }

            /// The same options with another progress callback (for example an
            /// [`interruptible`]($crate::options::Progress::interruptible) one).
            pub fn with_callback(mut self, progress: $crate::options::Progress<'a>) -> Self {
                self.progress = progress;
                self
            }
        }
    };
}
pub(crate) use iterative_setters;

/// How the ALS sweeps of a block term decomposition are accelerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acceleration {
    /// Plain ALS: a sweep is the block updates and nothing else.
    None,
    /// After sweep `k ≥ 2`, extrapolate every parameter along the last step (Bro's line search,
    /// R. Bro, "Multi-way analysis in the food industry", 1998): `Â_m ← Â_m + ρ (Â_m − Â_m^{prev})`
    /// and `G_r ← G_r + ρ (G_r − G_r^{prev})` with `ρ = k^{1/3}` (the orthonormal blocks have a
    /// continuous gauge: QR with a positive triangular diagonal), re-orthonormalise the blocks, and
    /// keep the result only if its error is lower. The error therefore still never increases; the
    /// extrapolation shortens the long plateaus ("swamps") that plain ALS shows on BTD and CP.
    /// Costs one more error evaluation per sweep.
    #[default]
    LineSearch,
}

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

/// Working memory a decomposition may plan for regardless of its input: 2 GiB.
pub const WORKSPACE_FLOOR_BYTES: u128 = 2 << 30;

/// Working memory a decomposition may plan for, as a multiple of its input's size in bytes.
pub const WORKSPACE_INPUT_MULTIPLE: u128 = 64;

/// The working-memory limit for an input of `input_bytes` bytes: the larger of
/// [`WORKSPACE_FLOOR_BYTES`] and [`WORKSPACE_INPUT_MULTIPLE`] × `input_bytes`.
pub fn workspace_limit(input_bytes: u128) -> u128 {
    WORKSPACE_FLOOR_BYTES.max(WORKSPACE_INPUT_MULTIPLE.saturating_mul(input_bytes))
}

/// Refuses a decomposition whose estimated memory (`needed` bytes of factors and workspace, from
/// [`crate::cp::workspace_bytes`], [`crate::btd::workspace_bytes`] or
/// [`crate::tucker::workspace_bytes`]) exceeds [`workspace_limit`] of its `input_bytes`, with a
/// [`GbtdError::Memory`] that states both. Each method calls it before allocating its factors,
/// so an oversized rank fails at once instead of aborting the process or running for hours.
pub fn check_workspace(needed: u128, input_bytes: u128, what: &str) -> Result<()> {
    let limit = workspace_limit(input_bytes);
    if needed <= limit {
        return Ok(());
    }
    let fmt = |b: u128| crate::display::thousands(u64::try_from(b).unwrap_or(u64::MAX));
    Err(GbtdError::Memory(format!(
        "{what} needs about {} bytes of factors and workspace, more than the limit of {} bytes (the larger of 2 GiB and {WORKSPACE_INPUT_MULTIPLE} x the input's {} bytes); choose smaller ranks or fewer terms",
        fmt(needed),
        fmt(limit),
        fmt(input_bytes)
    )))
}

/// `Π values` in `u128`, saturating (estimates of absurd sizes must not overflow).
pub(crate) fn product_u128(values: impl IntoIterator<Item = usize>) -> u128 {
    values.into_iter().fold(1u128, |p, v| p.saturating_mul(v as u128))
}

#[cfg(test)]
mod workspace_tests {
    use super::*;

    #[test]
    fn limit_is_the_floor_or_the_input_multiple() {
        assert_eq!(workspace_limit(1), 2 << 30);
        assert_eq!(workspace_limit(1 << 30), 64 << 30);
        assert!(check_workspace(2 << 30, 1, "x").is_ok());
        let e = check_workspace((2 << 30) + 1, 1, "CP rank 7").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("2,147,483,649 bytes") && msg.contains("CP rank 7"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        // Saturates instead of overflowing.
        assert_eq!(product_u128([usize::MAX, usize::MAX, usize::MAX]), u128::MAX);
    }
}
