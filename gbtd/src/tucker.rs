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
//! - [`tucker`] / [`partial_tucker`]: HOOI (higher-order orthogonal iteration, as in TensorLy's
//!   `tucker` / `partial_tucker`): each sweep sets, in order, `A_i` = leading left singular vectors
//!   of `Y_(m_i)` with `Y = X ×_{k≠i} A_kᵀ`, then `G` = the projection. Each step maximises `‖G‖`
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
//! - No unfolding is materialised when the memory layout allows: a product or Gram matrix on the
//!   first or last mode of a C-order tensor is one BLAS call, and a middle mode with wide
//!   trailing slices is a loop of GEMMs. A middle mode with narrow slices is moved last by one copy
//!   (made once for `X`), so memory peaks at `X` plus one such copy per narrow middle mode.
//! - In HOOI sweeps, once a mode's leading eigenvalues are well separated, its next update starts
//!   from its previous factor: a few block-Krylov Rayleigh–Ritz steps on the Gram matrix
//!   ([`crate::linalg::psd_eig_top_warm`]) whose result is accepted only with a certificate (a
//!   trace bound that it is the *leading* eigenspace, and a Davis–Kahan bound of about `1e-10` in
//!   `f64` on its angle to it); otherwise the exact solver runs. On a 100³ low-rank-plus-noise
//!   tensor this replaced 0.3 ms tridiagonalisations and took 20 sweeps from about 65 ms to 45 ms
//!   on one core; a flat spectrum (a random kernel) never attempts it after the first sweep.
//! - A product on the last storage axis is computed as `Aᵀ · Xᵀ` with the rank axis stored first,
//!   the faster way round for OpenBLAS's packing (the layout records each storage axis's mode).
//! - Small problems (below [`crate::linalg::SMALL_BLAS_WORK`] flops per product) run with
//!   OpenBLAS on one thread ([`crate::openblas::SingleThreadedBlas`]). Their medium products over
//!   `X` go in 512-column BLAS calls, and their Gram matrices are sums over fixed pieces of the
//!   contracted index, both shared out over [`crate::parallel`]. Each output entry comes from the same
//!   calls whatever the thread count, so the factors are bitwise the same at 1 or 2 threads
//!   (`tests/cli.rs` checks this).
use ndarray::linalg::general_mat_mul;
use ndarray::{
    Array1, Array2, Array3, ArrayD, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMut2, Axis, CowArray, IxDyn,
};
use ndarray_linalg::QRInto;

use crate::error::{GbtdError, Result};
use crate::linalg::{
    SMALL_BLAS_WORK, WarmEig, leading_left_singular_vectors, mirror_lower, psd_eig_top_warm, sym_eig_top,
    syrk_lower, trace_gap,
};
use crate::openblas::SingleThreadedBlas;
use crate::options::{Convergence, Init, IterOptions, validate_given, validate_ranks};
use crate::parallel::map_items;
use crate::random::{randn2, rng};
use crate::real::Real;
use crate::tensor::{check_mode, multi_mode_dot, validate_tensor};

/// Options of [`tucker`] and [`partial_tucker`].
#[derive(Debug, Clone, PartialEq)]
pub struct TuckerOptions<T> {
    /// `rank[i]` is the rank of mode `modes[i]`, in `1..=d_{modes[i]}`.
    pub rank: Vec<usize>,
    /// The modes to factorize, distinct; `None` means all modes in order.
    pub modes: Option<Vec<usize>>,
    /// Sweeps, tolerance and seed.
    pub iter: IterOptions,
    /// [`Init::Svd`] (HOSVD factors), [`Init::Random`] (seeded Gaussian matrices, orthonormalised
    /// by QR) or [`Init::Given`] (one `(d_{modes[i]} × rank[i])` matrix per mode, orthonormalised
    /// by QR: HOOI only uses orthonormal factors).
    pub init: Init<T>,
}

impl<T> TuckerOptions<T> {
    /// Options for a Tucker decomposition of all modes with the given ranks, SVD initialisation
    /// and the default [`IterOptions`].
    pub fn new(rank: Vec<usize>) -> Self {
        TuckerOptions {
            rank,
            modes: None,
            iter: IterOptions::default(),
            init: Init::Svd,
        }
    }
}

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

    /// The multilinear rank `(r_0, …, r_{K-1})` of the factorized modes.
    pub fn rank(&self) -> Vec<usize> {
        self.factors.iter().map(|f| f.ncols()).collect()
    }
}

/// Truncated HOSVD: `A_i` = the `rank[i]` leading left singular vectors of the unfolding
/// `X_(modes[i])`, `G = X ×_i A_iᵀ`. `modes = None` factorizes all modes in order.
///
/// Errors: [`GbtdError::Empty`] / [`GbtdError::NonFinite`] for an empty or non-finite `x`,
/// [`GbtdError::Shape`] for an invalid or repeated mode, [`GbtdError::Rank`] for a rank outside
/// `1..=d`.
pub fn hosvd<T: Real>(x: &ArrayViewD<'_, T>, rank: &[usize], modes: Option<&[usize]>) -> Result<Tucker<T>> {
    let (modes, _) = validate_problem(x, rank, modes)?;
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
pub fn st_hosvd<T: Real>(
    x: &ArrayViewD<'_, T>,
    rank: &[usize],
    modes: Option<&[usize]>,
) -> Result<Tucker<T>> {
    let (modes, _) = validate_problem(x, rank, modes)?;
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
/// when `None`), started from `opts.init`. Runs `opts.iter.n_iter_max` sweeps, stopping early
/// when the relative error changes by less than `opts.iter.tol` between two sweeps.
///
/// Deterministic for a given `opts.iter.seed`. Errors: those of [`hosvd`], plus
/// [`GbtdError::Options`] for a bad tolerance and [`GbtdError::Shape`] /
/// [`GbtdError::NonFinite`] for given initial factors of the wrong shape or non-finite.
///
/// Memory: besides `X` and the factors, at most one copy of `X` per factorized middle mode with
/// narrow trailing slices (see the module documentation).
pub fn tucker<T: Real>(x: &ArrayViewD<'_, T>, opts: &TuckerOptions<T>) -> Result<Tucker<T>> {
    tucker_with_progress(x, opts, |_, _| {})
}

/// [`tucker`], calling `progress(sweep, rel_error)` after each sweep (for progress bars).
pub fn tucker_with_progress<T: Real, F: FnMut(usize, f64)>(
    x: &ArrayViewD<'_, T>,
    opts: &TuckerOptions<T>,
    mut progress: F,
) -> Result<Tucker<T>> {
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
                    .ok_or_else(|| GbtdError::Shape("no projection".into()))?;
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
                progress(convergence.iterations, err);
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
    let core = core.ok_or_else(|| GbtdError::Shape("HOOI produced no core".into()))?;
    Ok(Tucker {
        core,
        factors,
        modes,
        convergence,
    })
}

/// Partial Tucker by HOOI on `opts.modes`, leaving the other modes whole. The same computation
/// as [`tucker`] (which also accepts `modes`); named after TensorLy's `partial_tucker`. For a
/// PyTorch conv kernel `(out, in, kh, kw)`, `modes = Some(vec![0, 1])` gives Tucker-2.
pub fn partial_tucker<T: Real>(x: &ArrayViewD<'_, T>, opts: &TuckerOptions<T>) -> Result<Tucker<T>> {
    tucker(x, opts)
}

/// Tucker-2 of a conv kernel in PyTorch layout `(out, in, kh, kw)` (any order ≥ 2 is accepted):
/// HOOI on modes `(0, 1)` with ranks `(rank_out, rank_in)` and SVD initialisation. The core has
/// shape `(rank_out, rank_in, kh, kw)`; `factors[0]` is `(out × rank_out)`, `factors[1]` is
/// `(in × rank_in)`.
pub fn tucker2<T: Real>(
    kernel: &ArrayViewD<'_, T>,
    rank_out: usize,
    rank_in: usize,
    iter: IterOptions,
) -> Result<Tucker<T>> {
    if kernel.ndim() < 2 {
        return Err(GbtdError::Shape(format!(
            "Tucker-2 needs a tensor of order >= 2, got shape {:?}",
            kernel.shape()
        )));
    }
    let opts = TuckerOptions {
        rank: vec![rank_out, rank_in],
        modes: Some(vec![0, 1]),
        iter,
        init: Init::Svd,
    };
    partial_tucker(kernel, &opts)
}

/// The `k` leading left singular vectors of the unfolding `X_(mode)` (`d × k`, orthonormal
/// columns, decreasing singular value) and the matching singular values.
///
/// For a wide or square unfolding (`d ≤ Π_{j≠mode} d_j`) they are the leading eigenvectors of
/// the Gram matrix `X_(mode) X_(mode)ᵀ` ([`unfolding_gram`]) by LAPACK `dsyevr`; for a tall one
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

/// Slices at least this wide make per-slice GEMMs efficient; narrower middle modes are moved
/// last by a copy first.
const WIDE: usize = 64;

/// A tensor stored in C order with permuted axes: storage axis `i` holds mode `axes[i]` of the
/// tensor it represents. HOOI keeps the mode it works on at an edge of the storage order, where
/// mode products and Gram matrices are single BLAS calls; the Gram matrix and the leading left
/// singular vectors of an unfolding do not depend on the order of its columns.
pub(crate) struct Laid<'a, T> {
    pub(crate) data: CowArray<'a, T, IxDyn>,
    axes: Vec<usize>,
}

impl<'a, T: Real> Laid<'a, T> {
    /// `x` in its natural axis order (copied into C order if it is not).
    fn natural(x: ArrayViewD<'a, T>) -> Self {
        let axes = (0..x.ndim()).collect();
        let data = if x.is_standard_layout() {
            CowArray::from(x)
        } else {
            CowArray::from(x.as_standard_layout().into_owned())
        };
        Laid { data, axes }
    }

    /// A borrowed view of the same tensor.
    fn view(&self) -> Laid<'_, T> {
        Laid {
            data: CowArray::from(self.data.view()),
            axes: self.axes.clone(),
        }
    }

    pub(crate) fn pos(&self, mode: usize) -> Result<usize> {
        self.axes
            .iter()
            .position(|&a| a == mode)
            .ok_or_else(|| GbtdError::Shape(format!("mode {mode} not in the tensor")))
    }

    fn dim(&self, mode: usize) -> Result<usize> {
        Ok(self.data.shape()[self.pos(mode)?])
    }

    /// `(P, d, Q)`: the storage viewed around the axis at `pos`.
    fn pdq(&self, pos: usize) -> (usize, usize, usize) {
        let shape = self.data.shape();
        (
            shape[..pos].iter().product(),
            shape[pos],
            shape[pos + 1..].iter().product(),
        )
    }

    /// Whether products and Gram matrices on the storage axis `pos` need no copy.
    fn is_edge(&self, pos: usize) -> bool {
        let (p, _, q) = self.pdq(pos);
        p == 1 || q == 1 || q >= WIDE
    }

    /// The same tensor with `mode` at an edge: itself if it is already, else a copy with `mode`
    /// moved to the last storage axis.
    fn edge(self, mode: usize) -> Result<Laid<'a, T>> {
        let pos = self.pos(mode)?;
        if self.is_edge(pos) {
            Ok(self)
        } else {
            self.moved_last(pos)
        }
    }

    /// A C-order copy with the storage axis at `pos` moved last.
    fn moved_last<'b>(&self, pos: usize) -> Result<Laid<'b, T>> {
        let (p, d, q) = self.pdq(pos);
        let x3 = self.data.view().into_shape_with_order((p, d, q))?;
        let mut out = Array3::<T>::zeros((p, q, d));
        for (src, mut dst) in x3.outer_iter().zip(out.outer_iter_mut()) {
            dst.assign(&src.t());
        }
        let mut shape = self.data.shape().to_vec();
        let mut axes = self.axes.clone();
        shape.remove(pos);
        shape.push(d);
        let a = axes.remove(pos);
        axes.push(a);
        Ok(Laid {
            data: CowArray::from(out.into_shape_with_order(IxDyn(&shape))?),
            axes,
        })
    }

    /// `self ×_mode Aᵀ` for `A` of shape `(d_mode × r)`: one GEMM at an edge, one GEMM per
    /// slice for wide slices, after a copy moving `mode` last otherwise.
    pub(crate) fn ttm_t<'b>(&self, mode: usize, a: &ArrayView2<'_, T>) -> Result<Laid<'b, T>> {
        let pos = self.pos(mode)?;
        if !self.is_edge(pos) {
            return self.moved_last(pos)?.ttm_t(mode, a);
        }
        let (p, d, q) = self.pdq(pos);
        if a.nrows() != d {
            return Err(GbtdError::Shape(format!(
                "projection of mode {mode} (size {d}) on a factor with {} rows",
                a.nrows()
            )));
        }
        let r = a.ncols();
        if q == 1 && p > 1 {
            return self.ttm_t_last(mode, a);
        }
        let mut shape = self.data.shape().to_vec();
        shape[pos] = r;
        let x3 = self.data.view().into_shape_with_order((p, d, q))?;
        let mut out = Array3::<T>::zeros((p, r, q));
        let work = 2.0 * (p * d * q * r) as f64;
        if p == 1 {
            at_times(
                a,
                &x3.index_axis(Axis(0), 0),
                out.index_axis_mut(Axis(0), 0),
                work,
                true,
            );
        } else {
            // A middle mode with wide slices: out[i] = Aᵀ · x[i], the slices shared out over the
            // threads.
            let slices: Vec<_> = x3.outer_iter().zip(out.outer_iter_mut()).collect();
            map_items(slices, split(work), |(src, dst)| {
                at_times(a, &src, dst, work, false)
            });
        }
        Ok(Laid {
            data: CowArray::from(out.into_shape_with_order(IxDyn(&shape))?),
            axes: self.axes.clone(),
        })
    }

    /// [`Self::ttm_t`] on the last storage axis of size > 1, `X (P × d)`: the result is stored rank axis
    /// first, as `Aᵀ · Xᵀ` (`r × P`). OpenBLAS packs the tall `X` much faster as the transposed
    /// right operand of a wide product than as the left operand of `X · A` (0.73 ms against
    /// 1.0 ms for `P = 10⁴, d = 100, r = 10` on one thread).
    fn ttm_t_last<'b>(&self, mode: usize, a: &ArrayView2<'_, T>) -> Result<Laid<'b, T>> {
        let pos = self.pos(mode)?;
        let (p, d, _) = self.pdq(pos);
        let r = a.ncols();
        let x2 = self.data.view().into_shape_with_order((p, d))?;
        let mut out = Array2::<T>::zeros((r, p));
        let work = 2.0 * (p * d * r) as f64;
        at_times(a, &x2.t(), out.view_mut(), work, true);
        // Storage axes after `pos` (if any) have size 1: they follow the others.
        let mut shape = vec![r];
        shape.extend_from_slice(&self.data.shape()[..pos]);
        shape.extend_from_slice(&self.data.shape()[pos + 1..]);
        let mut axes = vec![mode];
        axes.extend_from_slice(&self.axes[..pos]);
        axes.extend_from_slice(&self.axes[pos + 1..]);
        Ok(Laid {
            data: CowArray::from(out.into_shape_with_order(IxDyn(&shape))?),
            axes,
        })
    }

    /// The Gram matrix of the unfolding along `mode` (see [`unfolding_gram`]).
    fn gram(&self, mode: usize) -> Result<Array2<T>> {
        let pos = self.pos(mode)?;
        if !self.is_edge(pos) {
            return self.moved_last(pos)?.gram(mode);
        }
        let (p, d, q) = self.pdq(pos);
        let x3 = self.data.view().into_shape_with_order((p, d, q))?;
        let work = (p * q * d * d) as f64;
        // OpenBLAS does not thread `syrk` with a small output (100 × 100 from a 100³ tensor took
        // 3.2 ms on 1 or 2 threads). A medium Gram matrix is therefore the sum of the Gram
        // matrices of fixed pieces of the contracted index: CHUNK rows (last mode), CHUNK columns
        // (first mode) or slices of about CHUNK columns (middle mode), computed in parallel when
        // the process may use several threads, and added up in order, so the value depends only
        // on the sizes, not on the thread count.
        let mut g = if (SPLIT_MIN_WORK..SMALL_BLAS_WORK).contains(&work) {
            let (axis, size) = match (p, q) {
                (_, 1) => (Axis(0), CHUNK),
                (1, _) => (Axis(2), CHUNK),
                _ => (Axis(0), CHUNK.div_ceil(q)),
            };
            let _single = SingleThreadedBlas::new();
            let pieces: Vec<_> = x3.axis_chunks_iter(axis, size).collect();
            let partial = map_items(pieces, split(work), gram_chunk);
            let mut sum = Array2::<T>::zeros((d, d));
            for g in partial {
                sum += &g?;
            }
            sum
        } else {
            gram_chunk(x3)?
        };
        mirror_lower(&mut g);
        Ok(g)
    }

    /// The tensor in its natural axis order (C order).
    fn into_natural(self) -> ArrayD<T> {
        let mut perm = vec![0; self.axes.len()];
        for (i, &a) in self.axes.iter().enumerate() {
            perm[a] = i;
        }
        let data = self.data.into_owned();
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return data;
        }
        data.permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned()
    }
}

/// Below this many floating-point operations a product is not worth a second thread.
const SPLIT_MIN_WORK: f64 = 4e6;

/// Columns per BLAS call in [`at_times`].
const CHUNK: usize = 512;

/// Whether a product of `work` flops over `X` (or a projection of it) is shared out over the
/// worker pool ([`crate::parallel`]): medium products (from [`SPLIT_MIN_WORK`] up to
/// [`SMALL_BLAS_WORK`], which run inside a [`SingleThreadedBlas`] scope) are; small ones are not
/// worth a hand-off, large ones are threaded by OpenBLAS itself.
///
/// Measured on 2 cores for `Aᵀ·X`, `X` `100 × 10⁴`, `A` `100 × 10`, best of 300
/// (`OPENBLAS_NUM_THREADS=2 cargo run --release -p gbtd --example pass_timing`): one OpenBLAS call
/// on 2 threads 0.39 ms; [`CHUNK`]-column calls on one thread 0.46 ms; the chunks shared out over
/// two pool threads 0.24 ms. (OpenBLAS's idle workers spin for about 0.1 s after it loads and
/// after each threaded call, competing with these threads: see
/// [`crate::openblas::ThreadPolicy::parking`].)
fn split(work: f64) -> bool {
    (SPLIT_MIN_WORK..SMALL_BLAS_WORK).contains(&work)
}

/// `out = Aᵀ · b` for `A` `(d × r)` and `b` `(d × n)` (any strides, e.g. a transposed `X`).
///
/// For medium `work` (below [`SMALL_BLAS_WORK`]), the columns go in [`CHUNK`]-wide BLAS calls,
/// whose packed operands stay in cache, shared out over the worker pool when `parallel` and
/// [`split`] allow it. Every output entry comes from the same call whatever the thread count.
/// Larger products are one BLAS call, threaded by OpenBLAS.
fn at_times<T: Real>(
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    mut out: ArrayViewMut2<'_, T>,
    work: f64,
    parallel: bool,
) {
    if work >= SMALL_BLAS_WORK || b.ncols() <= CHUNK {
        general_mat_mul(T::one(), &a.t(), b, T::zero(), &mut out);
        return;
    }
    let pieces: Vec<_> = b
        .axis_chunks_iter(Axis(1), CHUNK)
        .zip(out.axis_chunks_iter_mut(Axis(1), CHUNK))
        .collect();
    map_items(pieces, parallel && split(work), |(bc, mut oc)| {
        general_mat_mul(T::one(), &a.t(), &bc, T::zero(), &mut oc);
    });
}

/// The lower triangle of `Σ_p x[p] x[p]ᵀ` for `x` `(P, d, Q)` — of `x_{(P×d)}ᵀ x_{(P×d)}` when
/// `Q = 1` — by BLAS `syrk`.
fn gram_chunk<T: Real>(x: ArrayView3<'_, T>) -> Result<Array2<T>> {
    let d = x.len_of(Axis(1));
    let mut g = Array2::<T>::zeros((d, d));
    if x.len_of(Axis(2)) == 1 {
        syrk_lower(&x.index_axis(Axis(2), 0), true, T::zero(), &mut g)?;
    } else {
        for slice in x.outer_iter() {
            syrk_lower(&slice, false, T::one(), &mut g)?;
        }
    }
    Ok(g)
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

/// The input tensor, in natural order and, once asked for, with a middle mode moved last.
pub(crate) struct InputLayouts<'a, T> {
    natural: Laid<'a, T>,
    moved: Vec<Option<Laid<'a, T>>>,
    sq_norm: f64,
}

impl<'a, T: Real> InputLayouts<'a, T> {
    pub(crate) fn new(x: ArrayViewD<'a, T>) -> Self {
        let n = x.ndim();
        let sq_norm = sq_norm(&x);
        InputLayouts {
            natural: Laid::natural(x),
            moved: (0..n).map(|_| None).collect(),
            sq_norm,
        }
    }

    /// Makes [`Self::get`] return a layout with `mode` at an edge (a no-op for `None`).
    pub(crate) fn prepare(&mut self, mode: Option<usize>) -> Result<()> {
        if let Some(m) = mode {
            let pos = self.natural.pos(m)?;
            if !self.natural.is_edge(pos) && self.moved[m].is_none() {
                self.moved[m] = Some(self.natural.moved_last(pos)?);
            }
        }
        Ok(())
    }

    /// A layout of `X` with `mode` at an edge if [`Self::prepare`] was called for it (the
    /// natural layout otherwise, and for `None`).
    pub(crate) fn get(&self, mode: Option<usize>) -> &Laid<'a, T> {
        match mode.and_then(|m| self.moved[m].as_ref()) {
            Some(l) => l,
            None => &self.natural,
        }
    }
}

/// HOSVD factors: the leading left singular vectors of each unfolding of the input.
fn hosvd_factors<T: Real>(
    xl: &mut InputLayouts<'_, T>,
    rank: &[usize],
    modes: &[usize],
) -> Result<Vec<Array2<T>>> {
    let mut factors = Vec::with_capacity(modes.len());
    for (&m, &r) in modes.iter().zip(rank) {
        xl.prepare(Some(m))?;
        factors.push(leading(xl.get(Some(m)), m, r)?.0);
    }
    Ok(factors)
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
    let modes: Vec<usize> = match modes {
        Some(m) => m.to_vec(),
        None => (0..x.ndim()).collect(),
    };
    if modes.is_empty() {
        return Err(GbtdError::Options("no modes to factorize".into()));
    }
    let mut seen = vec![false; x.ndim()];
    for &m in &modes {
        if m >= x.ndim() {
            return Err(GbtdError::Shape(format!(
                "mode {m} out of range for a tensor of order {}",
                x.ndim()
            )));
        }
        if std::mem::replace(&mut seen[m], true) {
            return Err(GbtdError::Shape(format!("mode {m} listed twice")));
        }
    }
    let dims: Vec<usize> = modes.iter().map(|&m| x.shape()[m]).collect();
    validate_ranks(rank, &dims, "Tucker")?;
    Ok((modes, dims))
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

/// `‖X‖²`, accumulated in `f64`.
pub(crate) fn sq_norm<T: Real>(x: &ArrayViewD<'_, T>) -> f64 {
    x.iter().map(|v| v.to_f64_exact().powi(2)).sum()
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
