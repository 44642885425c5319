//! Tensor algebra on `ndarray` tensors: unfolding and folding, mode-n products, the paper's
//! generalized mode-n product (Definition 1), Kronecker and Khatri–Rao products, norms.
//!
//! # Unfolding convention
//! `gbtd` uses the **row-major** mode-n unfolding, the same as TensorLy:
//! `unfold(X, n)` moves mode `n` to the front and reshapes in C order, so
//! `X_(n)[i_n, j]` with `j = Σ_{k≠n} i_k · Π_{m>k, m≠n} d_m` (the remaining modes in increasing
//! order, the last one varying fastest). With this convention a Tucker tensor satisfies
//! `X_(n) = A_n · G_(n) · (A_0 ⊗ … ⊗ A_{n-1} ⊗ A_{n+1} ⊗ … ⊗ A_{N-1})ᵀ`
//! and a CP tensor `X_(n) = A_n · diag(w) · khatri_rao([A_k]_{k≠n})ᵀ`, the matrices taken in
//! increasing mode order. (Kolda & Bader use the column-major unfolding, which reverses the order
//! of the Kronecker factors.) Modes are numbered from 0.
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, Axis, IxDyn, Zip};

use crate::error::{GbtdError, Result};
use crate::real::Real;

/// Checks a list of modes for a tensor of order `ndim`: non-empty, every mode below `ndim`, no
/// mode listed twice. This is the one check of mode lists in the crate; every mistake is a
/// [`GbtdError::Mode`].
pub fn validate_modes(modes: &[usize], ndim: usize) -> Result<()> {
    if modes.is_empty() {
        return Err(GbtdError::Mode("no mode given".into()));
    }
    let mut seen = vec![false; ndim];
    for &m in modes {
        if m >= ndim {
            return Err(GbtdError::Mode(format!(
                "mode {m} out of range for a tensor of order {ndim} (modes are 0..{ndim})"
            )));
        }
        if std::mem::replace(&mut seen[m], true) {
            return Err(GbtdError::Mode(format!("mode {m} listed twice in {modes:?}")));
        }
    }
    Ok(())
}

/// The factorized modes: `modes` checked by [`validate_modes`], or all modes `0..ndim` when
/// `None`.
pub(crate) fn resolve_modes(modes: Option<&[usize]>, ndim: usize) -> Result<Vec<usize>> {
    match modes {
        Some(m) => {
            validate_modes(m, ndim)?;
            Ok(m.to_vec())
        }
        None => Ok((0..ndim).collect()),
    }
}

/// Checks that `mode` is a mode of a tensor of order `ndim` ([`validate_modes`] of one mode).
pub(crate) fn check_mode(ndim: usize, mode: usize) -> Result<()> {
    validate_modes(&[mode], ndim)
}

/// Mode-`mode` unfolding `X_(mode)` of shape `(d_mode, Π_{k≠mode} d_k)` (row-major convention,
/// see the module documentation).
pub fn unfold<T: Real>(x: &ArrayViewD<'_, T>, mode: usize) -> Result<Array2<T>> {
    check_mode(x.ndim(), mode)?;
    let dn = x.shape()[mode];
    let rest: usize = x
        .shape()
        .iter()
        .enumerate()
        .filter(|&(k, _)| k != mode)
        .map(|(_, &d)| d)
        .product();
    let mut moved = x.view();
    // Move `mode` to the front keeping the others in order.
    for k in (0..mode).rev() {
        moved.swap_axes(k, k + 1);
    }
    let owned = moved.as_standard_layout().into_owned();
    Ok(owned.into_shape_with_order((dn, rest))?)
}

/// Inverse of [`unfold`]: folds a `(shape[mode], Π_{k≠mode} shape[k])` matrix back into a tensor
/// of the given `shape`.
pub fn fold<T: Real>(m: &ArrayView2<'_, T>, mode: usize, shape: &[usize]) -> Result<ArrayD<T>> {
    check_mode(shape.len(), mode)?;
    let rest: usize = shape
        .iter()
        .enumerate()
        .filter(|&(k, _)| k != mode)
        .map(|(_, &d)| d)
        .product();
    if m.dim() != (shape[mode], rest) {
        return Err(GbtdError::Shape(format!(
            "cannot fold a {:?} matrix along mode {mode} into shape {shape:?}",
            m.dim()
        )));
    }
    let mut moved_shape = vec![shape[mode]];
    moved_shape.extend(
        shape
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != mode)
            .map(|(_, &d)| d),
    );
    let t = m
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&moved_shape))?;
    let mut t = t;
    for k in 0..mode {
        t.swap_axes(k, k + 1);
    }
    Ok(t.as_standard_layout().into_owned())
}

/// Mode-n product `Y = X ×_mode A` with `A` of shape `(J, d_mode)`:
/// `Y(i_0,…,j,…,i_{N-1}) = Σ_{i_mode} A(j, i_mode) · X(i_0,…,i_mode,…,i_{N-1})`.
///
/// Computed without permuting `X`: viewing `X` as `(P, d_mode, Q)` (P and Q the products of the
/// dimensions before and after `mode`), it is `P` matrix products `A · X[p]`, a single GEMM when
/// `mode` is the first or the last mode.
pub fn mode_dot<T: Real>(x: &ArrayViewD<'_, T>, a: &ArrayView2<'_, T>, mode: usize) -> Result<ArrayD<T>> {
    check_mode(x.ndim(), mode)?;
    let shape = x.shape();
    let dn = shape[mode];
    if a.ncols() != dn {
        return Err(GbtdError::Shape(format!(
            "mode-{mode} product: matrix has {} columns but the tensor's mode {mode} has size {dn}",
            a.ncols()
        )));
    }
    let j = a.nrows();
    let p: usize = shape[..mode].iter().product();
    let q: usize = shape[mode + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape[mode] = j;
    let xs = x.as_standard_layout();
    let x3 = xs.view().into_shape_with_order((p, dn, q))?;
    let mut y = ArrayD::<T>::zeros(IxDyn(&out_shape));
    {
        let mut y3 = y.view_mut().into_shape_with_order((p, j, q))?;
        if q == 1 {
            // Y(p, j) = Σ_i X(p, i) A(j, i): one GEMM.
            let x2 = x3.index_axis(Axis(2), 0);
            let mut y2 = y3.index_axis_mut(Axis(2), 0);
            general_mat_mul(T::one(), &x2, &a.t(), T::zero(), &mut y2);
        } else {
            for (xp, mut yp) in x3.outer_iter().zip(y3.outer_iter_mut()) {
                general_mat_mul(T::one(), a, &xp, T::zero(), &mut yp);
            }
        }
    }
    Ok(y)
}

/// Multi-mode product `X ×_{m_0} A_0 ×_{m_1} A_1 …` over `modes` (all modes `0..N` when `None`),
/// skipping the factor at position `skip` if given. With `transpose` the factors are applied
/// transposed (`×_m A_mᵀ`), which projects onto orthonormal factors as in Tucker.
///
/// The products commute (distinct modes), so they are applied in the order that shrinks the
/// tensor fastest.
pub fn multi_mode_dot<T: Real>(
    x: &ArrayViewD<'_, T>,
    factors: &[ArrayView2<'_, T>],
    modes: Option<&[usize]>,
    skip: Option<usize>,
    transpose: bool,
) -> Result<ArrayD<T>> {
    let all: Vec<usize> = (0..factors.len()).collect();
    let modes = modes.unwrap_or(&all);
    if modes.len() != factors.len() {
        return Err(GbtdError::Shape(format!(
            "{} factors given for {} modes",
            factors.len(),
            modes.len()
        )));
    }
    if factors.is_empty() {
        return Ok(x.to_owned());
    }
    validate_modes(modes, x.ndim())?;
    let mut order: Vec<usize> = (0..factors.len()).filter(|&i| Some(i) != skip).collect();
    // Ratio out/in of each product; smaller first.
    let ratio = |i: usize| {
        let f = &factors[i];
        let (outd, ind) = if transpose {
            (f.ncols(), f.nrows())
        } else {
            (f.nrows(), f.ncols())
        };
        outd as f64 / ind.max(1) as f64
    };
    order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
    let mut cur: Option<ArrayD<T>> = None;
    for i in order {
        let f = if transpose {
            factors[i].t()
        } else {
            factors[i].view()
        };
        let next = match &cur {
            None => mode_dot(x, &f, modes[i])?,
            Some(c) => mode_dot(&c.view(), &f, modes[i])?,
        };
        cur = Some(next);
    }
    Ok(cur.unwrap_or_else(|| x.to_owned()))
}

/// An elementwise operation σ for the generalized mode-n product (Definition 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// σ(x) = x: the generalized product is the ordinary mode-n product.
    #[default]
    Identity,
    /// σ(x) = max(x, 0).
    Relu,
}

impl Activation {
    /// Applies σ to one value.
    pub fn apply<T: Real>(self, v: T) -> T {
        match self {
            Activation::Identity => v,
            Activation::Relu => {
                if v > T::zero() {
                    v
                } else {
                    T::zero()
                }
            }
        }
    }
}

/// The generalized mode-n product `G ×_n^σ A = σ(G ×_n A)` of the paper's Definition 1, with any
/// elementwise `sigma` (use [`Activation::apply`] for identity or ReLU).
pub fn generalized_mode_dot<T: Real, F: Fn(T) -> T>(
    g: &ArrayViewD<'_, T>,
    a: &ArrayView2<'_, T>,
    mode: usize,
    sigma: F,
) -> Result<ArrayD<T>> {
    let mut y = mode_dot(g, a, mode)?;
    y.mapv_inplace(sigma);
    Ok(y)
}

/// Kronecker product `A ⊗ B` (`(I·K) × (J·L)` for `A: I×J`, `B: K×L`), row `i·K + k`, column
/// `j·L + l`.
pub fn kron<T: Real>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>) -> Array2<T> {
    ndarray::linalg::kron(a, b)
}

/// Khatri–Rao (column-wise Kronecker) product of matrices sharing their column count `R`,
/// skipping position `skip` if given. Row ordering follows the row-major convention: the first
/// matrix's row index varies slowest, matching TensorLy's `khatri_rao`.
pub fn khatri_rao<T: Real>(matrices: &[ArrayView2<'_, T>], skip: Option<usize>) -> Result<Array2<T>> {
    let used: Vec<ArrayView2<'_, T>> = matrices
        .iter()
        .enumerate()
        .filter(|&(i, _)| Some(i) != skip)
        .map(|(_, m)| m.view())
        .collect();
    let Some(first) = used.first() else {
        return Err(GbtdError::Empty("khatri_rao of no matrices".into()));
    };
    let r = first.ncols();
    if let Some(bad) = used.iter().find(|m| m.ncols() != r) {
        return Err(GbtdError::Shape(format!(
            "khatri_rao: all matrices need {r} columns, one has {}",
            bad.ncols()
        )));
    }
    let mut acc: Array2<T> = first.to_owned();
    for m in &used[1..] {
        let (ra, rb) = (acc.nrows(), m.nrows());
        let mut next = Array2::<T>::zeros((ra * rb, r));
        // Row i·rb + j is the elementwise product of row i of the accumulated product and row j of
        // `m`; written in place, without temporaries.
        for (i, arow) in acc.outer_iter().enumerate() {
            for (j, brow) in m.outer_iter().enumerate() {
                Zip::from(next.row_mut(i * rb + j))
                    .and(&arow)
                    .and(&brow)
                    .for_each(|o, &a, &b| *o = a * b);
            }
        }
        acc = next;
    }
    Ok(acc)
}

/// Frobenius norm `‖X‖ = sqrt(Σ x²)`, accumulated in `f64`.
pub fn norm<T: Real>(x: &ArrayViewD<'_, T>) -> T {
    T::from_f64_lossy(x.iter().map(|v| v.to_f64_exact().powi(2)).sum::<f64>().sqrt())
}

/// Inner product `⟨X, Y⟩ = Σ x·y` of two tensors of equal shape, accumulated in `f64`.
pub fn inner<T: Real>(x: &ArrayViewD<'_, T>, y: &ArrayViewD<'_, T>) -> Result<T> {
    if x.shape() != y.shape() {
        return Err(GbtdError::Shape(format!(
            "inner product of shapes {:?} and {:?}",
            x.shape(),
            y.shape()
        )));
    }
    let s: f64 = x
        .iter()
        .zip(y.iter())
        .map(|(a, b)| a.to_f64_exact() * b.to_f64_exact())
        .sum();
    Ok(T::from_f64_lossy(s))
}

/// Relative error `‖X − Y‖ / ‖X‖` (or the absolute error when `‖X‖ = 0`), accumulated in `f64`.
pub fn relative_error<T: Real>(x: &ArrayViewD<'_, T>, y: &ArrayViewD<'_, T>) -> Result<f64> {
    if x.shape() != y.shape() {
        return Err(GbtdError::Shape(format!(
            "relative error of shapes {:?} and {:?}",
            x.shape(),
            y.shape()
        )));
    }
    let (num, den) = match (x.as_slice(), y.as_slice()) {
        (Some(a), Some(b)) => error_sums(a, b),
        _ => x
            .iter()
            .zip(y.iter())
            .fold((0.0f64, 0.0f64), |(num, den), (a, b)| {
                let (a, b) = (a.to_f64_exact(), b.to_f64_exact());
                (num + (a - b) * (a - b), den + a * a)
            }),
    };
    Ok(if den > 0.0 { (num / den).sqrt() } else { num.sqrt() })
}

/// `(Σ (aᵢ − bᵢ)², Σ aᵢ²)` in `f64` over two slices of equal length, with eight independent
/// partial sums so that the loop vectorises instead of waiting on one accumulator.
fn error_sums<T: Real>(a: &[T], b: &[T]) -> (f64, f64) {
    const LANES: usize = 8;
    let (mut num, mut den) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for i in 0..LANES {
            let (p, q) = (xa[i].to_f64_exact(), xb[i].to_f64_exact());
            num[i] += (p - q) * (p - q);
            den[i] += p * p;
        }
    }
    let (mut n, mut d) = (num.iter().sum::<f64>(), den.iter().sum::<f64>());
    for (p, q) in ra.iter().zip(rb) {
        let (p, q) = (p.to_f64_exact(), q.to_f64_exact());
        n += (p - q) * (p - q);
        d += p * p;
    }
    (n, d)
}

/// Checks that a tensor is non-empty and finite, naming it `what` in the error.
pub fn validate_tensor<T: Real>(x: &ArrayViewD<'_, T>, what: &str) -> Result<()> {
    if x.ndim() == 0 || x.is_empty() {
        return Err(GbtdError::Empty(format!("{what} has shape {:?}", x.shape())));
    }
    let bad = match x.as_slice() {
        Some(s) => s.iter().position(|v| !v.finite()),
        None => x.iter().position(|v| !v.finite()),
    };
    if let Some(pos) = bad {
        return Err(GbtdError::NonFinite(format!(
            "{what} holds a NaN or infinite value (flat index {pos})"
        )));
    }
    Ok(())
}
