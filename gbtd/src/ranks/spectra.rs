//! The squared singular values of a kernel's mode unfoldings: everything the rank rules need to
//! know about a layer's data.

use ndarray::ArrayViewD;

use crate::error::{GbtdError, Result};
use crate::linalg::{gram, sym_eigenvalues};
use crate::ranks::vbmf_rank;
use crate::real::Real;
use crate::tensor::{unfold, validate_modes};
use crate::tucker::unfolding_gram;

/// What the rank rules need to know about one layer (computed once per kernel).
///
/// For a grouped conv (`groups = G > 1`, stored kernel `(out, in/G, kh, kw)`) whose groups are
/// compressed with the same ranks, `sq_singular_values[n][k]` is the pooled `Σ_g s_{g,n,k}²` over
/// the groups' kernels `(out/G, in/G, kh, kw)`: then the energy kept by uniform ranks, and the
/// truncated-HOSVD error bound of all groups together, are read off the pooled values exactly as
/// for one kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpectra {
    /// The layer's name (the module name, e.g. `layer1.0.conv2`).
    pub name: String,
    /// The kernel's shape as stored, PyTorch layout `(out, in/groups, kh, kw)`, or `(out, in)`
    /// for a linear layer.
    pub shape: Vec<usize>,
    /// The factorized modes, e.g. `[0, 1]`.
    pub modes: Vec<usize>,
    /// The conv's groups (1 for a dense conv or a matrix).
    pub groups: usize,
    /// Per factorized mode, the squared singular values `s_k²` of the mode-n unfolding
    /// `X_(n)` (`d_n × Π_{j≠n} d_j`) of each group's kernel, pooled over the groups, in
    /// decreasing order; `min(d_n, Π_{j≠n} d_j)` of them.
    pub sq_singular_values: Vec<Vec<f64>>,
    /// For `groups > 1`: each group's own squared singular values (`[group][mode][k]`), which
    /// per-matrix rules (VBMF) need; empty for `groups = 1`.
    pub group_sq_singular_values: Vec<Vec<Vec<f64>>>,
}

impl LayerSpectra {
    /// The spectra of `x` on `modes`, computed in `f64` whatever `T` is.
    ///
    /// For a wide unfolding (`d_n ≤ Π_{j≠n} d_j`, the usual case for a conv kernel) the squared
    /// singular values are the eigenvalues of the Gram matrix `X_(n) X_(n)ᵀ`
    /// ([`unfolding_gram`], BLAS `syrk`), without eigenvectors (LAPACK `dsytrd` + `dsterf`); for a
    /// tall one those of `X_(n)ᵀ X_(n)`. Eigenvalues that rounding makes slightly negative are
    /// set to 0.
    ///
    /// Errors: invalid `modes`, an empty tensor, or NaN/infinite entries.
    pub fn of<T: Real>(name: &str, x: &ArrayViewD<'_, T>, modes: &[usize]) -> Result<Self> {
        Ok(LayerSpectra {
            name: name.to_string(),
            shape: x.shape().to_vec(),
            modes: modes.to_vec(),
            groups: 1,
            sq_singular_values: sq_spectra(name, x, modes)?,
            group_sq_singular_values: Vec::new(),
        })
    }

    /// The pooled spectra of the conv kernel `x` `(out, in/groups, kh, kw)` of a conv with
    /// `groups` groups, on modes `[0, 1]` of each group's kernel `x[g·out/G..(g+1)·out/G]` (see
    /// the type's documentation); [`LayerSpectra::of`] on modes `[0, 1]` for `groups = 1`.
    ///
    /// Errors: `groups` of 0 or not dividing `out`, a kernel that is not 4-D, an empty tensor,
    /// or NaN/infinite entries.
    pub fn of_grouped<T: Real>(name: &str, x: &ArrayViewD<'_, T>, groups: usize) -> Result<Self> {
        if groups <= 1 {
            return LayerSpectra::of(name, x, &[0, 1]);
        }
        if x.ndim() != 4 || !x.shape()[0].is_multiple_of(groups) {
            return Err(GbtdError::Shape(format!(
                "{name}: a conv kernel (out, in/groups, kh, kw) with out divisible by {groups} groups is needed, got shape {:?}",
                x.shape()
            )));
        }
        let per = x.shape()[0] / groups;
        let mut pooled: Vec<Vec<f64>> = Vec::new();
        let mut each = Vec::with_capacity(groups);
        for g in 0..groups {
            let xg = x.slice_axis(ndarray::Axis(0), ndarray::Slice::from(g * per..(g + 1) * per));
            let sq = sq_spectra(name, &xg, &[0, 1])?;
            if pooled.is_empty() {
                pooled = sq.iter().map(|v| vec![0.0; v.len()]).collect();
            }
            for (p, v) in pooled.iter_mut().zip(&sq) {
                for (a, b) in p.iter_mut().zip(v) {
                    *a += b;
                }
            }
            each.push(sq);
        }
        Ok(LayerSpectra {
            name: name.to_string(),
            shape: x.shape().to_vec(),
            modes: vec![0, 1],
            groups,
            sq_singular_values: pooled,
            group_sq_singular_values: each,
        })
    }

    /// The ranks [`vbmf_rank`] retains on the unfoldings of modes `[0, 1]` (per group for a
    /// grouped conv, the largest over the groups).
    pub fn vbmf_ranks(&self) -> [usize; 2] {
        let dims = |n: usize| self.unfolding_dims(n);
        let of = |sq: &[Vec<f64>], n: usize| {
            let s: Vec<f64> = sq[n].iter().map(|v| v.sqrt()).collect();
            let (rows, cols) = dims(n);
            vbmf_rank(&s, rows, cols).0
        };
        let mut r = [0usize; 2];
        for (n, rn) in r.iter_mut().enumerate() {
            *rn = if self.group_sq_singular_values.is_empty() {
                of(&self.sq_singular_values, n)
            } else {
                self.group_sq_singular_values
                    .iter()
                    .map(|g| of(g, n))
                    .max()
                    .unwrap_or(0)
            };
        }
        r
    }

    /// `‖X‖² = Σ_k s_k²` (the same for every mode; taken from the first).
    pub fn total_energy(&self) -> f64 {
        self.sq_singular_values.first().map_or(0.0, |s| s.iter().sum())
    }

    /// `Σ_{k≥r} s_k²` of factorized mode number `i` (an index into `modes`): the energy a
    /// rank-`r` truncation of that unfolding discards.
    pub fn discarded(&self, i: usize, r: usize) -> f64 {
        self.sq_singular_values[i].iter().skip(r).sum()
    }

    /// The smallest rank `r ≥ 1` with `Σ_{k<r} s_k² ≥ f · Σ_k s_k²` for factorized mode number
    /// `i`, or `None` for an all-zero unfolding.
    ///
    /// The comparison allows `10⁻¹² · Σ_k s_k²` for rounding: the eigenvalues of the Gram
    /// matrix carry absolute errors of the order of `ε · s_0²`, so that an exactly rank-`r`
    /// kernel has tiny non-zero `s_k²` beyond `r`, which `energy:1` must not count.
    pub fn energy_rank(&self, i: usize, f: f64) -> Option<usize> {
        let s = &self.sq_singular_values[i];
        let total: f64 = s.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let target = f * total - 1e-12 * total;
        let mut cum = 0.0;
        for (k, v) in s.iter().enumerate() {
            cum += v;
            if cum >= target {
                return Some(k + 1);
            }
        }
        // Rounding (f = 1): all components.
        Some(s.len())
    }

    /// The dimensions `(rows, cols)` of the unfolding of factorized mode number `i` (of one
    /// group's kernel for a grouped conv).
    pub fn unfolding_dims(&self, i: usize) -> (usize, usize) {
        let mut shape = self.shape.clone();
        shape[0] /= self.groups.max(1);
        let d = shape[self.modes[i]];
        (d, shape.iter().product::<usize>() / d)
    }
}

/// Per mode of `modes`, the squared singular values of `x`'s unfolding, in decreasing order, in
/// `f64` (see [`LayerSpectra::of`]).
fn sq_spectra<T: Real>(name: &str, x: &ArrayViewD<'_, T>, modes: &[usize]) -> Result<Vec<Vec<f64>>> {
    validate_modes(modes, x.ndim())?;
    if x.is_empty() {
        return Err(GbtdError::Empty(format!(
            "{name}: kernel of shape {:?} has no elements",
            x.shape()
        )));
    }
    if x.iter().any(|v| !v.finite()) {
        return Err(GbtdError::NonFinite(format!(
            "{name}: the kernel holds NaN or infinite values"
        )));
    }
    // Squares of f32 values near 3e38 overflow f32 but not f64.
    let xf = x.mapv(|v| v.to_f64_exact());
    let mut sq = Vec::with_capacity(modes.len());
    for &m in modes {
        let d = x.shape()[m];
        let rest = x.len() / d;
        let g = if d <= rest {
            unfolding_gram(&xf.view(), m)?
        } else {
            gram(&unfold(&xf.view(), m)?.view(), true)?
        };
        let mut vals = sym_eigenvalues(g)?;
        vals.reverse();
        sq.push(vals.into_iter().map(|v| v.max(0.0)).collect());
    }
    Ok(sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 kernels with entries near f32::MAX (whose squares overflow f32) give the spectra of
    /// the unscaled kernel times the squared scale; NaN is refused.
    #[test]
    fn huge_f32_kernels_and_non_finite_input() {
        let small = crate::random::randn::<f32>(&[6, 5, 3, 3], &mut crate::random::rng(3));
        let m = small.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
        let scale = 3e38f32 / m;
        let big = small.mapv(|v| v * scale);
        let a = LayerSpectra::of("s", &small.view(), &[0, 1]).unwrap();
        let b = LayerSpectra::of("b", &big.view(), &[0, 1]).unwrap();
        let s2 = (scale as f64) * (scale as f64);
        for (x, y) in a
            .sq_singular_values
            .iter()
            .flatten()
            .zip(b.sq_singular_values.iter().flatten())
        {
            assert!(
                (y / s2 - x).abs() <= 1e-6 * a.sq_singular_values[0][0],
                "{x} vs {}",
                y / s2
            );
        }
        let mut bad = small.clone();
        bad[[0, 0, 0, 0]] = f32::NAN;
        let e = LayerSpectra::of("n", &bad.view(), &[0, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
    }
}
