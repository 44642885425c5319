//! The leading eigenpairs of a symmetric tridiagonal matrix `T` (diagonal `d`, subdiagonal `e`),
//! the middle step of [`super::sym_eig_top`].
//!
//! Three LAPACK-based paths, chosen by the size `n` and the number `k` of wanted pairs:
//! - few pairs (`8k ≤ n`): MRRR (`dstemr`), which computes only the wanted pairs;
//! - many pairs of a small matrix (`n < SPLIT_MIN`): divide and conquer (`dstedc`) for all pairs;
//! - many pairs of a larger matrix: the top level of divide and conquer done here, so that it
//!   can use two cores and skip the unwanted vectors. With `m = ⌊n/2⌋` and `β = e[m−1]`,
//!
//!   `T = diag(T₁, T₂) + |β| v vᵀ`,  `v = e_{m−1} + sign(β) e_m`,
//!
//!   where `T₁` and `T₂` are the two diagonal blocks with `|β|` taken off their touching corner
//!   entries. The two halves are solved by `dstedc` side by side (on [`crate::parallel`]'s
//!   workers when the thread policy allows), and the rank-one update is merged as LAPACK's
//!   `dlaed1` does: `dlaed2` deflates, `dlaed4` finds every root of the secular equation, the
//!   vector `z` is recomputed from the roots (the Gu–Eisenstat formula of `dlaed3`, which keeps
//!   the vectors orthogonal), and then, unlike `dlaed3`, only the `k` wanted eigenvectors are
//!   formed and multiplied by the halves' eigenvectors (a `k`-column product instead of an
//!   `n`-column one).
//!
//! The split is the same whatever the thread count, so the result does not depend on it.
use std::os::raw::{c_char, c_int};

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_dgemm};
use lapack_sys::{dstedc_, dstemr_};

use super::{lapack_check, work_size};
use crate::error::{GbtdError, Result};
use crate::parallel::map_items;

// LAPACK's divide-and-conquer building blocks (in every LAPACK, OpenBLAS's included), which
// lapack-sys does not declare.
unsafe extern "C" {
    /// Deflation of the rank-one merge of two solved halves (see the module documentation).
    fn dlaed2_(
        k: *mut c_int,
        n: *const c_int,
        n1: *const c_int,
        d: *mut f64,
        q: *mut f64,
        ldq: *const c_int,
        indxq: *mut c_int,
        rho: *mut f64,
        z: *mut f64,
        dlamda: *mut f64,
        w: *mut f64,
        q2: *mut f64,
        indx: *mut c_int,
        indxc: *mut c_int,
        indxp: *mut c_int,
        coltyp: *mut c_int,
        info: *mut c_int,
    );
    /// The `i`-th root of the secular equation `1 + ρ Σ z_j² / (d_j − λ) = 0`, and `d − λ`.
    fn dlaed4_(
        n: *const c_int,
        i: *const c_int,
        d: *const f64,
        z: *const f64,
        delta: *mut f64,
        rho: *const f64,
        dlam: *mut f64,
        info: *mut c_int,
    );
}

/// Below this order the top-level split does not pay for its copies and thread hand-off.
const SPLIT_MIN: usize = 256;

fn ch(c: &'static [u8]) -> *const c_char {
    c.as_ptr() as *const c_char
}

/// The `k` largest eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and
/// subdiagonal `e[..n-1]` (`d` and `e` both of length `n`, overwritten), in ascending order, and
/// their eigenvectors as an `n × k` column-major matrix.
pub(super) fn tridiagonal_top(d: &mut [f64], e: &mut [f64], k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = d.len();
    if k == 0 || k > n || e.len() != n {
        return Err(GbtdError::internal(format!(
            "tridiagonal eigenproblem: {k} pairs of order {n} (subdiagonal of length {})",
            e.len()
        )));
    }
    if 8 * k <= n {
        mrrr_top(d, e, k)
    } else if n >= SPLIT_MIN {
        split_top(d, e, k)
    } else {
        let z = dstedc_all(d, e)?;
        // Ascending order: the wanted pairs are the last k.
        Ok((d[n - k..].to_vec(), z[(n - k) * n..].to_vec()))
    }
}

/// The `k` largest pairs by MRRR (`dstemr` with an index range).
fn mrrr_top(d: &mut [f64], e: &mut [f64], k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = d.len();
    let nn = n as c_int;
    let (il, iu, kk) = ((n - k + 1) as c_int, nn, k as c_int);
    let (vl, vu) = (0.0f64, 0.0f64);
    let mut found: c_int = 0;
    let mut w = vec![0.0f64; n];
    let mut z = vec![0.0f64; n * k];
    let mut isuppz = vec![0 as c_int; 2 * k];
    let mut tryrac: c_int = 1;
    // SAFETY: D and E have length n, Z is n×k with LDZ = n, W has length n, ISUPPZ 2k,
    // WORK/IWORK the queried sizes; LAPACK keeps none of them.
    let call = |work: &mut [f64], lwork: c_int, iwork: &mut [c_int], liwork: c_int, info: &mut c_int| unsafe {
        dstemr_(
            ch(b"V"),
            ch(b"I"),
            &nn,
            d.as_mut_ptr(),
            e.as_mut_ptr(),
            &vl,
            &vu,
            &il,
            &iu,
            &mut found,
            w.as_mut_ptr(),
            z.as_mut_ptr(),
            &nn,
            &kk,
            isuppz.as_mut_ptr(),
            &mut tryrac,
            work.as_mut_ptr(),
            &lwork,
            iwork.as_mut_ptr(),
            &liwork,
            info,
        );
    };
    query_then_run("dstemr", 18 * n, 10 * n, call)?;
    if found as usize != k {
        return Err(GbtdError::Linalg(format!(
            "dstemr found {found} of {k} eigenpairs"
        )));
    }
    w.truncate(k);
    Ok((w, z))
}

/// All eigenpairs by divide and conquer (`dstedc`): the eigenvalues ascending in `d`, the
/// eigenvectors returned as an `n × n` column-major matrix.
fn dstedc_all(d: &mut [f64], e: &mut [f64]) -> Result<Vec<f64>> {
    let n = d.len();
    let nn = n as c_int;
    let mut z = vec![0.0f64; n * n];
    // SAFETY: D and E have length n, Z is n×n with LDZ = n, WORK/IWORK the queried sizes;
    // LAPACK keeps none of them.
    let call = |work: &mut [f64], lwork: c_int, iwork: &mut [c_int], liwork: c_int, info: &mut c_int| unsafe {
        dstedc_(
            ch(b"I"),
            &nn,
            d.as_mut_ptr(),
            e.as_mut_ptr(),
            z.as_mut_ptr(),
            &nn,
            work.as_mut_ptr(),
            &lwork,
            iwork.as_mut_ptr(),
            &liwork,
            info,
        );
    };
    query_then_run("dstedc", 1 + 4 * n + n * n, 3 + 5 * n, call)?;
    Ok(z)
}

/// Runs a LAPACK routine that takes `WORK`/`LWORK` and `IWORK`/`LIWORK`: first as a workspace
/// query (`LWORK = LIWORK = −1`), then with the sizes it asked for (at least `min_work` and
/// `min_iwork`). `call(work, lwork, iwork, liwork, info)` makes the call.
fn query_then_run<F>(routine: &str, min_work: usize, min_iwork: usize, mut call: F) -> Result<()>
where
    F: FnMut(&mut [f64], c_int, &mut [c_int], c_int, &mut c_int),
{
    let minus_one: c_int = -1;
    let mut info: c_int = 0;
    let mut query = [0.0f64; 1];
    let mut iquery = [0 as c_int; 1];
    call(&mut query, minus_one, &mut iquery, minus_one, &mut info);
    lapack_check(&format!("{routine} workspace query"), info)?;
    let mut work = vec![0.0f64; work_size(query[0], min_work)];
    let mut iwork = vec![0 as c_int; (iquery[0].max(0) as usize).max(min_iwork)];
    let (lwork, liwork) = (work.len() as c_int, iwork.len() as c_int);
    call(&mut work, lwork, &mut iwork, liwork, &mut info);
    lapack_check(routine, info)
}

/// One solved half: its eigenvalues (ascending) and eigenvectors (column-major, square).
type Half = (Vec<f64>, Vec<f64>);

/// The top-level divide-and-conquer step (see the module documentation).
fn split_top(d: &mut [f64], e: &mut [f64], k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = d.len();
    let n1 = n / 2;
    let n2 = n - n1;
    let beta = e[n1 - 1];
    let mut d1 = d[..n1].to_vec();
    let mut e1 = e[..n1].to_vec();
    e1[n1 - 1] = 0.0;
    let mut d2 = d[n1..].to_vec();
    let e2 = e[n1..].to_vec();
    d1[n1 - 1] -= beta.abs();
    d2[0] -= beta.abs();

    let halves: Vec<Result<Half>> = map_items(vec![(d1, e1), (d2, e2)], true, |(mut dh, mut eh)| {
        let z = dstedc_all(&mut dh, &mut eh)?;
        Ok((dh, z))
    });
    let mut halves = halves.into_iter();
    let (Some(h1), Some(h2)) = (halves.next(), halves.next()) else {
        return Err(GbtdError::internal("tridiagonal split: a half is missing"));
    };
    let ((w1, z1), (w2, z2)) = (h1?, h2?);

    // The block-diagonal eigenvector matrix of the two halves, column-major n × n.
    let mut q = vec![0.0f64; n * n];
    for j in 0..n1 {
        q[j * n..j * n + n1].copy_from_slice(&z1[j * n1..(j + 1) * n1]);
    }
    for j in 0..n2 {
        q[(n1 + j) * n + n1..(n1 + j + 1) * n].copy_from_slice(&z2[j * n2..(j + 1) * n2]);
    }
    d[..n1].copy_from_slice(&w1);
    d[n1..].copy_from_slice(&w2);
    merge_top(d, &mut q, n1, beta, k)
}

/// Merges two solved halves through the rank-one update `ρ v vᵀ` (`ρ = beta`, signed as the
/// subdiagonal entry), as LAPACK's `dlaed1`, forming only the eigenvectors of the `k` largest
/// eigenvalues. `d` holds the halves' eigenvalues (each half ascending), `q` (`n × n`,
/// column-major) their eigenvectors in its two diagonal blocks; both are overwritten.
fn merge_top(d: &mut [f64], q: &mut [f64], n1: usize, beta: f64, k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = d.len();
    let n2 = n - n1;
    let (nn, nn1) = (n as c_int, n1 as c_int);
    // z: the last row of the first block and the first row of the second.
    let mut z: Vec<f64> = (0..n1)
        .map(|j| q[j * n + n1 - 1])
        .chain((n1..n).map(|j| q[j * n + n1]))
        .collect();
    let mut indxq: Vec<c_int> = (1..=n1 as c_int).chain(1..=n2 as c_int).collect();
    let mut rho = beta;
    let mut kd: c_int = 0;
    let mut dlamda = vec![0.0f64; n];
    let mut w = vec![0.0f64; n];
    let mut q2 = vec![0.0f64; n * n];
    let mut indx = vec![0 as c_int; n];
    let mut indxc = vec![0 as c_int; n];
    let mut indxp = vec![0 as c_int; n];
    let mut coltyp = vec![0 as c_int; n];
    let mut info: c_int = 0;
    // SAFETY: D, Z, DLAMDA, W and the four index arrays have length n, Q is n×n with LDQ = n,
    // Q2 has n² ≥ n1² + n2² entries (dlaed2 also parks the deflated columns there); LAPACK
    // keeps none of them.
    unsafe {
        dlaed2_(
            &mut kd,
            &nn,
            &nn1,
            d.as_mut_ptr(),
            q.as_mut_ptr(),
            &nn,
            indxq.as_mut_ptr(),
            &mut rho,
            z.as_mut_ptr(),
            dlamda.as_mut_ptr(),
            w.as_mut_ptr(),
            q2.as_mut_ptr(),
            indx.as_mut_ptr(),
            indxc.as_mut_ptr(),
            indxp.as_mut_ptr(),
            coltyp.as_mut_ptr(),
            &mut info,
        );
    }
    lapack_check("dlaed2", info)?;
    let kd = kd as usize;
    if kd == 0 {
        // Everything deflated: d is ascending and q's columns match it.
        return Ok((d[n - k..].to_vec(), q[(n - k) * n..].to_vec()));
    }

    // Every root of the secular equation (d[j] for j < kd), with `delta[j·kd + i] = dlamda_i − λ_j`.
    let kk = kd as c_int;
    let mut delta = vec![0.0f64; kd * kd];
    for j in 0..kd {
        let jj = (j + 1) as c_int;
        // SAFETY: DLAMDA and W have at least kd entries, DELTA column j has kd.
        unsafe {
            dlaed4_(
                &kk,
                &jj,
                dlamda.as_ptr(),
                w.as_ptr(),
                delta[j * kd..].as_mut_ptr(),
                &rho,
                &mut d[j],
                &mut info,
            );
        }
        if info != 0 {
            return Err(GbtdError::Linalg(format!(
                "dlaed4 did not converge on root {} of {kd} (info = {info})",
                j + 1
            )));
        }
    }

    // The wanted pairs: the k largest of the kd roots (ascending in j) and the n − kd deflated
    // eigenvalues (in d[kd..], vectors in q's columns kd..).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    let wanted = &order[n - k..];
    let roots: Vec<usize> = wanted.iter().copied().filter(|&j| j < kd).collect();

    // The eigenvectors of the rank-one modified diagonal matrix for the wanted roots, rows in
    // the order of q2's columns (dlaed3's INDX permutation), column-major kd × roots.len().
    let kr = roots.len();
    let mut s = vec![0.0f64; kd * kr];
    if kd == 1 {
        s.fill(1.0);
    } else if kd == 2 {
        // dlaed4 returns the (normalised) eigenvector itself for two roots.
        for (c, &j) in roots.iter().enumerate() {
            for i in 0..2 {
                s[c * 2 + i] = delta[j * 2 + (indxc[i] as usize - 1)];
            }
        }
    } else {
        // z recomputed from the roots (Gu–Eisenstat), with the signs of the deflated z.
        let mut wz: Vec<f64> = (0..kd).map(|i| delta[i * kd + i]).collect();
        for j in 0..kd {
            for (i, wi) in wz.iter_mut().enumerate() {
                if i != j {
                    *wi *= delta[j * kd + i] / (dlamda[i] - dlamda[j]);
                }
            }
        }
        for (wi, &old) in wz.iter_mut().zip(&w) {
            *wi = (-*wi).sqrt().copysign(old);
        }
        let mut col = vec![0.0f64; kd];
        for (c, &j) in roots.iter().enumerate() {
            for i in 0..kd {
                col[i] = wz[i] / delta[j * kd + i];
            }
            let norm = col.iter().map(|v| v * v).sum::<f64>().sqrt();
            for i in 0..kd {
                s[c * kd + i] = col[indxc[i] as usize - 1] / norm;
            }
        }
    }

    // q2 holds the non-deflated eigenvectors of the halves grouped by type: ctot[0] columns
    // non-zero in the first n1 rows only, ctot[1] dense, ctot[2] in the last n2 rows only. The
    // wanted vectors are q2 · s, computed per block of rows.
    let ctot: Vec<usize> = coltyp[..4].iter().map(|&c| c as usize).collect();
    let (n12, n23) = (ctot[0] + ctot[1], ctot[1] + ctot[2]);
    let mut vecs = vec![0.0f64; n * kr];
    if kr > 0 {
        // Rows n1.. : the n2 × n23 block of q2 (after the first n1·n12 entries) times s's rows
        // ctot[0]..ctot[0] + n23. Rows ..n1: the n1 × n12 block times s's first n12 rows.
        let blocks = [(n1, 0, 0, n12, 0usize), (n2, n1 * n12, n1, n23, ctot[0])];
        let parts: Vec<(usize, usize, Vec<f64>)> =
            map_items(blocks.to_vec(), true, |(rows, q2_at, row0, inner, s_row0)| {
                let mut out = vec![0.0f64; rows * kr];
                if inner > 0 && rows > 0 {
                    // SAFETY: q2[q2_at..] holds a rows × inner column-major block (LDA = rows), s
                    // a kd × kr one (LDB = kd) read from row s_row0 (s_row0 + inner ≤ kd), out is
                    // rows × kr (LDC = rows).
                    unsafe {
                        cblas_dgemm(
                            CBLAS_LAYOUT::CblasColMajor,
                            CBLAS_TRANSPOSE::CblasNoTrans,
                            CBLAS_TRANSPOSE::CblasNoTrans,
                            rows as c_int,
                            kr as c_int,
                            inner as c_int,
                            1.0,
                            q2[q2_at..].as_ptr(),
                            rows as c_int,
                            s[s_row0..].as_ptr(),
                            kd as c_int,
                            0.0,
                            out.as_mut_ptr(),
                            rows as c_int,
                        );
                    }
                }
                (row0, rows, out)
            });
        for (row0, rows, out) in parts {
            for c in 0..kr {
                vecs[c * n + row0..c * n + row0 + rows].copy_from_slice(&out[c * rows..(c + 1) * rows]);
            }
        }
    }

    // Assemble in ascending order of eigenvalue.
    let mut values = Vec::with_capacity(k);
    let mut out = vec![0.0f64; n * k];
    let mut next_root = 0;
    for (c, &j) in wanted.iter().enumerate() {
        values.push(d[j]);
        let src = if j < kd {
            let col = &vecs[next_root * n..(next_root + 1) * n];
            next_root += 1;
            col
        } else {
            &q[j * n..(j + 1) * n]
        };
        out[c * n..(c + 1) * n].copy_from_slice(src);
    }
    Ok((values, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `max_j ‖T v_j − λ_j v_j‖`, `max |VᵀV − I|` for column-major `v` (`n × k`).
    fn residual_and_orthogonality(d: &[f64], e: &[f64], vals: &[f64], v: &[f64]) -> (f64, f64) {
        let n = d.len();
        let k = vals.len();
        let mut res: f64 = 0.0;
        for (j, &lam) in vals.iter().enumerate() {
            let x = &v[j * n..(j + 1) * n];
            for i in 0..n {
                let mut t = d[i] * x[i] - lam * x[i];
                if i > 0 {
                    t += e[i - 1] * x[i - 1];
                }
                if i + 1 < n {
                    t += e[i] * x[i + 1];
                }
                res = res.max(t.abs());
            }
        }
        let mut orth: f64 = 0.0;
        for a in 0..k {
            for b in 0..k {
                let dot: f64 = (0..n).map(|i| v[a * n + i] * v[b * n + i]).sum();
                orth = orth.max((dot - if a == b { 1.0 } else { 0.0 }).abs());
            }
        }
        (res, orth)
    }

    /// The split path against LAPACK's own divide and conquer on the whole matrix: the same
    /// eigenvalues, and vectors that are orthonormal eigenvectors (residual at rounding level).
    fn check(d: Vec<f64>, e: Vec<f64>, k: usize) {
        let n = d.len();
        let norm = d.iter().chain(&e).fold(0.0f64, |m, v| m.max(v.abs())) * 3.0;
        let (mut d1, mut e1) = (d.clone(), e.clone());
        let (vals, v) = split_top(&mut d1, &mut e1, k).unwrap();
        let (mut d2, mut e2) = (d.clone(), e.clone());
        dstedc_all(&mut d2, &mut e2).unwrap();
        assert_eq!(vals.len(), k);
        assert!(vals.windows(2).all(|w| w[0] <= w[1]), "not ascending: {vals:?}");
        let tol = 50.0 * n as f64 * f64::EPSILON * norm.max(f64::MIN_POSITIVE);
        for (a, b) in vals.iter().zip(&d2[n - k..]) {
            assert!((a - b).abs() <= tol, "eigenvalue {a} against dstedc's {b}");
        }
        let (res, orth) = residual_and_orthogonality(&d, &e, &vals, &v);
        assert!(res <= tol, "residual {res:e} > {tol:e}");
        assert!(orth <= 50.0 * n as f64 * f64::EPSILON, "orthogonality {orth:e}");
    }

    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        }
    }

    #[test]
    fn random_tridiagonal_matches_divide_and_conquer() {
        for (n, k, seed) in [(300, 100, 1), (257, 257, 2), (512, 128, 3), (400, 51, 4)] {
            let mut r = lcg(seed);
            let d: Vec<f64> = (0..n).map(|_| r()).collect();
            let e: Vec<f64> = (0..n).map(|_| r()).collect();
            check(d, e, k);
        }
    }

    #[test]
    fn negative_and_zero_coupling() {
        let n = 300;
        let mut r = lcg(5);
        let d: Vec<f64> = (0..n).map(|_| r()).collect();
        let mut e: Vec<f64> = (0..n).map(|_| r()).collect();
        e[n / 2 - 1] = -0.7;
        check(d.clone(), e.clone(), 90);
        e[n / 2 - 1] = 0.0;
        check(d, e, 90);
    }

    #[test]
    fn heavy_deflation() {
        // Equal diagonal and tiny couplings: nearly every z component and eigenvalue gap
        // deflates; a Wilkinson-like matrix has close pairs.
        let n = 320;
        check(vec![1.0; n], vec![1e-18; n], 100);
        let mut r = lcg(6);
        let d: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0).abs()).collect();
        let e: Vec<f64> = (0..n).map(|_| 1.0 + 1e-3 * r()).collect();
        check(d, e, 160);
        // A rank-deficient Gram's tridiagonal form: many exact zeros.
        let mut d = vec![0.0; n];
        let mut e = vec![0.0; n];
        for i in 0..20 {
            d[i * 16] = 1.0 + r();
            e[i * 16] = 0.3 + r() * 0.1;
        }
        check(d, e, 120);
    }

    #[test]
    fn tridiagonal_top_picks_a_path_and_agrees() {
        let mut r = lcg(7);
        for (n, k) in [(40, 30), (300, 20), (300, 200)] {
            let d: Vec<f64> = (0..n).map(|_| r()).collect();
            let e: Vec<f64> = (0..n).map(|_| r()).collect();
            let (mut d1, mut e1) = (d.clone(), e.clone());
            let (vals, v) = tridiagonal_top(&mut d1, &mut e1, k).unwrap();
            let (res, orth) = residual_and_orthogonality(&d, &e, &vals, &v);
            assert!(
                res < 1e-12 && orth < 1e-12,
                "n {n} k {k}: residual {res:e}, orthogonality {orth:e}"
            );
        }
    }
}
