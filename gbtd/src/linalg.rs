//! Dense linear-algebra kernels on top of LAPACK (through `ndarray-linalg`) and BLAS.
//!
//! Leading singular vectors, which HOSVD, HOOI and the SVD initialisations need, never come from
//! `gesvd`: for a wide matrix (`rows ≤ cols`, the usual case for an unfolding) they are the
//! leading eigenvectors of the Gram matrix `M·Mᵀ` (BLAS GEMM plus LAPACK `syevd`); for a tall
//! matrix the thin divide-and-conquer SVD `gesdd` is used.
use ndarray::{Array1, Array2, ArrayView2, s};
use ndarray_linalg::{Eigh, JobSvd, SVDDC, UPLO};

use crate::error::{GbtdError, Result};
use crate::real::Real;

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
        let gram = m.dot(&m.t());
        let (vals, vecs) = gram.eigh(UPLO::Lower)?;
        // eigh returns ascending eigenvalues: take the last k, reversed.
        let mut u = Array2::<T>::zeros((rows, k));
        let mut s = Array1::<T>::zeros(k);
        for i in 0..k {
            let src = rows - 1 - i;
            u.column_mut(i).assign(&vecs.column(src));
            let v = vals[src];
            s[i] = if v > T::zero() { v.sqrt() } else { T::zero() };
        }
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
    let (vals, vecs) = m.to_owned().eigh(UPLO::Lower)?;
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
