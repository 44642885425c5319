//! Fitting one method to one tensor with the safeguards that `gbtd decompose` and the Python
//! package share: exact power-of-two scaling of tensors whose entries are near the ends of the
//! type's range, the relative error from the decomposition's own sums when they resolve it (from
//! the reconstruction otherwise), and the choice of the precision to compute in.
//!
//! # Scaling
//! Entries beyond `2^±30` in magnitude (f32 values near `3e38` square to infinity in the Gram
//! matrices) are decomposed as `X·2^-e` with `e` the exponent of `max |x|`, and the result is
//! scaled back by `2^e` (the core for Tucker, the weights for CP, each term's core for BTD). Both
//! scalings are exact, and the relative error is scale-invariant.
//!
//! # The relative error
//! - Tucker: the factors are orthonormal and the core is the projection `G = X ×_m A_mᵀ`, so
//!   `‖X − X̂‖² = ‖X‖² − ‖G‖²` ([`tucker_error_from_core`]).
//! - CP: ALS tracks `‖X − X̂‖² = ‖X‖² − 2⟨X, X̂⟩ + ‖X̂‖²` of the model it returns from its last
//!   MTTKRP and the factors' Gram matrices.
//! - Both are differences of nearly equal numbers: they are used only when
//!   [`fast_error_resolves`] says the cancellation leaves enough digits; otherwise, and for BTD,
//!   the error comes from the reconstruction.
use ndarray::ArrayViewD;

use crate::btd::{Btd, BtdOptions, btd};
use crate::cp::{Cp, CpOptions, parafac};
use crate::decomposition::{Decomposition, Method};
use crate::error::{GbtdError, Result};
use crate::options::{Init, IterOptions, Progress};
use crate::real::Real;
use crate::tensor::relative_error;
use crate::tucker::{Tucker, TuckerOptions, tucker};

/// What to fit: the method, the factorized modes with their ranks, and the iteration settings.
#[derive(Debug, Clone)]
pub struct FitOptions<'a, T> {
    /// The method (BTD with its number of terms).
    pub method: Method,
    /// The factorized modes (every mode, in order, for CP).
    pub modes: Vec<usize>,
    /// One rank per factorized mode (`[R]` for CP; per term for BTD).
    pub ranks: Vec<usize>,
    /// Sweeps, tolerance and seed.
    pub iter: IterOptions,
    /// The initialisation.
    pub init: Init<T>,
    /// Told after each sweep; may interrupt.
    pub progress: Progress<'a>,
}

/// A fitted decomposition of one of the three kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit<T> {
    /// Tucker or Tucker-2.
    Tucker(Tucker<T>),
    /// CP.
    Cp(Cp<T>),
    /// Block term decomposition.
    Btd(Btd<T>),
}

impl<T: Real> Fit<T> {
    /// The decomposition behind the common trait.
    pub fn as_dyn(&self) -> &dyn Decomposition<T> {
        match self {
            Fit::Tucker(d) => d,
            Fit::Cp(d) => d,
            Fit::Btd(d) => d,
        }
    }

    /// The decomposition, boxed behind the common trait.
    pub fn into_dyn(self) -> Box<dyn Decomposition<T>> {
        match self {
            Fit::Tucker(d) => Box::new(d),
            Fit::Cp(d) => Box::new(d),
            Fit::Btd(d) => Box::new(d),
        }
    }
}

/// A fitted decomposition and its relative error `‖X − X̂‖/‖X‖` (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted<T> {
    /// The decomposition of `X` itself (any scaling undone).
    pub decomposition: Fit<T>,
    /// `‖X − X̂‖/‖X‖`.
    pub rel_error: f64,
}

/// Fits `opts.method` to `x` (see the module documentation for the scaling and the error).
///
/// Errors: those of [`tucker`], [`parafac`] and [`btd`]; [`GbtdError::NonFinite`] when the
/// factors of an `f32` tensor with entries beyond `2^60` do not fit `f32` once scaled back (fit
/// it in `f64`, see [`needs_f64`]).
pub fn fit<T: Real>(x: &ArrayViewD<'_, T>, opts: &FitOptions<'_, T>) -> Result<Fitted<T>> {
    let exponent = scale_exponent(x);
    let scaled = (exponent != 0).then(|| {
        let down = T::from_f64_lossy((-f64::from(exponent)).exp2());
        x.mapv(|v| v * down)
    });
    let up = T::from_f64_lossy(f64::from(exponent).exp2());
    let xv = scaled.as_ref().map_or_else(|| x.view(), |s| s.view());
    let scaled_error = |fast: Option<f64>, d: &dyn Decomposition<T>| match fast {
        Some(e) if fast_error_resolves::<T>(e) => Ok(e),
        _ => relative_error(&xv, &d.reconstruct()?.view()),
    };
    let (decomposition, rel_error) = match opts.method {
        Method::Tucker | Method::Tucker2 => {
            let o = TuckerOptions::new(opts.ranks.clone())
                .with_modes(opts.modes.clone())
                .with_iter(opts.iter)
                .with_init(opts.init.clone())
                .with_callback(opts.progress);
            let mut d = tucker(&xv, &o)?;
            let fast = tucker_error_from_core(sq_norm(&xv), &d.core.view());
            let e = scaled_error(Some(fast), &d)?;
            d.core.mapv_inplace(|v| v * up);
            (Fit::Tucker(d), e)
        }
        Method::Cp => {
            let o = CpOptions::new(opts.ranks[0])
                .with_iter(opts.iter)
                .with_init(opts.init.clone())
                .with_callback(opts.progress);
            let mut d = parafac(&xv, &o)?;
            let fast = d.convergence.rel_error();
            let e = scaled_error(Some(fast), &d)?;
            d.weights.mapv_inplace(|v| v * up);
            (Fit::Cp(d), e)
        }
        Method::Btd { terms } => {
            let o = BtdOptions::new(terms, opts.ranks.clone())
                .with_modes(opts.modes.clone())
                .with_iter(opts.iter)
                .with_init(opts.init.clone())
                .with_callback(opts.progress);
            let mut d = btd(&xv, &o)?;
            let e = scaled_error(None, &d)?;
            for t in &mut d.terms {
                t.core.mapv_inplace(|v| v * up);
            }
            (Fit::Btd(d), e)
        }
    };
    if exponent != 0
        && decomposition
            .as_dyn()
            .named_tensors()
            .iter()
            .any(|(_, t)| t.iter().any(|v| !v.to_f64_exact().is_finite()))
    {
        return Err(GbtdError::NonFinite(format!(
            "the factors of this tensor (entries up to 2^{exponent}) do not fit the range of {}",
            std::any::type_name::<T>()
        )));
    }
    Ok(Fitted {
        decomposition,
        rel_error,
    })
}

/// Whether an `f32` tensor should be decomposed in `f64`: its entries reach beyond `2^±60`, so
/// its core and weights (up to `‖X‖`) would not fit `f32`.
pub fn needs_f64(x: &ArrayViewD<'_, f32>) -> bool {
    scale_exponent(x).abs() > 60
}

/// Smallest relative error, in units of `sqrt(ε)` of the element type, that is reported from a
/// decomposition's own sums instead of a reconstruction (see [`fast_error_resolves`]).
const FAST_ERROR_MIN: f64 = 1e4;

/// Whether a relative error `e` obtained by cancellation, `e² = (‖X‖² − …)/‖X‖²` with terms
/// known to a few `ε` relative, is accurate: the absolute error of `e²` is about `c·ε` (`c` a small
/// constant), so `e` is known to `c·ε/(2e²)` relative, below `c·5·10⁻⁹` when
/// `e ≥ 10⁴·sqrt(ε)` (`1.5·10⁻⁴` in `f64`; never in `f32`, where the bound exceeds 1 and the
/// error always comes from the reconstruction).
pub fn fast_error_resolves<T: Real>(e: f64) -> bool {
    e.is_finite() && e >= FAST_ERROR_MIN * T::epsilon().to_f64_exact().sqrt()
}

/// `‖X − X̂‖ / ‖X‖` of a Tucker decomposition from its core alone: with orthonormal factors and
/// the core the projection `G = X ×_m A_mᵀ` (what [`tucker`] returns), `‖X − X̂‖² = ‖X‖² − ‖G‖²`.
/// `nx2` is `‖X‖²`; 0 for a zero `X`.
pub fn tucker_error_from_core<T: Real>(nx2: f64, core: &ArrayViewD<'_, T>) -> f64 {
    if nx2 <= 0.0 {
        return 0.0;
    }
    ((nx2 - sq_norm(core)).max(0.0) / nx2).sqrt()
}

/// `‖X‖²` accumulated in `f64`, over a contiguous slice with eight partial sums (so that the loop
/// vectorises), or element by element for other layouts.
pub fn sq_norm<T: Real>(x: &ArrayViewD<'_, T>) -> f64 {
    const LANES: usize = 8;
    let Some(a) = x.as_slice_memory_order() else {
        return x.iter().map(|v| v.to_f64_exact().powi(2)).sum();
    };
    let mut acc = [0.0f64; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|v| v.to_f64_exact().powi(2)).sum();
    for c in chunks {
        for (s, v) in acc.iter_mut().zip(c) {
            let v = v.to_f64_exact();
            *s += v * v;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The exponent `e` with `max |x| · 2^-e` in `[1, 2)` when `max |x|` lies outside
/// `[2^-30, 2^30]`, else 0 (no scaling): squares and Gram matrices of the scaled tensor stay
/// far from overflow and underflow in `f32`.
fn scale_exponent<T: Real>(x: &ArrayViewD<'_, T>) -> i32 {
    let max = x.iter().fold(0.0f64, |m, v| m.max(v.to_f64_exact().abs()));
    if max == 0.0 || !max.is_finite() || (2f64.powi(-30)..=2f64.powi(30)).contains(&max) {
        return 0;
    }
    max.log2().floor() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{randn, rng};
    use ndarray::ArrayD;

    /// Random data of shape `shape` with a low multilinear rank part and some noise.
    fn data(shape: &[usize], seed: u64, noise: f64) -> ArrayD<f64> {
        let mut g = rng(seed);
        let small: Vec<usize> = shape.iter().map(|&d| d.div_ceil(2)).collect();
        let core = randn::<f64>(&small, &mut g);
        let factors: Vec<ndarray::Array2<f64>> = shape
            .iter()
            .zip(&small)
            .map(|(&d, &k)| crate::random::randn2::<f64>(d, k, &mut g))
            .collect();
        let views: Vec<_> = factors.iter().map(|f| f.view()).collect();
        let mut x = crate::tensor::multi_mode_dot(&core.view(), &views, None, None, false).unwrap();
        x.scaled_add(noise, &randn::<f64>(shape, &mut g));
        x
    }

    /// The error from the core (Tucker) and from CP-ALS's own sums equals the error of the
    /// reconstruction to 1e-6 relative wherever the guard accepts it, on random cases.
    #[test]
    fn fast_errors_equal_reconstructed_errors() {
        let cases: [(&[usize], &[usize]); 4] = [
            (&[12, 10, 3, 3], &[4, 3]),
            (&[9, 8, 7], &[3, 3, 3]),
            (&[20, 6, 5], &[5, 2, 2]),
            (&[16, 16, 3, 3], &[6, 6]),
        ];
        let mut accepted = 0;
        for (i, (shape, rank)) in cases.into_iter().enumerate() {
            for (j, noise) in [1.0, 0.1, 0.01].into_iter().enumerate() {
                let x = data(shape, 10 * i as u64 + j as u64, noise);
                let xv = x.view();
                let modes: Vec<usize> = (0..rank.len()).collect();
                let t = tucker(
                    &xv,
                    &TuckerOptions::new(rank.to_vec())
                        .with_modes(modes)
                        .with_n_iter_max(5),
                )
                .unwrap();
                let fast = tucker_error_from_core(sq_norm(&xv), &t.core.view());
                let slow = relative_error(&xv, &t.reconstruct().unwrap().view()).unwrap();
                assert!(fast_error_resolves::<f64>(fast), "{shape:?}: Tucker error {fast}");
                assert!(
                    (fast - slow).abs() <= 1e-6 * slow,
                    "{shape:?}: Tucker {fast} vs {slow}"
                );
                for r in [2, 5] {
                    let cp = parafac(&xv, &CpOptions::new(r).with_n_iter_max(10)).unwrap();
                    let fast = cp.convergence.rel_error();
                    let slow = relative_error(&xv, &cp.reconstruct().unwrap().view()).unwrap();
                    if fast_error_resolves::<f64>(fast) {
                        accepted += 1;
                        assert!(
                            (fast - slow).abs() <= 1e-6 * slow,
                            "{shape:?}: CP {fast} vs {slow}"
                        );
                    }
                }
            }
        }
        assert!(accepted >= 20, "the guard accepted only {accepted} CP errors");
    }

    /// Exact low-rank data: the fast error is pure rounding, and the guard refuses it; in f32 it
    /// is never accepted.
    #[test]
    fn the_guard_refuses_errors_below_the_resolution() {
        let x = data(&[10, 8, 6], 3, 0.0);
        let t = tucker(&x.view(), &TuckerOptions::new(vec![5, 4, 3]).with_n_iter_max(2)).unwrap();
        let fast = tucker_error_from_core(sq_norm(&x.view()), &t.core.view());
        assert!(!fast_error_resolves::<f64>(fast), "{fast}");
        assert!(fast_error_resolves::<f64>(1e-3));
        assert!(!fast_error_resolves::<f32>(0.9));
        assert!(!fast_error_resolves::<f64>(f64::NAN));
        assert_eq!(tucker_error_from_core::<f64>(0.0, &x.view()), 0.0);
    }

    /// The lane-wise sum of squares equals the plain sum, on contiguous and strided views.
    #[test]
    fn sq_norm_matches_the_plain_sum() {
        let x = randn::<f64>(&[7, 5, 3], &mut rng(4));
        let plain: f64 = x.iter().map(|v| v * v).sum();
        assert!((sq_norm(&x.view()) - plain).abs() <= 1e-12 * plain);
        let t = x.view().reversed_axes();
        assert!((sq_norm(&t) - plain).abs() <= 1e-12 * plain);
        let sl = x.slice(ndarray::s![.., 1.., ..]).into_dyn();
        let want: f64 = sl.iter().map(|v| v * v).sum();
        assert!((sq_norm(&sl) - want).abs() <= 1e-12 * want);
    }

    /// A tensor scaled by 2^100 is fitted exactly as the unscaled one, its core scaled back.
    #[test]
    fn huge_entries_are_fitted_by_exact_scaling() {
        let x = data(&[8, 6, 5], 7, 0.1);
        let big = x.mapv(|v| v * 2f64.powi(100));
        let opts = FitOptions {
            method: Method::Tucker,
            modes: vec![0, 1, 2],
            ranks: vec![3, 3, 2],
            iter: IterOptions::default(),
            init: Init::Svd,
            progress: Progress::none(),
        };
        let a = fit(&x.view(), &opts).unwrap();
        let b = fit(&big.view(), &opts).unwrap();
        assert!(
            (a.rel_error - b.rel_error).abs() <= 1e-12,
            "{} {}",
            a.rel_error,
            b.rel_error
        );
        let (Fit::Tucker(ta), Fit::Tucker(tb)) = (&a.decomposition, &b.decomposition) else {
            panic!("Tucker expected");
        };
        for (u, v) in ta.core.iter().zip(&tb.core) {
            assert!((u * 2f64.powi(100) - v).abs() <= 1e-9 * v.abs().max(2f64.powi(100)));
        }
    }
}
