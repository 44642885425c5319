//! Analytic empirical variational Bayesian matrix factorization (EVBMF): the rank it retains and
//! the noise variance it estimates.
//!
//! References:
//! - S. Nakajima, M. Sugiyama, S. D. Babacan, R. Tomioka, "Global analytic solution of
//!   fully-observed variational Bayesian matrix factorization", JMLR 14 (2013) 1–37: the EVB
//!   solution is a shrinkage of each singular value, zero below the threshold
//!   `γ̲ = σ √(M (1+τ̲)(1+α/τ̲))`.
//! - S. Nakajima, R. Tomioka, M. Sugiyama, S. D. Babacan, "Condition for perfect dimensionality
//!   recovery by variational Bayesian PCA", JMLR 16 (2015): the noise variance `σ²` minimising
//!   the free energy, a one-dimensional problem on an interval given in closed form.
//!
//! The widely used Python port (`VBMF.EVBMF`, CasvandenBogaard/VBMF, which
//! pytorch-tensor-decompositions calls on the mode-0 and mode-1 unfoldings of a kernel) follows
//! the same formulas with two shortcuts that are not taken here: it uses `τ̲ ≈ 2.5129 √α` (exact
//! only for `α = 1`; for `α = 1/9` it is 3% low, so its threshold is about 1% lower and it
//! can keep one more component at the margin), and it minimises over `σ²` with SciPy's bounded
//! Brent search at an absolute tolerance of `10⁻⁵`, which depends on the scale of the matrix (a
//! conv kernel's `σ²` is often below `10⁻⁴`). Here `τ̲` is the root of its defining equation and
//! the search runs over `log σ²` (scale-invariant), first on a grid and then refined.

/// `Φ(z) = log(1+z)/z − 1/2`, decreasing from `1/2` (at `z → 0`) through 0 (at `z ≈ 2.5129`).
fn phi(z: f64) -> f64 {
    if z < 1e-8 {
        0.5 - z / 2.0
    } else {
        z.ln_1p() / z - 0.5
    }
}

/// `τ̲(α)`: the unique zero of the decreasing function `Ξ(τ; α) = Φ(τ) + Φ(τ/α)` (`0 < α ≤ 1`),
/// by bisection. `τ̲(1) ≈ 2.5129`; `√α < τ̲(α) < 2.5129`.
pub fn tau_threshold(alpha: f64) -> f64 {
    let xi = |t: f64| phi(t) + phi(t / alpha);
    // Ξ(0+) = 1 > 0 and Ξ(3) < 0 for every α ≤ 1 (Φ(3) < 0 and Φ(3/α) ≤ Φ(3)).
    let (mut lo, mut hi) = (0.0f64, 3.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if xi(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-15 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// `τ(x; α) = ½ (x − (1+α) + √((x − (1+α))² − 4α))`, defined for `x ≥ (1+√α)²`.
fn tau(x: f64, alpha: f64) -> f64 {
    let b = x - (1.0 + alpha);
    0.5 * (b + (b * b - 4.0 * alpha).max(0.0).sqrt())
}

/// `ψ₁(x) = log(τ+1) + α log(τ/α + 1) − τ` with `τ = τ(x; α)`: the free-energy difference of a
/// component above the threshold. It is 0 at `x = x̄` (the definition of `τ̲`) and negative above.
fn psi1(x: f64, alpha: f64) -> f64 {
    let t = tau(x, alpha);
    t.ln_1p() + alpha * (t / alpha).ln_1p() - t
}

/// The free energy as a function of `σ²`, up to terms that do not depend on `σ²`:
/// `Σ_h ψ(γ_h²/(Mσ²))` with `ψ(x) = x − log x + [x > x̄] ψ₁(x)` (Nakajima et al. 2015), written
/// as `Σ_h γ_h²/(Mσ²) + L log σ² + Σ_{x_h > x̄} ψ₁(x_h)` so that zero singular values are no
/// special case.
fn objective(sigma2: f64, sq: &[f64], l: usize, m: usize, alpha: f64, xbar: f64) -> f64 {
    let mf = m as f64;
    let mut f = (l as f64) * sigma2.ln();
    for &g2 in sq {
        let x = g2 / (mf * sigma2);
        f += x;
        if x > xbar {
            f += psi1(x, alpha);
        }
    }
    f
}

/// Analytic EVBMF of an `rows × cols` matrix from its singular values (Nakajima, Sugiyama,
/// Babacan, Tomioka 2013): the number of retained components and the estimated noise variance
/// `σ²` (of the entries of the noise matrix `E` in `Y = U Vᵀ + E`).
///
/// `singular_values` are all `min(rows, cols)` singular values (any order; missing trailing ones
/// count as 0, extra ones are ignored). With `L = min(rows, cols)`, `M = max(rows, cols)`
/// (transposing does not change the problem), `α = L/M`:
/// 1. `σ²` minimises the free energy
///    `Σ_h γ_h²/(Mσ²) + L log σ² + Σ_{x_h > x̄} ψ₁(x_h)` (`x_h = γ_h²/(Mσ²)`, up to terms
///    independent of `σ²`; `ψ₁(x) = log(τ+1) + α log(τ/α + 1) − τ` with
///    `τ = ½(x − (1+α) + √((x − (1+α))² − 4α))`) on `[σ̲², σ̄²]`, with
///    `σ̄² = Σ_h γ_h² / (LM)` and
///    `σ̲² = max(γ²_{ξ+1} / (M x̄), Σ_{h>ξ} γ_h² / (M (L − ξ)))`, `ξ = ⌈L/(1+α)⌉ − 1`
///    (1-based `γ`), `x̄ = (1+τ̲)(1+α/τ̲)` with `τ̲` from [`tau_threshold`](crate::ranks::tau_threshold).
///    The minimum is found over `log σ²` on a 400-point grid, then by golden-section search in
///    the bracket around the best grid point.
/// 2. A component is retained when `γ_h > √(M σ² x̄)`.
///
/// A zero matrix gives `(0, 0.0)`.
pub fn vbmf_rank(singular_values: &[f64], rows: usize, cols: usize) -> (usize, f64) {
    let (l, m) = if rows <= cols { (rows, cols) } else { (cols, rows) };
    if l == 0 {
        return (0, 0.0);
    }
    let mut sq: Vec<f64> = singular_values.iter().take(l).map(|s| s * s).collect();
    sq.sort_by(|a, b| b.total_cmp(a));
    sq.resize(l, 0.0);
    let total: f64 = sq.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return (0, 0.0);
    }
    let (lf, mf) = (l as f64, m as f64);
    let alpha = lf / mf;
    let t = tau_threshold(alpha);
    let xbar = (1.0 + t) * (1.0 + alpha / t);

    // ξ = ⌈L/(1+α)⌉ − 1 (≤ L − 1), the largest number of components EVB can retain.
    let xi = ((lf / (1.0 + alpha)).ceil() as usize)
        .saturating_sub(1)
        .min(l - 1);
    let tail = &sq[xi..];
    let upper = total / (lf * mf);
    let lower = (sq[xi] / (mf * xbar))
        .max(tail.iter().sum::<f64>() / (mf * tail.len() as f64))
        .min(upper);
    let sigma2 = if lower <= 0.0 || upper / lower <= 1.0 + 1e-12 {
        upper
    } else {
        minimise_log(|s2| objective(s2, &sq, l, m, alpha, xbar), lower, upper)
    };
    let threshold = mf * sigma2 * xbar;
    (sq.iter().filter(|&&g2| g2 > threshold).count(), sigma2)
}

/// The minimiser of `f` on `[lo, hi]` (`0 < lo < hi`), searched over `log σ²`: the best of 401
/// log-spaced points, then golden-section search between its neighbours to a relative width of
/// `10⁻¹²`. The objective is continuous but may have several local minima, hence the grid.
fn minimise_log(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    const N: usize = 400;
    let (a, b) = (lo.ln(), hi.ln());
    let at = |k: usize| a + (b - a) * k as f64 / N as f64;
    let g = |u: f64| f(u.exp());
    let best = (0..=N)
        .map(|k| (k, g(at(k))))
        .min_by(|p, q| p.1.total_cmp(&q.1))
        .map_or(0, |p| p.0);
    let (mut x0, mut x1) = (at(best.saturating_sub(1)), at((best + 1).min(N)));
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = x1 - r * (x1 - x0);
    let mut d = x0 + r * (x1 - x0);
    let (mut fc, mut fd) = (g(c), g(d));
    while x1 - x0 > 1e-12 * (1.0 + x0.abs().max(x1.abs())) {
        if fc <= fd {
            x1 = d;
            d = c;
            fd = fc;
            c = x1 - r * (x1 - x0);
            fc = g(c);
        } else {
            x0 = c;
            c = d;
            fc = fd;
            d = x0 + r * (x1 - x0);
            fd = g(d);
        }
    }
    let u = 0.5 * (x0 + x1);
    // The grid point itself when the refinement did not improve on it (a kink at the edge).
    if g(u) <= g(at(best)) {
        u.exp()
    } else {
        at(best).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_threshold_solves_its_equation_and_is_2_5129_for_square_matrices() {
        assert!((tau_threshold(1.0) - 2.5129).abs() < 1e-4);
        for alpha in [1.0, 0.5, 0.25, 1.0 / 9.0, 0.01] {
            let t = tau_threshold(alpha);
            assert!(t > alpha.sqrt() && t < 2.5129, "α = {alpha}: τ = {t}");
            // ψ₁ vanishes at the threshold x̄: log(τ+1) + α log(τ/α+1) = τ.
            let lhs = t.ln_1p() + alpha * (t / alpha).ln_1p();
            assert!((lhs - t).abs() < 1e-12 * t, "α = {alpha}");
        }
    }

    #[test]
    fn a_zero_or_empty_matrix_retains_nothing() {
        assert_eq!(vbmf_rank(&[0.0, 0.0], 2, 5), (0, 0.0));
        assert_eq!(vbmf_rank(&[], 0, 5), (0, 0.0));
    }

    #[test]
    fn transposing_changes_nothing() {
        let s = [30.0, 20.0, 3.1, 2.9, 2.5, 2.2];
        assert_eq!(vbmf_rank(&s, 6, 40), vbmf_rank(&s, 40, 6));
    }
}
