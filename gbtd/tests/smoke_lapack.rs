//! Smoke test: the LAPACK/BLAS stack is wired. The matrix `M = H1 · diag(s) · H2` is built from two
//! Householder reflections (orthogonal by construction), so its singular values are exactly `s`
//! and its left singular vectors are the columns of `H1`.
use approx::assert_abs_diff_eq;
use gbtd::linalg::{leading_left_singular_vectors, singular_values};
use ndarray::{Array1, Array2};

fn householder(v: &Array1<f64>) -> Array2<f64> {
    let n = v.len();
    let vv = v.dot(v);
    let mut h = Array2::<f64>::eye(n);
    for i in 0..n {
        for j in 0..n {
            h[[i, j]] -= 2.0 * v[i] * v[j] / vv;
        }
    }
    h
}

fn known_matrix() -> (Array2<f64>, Vec<f64>, Array2<f64>) {
    let (m, n) = (5, 7);
    let s = vec![9.0, 4.0, 2.5, 1.0, 0.25];
    let h1 = householder(&Array1::from(vec![1.0, -2.0, 0.5, 3.0, 1.5]));
    let h2 = householder(&Array1::from(vec![0.3, 1.0, -1.0, 2.0, 0.7, -0.4, 1.1]));
    let mut d = Array2::<f64>::zeros((m, n));
    for (i, &si) in s.iter().enumerate() {
        d[[i, i]] = si;
    }
    (h1.dot(&d).dot(&h2), s, h1)
}

#[test]
fn gesdd_recovers_known_singular_values() {
    let (m, s, _) = known_matrix();
    let got = singular_values(&m.view()).unwrap();
    assert_eq!(got.len(), s.len());
    for (g, e) in got.iter().zip(&s) {
        assert_abs_diff_eq!(*g, *e, epsilon = 1e-12);
    }
    // The transpose (a tall matrix) takes the other code path of the leading-vector routine.
    let got_t = singular_values(&m.t()).unwrap();
    for (g, e) in got_t.iter().zip(&s) {
        assert_abs_diff_eq!(*g, *e, epsilon = 1e-12);
    }
}

#[test]
fn gram_eigh_gives_leading_left_singular_vectors() {
    let (m, s, h1) = known_matrix();
    let (u, sv) = leading_left_singular_vectors(&m.view(), 3).unwrap();
    for k in 0..3 {
        assert_abs_diff_eq!(sv[k], s[k], epsilon = 1e-10);
        // Singular vectors are defined up to sign.
        let dot = u.column(k).dot(&h1.column(k));
        assert_abs_diff_eq!(dot.abs(), 1.0, epsilon = 1e-10);
    }
}

#[test]
fn f32_svd_works_too() {
    let (m, s, _) = known_matrix();
    let m32 = m.mapv(|v| v as f32);
    let got = singular_values(&m32.view()).unwrap();
    for (g, e) in got.iter().zip(&s) {
        assert_abs_diff_eq!(*g as f64, *e, epsilon = 1e-5);
    }
}
