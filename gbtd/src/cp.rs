//! CP (CANDECOMP/PARAFAC) decomposition by alternating least squares.
//!
//! # Model and shapes
//! A rank-`R` CP tensor of order `N` is `X̂ = Σ_r w_r · a_{0,r} ∘ a_{1,r} ∘ ⋯ ∘ a_{N-1,r}`:
//! weights `w` (length `R`) and factors `A_n` of shape `(d_n × R)` whose columns `a_{n,r}` have
//! unit norm (a column is left at zero, with weight 0, if it vanishes). With the row-major
//! unfolding of [`crate::tensor`], `X̂_(n) = A_n · diag(w) · (A_0 ⊙ ⋯ ⊙ A_{n-1} ⊙ A_{n+1} ⊙ ⋯ ⊙ A_{N-1})ᵀ`
//! (`⊙` the Khatri–Rao product, first matrix varying slowest).
//!
//! # Algorithm (CP-ALS, Kolda & Bader 2009 §3.4; TensorLy's `parafac`)
//! Each sweep updates `n = 0, …, N-1` in turn by the exact least-squares solution of the normal
//! equations `Ã_n · V_n = M_n`, with the Hadamard product of Gram matrices
//! `V_n = ⊛_{k≠n} A_kᵀ A_k` (`R × R`) and the MTTKRP `M_n = X_(n) · (⊙_{k≠n} A_k)` (`d_n × R`),
//! solved as `Ã_n = M_n V_n⁺` ([`crate::linalg::solve_sym_right`], pseudo-inverse so that
//! rank-deficient systems stay finite). Then `w` = the column norms of `Ã_n` and `A_n = Ã_n diag(w)⁻¹`
//! (column normalisation: all the scale sits in `w`, which does not change the iterates of
//! unnormalised ALS).
//!
//! The MTTKRPs never form an unfolding, and each product with `X` serves several updates (the
//! factors it involves do not change in between), so the iterates are exactly those of plain ALS:
//! - **Order 3 with every `d_n ≥ R`** (cyclic reuse, a multi-sweep dimension tree after Ma &
//!   Solomonik 2021): right after `A_p` is updated, `C = X ×_p A_p` (`Σ_{i_p} X[…, i_p, …] A_p[i_p, r]`,
//!   no larger than `X`) is formed once; it serves the next two updates, each `M_n` being `C`
//!   contracted with the columns of the third factor. A sweep reads `X` 1.5 times.
//! - **Otherwise** (balanced split): `X` (C order) is viewed as a matrix `X_{L×R'}` whose rows run
//!   over the first modes `0..s` and columns over the last modes `s..N` (`s` balancing the two
//!   sides). One GEMM `W_L = X_{L×R'} · (A_s ⊙ ⋯ ⊙ A_{N-1})` serves the MTTKRPs of all first modes:
//!   `M_n` is `W_L`, viewed as a tensor `(d_0, …, d_{s-1}, R)`, contracted with the columns of the
//!   other first factors. A second GEMM `W_R = X_{L×R'}ᵀ · (A_0 ⊙ ⋯ ⊙ A_{s-1})` with the new first
//!   factors serves the last modes. A sweep reads `X` twice whatever `N` is.
//!
//! Small problems (below [`crate::linalg::SMALL_BLAS_WORK`] flops per product) run with OpenBLAS on
//! one thread ([`crate::openblas::SingleThreadedBlas`]); the order-3 strategy's products with `X` are
//! shared out over [`crate::parallel`] (the layout-and-BLAS engine shared with [`crate::tucker`]).
//!
//! The error `‖X − X̂‖² = ‖X‖² − 2⟨X, X̂⟩ + ‖X̂‖²` is computed without `X̂`, as TensorLy does:
//! `⟨X, X̂⟩ = Σ_{i,r} M_{N-1}[i,r] · Ã_{N-1}[i,r]` from the last MTTKRP and
//! `‖X̂‖² = wᵀ (⊛_k A_kᵀA_k) w`, in `f64`. Its resolution is about `sqrt(ε)` relative to `‖X‖`
//! (ε of the element type); compute [`crate::tensor::relative_error`] of [`Cp::reconstruct`] for
//! smaller errors.
//!
//! # Initialisation
//! - [`Init::Svd`] (TensorLy 0.10's `initialize_cp(init='svd', random_state=seed)`): `A_n` = the
//!   `min(R, d_n)` leading left singular vectors of `X_(n)`
//!   ([`crate::tucker::leading_unfolding_vectors`], signs as TensorLy's `svd_flip`), the first
//!   factor's columns scaled by the singular values. When `R > d_n` the `R − d_n` extra columns
//!   are `rng.random_sample((d_n, R − d_n))` of TensorLy's generator `rng =
//!   numpy.random.RandomState(seed)`, filled row by row, one generator for all modes in order
//!   ([`NumpyRandomState`]: MT19937 seeded like numpy, 53-bit uniform doubles on `[0, 1)`). The
//!   same `seed` thus gives TensorLy's initial factors, and the same ALS iterates.
//! - [`Init::Random`]: i.i.d. standard normal factors from the seeded generator.
//! - [`Init::Given`]: `N` matrices `(d_n × R)`.
use ndarray::linalg::{general_mat_mul, general_mat_vec_mul};
use ndarray::{Array1, Array2, ArrayD, ArrayView2, ArrayViewD, Axis, IxDyn};

use crate::error::{GbtdError, Result};
use crate::layout::{InputLayouts, Laid, sq_norm};
use crate::linalg::solve_sym_right;
use crate::openblas::SingleThreadedBlas;
use crate::options::{
    Convergence, Init, IterOptions, Progress, check_workspace, iterative_setters, product_u128,
    validate_given,
};
use crate::random::{randn2, rng};
use crate::real::Real;
use crate::tensor::validate_tensor;
use crate::tucker::leading_unfolding_vectors;

/// Options of [`parafac`].
#[derive(Debug, Clone)]
pub struct CpOptions<'a, T> {
    /// Number of rank-one components `R ≥ 1` (it may exceed the dimensions).
    pub rank: usize,
    /// Sweeps, tolerance and seed.
    pub iter: IterOptions,
    /// Initial factors (see the module documentation).
    pub init: Init<T>,
    /// Called after each sweep with the sweep number and the relative error.
    pub progress: Progress<'a>,
}

impl<T> CpOptions<'_, T> {
    /// Options for a rank-`rank` CP with SVD initialisation, the default [`IterOptions`] and no
    /// progress callback.
    pub fn new(rank: usize) -> Self {
        CpOptions {
            rank,
            iter: IterOptions::default(),
            init: Init::Svd,
            progress: Progress::none(),
        }
    }
}

iterative_setters!(CpOptions);

/// A CP decomposition `X̂ = Σ_r w_r · a_{0,r} ∘ ⋯ ∘ a_{N-1,r}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cp<T> {
    /// The weights `w` (length `R`).
    pub weights: Array1<T>,
    /// `factors[n]` is `A_n`, of shape `(d_n × R)`, with unit-norm (or zero) columns.
    pub factors: Vec<Array2<T>>,
    /// Relative errors `‖X − X̂‖/‖X‖` after the initialisation and after each sweep.
    pub convergence: Convergence,
}

impl<T: Real> Cp<T> {
    /// The full tensor `X̂`, computed as `(A_0 ⊙ ⋯ ⊙ A_{s-1}) · diag(w) · (A_s ⊙ ⋯ ⊙ A_{N-1})ᵀ`
    /// reshaped (C order) to `(d_0, …, d_{N-1})`.
    pub fn reconstruct(&self) -> Result<ArrayD<T>> {
        let shape = self.shape();
        if self.factors.len() < 2 {
            return Err(GbtdError::Shape("a CP tensor needs at least 2 factors".into()));
        }
        let r = self.weights.len();
        if self.factors.iter().any(|f| f.ncols() != r) {
            return Err(GbtdError::Shape(format!(
                "CP factors need {r} columns (the number of weights)"
            )));
        }
        let _single = SingleThreadedBlas::for_work(2.0 * shape.iter().product::<usize>() as f64 * r as f64);
        let s = balanced_split(&shape);
        let mut left = khatri_rao_rows(&self.factors[..s]);
        left *= &self.weights.view().insert_axis(ndarray::Axis(0));
        let right = khatri_rao_rows(&self.factors[s..]);
        let mut full = Array2::<T>::zeros((left.nrows(), right.nrows()));
        general_mat_mul(T::one(), &left, &right.t(), T::zero(), &mut full);
        Ok(full.into_shape_with_order(IxDyn(&shape))?)
    }

    /// Number of stored values: `R + R · Σ_n d_n`.
    pub fn n_params(&self) -> usize {
        self.weights.len() + self.factors.iter().map(|f| f.len()).sum::<usize>()
    }

    /// The shape `(d_0, …, d_{N-1})` of the represented tensor.
    pub fn shape(&self) -> Vec<usize> {
        self.factors.iter().map(|f| f.nrows()).collect()
    }

    /// The number of components `R`.
    pub fn rank(&self) -> usize {
        self.weights.len()
    }
}

/// CP decomposition of `x` (order ≥ 2) by ALS, as described in the module documentation. Runs
/// `opts.iter.n_iter_max` sweeps, stopping early when the relative error changes by less than
/// `opts.iter.tol` between two sweeps, and calls `opts.progress` after each sweep. Deterministic
/// for a given `opts.iter.seed`.
///
/// Errors: [`GbtdError::Empty`] / [`GbtdError::NonFinite`] for an empty or non-finite `x`,
/// [`GbtdError::Shape`] for an order-1 tensor or given factors of the wrong shape,
/// [`GbtdError::Rank`] for `rank = 0`, [`GbtdError::Options`] for a bad tolerance.
pub fn parafac<T: Real>(x: &ArrayViewD<'_, T>, opts: &CpOptions<'_, T>) -> Result<Cp<T>> {
    opts.iter.validate()?;
    validate_tensor(x, "CP input")?;
    let r = opts.rank;
    if r == 0 {
        return Err(GbtdError::Rank("CP rank is 0".into()));
    }
    let shape = x.shape().to_vec();
    let n = shape.len();
    if n < 2 {
        return Err(GbtdError::Shape(format!(
            "CP needs a tensor of order >= 2, got shape {shape:?}"
        )));
    }
    check_workspace(
        workspace_bytes(&shape, r, std::mem::size_of::<T>()),
        (x.len() * std::mem::size_of::<T>()) as u128,
        &format!("CP of rank {r} on shape {shape:?}"),
    )?;
    let x = x.as_standard_layout();
    let xv = x.view();
    let nx2 = sq_norm(&xv);

    // Small problems run faster with OpenBLAS on one thread (see `SingleThreadedBlas`).
    let _single = SingleThreadedBlas::for_work(2.0 * xv.len() as f64 * r as f64);
    let mut factors = init_factors(&xv, opts)?;
    let mut weights = Array1::<T>::ones(r);
    for f in factors.iter_mut() {
        weights *= &normalize_columns(f);
    }
    let mut grams: Vec<Array2<T>> = factors.iter().map(|f| f.t().dot(f)).collect();

    let mut engine = Mttkrp::new(xv, r)?;
    let mut convergence = Convergence::default();
    // The initial error, from ⟨X, X̂⟩ = Σ M_0 ⊙ A_0 diag(w); M_0 then serves the first update.
    let mut pending = Some(engine.compute(0, &factors)?);
    if let Some(m0) = &pending {
        let inner = weighted_inner(&m0.view(), &factors[0].view(), &weights);
        convergence.push(
            rel_error(nx2, inner, model_sq_norm(&grams, &weights)),
            opts.iter.tol,
        );
    }
    for _ in 0..opts.iter.n_iter_max {
        let mut last = None;
        for mode in 0..n {
            let m = match pending.take() {
                Some(m0) if mode == 0 => m0,
                _ => engine.compute(mode, &factors)?,
            };
            last = Some(update_factor(mode, m, &mut factors, &mut grams, &mut weights)?);
        }
        let inner = last.map_or(0.0, |(m, scaled)| frob_inner(&m.view(), &scaled.view()));
        convergence.iterations += 1;
        let err = rel_error(nx2, inner, model_sq_norm(&grams, &weights));
        opts.progress.sweep(convergence.iterations, err)?;
        if convergence.push(err, opts.iter.tol) {
            break;
        }
    }
    Ok(Cp {
        weights,
        factors,
        convergence,
    })
}

/// An upper bound, in bytes, on the memory [`parafac`] allocates for a tensor of `shape` at
/// rank `r` with elements of `elem_size` bytes (saturating): up to three copies of `X` (its
/// standard layout and the MTTKRP's reordered layouts), the factors and MTTKRP results
/// (`2·Σ d_n·R`), the Gram matrices and the normal-equation workspace (`(N + 2)·R²`), and the
/// partial Khatri–Rao products and MTTKRPs of the split (`2·(rows + cols)·R`); the total is
/// doubled for the temporaries of each step (products before assignment, solver copies).
pub fn workspace_bytes(shape: &[usize], r: usize, elem_size: usize) -> u128 {
    let r = r as u128;
    let len = product_u128(shape.iter().copied());
    let split = balanced_split(shape).min(shape.len());
    let rows = product_u128(shape[..split].iter().copied());
    let cols = product_u128(shape[split..].iter().copied());
    let sum_d: u128 = shape.iter().map(|&d| d as u128).sum();
    let elements = len
        .saturating_mul(3)
        .saturating_add(sum_d.saturating_mul(r).saturating_mul(2))
        .saturating_add(r.saturating_mul(r).saturating_mul(shape.len() as u128 + 2))
        .saturating_add(rows.saturating_add(cols).saturating_mul(r).saturating_mul(2));
    // Temporaries (products before they are assigned, solver copies) at most double it.
    elements.saturating_mul(2).saturating_mul(elem_size as u128)
}

/// The initial factors (unnormalised), see the module documentation.
fn init_factors<T: Real>(x: &ArrayViewD<'_, T>, opts: &CpOptions<'_, T>) -> Result<Vec<Array2<T>>> {
    let shape = x.shape();
    let r = opts.rank;
    match &opts.init {
        Init::Svd => {
            // The modes' singular vectors are independent: the worker pool (when the thread
            // policy has one) computes them side by side, each with single-threaded BLAS.
            let leading: Vec<_> = crate::parallel::map_items((0..shape.len()).collect(), true, |mode| {
                leading_unfolding_vectors(x, mode, r.min(shape[mode]))
            });
            let mut g = NumpyRandomState::new(opts.iter.seed);
            let mut factors = Vec::with_capacity(shape.len());
            for ((mode, &d), found) in shape.iter().enumerate().zip(leading) {
                let k = r.min(d);
                let (u, sv) = found?;
                let mut a = Array2::<T>::zeros((d, r));
                a.slice_mut(ndarray::s![.., ..k]).assign(&u);
                if mode == 0 {
                    for (mut col, &sigma) in a.columns_mut().into_iter().zip(sv.iter()) {
                        col *= sigma;
                    }
                }
                for v in a.slice_mut(ndarray::s![.., k..]).iter_mut() {
                    *v = T::from_f64_lossy(g.random_sample());
                }
                factors.push(a);
            }
            Ok(factors)
        }
        Init::Random => {
            let mut g = rng(opts.iter.seed);
            Ok(shape.iter().map(|&d| randn2(d, r, &mut g)).collect())
        }
        Init::Given(given) => {
            validate_given(given, shape, &vec![r; shape.len()])?;
            Ok(given.clone())
        }
    }
}

/// numpy's legacy generator `numpy.random.RandomState(seed)` (the `random_state` of TensorLy),
/// as far as [`parafac`]'s SVD initialisation draws from it: MT19937 seeded by `init_genrand(seed)`
/// for a seed below 2³² (numpy's integer seeding), and `random_sample()` = `(a·2²⁶ + b) / 2⁵³`
/// from two outputs `a = u₁ >> 5`, `b = u₂ >> 6`. numpy refuses larger integer seeds; those seed
/// the generator with the key `[low 32 bits, high 32 bits]` (numpy's `RandomState([lo, hi])`).
pub struct NumpyRandomState(rand_mt::Mt);

impl NumpyRandomState {
    /// The generator of `numpy.random.RandomState(seed)` (see the type's documentation).
    pub fn new(seed: u64) -> Self {
        match u32::try_from(seed) {
            Ok(s) => NumpyRandomState(rand_mt::Mt::new(s)),
            Err(_) => NumpyRandomState(rand_mt::Mt::new_with_key([seed as u32, (seed >> 32) as u32])),
        }
    }

    /// The next `random_sample()`: a uniform double on `[0, 1)` with 53 random bits.
    pub fn random_sample(&mut self) -> f64 {
        let a = self.0.next_u32() >> 5;
        let b = self.0.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) / 9_007_199_254_740_992.0
    }
}

/// The MTTKRPs `M_n = X_(n) · (⊙_{k≠n} A_k)` of a sweep, which updates the modes `0, 1, …, N−1`
/// in turn; each strategy reuses one product with `X` for several updates (see the module
/// documentation).
enum Mttkrp<'a, T> {
    /// `X` as a `(rows × cols)` matrix split after mode `s`, and the two partial MTTKRPs.
    Split {
        x2: ArrayView2<'a, T>,
        shape: Vec<usize>,
        s: usize,
        w_left: Array2<T>,
        w_right: Array2<T>,
    },
    /// Order 3: `C = (p, X ×_p A_p)` made right after `A_p` changed, serving the next two updates.
    Cyclic {
        xl: InputLayouts<'a, T>,
        c: Option<(usize, Laid<'a, T>)>,
    },
}

impl<'a, T: Real> Mttkrp<'a, T> {
    /// The cyclic strategy for order-3 tensors whose dimensions all reach the rank (so that
    /// `X ×_p A_p` is no larger than `X`), the split strategy otherwise.
    fn new(x: ArrayViewD<'a, T>, r: usize) -> Result<Self> {
        let shape = x.shape().to_vec();
        if shape.len() == 3 && shape.iter().all(|&d| d >= r) {
            let mut xl = InputLayouts::new(x);
            for mode in 0..3 {
                xl.prepare(Some(mode))?;
            }
            return Ok(Mttkrp::Cyclic { xl, c: None });
        }
        let s = balanced_split(&shape);
        let (rows, cols): (usize, usize) = (shape[..s].iter().product(), shape[s..].iter().product());
        Ok(Mttkrp::Split {
            x2: x.into_shape_with_order((rows, cols))?,
            shape,
            s,
            w_left: Array2::zeros((rows, r)),
            w_right: Array2::zeros((cols, r)),
        })
    }

    /// `M_mode` from the current factors. Must be called for `mode = 0, 1, …, N−1` in turn, each
    /// time after the previous mode's factor was updated.
    fn compute(&mut self, mode: usize, factors: &[Array2<T>]) -> Result<Array2<T>> {
        let r = factors[0].ncols();
        match self {
            Mttkrp::Split {
                x2,
                shape,
                s,
                w_left,
                w_right,
            } => {
                let s = *s;
                if mode < s {
                    if mode == 0 {
                        let kr = khatri_rao_rows(&factors[s..]);
                        general_mat_mul(T::one(), x2, &kr, T::zero(), w_left);
                    }
                    let mut left_shape = shape[..s].to_vec();
                    left_shape.push(r);
                    let wl = w_left.view().into_shape_with_order(IxDyn(&left_shape))?;
                    group_mttkrp(&wl, &factors[..s], mode)
                } else {
                    if mode == s {
                        let kr = khatri_rao_rows(&factors[..s]);
                        general_mat_mul(T::one(), &x2.t(), &kr, T::zero(), w_right);
                    }
                    let mut right_shape = shape[s..].to_vec();
                    right_shape.push(r);
                    let wr = w_right.view().into_shape_with_order(IxDyn(&right_shape))?;
                    group_mttkrp(&wr, &factors[s..], mode - s)
                }
            }
            Mttkrp::Cyclic { xl, c } => {
                if c.as_ref().is_none_or(|(p, _)| *p == mode) {
                    let p = (mode + 2) % 3;
                    *c = Some((p, xl.get(Some(p)).ttm_t(p, &factors[p].view())?));
                }
                let (p, cp) = c
                    .as_ref()
                    .ok_or_else(|| GbtdError::internal("CP-ALS: the product C was not formed"))?;
                let other = 3 - mode - p;
                contract_columns(cp, mode, other, *p, &factors[other].view())
            }
        }
    }
}

/// `M[i, r] = Σ_j C[i, j, r] · A[j, r]` for a 3-way `C` whose axes are labelled `m` (`i`), `l`
/// (`j`) and `k` (`r`, the rank axis), in any storage order.
fn contract_columns<T: Real>(
    c: &Laid<'_, T>,
    m: usize,
    l: usize,
    k: usize,
    a: &ArrayView2<'_, T>,
) -> Result<Array2<T>> {
    let v = c
        .data
        .view()
        .permuted_axes(IxDyn(&[c.pos(m)?, c.pos(l)?, c.pos(k)?]))
        .into_dimensionality::<ndarray::Ix3>()?;
    let (dm, dl, r) = v.dim();
    if a.dim() != (dl, r) {
        return Err(GbtdError::internal(format!(
            "contraction of a {dl}×{r} slice with a {:?} factor",
            a.dim()
        )));
    }
    let mut out = Array2::<T>::zeros((dm, r));
    let st = v.strides();
    let (si, sj, sr) = (st[0] as usize, st[1] as usize, st[2] as usize);
    let data = c
        .data
        .as_slice()
        .ok_or_else(|| GbtdError::internal("contraction of a non-contiguous tensor"))?;
    let o = out
        .as_slice_mut()
        .ok_or_else(|| GbtdError::internal("contraction output not contiguous"))?;
    if sr == 1 {
        // Rank axis contiguous: o[i, ·] += C[i, j, ·] ⊙ A[j, ·].
        let a = a.as_standard_layout();
        let a_sl = a
            .as_slice()
            .ok_or_else(|| GbtdError::internal("contraction factor not contiguous"))?;
        for (i, oi) in o.chunks_exact_mut(r).enumerate() {
            for (j, aj) in a_sl.chunks_exact(r).enumerate() {
                let base = i * si + j * sj;
                for ((ov, &cv), &av) in oi.iter_mut().zip(&data[base..base + r]).zip(aj) {
                    *ov += cv * av;
                }
            }
        }
    } else if sj == 1 {
        // Contracted axis contiguous: o[i, r] = C[i, ·, r] · A[·, r].
        let at = a.t().as_standard_layout().into_owned();
        let at_sl = at
            .as_slice()
            .ok_or_else(|| GbtdError::internal("contraction factor not contiguous"))?;
        for (i, oi) in o.chunks_exact_mut(r).enumerate() {
            for (rr, (ov, ar)) in oi.iter_mut().zip(at_sl.chunks_exact(dl)).enumerate() {
                let base = i * si + rr * sr;
                *ov = data[base..base + dl]
                    .iter()
                    .zip(ar)
                    .fold(T::zero(), |acc, (&cv, &av)| acc + cv * av);
            }
        }
    } else if sr >= si && sr >= sj {
        // Rank axis outermost: one matrix-vector product per component, M[·, r] = C[·, ·, r] · A[·, r].
        for ((cr, ar), mut or) in v
            .axis_iter(Axis(2))
            .zip(a.axis_iter(Axis(1)))
            .zip(out.axis_iter_mut(Axis(1)))
        {
            general_mat_vec_mul(T::one(), &cr, &ar, T::zero(), &mut or);
        }
    } else {
        for (vi, mut oi) in v.outer_iter().zip(out.outer_iter_mut()) {
            for (vrow, arow) in vi.outer_iter().zip(a.outer_iter()) {
                ndarray::Zip::from(&mut oi)
                    .and(&vrow)
                    .and(&arow)
                    .for_each(|o, &x, &y| *o += x * y);
            }
        }
    }
    Ok(out)
}

/// Solves the normal equations of mode `mode` for the MTTKRP `m`, normalises the new factor into
/// `weights`, refreshes its Gram matrix, and returns `(M_n, Ã_n)` for the error computation.
fn update_factor<T: Real>(
    mode: usize,
    m: Array2<T>,
    factors: &mut [Array2<T>],
    grams: &mut [Array2<T>],
    weights: &mut Array1<T>,
) -> Result<(Array2<T>, Array2<T>)> {
    let r = m.ncols();
    let mut v = Array2::<T>::ones((r, r));
    for (k, gk) in grams.iter().enumerate() {
        if k != mode {
            v *= gk;
        }
    }
    let scaled = solve_sym_right(&m.view(), &v.view())?;
    let mut a = scaled.clone();
    *weights = normalize_columns(&mut a);
    grams[mode] = a.t().dot(&a);
    factors[mode] = a;
    Ok((m, scaled))
}

/// Divides each column by its norm (leaving zero columns alone) and returns the norms.
fn normalize_columns<T: Real>(a: &mut Array2<T>) -> Array1<T> {
    let mut norms = Array1::<T>::zeros(a.ncols());
    for (mut col, nrm) in a.columns_mut().into_iter().zip(norms.iter_mut()) {
        let s: f64 = col.iter().map(|v| v.to_f64_exact().powi(2)).sum();
        *nrm = T::from_f64_lossy(s.sqrt());
        if *nrm > T::zero() {
            let inv = T::one() / *nrm;
            col *= inv;
        }
    }
    norms
}

/// The split `s ∈ 1..N` minimising `Π_{k<s} d_k + Π_{k≥s} d_k`, so that both Khatri–Rao
/// products of the MTTKRP are as small as possible.
fn balanced_split(shape: &[usize]) -> usize {
    (1..shape.len())
        .min_by_key(|&s| {
            let a: usize = shape[..s].iter().product();
            let b: usize = shape[s..].iter().product();
            a.saturating_add(b)
        })
        .unwrap_or(1)
}

/// Khatri–Rao product of the factors (row `Σ_k i_k Π_{j>k} d_j`, the first factor varying
/// slowest, as [`crate::tensor::khatri_rao`]); `(Π d_k) × R`. A single factor is copied.
fn khatri_rao_rows<T: Real>(factors: &[Array2<T>]) -> Array2<T> {
    let r = factors.first().map_or(0, |f| f.ncols());
    let mut acc: Array2<T> = factors
        .first()
        .map_or_else(|| Array2::ones((1, r)), |f| f.as_standard_layout().into_owned());
    for f in &factors[1.min(factors.len())..] {
        let (ra, rb) = (acc.nrows(), f.nrows());
        let mut next = Array2::<T>::zeros((ra * rb, r));
        {
            let acc_s = acc.as_standard_layout();
            let f_s = f.as_standard_layout();
            let a_sl = acc_s.as_slice().expect("standard layout");
            let b_sl = f_s.as_slice().expect("standard layout");
            let out = next.as_slice_mut().expect("standard layout");
            for (i, arow) in a_sl.chunks_exact(r).enumerate() {
                for (j, brow) in b_sl.chunks_exact(r).enumerate() {
                    let o = &mut out[(i * rb + j) * r..(i * rb + j + 1) * r];
                    for ((o, &x), &y) in o.iter_mut().zip(arow).zip(brow) {
                        *o = x * y;
                    }
                }
            }
        }
        acc = next;
    }
    acc
}

/// For `w` of shape `(d_0, …, d_{G-1}, R)` (the partial MTTKRP of a group of modes) and the
/// group's factors, the MTTKRP of group mode `n`:
/// `M[i, r] = Σ_{i_k, k≠n} w[i_0, …, i_n = i, …, r] Π_{k≠n} A_k[i_k, r]`.
fn group_mttkrp<T: Real>(w: &ArrayViewD<'_, T>, factors: &[Array2<T>], n: usize) -> Result<Array2<T>> {
    let mut cur: ArrayD<T> = w.as_standard_layout().into_owned();
    // Contract the other modes from the last to the first: the axes removed so far all come
    // after `k`, so group mode `k` is still axis `k`.
    for k in (0..factors.len()).rev() {
        if k != n {
            cur = contract_axis(&cur.view(), k, &factors[k].view());
        }
    }
    let d = cur.shape()[0];
    let r = cur.shape()[cur.ndim() - 1];
    Ok(cur.into_shape_with_order((d, r))?)
}

/// `out[…, r] = Σ_i t[…, i (at axis), …, r] · a[i, r]` for `t` in C order with `R` last.
fn contract_axis<T: Real>(t: &ArrayViewD<'_, T>, axis: usize, a: &ArrayView2<'_, T>) -> ArrayD<T> {
    let shape = t.shape();
    let r = shape[shape.len() - 1];
    let d = shape[axis];
    let p: usize = shape[..axis].iter().product();
    let q: usize = shape[axis + 1..shape.len() - 1].iter().product();
    let mut out_shape: Vec<usize> = shape.to_vec();
    out_shape.remove(axis);
    let mut out = ArrayD::<T>::zeros(IxDyn(&out_shape));
    let ts = t.as_standard_layout();
    let asd = a.as_standard_layout();
    let t_sl = ts.as_slice().expect("standard layout");
    let a_sl = asd.as_slice().expect("standard layout");
    let o_sl = out.as_slice_mut().expect("standard layout");
    for pi in 0..p {
        let o_block = &mut o_sl[pi * q * r..(pi + 1) * q * r];
        for i in 0..d {
            let arow = &a_sl[i * r..(i + 1) * r];
            let t_block = &t_sl[(pi * d + i) * q * r..(pi * d + i + 1) * q * r];
            for (o_row, t_row) in o_block.chunks_exact_mut(r).zip(t_block.chunks_exact(r)) {
                for ((o, &tv), &av) in o_row.iter_mut().zip(t_row).zip(arow) {
                    *o += tv * av;
                }
            }
        }
    }
    out
}

/// `Σ_{l,r} W[l,r] · K[l,r] · w_r`, in `f64`.
fn weighted_inner<T: Real>(w: &ArrayView2<'_, T>, k: &ArrayView2<'_, T>, weights: &Array1<T>) -> f64 {
    let mut acc = 0.0;
    for (wr, kr) in w.rows().into_iter().zip(k.rows()) {
        for ((&a, &b), &c) in wr.iter().zip(kr.iter()).zip(weights.iter()) {
            acc += a.to_f64_exact() * b.to_f64_exact() * c.to_f64_exact();
        }
    }
    acc
}

/// `Σ a ⊙ b`, in `f64`.
fn frob_inner<T: Real>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| x.to_f64_exact() * y.to_f64_exact())
        .sum()
}

/// `‖X̂‖² = wᵀ (⊛_k A_kᵀ A_k) w`, in `f64`.
fn model_sq_norm<T: Real>(grams: &[Array2<T>], weights: &Array1<T>) -> f64 {
    let r = weights.len();
    let mut acc = 0.0;
    for i in 0..r {
        for j in 0..r {
            let h: f64 = grams.iter().map(|g| g[[i, j]].to_f64_exact()).product();
            acc += weights[i].to_f64_exact() * h * weights[j].to_f64_exact();
        }
    }
    acc
}

/// `sqrt(max(‖X‖² − 2⟨X, X̂⟩ + ‖X̂‖², 0)) / ‖X‖` (0 for a zero `X`).
fn rel_error(nx2: f64, inner: f64, model2: f64) -> f64 {
    if nx2 <= 0.0 {
        return 0.0;
    }
    ((nx2 - 2.0 * inner + model2).max(0.0) / nx2).sqrt()
}
