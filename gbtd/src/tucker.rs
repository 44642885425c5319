//! Tucker decomposition: truncated HOSVD, sequentially truncated ST-HOSVD, HOOI, and partial
//! Tucker on a subset of modes (Tucker-2 on the channel modes of a conv kernel).
//!
//! # Model and shapes
//! A Tucker tensor on the modes `M = (m_0, …, m_{K-1})` of an order-`N` tensor `X` is
//! `X̂ = G ×_{m_0} A_0 ×_{m_1} A_1 ⋯ ×_{m_{K-1}} A_{K-1}`, with factor `A_i` of shape
//! `(d_{m_i} × r_i)` and orthonormal columns, and core `G` of the shape of `X` with `d_{m_i}` replaced
//! by `r_i`. Modes not in `M` are kept whole ("partial Tucker"): for a PyTorch kernel
//! `(out, in, kh, kw)` with `M = (0, 1)` this is Tucker-2, a 1×1 conv `in → r_1`, a `kh × kw` conv
//! `r_1 → r_0` with kernel `G`, and a 1×1 conv `r_0 → out`.
//!
//! Unfoldings are row-major (see [`crate::tensor`]). For orthonormal factors the best core is the
//! projection `G = X ×_{m_0} A_0ᵀ ⋯ ×_{m_{K-1}} A_{K-1}ᵀ`, and then
//! `‖X − X̂‖² = ‖X‖² − ‖G‖²`: errors are tracked with this identity, in `f64`, so they never need
//! the reconstruction (their resolution is about `sqrt(ε)·‖X‖` of the element type).
//!
//! # Algorithms
//! - [`hosvd`]: `A_i` = the `r_i` leading left singular vectors of `X_(m_i)` (De Lathauwer et al.
//!   2000), `G` the projection.
//! - [`st_hosvd`]: the same, but each factor is computed on the tensor already projected onto
//!   the previous factors (Vannieuwenhoven et al. 2012), in the order of `modes`; cheaper, with
//!   the same error bound `‖X − X̂‖² ≤ Σ_i Σ_{j>r_i} σ_j(X_(m_i))²`.
//! - [`tucker`]: HOOI (higher-order orthogonal iteration, as in TensorLy's `tucker` and
//!   `partial_tucker`, which are one function here: `modes` selects the factorized modes). Each
//!   sweep sets, in order, `A_i` = leading left singular vectors of `Y_(m_i)` with
//!   `Y = X ×_{k≠i} A_kᵀ`, then `G` = the projection. Each step maximises `‖G‖`
//!   over `A_i`, so the error never increases.
//!
//! Leading left singular vectors come from the Gram matrix `Y_(m) Y_(m)ᵀ` (BLAS `syrk`) and a
//! LAPACK symmetric eigensolver ([`crate::linalg::sym_eig_top`]), or from `gesdd` for unfoldings
//! taller than wide ([`leading_unfolding_vectors`]); never `gesvd`. Their signs are fixed like
//! TensorLy's `svd_flip` (the largest-magnitude entry of each column is positive), so results are
//! deterministic.
//!
//! # Implementation
//! - HOOI reuses projections of `X` across updates (a multi-sweep dimension tree, Ma &
//!   Solomonik 2021): right after `A_p` is updated, `Z = X ×_{m_p} A_pᵀ` is formed once and serves
//!   the next `K − 1` updates, of the modes after `p` in cyclic order (each `Y` is `Z` projected
//!   on the remaining modes with their latest factors, so the iterates are exactly those of plain
//!   HOOI). A sweep thus projects `X` itself `K/(K−1)` times instead of `K` times: twice for
//!   Tucker-2, 1.5 times for a 3-way Tucker.
//! - The error of each sweep is `‖X‖² − tr(A_iᵀ (Y Yᵀ) A_i)` from the Gram matrix already formed
//!   for the last update; the core itself is formed once, after the last sweep.
//! - No unfolding is materialised: products and Gram matrices run on `X` in its storage order
//!   through the layout-and-BLAS engine (`crate::layout`, shared with [`crate::cp`]). A middle
//!   mode with narrow slices is moved last by one copy (made once for `X`), so memory peaks at `X`
//!   plus one such copy per narrow middle mode.
//! - In HOOI sweeps, once a mode's leading eigenvalues are well separated, its next update starts
//!   from its previous factor: a few block-Krylov Rayleigh–Ritz steps on the Gram matrix
//!   ([`crate::linalg::psd_eig_top_warm`]) whose result is accepted only with a certificate (a
//!   trace bound that it is the *leading* eigenspace, and a Davis–Kahan bound of about `1e-10` in
//!   `f64` on its angle to it); otherwise the exact solver runs. On a low-rank-plus-noise tensor
//!   this replaces most tridiagonalisations after the first sweeps; a flat spectrum (a random
//!   kernel) never attempts it after the first sweep.
//! - Small problems (below [`crate::linalg::SMALL_BLAS_WORK`] flops per product) run with
//!   OpenBLAS on one thread ([`crate::openblas::SingleThreadedBlas`]). Their medium products over
//!   `X` go in 512-column BLAS calls, and their Gram matrices are sums over fixed pieces of the
//!   contracted index, both shared out over [`crate::parallel`]. Each output entry comes from the same
//!   calls whatever the thread count, so the factors are bitwise the same at 1 or 2 threads
//!   (`tests/cli.rs` checks this).
use ndarray::{Array1, Array2, ArrayD, ArrayView2, ArrayViewD};
use ndarray_linalg::QRInto;

use crate::error::{GbtdError, Result};
use crate::layout::{InputLayouts, Laid, sq_norm};
use crate::linalg::{WarmEig, leading_left_singular_vectors, psd_eig_top_warm, sym_eig_top, trace_gap};
use crate::openblas::SingleThreadedBlas;
use crate::options::{
    Convergence, Init, IterOptions, Progress, check_workspace, iterative_setters, product_u128,
    validate_given, validate_ranks,
};
use crate::random::{randn2, rng};
use crate::real::Real;
use crate::tensor::{check_mode, multi_mode_dot, resolve_modes, validate_tensor};

/// Options of [`tucker`].
#[derive(Debug, Clone)]
pub struct TuckerOptions<'a, T> {
    /// `rank[i]` is the rank of mode `modes[i]`, in `1..=d_{modes[i]}`.
    pub rank: Vec<usize>,
    /// The modes to factorize, distinct; `None` means all modes in order. Modes not listed are
    /// kept whole (partial Tucker; `Some(vec![0, 1])` on a conv kernel is Tucker-2).
    pub modes: Option<Vec<usize>>,
    /// Sweeps, tolerance and seed.
    pub iter: IterOptions,
    /// [`Init::Svd`] (HOSVD factors), [`Init::Random`] (seeded Gaussian matrices, orthonormalised
    /// by QR) or [`Init::Given`] (one `(d_{modes[i]} × rank[i])` matrix per mode, orthonormalised
    /// by QR: HOOI only uses orthonormal factors).
    pub init: Init<T>,
    /// Called after each sweep with the sweep number and the relative error.
    pub progress: Progress<'a>,
}

impl<T> TuckerOptions<'_, T> {
    /// Options for a Tucker decomposition of all modes with the given ranks, SVD initialisation,
    /// the default [`IterOptions`] and no progress callback.
    pub fn new(rank: Vec<usize>) -> Self {
        TuckerOptions {
            rank,
            modes: None,
            iter: IterOptions::default(),
            init: Init::Svd,
            progress: Progress::none(),
        }
    }

    /// The same options factorizing only `modes` (`rank[i]` belongs to `modes[i]`).
    pub fn with_modes(mut self, modes: Vec<usize>) -> Self {
        self.modes = Some(modes);
        self
    }
}

iterative_setters!(TuckerOptions);

/// A (partial) Tucker decomposition `X̂ = G ×_{modes[0]} A_0 ⋯ ×_{modes[K-1]} A_{K-1}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tucker<T> {
    /// The core `G`: the input's shape with `d_{modes[i]}` replaced by `r_i`.
    pub core: ArrayD<T>,
    /// `factors[i]` is `A_i`, of shape `(d_{modes[i]} × r_i)`, orthonormal columns.
    pub factors: Vec<Array2<T>>,
    /// The factorized modes, in the order of `factors`.
    pub modes: Vec<usize>,
    /// Relative errors `‖X − X̂‖/‖X‖` after the initialisation and after each sweep (a single
    /// entry and no sweeps for the direct methods [`hosvd`] and [`st_hosvd`]).
    pub convergence: Convergence,
}

impl<T: Real> Tucker<T> {
    /// The full tensor `X̂ = G ×_{modes[0]} A_0 ⋯ ×_{modes[K-1]} A_{K-1}`.
    pub fn reconstruct(&self) -> Result<ArrayD<T>> {
        let full: usize = (0..self.core.ndim())
            .map(|m| match self.modes.iter().position(|&k| k == m) {
                Some(i) => self.factors.get(i).map_or(1, |f| f.nrows()),
                None => self.core.shape()[m],
            })
            .product();
        let max_rank = self.factors.iter().map(|f| f.ncols()).max().unwrap_or(1);
        let _single = SingleThreadedBlas::for_work(2.0 * full as f64 * max_rank as f64);
        let views: Vec<ArrayView2<'_, T>> = self.factors.iter().map(|f| f.view()).collect();
        multi_mode_dot(&self.core.view(), &views, Some(&self.modes), None, false)
    }

    /// Number of stored values: `|G| + Σ_i d_{modes[i]} · r_i`.
    pub fn n_params(&self) -> usize {
        self.core.len() + self.factors.iter().map(|f| f.len()).sum::<usize>()
    }

    /// The shape of the represented tensor: the core's shape with `d_{modes[i]}` (the rows of
    /// factor `i`) on each factorized mode.
    pub fn shape(&self) -> Vec<usize> {
        let mut shape = self.core.shape().to_vec();
        for (f, &m) in self.factors.iter().zip(&self.modes) {
            if let Some(d) = shape.get_mut(m) {
                *d = f.nrows();
            }
        }
        shape
    }

    /// The multilinear rank `(r_0, …, r_{K-1})` of the factorized modes.
    pub fn rank(&self) -> Vec<usize> {
        self.factors.iter().map(|f| f.ncols()).collect()
    }
}

/// Truncated HOSVD: `A_i` = the `rank[i]` leading left singular vectors of the unfolding
/// `X_(modes[i])`, `G = X ×_i A_iᵀ`, with `rank = opts.rank` on `opts.modes` (`None`: all modes
/// in order). A direct method: the iteration settings, `init` and `progress` of `opts` are not
/// used.
///
/// Errors: [`GbtdError::Empty`] / [`GbtdError::NonFinite`] for an empty or non-finite `x`,
/// [`GbtdError::Shape`] for an invalid or repeated mode, [`GbtdError::Rank`] for a rank outside
/// `1..=d`.
pub fn hosvd<T: Real>(x: &ArrayViewD<'_, T>, opts: &TuckerOptions<'_, T>) -> Result<Tucker<T>> {
    let rank = &opts.rank;
    let (modes, _) = validate_problem(x, rank, opts.modes.as_deref())?;
    let mut xl = InputLayouts::new(x.view());
    let factors = hosvd_factors(&mut xl, rank, &modes)?;
    let core = project(&mut xl, &factors, &modes)?;
    let err = ortho_rel_error(xl.sq_norm, &core.view());
    Ok(Tucker {
        core,
        factors,
        modes,
        convergence: direct(err),
    })
}

/// Sequentially truncated HOSVD: for `i = 0, 1, …` in the order of `modes`,
/// `A_i` = the `rank[i]` leading left singular vectors of `Y_(modes[i])` and then
/// `Y ← Y ×_{modes[i]} A_iᵀ`, starting from `Y = X`; the core is the final `Y`. Cheaper than
/// [`hosvd`] (each step works on a smaller tensor) with the same error bound. Arguments and
/// errors as for [`hosvd`].
pub fn st_hosvd<T: Real>(x: &ArrayViewD<'_, T>, opts: &TuckerOptions<'_, T>) -> Result<Tucker<T>> {
    let rank = &opts.rank;
    let (modes, _) = validate_problem(x, rank, opts.modes.as_deref())?;
    let nx2 = sq_norm(x);
    let mut y = Laid::natural(x.view());
    let mut factors = Vec::with_capacity(modes.len());
    for (&m, &r) in modes.iter().zip(rank) {
        y = y.edge(m)?;
        let (u, _) = leading(&y, m, r)?;
        y = y.ttm_t(m, &u.view())?;
        factors.push(u);
    }
    let core = y.into_natural();
    let err = ortho_rel_error(nx2, &core.view());
    Ok(Tucker {
        core,
        factors,
        modes,
        convergence: direct(err),
    })
}

/// Tucker decomposition by HOOI (higher-order orthogonal iteration) on `opts.modes` (all modes
/// when `None`; TensorLy's `tucker` and `partial_tucker` in one function), started from
/// `opts.init`. Runs `opts.iter.n_iter_max` sweeps, stopping early when the relative error
/// changes by less than `opts.iter.tol` between two sweeps, and calls `opts.progress` after each
/// sweep. For a PyTorch conv kernel `(out, in, kh, kw)`, `modes = Some(vec![0, 1])` with ranks
/// `[rank_out, rank_in]` is Tucker-2: the core is `(rank_out, rank_in, kh, kw)`, `factors[0]` is
/// `(out × rank_out)`, `factors[1]` is `(in × rank_in)`.
///
/// Deterministic for a given `opts.iter.seed`. Errors: those of [`hosvd`], plus
/// [`GbtdError::Options`] for a bad tolerance and [`GbtdError::Shape`] /
/// [`GbtdError::NonFinite`] for given initial factors of the wrong shape or non-finite.
///
/// Memory: besides `X` and the factors, at most one copy of `X` per factorized middle mode with
/// narrow trailing slices (see the module documentation).
pub fn tucker<T: Real>(x: &ArrayViewD<'_, T>, opts: &TuckerOptions<'_, T>) -> Result<Tucker<T>> {
    opts.iter.validate()?;
    let rank = &opts.rank;
    let (modes, dims) = validate_problem(x, rank, opts.modes.as_deref())?;
    // Small problems run faster with OpenBLAS on one thread (see `SingleThreadedBlas`).
    let max_rank = rank.iter().copied().max().unwrap_or(1);
    let _single = SingleThreadedBlas::for_work(2.0 * x.len() as f64 * max_rank as f64);
    let mut xl = InputLayouts::new(x.view());
    let nx2 = xl.sq_norm;

    let mut factors: Vec<Array2<T>> = match &opts.init {
        Init::Svd => hosvd_factors(&mut xl, rank, &modes)?,
        Init::Random => {
            let mut g = rng(opts.iter.seed);
            dims.iter()
                .zip(rank)
                .map(|(&d, &r)| orthonormalize(randn2(d, r, &mut g)))
                .collect::<Result<_>>()?
        }
        Init::Given(given) => {
            validate_given(given, &dims, rank)?;
            given
                .iter()
                .map(|f| orthonormalize(f.clone()))
                .collect::<Result<_>>()?
        }
    };
    let k = modes.len();
    for &m in &modes {
        xl.prepare(Some(m))?;
    }
    let mut convergence = Convergence::default();
    if opts.iter.n_iter_max == 0 {
        let core = project(&mut xl, &factors, &modes)?;
        convergence.push(ortho_rel_error(nx2, &core.view()), opts.iter.tol);
        return Ok(Tucker {
            core,
            factors,
            modes,
            convergence,
        });
    }
    // `z = (p, X ×_{modes[p]} A_pᵀ)`, made right after A_p changed; it serves the next k − 1
    // updates (see the module documentation).
    let mut z: Option<(usize, Laid<'_, T>)> = None;
    let mut core = None;
    // Whether mode i's leading eigenvalues were well separated at its last update (then its next
    // update starts from the previous factor, see `leading_with_gram`).
    let mut try_warm = vec![false; k];
    for sweep in 0..opts.iter.n_iter_max {
        let mut stop = false;
        for i in 0..k {
            let y = if k == 1 {
                xl.get(None).view()
            } else {
                if z.as_ref().is_none_or(|(p, _)| *p == i) {
                    let p = (i + k - 1) % k;
                    let zp = xl.get(Some(modes[p])).ttm_t(modes[p], &factors[p].view())?;
                    z = Some((p, zp));
                }
                let (p, zp) = z
                    .as_ref()
                    .ok_or_else(|| GbtdError::internal("HOOI: the projection Z was not formed"))?;
                let others: Vec<usize> = (0..k).filter(|&j| j != i && j != *p).collect();
                chain(zp, &factors, &modes, &others)?
            };
            let y = y.edge(modes[i])?;
            let warm = Some((&factors[i], &mut try_warm[i]));
            let (u, _, gram) = leading_with_gram(&y, modes[i], rank[i], warm)?;
            if sweep == 0 && i == 0 {
                // The initial core is Y projected on the initial factor: ‖G‖² = tr(Aᵀ (Y Yᵀ) A).
                let g2 = match &gram {
                    Some(g) => projected_sq_norm(g, &factors[0]),
                    None => sq_norm(&y.ttm_t(modes[0], &factors[0].view())?.data.view()),
                };
                convergence.push(rel_error_from_core(nx2, g2), opts.iter.tol);
            }
            factors[i] = u;
            if i + 1 == k {
                // The core is the last Y projected on its own, just updated, factor; its norm
                // comes from the Gram matrix, the core itself only at the end.
                let g2 = match &gram {
                    Some(g) => projected_sq_norm(g, &factors[i]),
                    None => sq_norm(&y.ttm_t(modes[i], &factors[i].view())?.data.view()),
                };
                convergence.iterations += 1;
                let err = rel_error_from_core(nx2, g2);
                opts.progress.sweep(convergence.iterations, err)?;
                stop = convergence.push(err, opts.iter.tol) || sweep + 1 == opts.iter.n_iter_max;
                if stop {
                    core = Some(y.ttm_t(modes[i], &factors[i].view())?.into_natural());
                }
            }
        }
        if stop {
            break;
        }
    }
    let core = core.ok_or_else(|| GbtdError::internal("HOOI ended without forming the core"))?;
    Ok(Tucker {
        core,
        factors,
        modes,
        convergence,
    })
}

/// The `k` leading left singular vectors of the unfolding `X_(mode)` (`d × k`, orthonormal
/// columns, decreasing singular value) and the matching singular values.
///
/// For a wide or square unfolding (`d ≤ Π_{j≠mode} d_j`) they are the leading eigenvectors of
/// the Gram matrix `X_(mode) X_(mode)ᵀ` ([`unfolding_gram`]) by the LAPACK symmetric
/// eigensolver of [`crate::linalg::sym_eig_top`] (tridiagonal reduction `sytrd`, the selected
/// eigenpairs of the tridiagonal matrix by MRRR or divide and conquer, back-transformed by
/// `ormtr`); for a tall one
/// they come from `gesdd` ([`leading_left_singular_vectors`]). When `k` exceeds the rank, the
/// extra columns complete an orthonormal basis (singular value 0). Signs follow TensorLy's
/// `svd_flip`: the entry of largest magnitude of each column is positive.
pub fn leading_unfolding_vectors<T: Real>(
    x: &ArrayViewD<'_, T>,
    mode: usize,
    k: usize,
) -> Result<(Array2<T>, Array1<T>)> {
    check_mode(x.ndim(), mode)?;
    leading(&Laid::natural(x.view()).edge(mode)?, mode, k)
}

/// The Gram matrix `X_(mode) X_(mode)ᵀ` (`d_mode × d_mode`) of the row-major unfolding, by BLAS
/// `syrk`.
///
/// It does not depend on the order of the columns of the unfolding, so it is computed without
/// forming `X_(mode)`: viewing `X` (C order) as `(P, d, Q)` (`P`, `Q` the products of the
/// dimensions before and after `mode`), it is one `syrk` on `X` itself for the first or last
/// mode, `Σ_p X[p] X[p]ᵀ` for a middle mode with wide slices (`Q ≥ 64`), and otherwise one
/// `syrk` on a copy of `X` with `mode` moved last.
pub fn unfolding_gram<T: Real>(x: &ArrayViewD<'_, T>, mode: usize) -> Result<Array2<T>> {
    check_mode(x.ndim(), mode)?;
    Laid::natural(x.view()).gram(mode)
}

/// The leading left singular vectors and values of the unfolding of `y` along `mode` (see
/// [`leading_unfolding_vectors`]), with signs fixed.
fn leading<T: Real>(y: &Laid<'_, T>, mode: usize, k: usize) -> Result<(Array2<T>, Array1<T>)> {
    leading_with_gram(y, mode, k, None).map(|(u, s, _)| (u, s))
}

/// [`leading`], also returning the Gram matrix it diagonalised (`None` for a tall unfolding,
/// which goes through `gesdd`). With a `warm` start (HOOI's previous factor of this mode, with a
/// flag) the eigenpairs of the Gram matrix first come from [`psd_eig_top_warm`], and from
/// [`sym_eig_top`] only when that cannot certify them. The flag is updated for the next call: it
/// says whether the leading eigenvalues were separated enough for the trace certificate (so a
/// random kernel's flat spectrum does not pay for a failed attempt every sweep).
#[allow(clippy::type_complexity)]
fn leading_with_gram<T: Real>(
    y: &Laid<'_, T>,
    mode: usize,
    k: usize,
    warm: Option<(&Array2<T>, &mut bool)>,
) -> Result<(Array2<T>, Array1<T>, Option<Array2<T>>)> {
    let d = y.dim(mode)?;
    if k == 0 || k > d {
        return Err(GbtdError::Rank(format!(
            "{k} leading singular vectors requested of mode {mode} of size {d}"
        )));
    }
    let rest = y.data.len() / d;
    let (mut u, s, g) = if d <= rest {
        let g = y.gram(mode)?;
        let (vals, u) = match warm {
            Some((start, try_warm)) => {
                let found = if *try_warm {
                    psd_eig_top_warm(&g.view(), k, &start.view())?
                } else {
                    WarmEig::Uncertified
                };
                let (vals, u) = match found {
                    WarmEig::Certified(vals, u) => (vals, u),
                    WarmEig::Uncertified => sym_eig_top(&g.view(), k)?,
                };
                *try_warm = trace_gap(&g.view(), &vals) > 0.0;
                (vals, u)
            }
            None => sym_eig_top(&g.view(), k)?,
        };
        (
            u,
            vals.mapv(|v| if v > T::zero() { v.sqrt() } else { T::zero() }),
            Some(g),
        )
    } else {
        // A tall unfolding: any column order will do, so use the storage with `mode` last.
        let pos = y.pos(mode)?;
        let moved;
        let src = if pos + 1 == y.axes.len() {
            y
        } else {
            moved = y.moved_last(pos)?;
            &moved
        };
        let m = src.data.view().into_shape_with_order((rest, d))?;
        let (u, s) = leading_left_singular_vectors(&m.t(), k)?;
        (u, s, None)
    };
    fix_signs(&mut u);
    Ok((u, s, g))
}

/// `‖Y ×_m Aᵀ‖² = tr(Aᵀ (Y_(m) Y_(m)ᵀ) A) = Σ (G A) ⊙ A`, in `f64`, from the Gram matrix `G`.
fn projected_sq_norm<T: Real>(g: &Array2<T>, a: &Array2<T>) -> f64 {
    let ga = g.dot(a);
    ga.iter()
        .zip(a.iter())
        .map(|(&x, &y)| x.to_f64_exact() * y.to_f64_exact())
        .sum()
}

/// HOSVD factors: the leading left singular vectors of each unfolding of the input, computed
/// side by side.
fn hosvd_factors<T: Real>(
    xl: &mut InputLayouts<'_, T>,
    rank: &[usize],
    modes: &[usize],
) -> Result<Vec<Array2<T>>> {
    for &m in modes {
        xl.prepare(Some(m))?;
    }
    // The modes are independent: the worker pool (when the thread policy has one) takes them
    // side by side, each with single-threaded BLAS, which also keeps the result independent of
    // the thread count.
    let xl = &*xl;
    let jobs: Vec<(usize, usize)> = modes.iter().copied().zip(rank.iter().copied()).collect();
    crate::parallel::map_items(jobs, true, |(m, r)| leading(xl.get(Some(m)), m, r).map(|f| f.0))
        .into_iter()
        .collect()
}

/// The order in which to apply the factors at positions `which`: the ones that shrink the
/// tensor most (smallest `r / d`) first.
fn chain_order<T: Real>(factors: &[Array2<T>], which: &[usize]) -> Vec<usize> {
    let mut order = which.to_vec();
    let ratio = |i: usize| factors[i].ncols() as f64 / factors[i].nrows().max(1) as f64;
    order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
    order
}

/// The mode of the factor [`chain`] applies first among `which`.
fn first_mode<T: Real>(factors: &[Array2<T>], modes: &[usize], which: &[usize]) -> Option<usize> {
    chain_order(factors, which).first().map(|&i| modes[i])
}

/// `y ×_{modes[i]} A_iᵀ` over the factor positions `which`, most shrinking first; a borrowed
/// view of `y` when `which` is empty.
fn chain<'b, T: Real>(
    y: &'b Laid<'_, T>,
    factors: &[Array2<T>],
    modes: &[usize],
    which: &[usize],
) -> Result<Laid<'b, T>> {
    let mut cur = y.view();
    for i in chain_order(factors, which) {
        cur = cur.ttm_t(modes[i], &factors[i].view())?;
    }
    Ok(cur)
}

/// The core `X ×_{modes[i]} A_iᵀ` over all factors, in natural order.
fn project<T: Real>(
    xl: &mut InputLayouts<'_, T>,
    factors: &[Array2<T>],
    modes: &[usize],
) -> Result<ArrayD<T>> {
    let all: Vec<usize> = (0..factors.len()).collect();
    let first = first_mode(factors, modes, &all);
    xl.prepare(first)?;
    Ok(chain(xl.get(first), factors, modes, &all)?.into_natural())
}

/// Validates the input tensor, the modes (default: all) and their ranks; returns the modes and
/// their dimensions.
fn validate_problem<T: Real>(
    x: &ArrayViewD<'_, T>,
    rank: &[usize],
    modes: Option<&[usize]>,
) -> Result<(Vec<usize>, Vec<usize>)> {
    validate_tensor(x, "Tucker input")?;
    let modes = resolve_modes(modes, x.ndim())?;
    let dims: Vec<usize> = modes.iter().map(|&m| x.shape()[m]).collect();
    validate_ranks(rank, &dims, "Tucker")?;
    let elem = std::mem::size_of::<T>();
    check_workspace(
        workspace_bytes(x.shape(), &modes, rank, elem),
        (x.len() * elem) as u128,
        &format!("Tucker of ranks {rank:?} on shape {:?}", x.shape()),
    )?;
    Ok((modes, dims))
}

/// An upper bound, in bytes, on the memory [`tucker`], [`hosvd`] and [`st_hosvd`] allocate for
/// a tensor of `shape` factorized on `modes` with `rank` (elements of `elem_size` bytes,
/// saturating): up to `3 + K` tensors of `X`'s size for `K` factorized modes (input layouts, the
/// core and its partial products), one `d_m × d_m` unfolding Gram matrix per factorized mode,
/// and the factors `d_m × L_m`.
pub fn workspace_bytes(shape: &[usize], modes: &[usize], rank: &[usize], elem_size: usize) -> u128 {
    let len = product_u128(shape.iter().copied());
    let mut elements = len.saturating_mul(3 + modes.len() as u128);
    for (&m, &r) in modes.iter().zip(rank) {
        let d = shape.get(m).copied().unwrap_or(0) as u128;
        elements = elements
            .saturating_add(d.saturating_mul(d))
            .saturating_add(d.saturating_mul(r as u128));
    }
    elements.saturating_mul(elem_size as u128)
}

/// The orthonormal factor `Q` of the thin QR decomposition of a `(d × r)` matrix, `r ≤ d`.
fn orthonormalize<T: Real>(a: Array2<T>) -> Result<Array2<T>> {
    let (q, _) = a.qr_into()?;
    Ok(q)
}

/// Makes the entry of largest magnitude of each column positive (TensorLy's `svd_flip`; the
/// first such entry on ties).
fn fix_signs<T: Real>(u: &mut Array2<T>) {
    for mut col in u.columns_mut() {
        let mut best = T::zero();
        let mut best_abs = T::zero();
        for &v in col.iter() {
            if v.abs() > best_abs {
                best_abs = v.abs();
                best = v;
            }
        }
        if best < T::zero() {
            col.mapv_inplace(|v| -v);
        }
    }
}

/// `sqrt(‖X‖² − ‖G‖²) / ‖X‖`: the relative error of a Tucker tensor with orthonormal factors
/// and projected core `G` (0 for a zero `X`).
fn ortho_rel_error<T: Real>(nx2: f64, core: &ArrayViewD<'_, T>) -> f64 {
    rel_error_from_core(nx2, sq_norm(core))
}

/// `sqrt(‖X‖² − ‖G‖²) / ‖X‖` from the two squared norms (0 for a zero `X`).
fn rel_error_from_core(nx2: f64, g2: f64) -> f64 {
    if nx2 <= 0.0 {
        return 0.0;
    }
    ((nx2 - g2).max(0.0) / nx2).sqrt()
}

/// The convergence record of a direct (non-iterative) method.
fn direct(err: f64) -> Convergence {
    Convergence {
        errors: vec![err],
        iterations: 0,
        converged: false,
    }
}
