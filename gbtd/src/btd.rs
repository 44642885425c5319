//! Block Term Decomposition (BTD, paper Eq. 1–2) and its partial form that keeps chosen modes whole
//! (Eq. 5–6), computed by alternating least squares with exact least-squares block updates.
//!
//! # Model
//! For an order-`N` tensor `X` (`d_0 × … × d_{N-1}`), a set of factorized `modes` with ranks
//! `L_m` and `R` terms,
//!
//! `X ≈ X̂ = Σ_{r<R} G_r ×_{m∈modes} A_m^r`, elementwise (Eq. 2)
//! `X̂(i_0,…,i_{N-1}) = Σ_r Σ_{j} G_r(j_0,…,j_{N-1}) · Π_{m∈modes} A_m^r(i_m, j_m)`,
//! where the sum over `j_k` runs over `L_k` for a factorized mode and `j_k = i_k` for a kept mode.
//!
//! - `A_m^r` is `d_m × L_m` (the factor of term `r` on mode `m`);
//! - `G_r` has size `L_m` on every factorized mode and the full `d_k` on every kept mode.
//!
//! Kept modes have the identity as factor, which is not stored. For a conv kernel in PyTorch layout
//! `(out, in, kh, kw)`, the paper's Eq. 6 is `modes = [0, 1]`, `rank = [d4*, d3*]`: the spatial modes are
//! kept, `A_0^r = A4_r` (`d4 × d4*`), `A_1^r = A3_r` (`d3 × d3*`), and `G_r` is `(d4*, d3*, kh, kw)`.
//! With `R = 1` the model is a (partial) Tucker decomposition, and with every rank 1 (and all modes
//! factorized) it is a rank-`R` CP decomposition whose weights sit in the 1×…×1 cores.
//!
//! # Algorithm (ALS)
//! Write `Â_m = [A_m^0 … A_m^{R-1}]` (`d_m × R·L_m`) for the concatenated factor of mode `m`. One sweep:
//! 1. For each factorized mode `m` in the order of `modes`, the exact least-squares update of `Â_m` with
//!    everything else fixed: `X_(m) ≈ Â_m · W`, where `W` stacks `W_r = (G_r ×_{k≠m} A_k^r)_(m)`
//!    (`L_m × Π_{k≠m} d_k`) for `r < R`, so `Â_m = X_(m) Wᵀ (W Wᵀ)⁻¹` (normal equations).
//!    Each block is then orthonormalised, `A_m^r = Q R̃`, and `R̃` is pushed into the core,
//!    `G_r ← G_r ×_m R̃`, which leaves `X̂` unchanged and keeps the core system well conditioned.
//! 2. All cores at once, by exact least squares: with `K_r = ⊗_{m∈modes} A_m^r` (identity on the
//!    kept modes) the normal equations are `Σ_s (K_rᵀ K_s) g_s = K_rᵀ x`, and
//!    `K_rᵀ K_s = ⊗_m (A_m^rᵀ A_m^s) ⊗ I`. The identity on the kept modes decouples the system: the
//!    `R·Π L_m` unknowns of each kept-mode position share one Gram matrix, solved once (Cholesky, with
//!    a pseudo-inverse fallback for singular systems) for all `Π_{kept} d_k` right-hand sides.
//!    Above [`DIRECT_CORE_SOLVE_MAX`] unknowns (`R·Π L_m`) the dense solve would dominate, and the
//!    cores are instead updated one at a time, each by its exact least-squares solution given the
//!    others (block Gauss–Seidel, [`CORE_GAUSS_SEIDEL_SWEEPS`] passes).
//!
//! A sweep costs a few GEMMs of the size of `X` times `R·L_m` per mode, plus one dense solve of order
//! `R·Π L_m`.
//!
//! The relative error `‖X − X̂‖/‖X‖` is computed from the explicit reconstruction after each sweep.
//! Every step is an exact least-squares solve of its block, so the error never increases (up to
//! rounding). By default [`btd`] also tries an extrapolated step after each sweep and keeps it only
//! when it lowers the error ([`Acceleration::LineSearch`]); [`BtdOptions::acceleration`] =
//! [`Acceleration::None`] runs plain ALS. ALS for BTD can stall on plateaus or stop in a local
//! minimum; try another `seed` with [`Init::Random`] when the error stays high. This is most common
//! outside the essentially unique regime: on a kept mode each term has rank up to `Π L_m`, so a
//! partial BTD with `R·Π L_m` above the kept mode's size (a 3×3 conv kernel with `R·d3*·d4* > 9`,
//! the usual case in networks) has many exact solutions and flat directions between them.
//!
//! # Initialisation
//! - [`Init::Svd`]: an *anchor* mode is chosen among the modes where the `R` blocks fit side by
//!   side (`R·L_m ≤ d_m`): the one of smallest rank `L_m`. Its leading `R·L_m` left singular vectors
//!   of `X_(m)` are split among the terms (term `r` gets vectors `r·L_m..(r+1)·L_m`, so the terms'
//!   anchor subspaces are orthogonal). On every other mode, in the order of `modes`, term `r` gets
//!   the leading `L_m` left singular vectors of `X` projected on its subspaces chosen so far (the
//!   anchor block first): a sequentially truncated HOSVD per term. The subspaces of the terms are
//!   thereby *paired*: splitting every mode's leading singular vectors independently would give
//!   term `r` the `r`-th block of each mode, blocks that need not belong together (on a matrix,
//!   the left block `r·L_0..` and the right block `r·L_1..` only match when `L_0 = L_1`), and ALS
//!   then stalls far above the attainable error. On matrix-shaped data (kept modes of size 1) the
//!   anchored start is the truncated SVD of rank `R·min_m L_m`, the best any `R`-term model can do,
//!   so the error starts at the error of the Tucker model of ranks `R·L_m` and only goes down.
//!   If no mode has room for the `R` blocks, the terms are built greedily instead: term `r` gets
//!   the leading `L_m` left singular vectors of the residual `X − Σ_{s<r} G_s ×_m A_m^s` on every
//!   mode (HOSVD of the residual per term, each core the projection of the residual).
//! - [`Init::Random`]: i.i.d. standard normal factors from `seed`, orthonormalised block by block.
//! - [`Init::Given`]: one matrix per entry of `modes`, in the same order: the concatenated factor
//!   `Â_m` of shape `(d_m, R·L_m)`, term `r` in columns `r·L_m..(r+1)·L_m`. Blocks are orthonormalised
//!   (which does not change the spanned model).
//!
//! In every case the cores are then the joint least-squares solution of step 2. Given the same input
//! and options (including `seed`) the result is deterministic.
use ndarray::ShapeBuilder;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, Axis, IxDyn, s};
use ndarray_linalg::{Diag, FactorizeC, QR, SolveC, SolveTriangular, UPLO};

use crate::error::{GbtdError, Result};
use crate::linalg::{leading_left_singular_vectors, solve_sym_right};
pub use crate::options::Acceleration;
use crate::options::{
    Convergence, Init, IterOptions, Progress, check_workspace, iterative_setters, product_u128,
    validate_given, validate_ranks,
};
use crate::random::{randn2, rng};
use crate::real::Real;
use crate::tensor::{kron, mode_dot, multi_mode_dot, resolve_modes, unfold, validate_modes, validate_tensor};

/// Largest number of core unknowns per kept-mode position, `R·Π L_m`, for which the core update
/// solves the normal equations jointly (a dense Cholesky of that order); larger systems use block
/// Gauss–Seidel sweeps.
pub const DIRECT_CORE_SOLVE_MAX: usize = 2048;

/// Block Gauss–Seidel sweeps per core update when the joint system is too large.
pub const CORE_GAUSS_SEIDEL_SWEEPS: usize = 3;

/// Options of [`btd`].
#[derive(Debug, Clone)]
pub struct BtdOptions<'a, T> {
    /// Number of block terms `R` (≥ 1).
    pub terms: usize,
    /// Multilinear rank of every term: `rank[i]` is the rank `L` of mode `modes[i]`.
    pub rank: Vec<usize>,
    /// The factorized modes, distinct, in the order `rank` lists them; `None` means all modes in
    /// order. Modes not listed are kept whole (partial BTD, paper Eq. 5/6).
    pub modes: Option<Vec<usize>>,
    /// Iteration count, tolerance and seed.
    pub iter: IterOptions,
    /// Initialisation (see the module documentation for the layout of given factors).
    pub init: Init<T>,
    /// Extrapolation between sweeps ([`Acceleration::LineSearch`] by default).
    pub acceleration: Acceleration,
    /// Called after each sweep with the sweep number and the relative error.
    pub progress: Progress<'a>,
}

impl<T> BtdOptions<'_, T> {
    /// `terms` terms of multilinear rank `rank` on all modes, SVD initialisation, default iteration
    /// settings, line-search acceleration and no progress callback.
    pub fn new(terms: usize, rank: Vec<usize>) -> Self {
        BtdOptions {
            terms,
            rank,
            modes: None,
            iter: IterOptions::default(),
            init: Init::Svd,
            acceleration: Acceleration::default(),
            progress: Progress::none(),
        }
    }

    /// The same options factorizing only `modes` (`rank[i]` belongs to `modes[i]`).
    pub fn with_modes(mut self, modes: Vec<usize>) -> Self {
        self.modes = Some(modes);
        self
    }

    /// The same options with another [`Acceleration`].
    pub fn with_acceleration(mut self, acceleration: Acceleration) -> Self {
        self.acceleration = acceleration;
        self
    }
}

iterative_setters!(BtdOptions);

/// One block term `G_r ×_{m∈modes} A_m^r` of a [`Btd`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockTerm<T> {
    /// The core `G_r`: of order `N`, size `L_m` on each factorized mode and `d_k` on each kept mode.
    pub core: ArrayD<T>,
    /// The factors `A_m^r` (`d_m × L_m`), one per entry of [`Btd::modes`], in that order.
    pub factors: Vec<Array2<T>>,
}

/// A block term decomposition `X̂ = Σ_r G_r ×_{m∈modes} A_m^r` (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Btd<T> {
    /// The `R` block terms.
    pub terms: Vec<BlockTerm<T>>,
    /// The factorized modes, in the order of each term's `factors`.
    pub modes: Vec<usize>,
    /// Shape of the decomposed tensor.
    pub shape: Vec<usize>,
    /// Error history and iteration count of the fit (default when built by hand).
    pub convergence: Convergence,
}

impl<T: Real> Btd<T> {
    /// Number of terms `R`.
    pub fn n_terms(&self) -> usize {
        self.terms.len()
    }

    /// The multilinear rank of the first term on each factorized mode (in the order of `modes`).
    pub fn rank(&self) -> Vec<usize> {
        self.terms
            .first()
            .map(|t| t.factors.iter().map(|f| f.ncols()).collect())
            .unwrap_or_default()
    }

    /// Checks that the parts fit together: at least one term, distinct in-range modes, and for each
    /// term one `d_m × L_m` factor per mode and a core of size `L_m` on factorized modes and `d_k` on
    /// kept modes. Terms may have different ranks.
    pub fn validate(&self) -> Result<()> {
        if self.terms.is_empty() {
            return Err(GbtdError::Rank("a BTD needs at least one term".into()));
        }
        validate_modes(&self.modes, self.shape.len())?;
        for (r, t) in self.terms.iter().enumerate() {
            if t.factors.len() != self.modes.len() {
                return Err(GbtdError::Shape(format!(
                    "term {r} has {} factors for {} modes",
                    t.factors.len(),
                    self.modes.len()
                )));
            }
            let mut core_shape = self.shape.clone();
            for (f, &m) in t.factors.iter().zip(&self.modes) {
                if f.nrows() != self.shape[m] {
                    return Err(GbtdError::Shape(format!(
                        "term {r}: factor of mode {m} has {} rows, the mode has size {}",
                        f.nrows(),
                        self.shape[m]
                    )));
                }
                core_shape[m] = f.ncols();
            }
            if t.core.shape() != core_shape.as_slice() {
                return Err(GbtdError::Shape(format!(
                    "term {r}: core has shape {:?}, expected {core_shape:?}",
                    t.core.shape()
                )));
            }
        }
        Ok(())
    }

    /// The full tensor of term `r`, `G_r ×_{m∈modes} A_m^r`.
    pub fn term_tensor(&self, r: usize) -> Result<ArrayD<T>> {
        self.validate()?;
        let t = self.terms.get(r).ok_or_else(|| {
            GbtdError::Shape(format!(
                "term {r} requested of a BTD with {} terms",
                self.terms.len()
            ))
        })?;
        let views: Vec<ArrayView2<'_, T>> = t.factors.iter().map(|f| f.view()).collect();
        multi_mode_dot(&t.core.view(), &views, Some(&self.modes), None, false)
    }

    /// The reconstruction `X̂ = Σ_r G_r ×_{m∈modes} A_m^r` (Eq. 1), of shape [`Btd::shape`].
    pub fn reconstruct(&self) -> Result<ArrayD<T>> {
        self.validate()?;
        let mut out = ArrayD::<T>::zeros(IxDyn(&self.shape));
        for r in 0..self.terms.len() {
            out += &self.term_tensor(r)?;
        }
        Ok(out)
    }

    /// Number of stored parameters: `Σ_r (|G_r| + Σ_m d_m·L_m)` (kept modes store no factor).
    pub fn n_params(&self) -> usize {
        self.terms
            .iter()
            .map(|t| t.core.len() + t.factors.iter().map(|f| f.len()).sum::<usize>())
            .sum()
    }

    /// The concatenated factor `[A_m^0 … A_m^{R-1}]` of `modes[i]`.
    pub fn concatenated_factor(&self, i: usize) -> Result<Array2<T>> {
        self.validate()?;
        if i >= self.modes.len() {
            return Err(GbtdError::Shape(format!(
                "factor {i} requested of a BTD with {} factorized modes",
                self.modes.len()
            )));
        }
        let views: Vec<ArrayView2<'_, T>> = self.terms.iter().map(|t| t.factors[i].view()).collect();
        Ok(ndarray::concatenate(Axis(1), &views)?)
    }
}

/// Block term decomposition of `x` by ALS (see the module documentation), accelerated by
/// `opts.acceleration` and calling `opts.progress` after each sweep.
///
/// Errors: [`GbtdError::Empty`]/[`GbtdError::NonFinite`] for an empty or non-finite `x`,
/// [`GbtdError::Rank`] for `terms = 0` or a rank of 0 or above its dimension, [`GbtdError::Mode`]
/// for bad modes, [`GbtdError::Shape`] / [`GbtdError::NonFinite`] for given factors of the wrong
/// shape or non-finite, [`GbtdError::Options`] for a bad tolerance.
pub fn btd<T: Real>(x: &ArrayViewD<'_, T>, opts: &BtdOptions<'_, T>) -> Result<Btd<T>> {
    validate_tensor(x, "input tensor")?;
    opts.iter.validate()?;
    if opts.terms == 0 {
        return Err(GbtdError::Rank(
            "the number of block terms R must be at least 1".into(),
        ));
    }
    let shape = x.shape().to_vec();
    let modes = resolve_modes(opts.modes.as_deref(), shape.len())?;
    let dims: Vec<usize> = modes.iter().map(|&m| shape[m]).collect();
    validate_ranks(&opts.rank, &dims, "BTD")?;
    let elem = std::mem::size_of::<T>();
    check_workspace(
        workspace_bytes(&shape, &modes, &opts.rank, opts.terms, elem),
        (x.len() * elem) as u128,
        &format!(
            "BTD of {} terms of ranks {:?} on shape {shape:?}",
            opts.terms, opts.rank
        ),
    )?;

    let mut als = Als::new(x, modes, opts.rank.clone(), opts.terms)?;
    als.initialise(&opts.init, opts.iter.seed)?;
    als.update_cores()?;
    let mut conv = Convergence::default();
    let (err, w) = als.error()?;
    let mut w0 = Some(w);
    conv.push(err, opts.iter.tol);
    let mut prev: Option<State<T>> = None;
    for sweep in 1..=opts.iter.n_iter_max {
        for i in 0..als.modes.len() {
            let cached = if i == 0 { w0.take() } else { None };
            let w = match cached {
                Some(w) => w,
                None => als.w_matrix(i)?,
            };
            als.update_factor(i, &w)?;
        }
        als.update_cores()?;
        let (mut err, w) = als.error()?;
        w0 = Some(w);
        if opts.acceleration == Acceleration::LineSearch {
            if let Some(prev) = prev.take() {
                let rho = (sweep as f64).powf(1.0 / 3.0);
                if let Some((e, w)) = als.try_extrapolation(&prev, rho, err)? {
                    err = e;
                    w0 = Some(w);
                }
            }
            prev = Some((als.fac.clone(), als.cores.clone()));
        }
        conv.iterations = sweep;
        opts.progress.sweep(sweep, err)?;
        if conv.push(err, opts.iter.tol) {
            break;
        }
    }
    Ok(als.into_btd(conv))
}

/// An upper bound, in bytes, on the memory [`btd`] allocates for a tensor of `shape` with
/// `terms` block terms of ranks `rank` on `modes` (elements of `elem_size` bytes, saturating).
/// With `P = Π d_k`, `K` factorized modes and `R` terms it counts: `2 + K` tensors of size `P`
/// (the input, its cached unfoldings, the reconstruction); twice the concatenated factors
/// `Σ d_m·R·L_m` and the cores `R·Π L_m·Π_{kept} d_k` (the iterate and the line search's
/// previous one); twice the largest `W` matrix `R·L_m × P/d_m` with its product; four matrices
/// the size of the factor normal equations `(R·L_m)²` (the system, its factorization, the
/// pseudo-inverse fallback's eigenvectors and product); and for the cores either six matrices the
/// size of the joint system `(R·Π L_m)²` (up to [`DIRECT_CORE_SOLVE_MAX`] unknowns), or, for the
/// block Gauss–Seidel update above it, which forms no such system, three more sets of cores (the
/// projections and each update's temporaries) and the `R·Σ L_m²` cross products. The total is
/// doubled for the temporaries of each step (products before assignment, QR and solver copies).
pub fn workspace_bytes(
    shape: &[usize],
    modes: &[usize],
    rank: &[usize],
    terms: usize,
    elem_size: usize,
) -> u128 {
    let r = terms as u128;
    let len = product_u128(shape.iter().copied());
    let prod_l = product_u128(rank.iter().copied());
    let kept = product_u128((0..shape.len()).filter(|k| !modes.contains(k)).map(|k| shape[k]));
    let mut elements = len.saturating_mul(2 + modes.len() as u128);
    let cores = r.saturating_mul(prod_l).saturating_mul(kept);
    let mut factors = 0u128;
    let mut largest_w = 0u128;
    let mut largest_normal = 0u128;
    for (&m, &l) in modes.iter().zip(rank) {
        let d = shape.get(m).copied().unwrap_or(1).max(1) as u128;
        let rl = r.saturating_mul(l as u128);
        factors = factors.saturating_add(d.saturating_mul(rl));
        largest_w = largest_w.max(rl.saturating_mul(len / d));
        largest_normal = largest_normal.max(rl.saturating_mul(rl));
    }
    let unknowns = r.saturating_mul(prod_l);
    let core_update = if unknowns <= DIRECT_CORE_SOLVE_MAX as u128 {
        // The system, its factorization, and for the pseudo-inverse fallback U, Vᵀ and their
        // product: six matrices of its size.
        unknowns.saturating_mul(unknowns).saturating_mul(6)
    } else {
        let cross: u128 = rank.iter().map(|&l| (l as u128).saturating_mul(l as u128)).sum();
        cores.saturating_mul(3).saturating_add(r.saturating_mul(cross))
    };
    elements = elements
        .saturating_add(factors.saturating_add(cores).saturating_mul(2))
        .saturating_add(largest_w.saturating_mul(2))
        .saturating_add(largest_normal.saturating_mul(4))
        .saturating_add(core_update);
    // Temporaries (products before they are assigned, QR and solve copies) at most double it.
    elements.saturating_mul(2).saturating_mul(elem_size as u128)
}

/// Concatenated factors and cores of one ALS iterate.
type State<T> = (Vec<Array2<T>>, Vec<ArrayD<T>>);

/// The ALS state: concatenated factors `Â_m` (orthonormal blocks) and the cores.
struct Als<T: Real> {
    shape: Vec<usize>,
    modes: Vec<usize>,
    rank: Vec<usize>,
    r: usize,
    /// `X` in standard layout.
    x: ArrayD<T>,
    /// `X_(modes[i])`, cached.
    unfolded: Vec<Array2<T>>,
    /// `Â_{modes[i]}`, `d × R·L`.
    fac: Vec<Array2<T>>,
    cores: Vec<ArrayD<T>>,
    norm_x: f64,
}

impl<T: Real> Als<T> {
    fn new(x: &ArrayViewD<'_, T>, modes: Vec<usize>, rank: Vec<usize>, r: usize) -> Result<Self> {
        let x = x.as_standard_layout().into_owned();
        let unfolded = modes
            .iter()
            .map(|&m| unfold(&x.view(), m))
            .collect::<Result<Vec<_>>>()?;
        let norm_x = x.iter().map(|v| v.to_f64_exact().powi(2)).sum::<f64>().sqrt();
        let shape = x.shape().to_vec();
        let mut core_shape = shape.clone();
        for (&m, &l) in modes.iter().zip(&rank) {
            core_shape[m] = l;
        }
        let cores = vec![ArrayD::zeros(IxDyn(&core_shape)); r];
        Ok(Als {
            fac: Vec::new(),
            shape,
            modes,
            rank,
            r,
            x,
            unfolded,
            cores,
            norm_x,
        })
    }

    fn block(&self, i: usize, r: usize) -> ArrayView2<'_, T> {
        let l = self.rank[i];
        self.fac[i].slice(s![.., r * l..(r + 1) * l])
    }

    fn blocks(&self, r: usize) -> Vec<ArrayView2<'_, T>> {
        (0..self.modes.len()).map(|i| self.block(i, r)).collect()
    }

    fn initialise(&mut self, init: &Init<T>, seed: u64) -> Result<()> {
        let dims: Vec<usize> = self.modes.iter().map(|&m| self.shape[m]).collect();
        match init {
            Init::Given(given) => {
                let wide: Vec<usize> = self.rank.iter().map(|&l| l * self.r).collect();
                validate_given(given, &dims, &wide)?;
                self.fac = given.clone();
            }
            Init::Random => {
                let mut g = rng(seed);
                self.fac = dims
                    .iter()
                    .zip(&self.rank)
                    .map(|(&d, &l)| randn2::<T>(d, l * self.r, &mut g))
                    .collect();
            }
            Init::Svd => self.initialise_svd(&dims)?,
        }
        for i in 0..self.modes.len() {
            self.orthonormalise(i, false)?;
        }
        Ok(())
    }

    fn initialise_svd(&mut self, dims: &[usize]) -> Result<()> {
        let k = dims.len();
        self.fac = dims
            .iter()
            .zip(&self.rank)
            .map(|(&d, &l)| Array2::zeros((d, self.r * l)))
            .collect();
        // The anchor: among the modes where the R blocks fit side by side (R·L ≤ d), the one of
        // smallest rank (the first listed on ties).
        let anchor = (0..k)
            .filter(|&i| self.r * self.rank[i] <= dims[i])
            .min_by_key(|&i| self.rank[i]);
        let Some(i0) = anchor else {
            return self.initialise_greedy();
        };
        let m0 = self.modes[i0];
        let l0 = self.rank[i0];
        let (u, _) =
            leading_left_singular_vectors(&lapack_ready(&self.unfolded[i0].view()).view(), self.r * l0)?;
        self.fac[i0] = u;
        // Term r's subspaces on the other modes, in the order of `modes`: the leading left
        // singular vectors of X projected on term r's subspaces chosen so far (a sequentially
        // truncated HOSVD per term, started from its anchor block).
        let y = mode_dot(&self.x.view(), &self.fac[i0].t(), m0)?;
        for r in 0..self.r {
            let mut p = y.slice_axis(Axis(m0), (r * l0..(r + 1) * l0).into()).to_owned();
            for i in (0..k).filter(|&i| i != i0) {
                let (m, l) = (self.modes[i], self.rank[i]);
                let pu = unfold(&p.view(), m)?;
                let (u, _) = leading_left_singular_vectors(&lapack_ready(&pu.view()).view(), l)?;
                p = mode_dot(&p.view(), &u.t(), m)?;
                self.fac[i].slice_mut(s![.., r * l..(r + 1) * l]).assign(&u);
            }
        }
        Ok(())
    }

    /// The initialisation when no mode has room for the R blocks side by side: term `r` gets the
    /// leading left singular vectors of the residual `X − Σ_{s<r} G_s ×_m A_m^s` on every mode
    /// (a HOSVD of the residual per term, each core the projection of the residual).
    fn initialise_greedy(&mut self) -> Result<()> {
        let mut residual = self.x.clone();
        for r in 0..self.r {
            for i in 0..self.modes.len() {
                let l = self.rank[i];
                let ru = unfold(&residual.view(), self.modes[i])?;
                let (u, _) = leading_left_singular_vectors(&lapack_ready(&ru.view()).view(), l)?;
                self.fac[i].slice_mut(s![.., r * l..(r + 1) * l]).assign(&u);
            }
            let blocks = self.blocks(r);
            let core = multi_mode_dot(&residual.view(), &blocks, Some(&self.modes), None, true)?;
            let term = multi_mode_dot(&core.view(), &blocks, Some(&self.modes), None, false)?;
            residual -= &term;
        }
        Ok(())
    }

    /// QR of every block of `Â_{modes[i]}`; with `push`, the triangular factors go into the cores.
    fn orthonormalise(&mut self, i: usize, push: bool) -> Result<()> {
        let l = self.rank[i];
        let m = self.modes[i];
        for r in 0..self.r {
            let (mut q, mut rt) = lapack_ready(&self.block(i, r)).qr()?;
            // Positive diagonal of the triangular factor: a unique, continuous orthonormal basis.
            for j in 0..l {
                if rt[[j, j]] < T::zero() {
                    q.column_mut(j).mapv_inplace(|v| -v);
                    rt.row_mut(j).mapv_inplace(|v| -v);
                }
            }
            self.fac[i].slice_mut(s![.., r * l..(r + 1) * l]).assign(&q);
            if push {
                self.cores[r] = mode_dot(&self.cores[r].view(), &rt.view(), m)?;
            }
        }
        Ok(())
    }

    /// Moves to the factors `Â + ρ(Â − Â_prev)` and cores `G + ρ(G − G_prev)` (blocks
    /// re-orthonormalised, triangular factors pushed into the cores) if that lowers the error below
    /// `err`, returning the new error and `W` of the first mode; otherwise leaves the state unchanged.
    fn try_extrapolation(&mut self, prev: &State<T>, rho: f64, err: f64) -> Result<Option<(f64, Array2<T>)>> {
        let saved_fac = self.fac.clone();
        let saved_cores = self.cores.clone();
        let step = T::from_f64_lossy(rho);
        for (f, p) in self.fac.iter_mut().zip(&prev.0) {
            let d = &*f - p;
            f.scaled_add(step, &d);
        }
        for (c, p) in self.cores.iter_mut().zip(&prev.1) {
            let d = &*c - p;
            c.scaled_add(step, &d);
        }
        let ok = self.fac.iter().all(|f| f.iter().all(|v| v.finite()))
            && self.cores.iter().all(|c| c.iter().all(|v| v.finite()));
        if ok {
            for i in 0..self.modes.len() {
                self.orthonormalise(i, true)?;
            }
            let (e, w) = self.error()?;
            if e < err {
                return Ok(Some((e, w)));
            }
        }
        self.fac = saved_fac;
        self.cores = saved_cores;
        Ok(None)
    }

    /// `W` for mode `modes[i]`: rows `r·L..(r+1)·L` hold `(G_r ×_{k≠m} A_k^r)_(m)`.
    fn w_matrix(&self, i: usize) -> Result<Array2<T>> {
        let m = self.modes[i];
        let l = self.rank[i];
        let p = self.x.len() / self.shape[m];
        let mut w = Array2::<T>::zeros((self.r * l, p));
        for r in 0..self.r {
            let blocks = self.blocks(r);
            let e = multi_mode_dot(&self.cores[r].view(), &blocks, Some(&self.modes), Some(i), false)?;
            let eu = unfold(&e.view(), m)?;
            w.slice_mut(s![r * l..(r + 1) * l, ..]).assign(&eu);
        }
        Ok(w)
    }

    /// Exact least-squares update of `Â_{modes[i]}` given `W` (see the module documentation), then
    /// orthonormalisation of its blocks with the triangular factors pushed into the cores.
    fn update_factor(&mut self, i: usize, w: &Array2<T>) -> Result<()> {
        let xu = &self.unfolded[i];
        let mut b = Array2::<T>::zeros((xu.nrows(), w.nrows()));
        general_mat_mul(T::one(), xu, &w.t(), T::zero(), &mut b);
        let mut gram = Array2::<T>::zeros((w.nrows(), w.nrows()));
        general_mat_mul(T::one(), w, &w.t(), T::zero(), &mut gram);
        self.fac[i] = solve_spd(&gram, &b.t())?.reversed_axes();
        self.orthonormalise(i, true)
    }

    /// The projections `P_r = X ×_{m∈modes} A_m^rᵀ = K_rᵀ x` (each of the core's shape), the mode
    /// with the best reduction done jointly for all terms.
    fn projections(&self) -> Result<Vec<ArrayD<T>>> {
        let i0 = (0..self.modes.len())
            .min_by(|&a, &b| {
                let ra = (self.r * self.rank[a]) as f64 / self.shape[self.modes[a]] as f64;
                let rb = (self.r * self.rank[b]) as f64 / self.shape[self.modes[b]] as f64;
                ra.total_cmp(&rb)
            })
            .unwrap_or(0);
        let m0 = self.modes[i0];
        let l0 = self.rank[i0];
        let y = mode_dot(&self.x.view(), &self.fac[i0].t(), m0)?;
        (0..self.r)
            .map(|r| {
                let yr = y.slice_axis(Axis(m0), (r * l0..(r + 1) * l0).into());
                let blocks = self.blocks(r);
                multi_mode_dot(&yr, &blocks, Some(&self.modes), Some(i0), true)
            })
            .collect()
    }

    /// Least-squares update of the cores (see the module documentation). With orthonormal blocks
    /// the diagonal blocks of the normal equations are identities. Up to [`DIRECT_CORE_SOLVE_MAX`]
    /// unknowns per kept-mode position the system is solved jointly and exactly; above that, by
    /// [`CORE_GAUSS_SEIDEL_SWEEPS`] block Gauss–Seidel sweeps, each an exact least-squares update
    /// of one core given the others, `G_r ← P_r − Σ_{s≠r} G_s ×_m (A_m^rᵀ A_m^s)`.
    fn update_cores(&mut self) -> Result<()> {
        let proj = self.projections()?;
        if self.r == 1 {
            // One term with orthonormal factors: K_0ᵀK_0 = I.
            self.cores = proj;
            return Ok(());
        }
        let q: usize = self.rank.iter().product();
        if self.r * q <= DIRECT_CORE_SOLVE_MAX {
            self.solve_cores_jointly(proj, q)
        } else {
            self.gauss_seidel_cores(&proj)
        }
    }

    fn solve_cores_jointly(&mut self, proj: Vec<ArrayD<T>>, q: usize) -> Result<()> {
        let n = self.shape.len();
        // Factorized modes in increasing order first, then the kept modes.
        let mut order: Vec<usize> = (0..self.modes.len()).collect();
        order.sort_by_key(|&i| self.modes[i]);
        let mut perm: Vec<usize> = order.iter().map(|&i| self.modes[i]).collect();
        perm.extend((0..n).filter(|k| !self.modes.contains(k)));
        let core_shape = self.cores[0].shape().to_vec();
        let kept: usize = self.cores[0].len() / q;
        let mut rhs = Array2::<T>::zeros((self.r * q, kept));
        for (r, pr) in proj.into_iter().enumerate() {
            let pp = pr.permuted_axes(IxDyn(&perm));
            let flat = pp
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order((q, kept))?;
            rhs.slice_mut(s![r * q..(r + 1) * q, ..]).assign(&flat);
        }
        let grams: Vec<Array2<T>> = order.iter().map(|&i| self.fac[i].t().dot(&self.fac[i])).collect();
        let ls: Vec<usize> = order.iter().map(|&i| self.rank[i]).collect();
        let gram = block_kron(&grams, &ls, self.r);
        let z = solve_spd(&gram, &rhs.view())?;

        let mut inv = vec![0; n];
        for (j, &p) in perm.iter().enumerate() {
            inv[p] = j;
        }
        let pshape: Vec<usize> = perm.iter().map(|&p| core_shape[p]).collect();
        for r in 0..self.r {
            let block = z.slice(s![r * q..(r + 1) * q, ..]).to_owned();
            let t = block.into_shape_with_order(IxDyn(&pshape))?;
            self.cores[r] = t.permuted_axes(IxDyn(&inv)).as_standard_layout().into_owned();
        }
        Ok(())
    }

    fn gauss_seidel_cores(&mut self, proj: &[ArrayD<T>]) -> Result<()> {
        for _ in 0..CORE_GAUSS_SEIDEL_SWEEPS {
            for (r, pr) in proj.iter().enumerate() {
                let mut g = pr.clone();
                for s_ in (0..self.r).filter(|&s_| s_ != r) {
                    let cross: Vec<Array2<T>> = (0..self.modes.len())
                        .map(|i| self.block(i, r).t().dot(&self.block(i, s_)))
                        .collect();
                    let views: Vec<ArrayView2<'_, T>> = cross.iter().map(|c| c.view()).collect();
                    g -= &multi_mode_dot(&self.cores[s_].view(), &views, Some(&self.modes), None, false)?;
                }
                self.cores[r] = g;
            }
        }
        Ok(())
    }

    /// Relative error of the current model, and `W` of the first factorized mode (reusable by the
    /// next sweep, since nothing changes in between).
    fn error(&self) -> Result<(f64, Array2<T>)> {
        let w = self.w_matrix(0)?;
        let xu = &self.unfolded[0];
        let mut xh = Array2::<T>::zeros(xu.dim());
        general_mat_mul(T::one(), &self.fac[0], &w, T::zero(), &mut xh);
        let diff: f64 = xu
            .iter()
            .zip(xh.iter())
            .map(|(a, b)| (a.to_f64_exact() - b.to_f64_exact()).powi(2))
            .sum::<f64>()
            .sqrt();
        let err = if self.norm_x > 0.0 {
            diff / self.norm_x
        } else {
            diff
        };
        Ok((err, w))
    }

    fn into_btd(self, convergence: Convergence) -> Btd<T> {
        let terms = (0..self.r)
            .map(|r| BlockTerm {
                core: self.cores[r].clone(),
                factors: self.blocks(r).iter().map(|b| b.to_owned()).collect(),
            })
            .collect();
        Btd {
            terms,
            modes: self.modes,
            shape: self.shape,
            convergence,
        }
    }
}

/// The Gram matrix of the core normal equations: block `(r, s)` (each `Π L_k` square) is
/// `⊗_k C_k[r-block, s-block]`, where `C_k = Â_kᵀ Â_k` and the Kronecker product runs over the
/// factorized modes in increasing mode order (C order, matching the row-major core layout).
fn block_kron<T: Real>(grams: &[Array2<T>], ls: &[usize], r: usize) -> Array2<T> {
    let q: usize = ls.iter().product();
    let mut m = Array2::<T>::zeros((r * q, r * q));
    for rr in 0..r {
        for ss in 0..r {
            let mut acc = Array2::<T>::ones((1, 1));
            for (c, &l) in grams.iter().zip(ls) {
                let blk = c.slice(s![rr * l..(rr + 1) * l, ss * l..(ss + 1) * l]);
                acc = kron(&acc.view(), &blk);
            }
            m.slice_mut(s![rr * q..(rr + 1) * q, ss * q..(ss + 1) * q])
                .assign(&acc);
        }
    }
    m
}

/// Solves `M · Z = B` for a symmetric positive semi-definite `M`: Cholesky when `M` is positive
/// definite, otherwise the eigenvalue pseudo-inverse of [`solve_sym_right`].
pub(crate) fn solve_spd<T: Real>(m: &Array2<T>, b: &ArrayView2<'_, T>) -> Result<Array2<T>> {
    let n = m.nrows();
    if m.ncols() != n || b.nrows() != n {
        return Err(GbtdError::Shape(format!(
            "solve M·Z = B with M {:?} and B {:?}",
            m.dim(),
            b.dim()
        )));
    }
    // M is symmetric, so its row-major data read column-major is M again: LAPACK then works on it
    // without transposing copies.
    let mf = Array2::from_shape_vec((n, n).f(), m.iter().copied().collect())?;
    if let Ok(fact) = mf.factorizec(UPLO::Lower) {
        let pd = fact.factor.diag().iter().all(|d| d.finite() && *d > T::zero());
        if pd {
            let z = if b.ncols() <= SOLVE_BY_COLUMNS_MAX {
                // Few right-hand sides: LAPACK potrs column by column.
                let mut z = Array2::<T>::zeros(b.dim());
                for (bc, mut zc) in b.columns().into_iter().zip(z.columns_mut()) {
                    let mut col = bc.to_owned();
                    fact.solvec_inplace(&mut col)?;
                    zc.assign(&col);
                }
                z
            } else {
                let l = &fact.factor;
                let bf = lapack_ready(b);
                let y = l.solve_triangular(UPLO::Lower, Diag::NonUnit, &bf)?;
                lapack_ready(&l.t()).solve_triangular(UPLO::Upper, Diag::NonUnit, &lapack_ready(&y.view()))?
            };
            if z.iter().all(|v| v.finite()) {
                return Ok(z);
            }
        }
    }
    Ok(solve_sym_right(&b.t(), &m.view())?.reversed_axes())
}

/// Right-hand sides up to which [`solve_spd`] runs LAPACK `potrs` column by column (no transposed
/// copy of the factor); more go through two triangular solves.
const SOLVE_BY_COLUMNS_MAX: usize = 32;

/// A row-major copy of `a` with the plain strides LAPACK needs. (`ndarray` gives axes of length 1
/// a stride of 0 in some slices, which `ndarray-linalg` rejects as an invalid layout.)
pub(crate) fn lapack_ready<T: Copy>(a: &ArrayView2<'_, T>) -> Array2<T> {
    Array2::from_shape_fn(a.dim(), |ij| a[ij])
}
