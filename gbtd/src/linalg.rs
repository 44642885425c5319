//! Dense linear-algebra kernels on top of LAPACK (through `ndarray-linalg`) and BLAS.
//!
//! Leading singular vectors, which HOSVD, HOOI and the SVD initialisations need, never come from
//! `gesvd`: for a wide matrix (`rows ≤ cols`, the usual case for an unfolding) they are the
//! leading eigenvectors of the Gram matrix `M·Mᵀ`; for a tall matrix the thin divide-and-conquer
//! SVD `gesdd` is used. Gram matrices come from BLAS `syrk` ([`gram`]). Symmetric eigenproblems go
//! through LAPACK `dsytrd`, a tridiagonal solver (`dstemr`, `dstedc`, or a divide-and-conquer
//! merge that forms only the wanted vectors) and `dormtr` ([`sym_eig_top`]), which compute only
//! the wanted eigenvectors, instead of the `syev` behind `ndarray_linalg::Eigh` or `dsyevr` with
//! an index range.
//!
//! The LAPACK and CBLAS routines ndarray-linalg does not wrap come from `lapack-sys` and
//! `cblas-sys` (the bindings ndarray-linalg and ndarray use); they resolve to the OpenBLAS the
//! crate already links. OpenBLAS's own API (thread count, kernel choice) is used only in
//! [`crate::openblas`].
use std::any::TypeId;
use std::os::raw::{c_char, c_int};

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, CBLAS_UPLO, cblas_dsyrk, cblas_ssyrk};
use lapack_sys::{dormtr_, dsterf_, dsytrd_};

use ndarray::{Array1, Array2, ArrayView2, ShapeBuilder, s};
use ndarray_linalg::{JobSvd, QRInto, SVDDC};

use crate::error::{GbtdError, Result};
use crate::openblas::SingleThreadedBlas;
use crate::real::Real;

mod tridiagonal;
use tridiagonal::tridiagonal_top;

/// The `k` leading left singular vectors `U` (`rows × k`, orthonormal columns, in decreasing
/// order of singular value) and the matching singular values of `m`.
///
/// When `k` exceeds the number of non-zero singular values available (`k > min(rows, cols)`), the
/// extra columns complete an orthonormal basis and their singular values are 0.
pub fn leading_left_singular_vectors<T: Real>(
    m: &ArrayView2<'_, T>,
    k: usize,
) -> Result<(Array2<T>, Array1<T>)> {
    let (rows, cols) = m.dim();
    if k == 0 || k > rows {
        return Err(GbtdError::Rank(format!(
            "{k} leading singular vectors requested of a {rows}×{cols} matrix"
        )));
    }
    if rows <= cols {
        let g = gram(m, false)?;
        let (vals, u) = sym_eig_top(&g.view(), k)?;
        let s = vals.mapv(|v| if v > T::zero() { v.sqrt() } else { T::zero() });
        Ok((u, s))
    } else {
        let job = if k > cols { JobSvd::All } else { JobSvd::Some };
        let (u, sv, _) = m.svddc(job)?;
        let u = u.ok_or_else(|| GbtdError::Linalg("gesdd returned no U".into()))?;
        let mut s = Array1::<T>::zeros(k);
        for i in 0..k.min(sv.len()) {
            s[i] = sv[i];
        }
        Ok((u.slice(s![.., ..k]).to_owned(), s))
    }
}

/// All singular values of `m`, in decreasing order, by LAPACK `gesdd`.
pub fn singular_values<T: Real>(m: &ArrayView2<'_, T>) -> Result<Array1<T>> {
    let (_, s, _) = m.svddc(JobSvd::None)?;
    Ok(s)
}

/// Outcome of [`psd_eig_top_warm`].
#[derive(Debug, Clone)]
pub enum WarmEig<T> {
    /// The `k` leading eigenpairs (values decreasing, vectors as columns), certified.
    Certified(Array1<T>, Array2<T>),
    /// No certificate within the step budget: use an exact solver ([`sym_eig_top`]).
    Uncertified,
}

/// Block-Krylov steps [`psd_eig_top_warm`] takes before giving up.
const WARM_MAX_STEPS: usize = 4;

/// The `k` leading eigenpairs of a symmetric positive semi-definite `g` (`d × d`), from a start
/// `u0` (`d × k`, orthonormal columns) close to them, when that can be certified; no LAPACK
/// tridiagonalisation. HOOI's successive Gram matrices change little once it settles, so the
/// previous factor is such a start.
///
/// Each step is a Rayleigh–Ritz projection on the block Krylov space `span[U, G·U]`
/// (`2k ≤ d` columns): `Q = qr([U, G·U])`, the `k` leading eigenpairs `(θ_i, w_i)` of `QᵀGQ`,
/// `U ← Q·W`. The result is accepted when two bounds hold:
/// - **Trace certificate.** Ritz values are lower bounds (`θ_i ≤ λ_i`) and the eigenvalues of a
///   PSD matrix are non-negative, so every eigenvalue beyond the `k`-th satisfies
///   `λ_{k+1} ≤ ρ = tr(G) − Σ_{i≤k} θ_i`. If `ρ < θ_k`, exactly `k` eigenvalues exceed `ρ`: the
///   Ritz pairs approximate the leading eigenspace and not some other invariant subspace.
/// - **Residual.** With `R = G·U − U·diag(θ)`, the Davis–Kahan sin Θ theorem bounds the angle
///   between `span U` and the leading eigenspace by `‖R‖_F / (θ_k − ρ)`; it must be below
///   `10⁻² · sqrt(ε)` (about `1.5·10⁻¹⁰` in `f64`), and the eigenvalue errors are then of the order
///   of its square.
///
/// Otherwise (a flat spectrum, `2k > d`, a start of the wrong shape, or no convergence within
/// four steps) it returns [`WarmEig::Uncertified`]. Costs `O(d²k)` per step against
/// `O(d³)` for the tridiagonalisation of [`sym_eig_top`].
pub fn psd_eig_top_warm<T: Real>(
    g: &ArrayView2<'_, T>,
    k: usize,
    u0: &ArrayView2<'_, T>,
) -> Result<WarmEig<T>> {
    let d = g.nrows();
    if g.ncols() != d || u0.dim() != (d, k) || k == 0 || 2 * k > d {
        return Ok(WarmEig::Uncertified);
    }
    let tol = 1e-2 * T::epsilon().to_f64_exact().sqrt();
    let mut u = u0.to_owned();
    let mut gu = g.dot(&u);
    for _ in 0..WARM_MAX_STEPS {
        let mut basis = Array2::<T>::zeros((d, 2 * k));
        basis.slice_mut(s![.., ..k]).assign(&u);
        basis.slice_mut(s![.., k..]).assign(&gu);
        let (q, _) = basis.qr_into()?;
        let gq = g.dot(&q);
        let h = q.t().dot(&gq);
        let h = (&h + &h.t()) * T::from_f64_lossy(0.5);
        let (theta, w) = sym_eig_top(&h.view(), k)?;
        u = q.dot(&w);
        gu = gq.dot(&w);
        let mut r2 = 0.0f64;
        for ((&a, &b), (_, j)) in gu.iter().zip(u.iter()).zip(ndarray::indices((d, k))) {
            let r = a.to_f64_exact() - b.to_f64_exact() * theta[j].to_f64_exact();
            r2 += r * r;
        }
        let gap = trace_gap(g, &theta);
        if gap > 0.0 && r2.sqrt() <= tol * gap {
            return Ok(WarmEig::Certified(theta, u));
        }
    }
    Ok(WarmEig::Uncertified)
}

/// The trace certificate of [`psd_eig_top_warm`]: `θ_k − max(ρ, 0)` with `ρ = tr(G) − Σ_{i≤k} θ_i`,
/// for lower bounds `θ_1 ≥ … ≥ θ_k` of the `k` leading eigenvalues of a PSD `g`. Positive exactly
/// when it proves that no other eigenvalue reaches `θ_k`; it then bounds the gap below.
pub(crate) fn trace_gap<T: Real>(g: &ArrayView2<'_, T>, theta: &Array1<T>) -> f64 {
    let trace: f64 = g.diag().iter().map(|v| v.to_f64_exact()).sum();
    let rest = trace - theta.iter().map(|v| v.to_f64_exact()).sum::<f64>();
    theta.last().map_or(f64::NEG_INFINITY, |t| t.to_f64_exact()) - rest.max(0.0)
}

/// Solves `X · M = B` for `X` with `M` symmetric positive semi-definite (`r × r`), as the normal
/// equations of ALS produce. Uses a pseudo-inverse through the symmetric eigendecomposition of
/// `M`, discarding eigenvalues below `rcond · λ_max`, so rank-deficient systems stay finite.
pub fn solve_sym_right<T: Real>(b: &ArrayView2<'_, T>, m: &ArrayView2<'_, T>) -> Result<Array2<T>> {
    if m.nrows() != m.ncols() || b.ncols() != m.nrows() {
        return Err(GbtdError::Shape(format!(
            "solve X·M = B with M {:?} and B {:?}",
            m.dim(),
            b.dim()
        )));
    }
    let (vals, vecs) = sym_eig_top(m, m.nrows())?;
    let lmax = vals
        .iter()
        .fold(T::zero(), |a, &v| if v.abs() > a { v.abs() } else { a });
    let cutoff = lmax * T::epsilon() * T::from_f64_lossy(m.nrows() as f64);
    let inv_vals = vals.mapv(|v| if v > cutoff { T::one() / v } else { T::zero() });
    // X = B · V · diag(1/λ) · Vᵀ
    let bv = b.dot(&vecs);
    let scaled = &bv * &inv_vals.view().insert_axis(ndarray::Axis(0));
    Ok(scaled.dot(&vecs.t()))
}

fn lapack_check(routine: &str, info: c_int) -> Result<()> {
    if info != 0 {
        return Err(GbtdError::Linalg(format!("{routine} failed (info = {info})")));
    }
    Ok(())
}

/// The workspace size LAPACK reported in a query, at least `min`.
fn work_size(reported: f64, min: usize) -> usize {
    (reported.max(0.0) as usize).max(min).max(1)
}

/// LAPACK `dsytrd` on the symmetric `n × n` column-major matrix `a` (its lower triangle), with
/// the workspace the blocked code asks for: `QᵀAQ = T`. Returns `T`'s diagonal `d` and subdiagonal
/// `e` (both of length `n`, `e[n−1] = 0`) and the reflector scalars `tau`; `a` is left holding
/// the reflectors, as `dormtr` reads them. The caller has checked that `n²` fits a LAPACK integer.
fn tridiagonalize(a: &mut [f64], n: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let nn = n as c_int;
    let lower = b"L".as_ptr() as *const c_char;
    let mut d = vec![0.0f64; n];
    let mut e = vec![0.0f64; n];
    let mut tau = vec![0.0f64; n.max(2) - 1];
    let mut info: c_int = 0;
    // SAFETY (both calls): every pointer refers to a live buffer of at least the size LAPACK
    // documents for the argument (A: n×n with LDA = n, D: n, E and TAU: n−1, WORK: LWORK
    // entries, one for the query), and LAPACK keeps none of them.
    let mut call = |work: &mut [f64], lwork: c_int, info: &mut c_int| unsafe {
        dsytrd_(
            lower,
            &nn,
            a.as_mut_ptr(),
            &nn,
            d.as_mut_ptr(),
            e.as_mut_ptr(),
            tau.as_mut_ptr(),
            work.as_mut_ptr(),
            &lwork,
            info,
        );
    };
    let mut query = [0.0f64; 1];
    call(&mut query, -1, &mut info);
    lapack_check("dsytrd workspace query", info)?;
    let mut work = vec![0.0f64; work_size(query[0], n)];
    let lwork = c_int::try_from(work.len())
        .map_err(|_| GbtdError::Shape(format!("{n}×{n} eigenproblem too large for LAPACK")))?;
    call(&mut work, lwork, &mut info);
    lapack_check("dsytrd", info)?;
    Ok((d, e, tau))
}

/// All eigenvalues of the symmetric matrix `g` (`n × n`), in ascending order: LAPACK `dsytrd`
/// (blocked reduction to tridiagonal form, with the workspace it asks for) and `dsterf`
/// (eigenvalues of the tridiagonal matrix by the root-free QL/QR method, `O(n²)`). Without
/// eigenvectors this is about a third of the work of [`sym_eig_top`] for all pairs
/// (no tridiagonal eigenvectors, no back-transformation), and, unlike the `dsyev` behind
/// `ndarray_linalg::EigValsh`, the reduction runs with the workspace for the blocked code (`eigvalsh` took 4× as long as
/// `sym_eig_top` with eigenvectors at n = 1024 in a side-by-side run).
pub(crate) fn sym_eigenvalues(g: Array2<f64>) -> Result<Vec<f64>> {
    let n = g.nrows();
    if g.ncols() != n || n == 0 {
        return Err(GbtdError::internal(format!(
            "eigenvalues of a {:?} matrix",
            g.dim()
        )));
    }
    let nn = c_int::try_from(n)
        .ok()
        .filter(|_| c_int::try_from(n.saturating_mul(n)).is_ok())
        .ok_or_else(|| GbtdError::Shape(format!("{n}×{n} eigenproblem too large for LAPACK")))?;
    // Row-major symmetric = column-major symmetric.
    let mut a: Vec<f64> = g.iter().copied().collect();
    let (mut d, mut e, _tau) = tridiagonalize(&mut a, n)?;
    let mut info: c_int = 0;
    // SAFETY: D and E have length n; LAPACK keeps neither.
    unsafe {
        dsterf_(&nn, d.as_mut_ptr(), e.as_mut_ptr(), &mut info);
    }
    if info != 0 {
        return Err(GbtdError::Linalg(format!(
            "dsterf failed to converge (info = {info}); try rescaling the kernel"
        )));
    }
    Ok(d)
}

/// The `k` largest eigenvalues of the symmetric matrix `m` (`n × n`) in decreasing order, and
/// the matching orthonormal eigenvectors as the columns of an `n × k` matrix.
///
/// LAPACK: `dsytrd` reduces `m` to tridiagonal form `QᵀMQ = T`; `dstemr` (MRRR, for few pairs),
/// `dstedc` (divide and conquer, small `n`) or the top-level divide-and-conquer step of the
/// private `tridiagonal` module (two halves side by side, then only the `k` wanted vectors of
/// the merge; `n ≥ 256`) solves `T`; and `dormtr` maps only the `k` wanted eigenvectors
/// of `T` back through `Q`.
/// This avoids `dsyevr` with an index range (which falls back to bisection and inverse
/// iteration) and the `dsyev` behind `ndarray_linalg::Eigh` (all eigenpairs, QR iteration), both
/// slower for this use.
/// The computation runs in `f64` (an `f32` matrix is widened and the result narrowed), so one
/// code path serves both element types. For a Gram matrix `M·Mᵀ` the eigenvectors are the left
/// singular vectors of `M` and the eigenvalues its squared singular values.
pub fn sym_eig_top<T: Real>(m: &ArrayView2<'_, T>, k: usize) -> Result<(Array1<T>, Array2<T>)> {
    let n = m.nrows();
    if m.ncols() != n {
        return Err(GbtdError::Shape(format!(
            "eigenproblem of a non-square {:?} matrix",
            m.dim()
        )));
    }
    if k == 0 || k > n {
        return Err(GbtdError::Rank(format!(
            "{k} eigenpairs requested of a {n}×{n} matrix"
        )));
    }
    if c_int::try_from(n.saturating_mul(n).saturating_add(4 * n + 1)).is_err() {
        return Err(GbtdError::Shape(format!(
            "{n}×{n} eigenproblem too large for LAPACK"
        )));
    }
    // The reduction to tridiagonal form is n BLAS-2 steps: threads only pay off for large n.
    let _single = SingleThreadedBlas::for_work((n * n * n) as f64);
    // Column-major f64 copy (the transpose of a symmetric matrix is itself).
    let mut a: Vec<f64> = m.t().iter().map(|v| v.to_f64_exact()).collect();
    let (mut d, mut e, tau) = tridiagonalize(&mut a, n)?;

    let (w, mut zk) = tridiagonal_top(&mut d, &mut e, k)?;
    // Back-transformation `Q · Z`: the columns are independent, so large `k` is split into two
    // halves that the worker pool can take side by side (the same split at any thread count).
    let chunk = if k >= 64 { k.div_ceil(2) } else { k };
    let applied: Vec<Result<()>> =
        crate::parallel::map_items(zk.chunks_mut(chunk * n).collect(), true, |cols| {
            apply_householder_q(&a, &tau, n, cols)
        });
    applied.into_iter().collect::<Result<()>>()?;
    let tail = &zk[..];
    let zmat = ArrayView2::from_shape((n, k).f(), tail)?;
    let mut vecs = Array2::<T>::zeros((n, k));
    let mut vals = Array1::<T>::zeros(k);
    for c in 0..k {
        let src = k - 1 - c;
        vals[c] = T::from_f64_lossy(w[src]);
        for (dst, &v) in vecs.column_mut(c).iter_mut().zip(zmat.column(src)) {
            *dst = T::from_f64_lossy(v);
        }
    }
    Ok((vals, vecs))
}

/// The Gram matrix `M·Mᵀ` (or `Mᵀ·M` with `transpose`), by BLAS `?syrk` (half the work of a
/// GEMM).
pub fn gram<T: Real>(m: &ArrayView2<'_, T>, transpose: bool) -> Result<Array2<T>> {
    let n = if transpose { m.ncols() } else { m.nrows() };
    let mut c = Array2::<T>::zeros((n, n));
    syrk_lower(m, transpose, T::zero(), &mut c)?;
    mirror_lower(&mut c);
    Ok(c)
}

/// `C ← M·Mᵀ + β·C` (or `Mᵀ·M + β·C` with `transpose`) on the lower triangle of `C` (`n × n`),
/// by BLAS `?syrk`; the strict upper triangle is left as it was. Accumulate several products
/// this way and call [`mirror_lower`] once at the end.
pub fn syrk_lower<T: Real>(m: &ArrayView2<'_, T>, transpose: bool, beta: T, c: &mut Array2<T>) -> Result<()> {
    let (n, k) = if transpose {
        (m.ncols(), m.nrows())
    } else {
        (m.nrows(), m.ncols())
    };
    if c.dim() != (n, n) {
        return Err(GbtdError::Shape(format!(
            "syrk: output {:?} for a product of size {n}×{n}",
            c.dim()
        )));
    }
    let fits = |v: usize| c_int::try_from(v).is_ok();
    let blas_ok = fits(n) && fits(k) && n > 0 && k > 0 && c.is_standard_layout();
    let is_f64 = TypeId::of::<T>() == TypeId::of::<f64>();
    let is_f32 = TypeId::of::<T>() == TypeId::of::<f32>();
    if !blas_ok || !(is_f64 || is_f32) {
        let prod = if transpose { m.t().dot(m) } else { m.dot(&m.t()) };
        *c *= beta;
        *c += &prod;
        return Ok(());
    }
    // Row-major storage of the operand: M itself, or Mᵀ (then the product flips its transpose).
    let (a, trans) = if m.is_standard_layout() {
        (ndarray::CowArray::from(m.view()), transpose)
    } else if m.t().is_standard_layout() {
        (ndarray::CowArray::from(m.t()), !transpose)
    } else {
        (
            ndarray::CowArray::from(m.as_standard_layout().into_owned()),
            transpose,
        )
    };
    let lda = a.ncols().max(1) as c_int;
    let tr = if trans {
        CBLAS_TRANSPOSE::CblasTrans
    } else {
        CBLAS_TRANSPOSE::CblasNoTrans
    };
    let (nn, kk, ldc) = (n as c_int, k as c_int, n as c_int);
    let (ap, cp) = (a.as_ptr(), c.as_mut_ptr());
    // SAFETY: `a` is a live row-major (n×k, or k×n when transposed) buffer with leading dimension
    // `lda`, `c` a live row-major n×n buffer, and `T` is exactly f64 (resp. f32) as checked by
    // `TypeId`, so the pointer casts do not change the element type.
    unsafe {
        if is_f64 {
            cblas_dsyrk(
                CBLAS_LAYOUT::CblasRowMajor,
                CBLAS_UPLO::CblasLower,
                tr,
                nn,
                kk,
                1.0,
                ap as *const f64,
                lda,
                beta.to_f64_exact(),
                cp as *mut f64,
                ldc,
            );
        } else {
            cblas_ssyrk(
                CBLAS_LAYOUT::CblasRowMajor,
                CBLAS_UPLO::CblasLower,
                tr,
                nn,
                kk,
                1.0,
                ap as *const f32,
                lda,
                beta.to_f64_exact() as f32,
                cp as *mut f32,
                ldc,
            );
        }
    }
    Ok(())
}

/// Copies the lower triangle of a square matrix onto its upper triangle.
pub fn mirror_lower<T: Real>(c: &mut Array2<T>) {
    let n = c.nrows().min(c.ncols());
    for i in 0..n {
        for j in 0..i {
            c[[j, i]] = c[[i, j]];
        }
    }
}

/// `C ← Q·C` for the orthogonal `Q` of a `dsytrd` reduction (`a`, `tau` as `dsytrd` left them,
/// lower triangle, order `n`) and the column-major `n × c` matrix `C` stored in `cols`
/// (`c = cols.len() / n`), by `dormtr`.
fn apply_householder_q(a: &[f64], tau: &[f64], n: usize, cols: &mut [f64]) -> Result<()> {
    let ch = |c: &'static [u8]| c.as_ptr() as *const c_char;
    let k = cols.len() / n;
    let (nn, kk) = (n as c_int, k as c_int);
    let mut info: c_int = 0;
    // SAFETY (both calls): A is n×n with LDA = n, TAU has n − 1 entries, C is n×k with LDC = n,
    // WORK has LWORK entries (LWORK = −1: a query writing one); LAPACK keeps none of them.
    let mut call = |work: &mut [f64], lwork: c_int, info: &mut c_int| unsafe {
        dormtr_(
            ch(b"L"),
            ch(b"L"),
            ch(b"N"),
            &nn,
            &kk,
            a.as_ptr(),
            &nn,
            tau.as_ptr(),
            cols.as_mut_ptr(),
            &nn,
            work.as_mut_ptr(),
            &lwork,
            info,
        );
    };
    let mut query = [0.0f64; 1];
    call(&mut query, -1, &mut info);
    lapack_check("dormtr workspace query", info)?;
    // `dormtr`'s query omits the `65 × 64` block-reflector buffer `dormqr` needs on top of it
    // (LAPACK ≥ 3.7), so with exactly the queried size `dormqr` silently drops to its unblocked
    // code (`dorm2r`: 13% of a 512 × 512, k = 128 eigenproblem went to scanning for zero
    // columns). Give it the room for the largest block size as well.
    let mut work = vec![0.0f64; work_size(query[0] + (65 * 64 + 64 * k) as f64, k)];
    let lwork = work.len() as c_int;
    call(&mut work, lwork, &mut info);
    lapack_check("dormtr", info)
}

/// Below this many floating-point operations per BLAS call, a threaded OpenBLAS call is slower
/// than a single-threaded one on small machines: every call pays a thread hand-off. Inside a
/// [`crate::openblas::ThreadPolicy`], decompositions whose products stay below it run with
/// OpenBLAS on one thread.
pub const SMALL_BLAS_WORK: f64 = 2e8;
