//! Property tests of the tensor algebra (issue 3, properties 1–3): unfolding and folding, the
//! mode-n product and its algebra, the Khatri–Rao and Kronecker products, and the paper's
//! generalized mode-n product (Definition 1). Expected values come from brute-force sums written
//! here, from algebraic identities, or from the pinned TensorLy run at test time.
mod common;

use approx::assert_abs_diff_eq;
use common::{config, gaussian, gaussian2, indices, max_abs_diff, python_npy};
use gbtd::tensor::{
    Activation, fold, generalized_mode_dot, inner, khatri_rao, kron, mode_dot, multi_mode_dot,
};
use gbtd::tensor::{norm, relative_error, unfold};
use ndarray::{Array1, Array2, ArrayD, ArrayView2, IxDyn};
use proptest::prelude::*;

/// A shape of order 1..=4 with dimensions 1..=5, and a seed for the entries.
fn shape_and_seed() -> impl Strategy<Value = (Vec<usize>, u64)> {
    (prop::collection::vec(1usize..=5, 1..=4), any::<u64>())
}

/// A shape of order 2..=4, two distinct modes of it, and a seed.
fn two_modes() -> impl Strategy<Value = (Vec<usize>, usize, usize, u64)> {
    prop::collection::vec(1usize..=5, 2..=4)
        .prop_flat_map(|shape| {
            let n = shape.len();
            (Just(shape), 0..n, 0..n, any::<u64>())
        })
        .prop_filter("distinct modes", |(_, m, n, _)| m != n)
}

/// `Y(…, j, …) = Σ_i A(j, i) X(…, i, …)` summed elementwise over every index.
fn mode_dot_brute_force(x: &ArrayD<f64>, a: &Array2<f64>, mode: usize) -> ArrayD<f64> {
    let mut shape = x.shape().to_vec();
    shape[mode] = a.nrows();
    let mut y = ArrayD::<f64>::zeros(IxDyn(&shape));
    for idx in indices(&shape) {
        let mut src = idx.clone();
        let mut s = 0.0;
        for i in 0..x.shape()[mode] {
            src[mode] = i;
            s += a[[idx[mode], i]] * x[IxDyn(&src)];
        }
        y[IxDyn(&idx)] = s;
    }
    y
}

/// Tolerance for comparing two computations of a product of `x` with unit-scale matrices.
fn tol(x: &ArrayD<f64>) -> f64 {
    1e-12 * (1.0 + norm(&x.view())) * 25.0
}

proptest! {
    #![proptest_config(config(24, 0xA1))]

    #[test]
    fn fold_inverts_unfold_for_every_mode((shape, seed) in shape_and_seed()) {
        let x = gaussian(&shape, seed);
        for mode in 0..shape.len() {
            let m = unfold(&x.view(), mode).unwrap();
            let rest: usize = shape.iter().product::<usize>() / shape[mode];
            prop_assert_eq!(m.dim(), (shape[mode], rest));
            let back = fold(&m.view(), mode, &shape).unwrap();
            prop_assert_eq!(&back, &x);
        }
    }

    #[test]
    fn unfold_rows_are_the_mode_fibers_in_row_major_order((shape, seed) in shape_and_seed()) {
        // X_(n)[i_n, j] with j the C-order index of the remaining modes (TensorLy's convention).
        let x = gaussian(&shape, seed);
        for mode in 0..shape.len() {
            let m = unfold(&x.view(), mode).unwrap();
            let rest: Vec<usize> = shape.iter().enumerate().filter(|&(k, _)| k != mode).map(|(_, &d)| d).collect();
            for idx in indices(&shape) {
                let others: Vec<usize> = idx.iter().enumerate().filter(|&(k, _)| k != mode).map(|(_, &i)| i).collect();
                let j = others.iter().zip(&rest).fold(0, |acc, (&i, &d)| acc * d + i);
                prop_assert_eq!(m[[idx[mode], j]], x[IxDyn(&idx)]);
            }
        }
    }

    #[test]
    fn mode_dot_matches_elementwise_sum((shape, seed) in shape_and_seed(), mode_pick in 0usize..4, j in 1usize..=4) {
        let mode = mode_pick % shape.len();
        let x = gaussian(&shape, seed);
        let a = gaussian2(j, shape[mode], seed ^ 1);
        let got = mode_dot(&x.view(), &a.view(), mode).unwrap();
        let want = mode_dot_brute_force(&x, &a, mode);
        prop_assert!(max_abs_diff(&got, &want) <= tol(&x), "diff {}", max_abs_diff(&got, &want));
    }

    #[test]
    fn mode_products_on_distinct_modes_commute((shape, m, n, seed) in two_modes(), jm in 1usize..=4, jn in 1usize..=4) {
        // (X ×m A) ×n B == (X ×n B) ×m A
        let x = gaussian(&shape, seed);
        let a = gaussian2(jm, shape[m], seed ^ 2);
        let b = gaussian2(jn, shape[n], seed ^ 3);
        let ab = mode_dot(&mode_dot(&x.view(), &a.view(), m).unwrap().view(), &b.view(), n).unwrap();
        let ba = mode_dot(&mode_dot(&x.view(), &b.view(), n).unwrap().view(), &a.view(), m).unwrap();
        prop_assert!(max_abs_diff(&ab, &ba) <= tol(&x));
    }

    #[test]
    fn repeated_mode_product_composes_matrices((shape, seed) in shape_and_seed(), mode_pick in 0usize..4, j in 1usize..=4, k in 1usize..=4) {
        // (X ×n A) ×n B == X ×n (B·A)
        let n = mode_pick % shape.len();
        let x = gaussian(&shape, seed);
        let a = gaussian2(j, shape[n], seed ^ 4);
        let b = gaussian2(k, j, seed ^ 5);
        let twice = mode_dot(&mode_dot(&x.view(), &a.view(), n).unwrap().view(), &b.view(), n).unwrap();
        let once = mode_dot(&x.view(), &b.dot(&a).view(), n).unwrap();
        prop_assert!(max_abs_diff(&twice, &once) <= tol(&x));
    }

    #[test]
    fn multi_mode_dot_equals_sequential_products((shape, seed) in shape_and_seed(), skip_pick in 0usize..5, transpose in any::<bool>()) {
        let x = gaussian(&shape, seed);
        let n = shape.len();
        // Factor k maps d_k -> k + 1 (given transposed when `transpose`).
        let mats: Vec<Array2<f64>> = (0..n)
            .map(|k| {
                let m = gaussian2(k + 1, shape[k], seed ^ (10 + k as u64));
                if transpose { m.t().to_owned() } else { m }
            })
            .collect();
        let views: Vec<ArrayView2<'_, f64>> = mats.iter().map(|m| m.view()).collect();
        let skip = (skip_pick < n).then_some(skip_pick);
        let got = multi_mode_dot(&x.view(), &views, None, skip, transpose).unwrap();
        let mut want = x.clone();
        for k in (0..n).filter(|&k| Some(k) != skip) {
            let a = if transpose { mats[k].t().to_owned() } else { mats[k].clone() };
            want = mode_dot_brute_force(&want, &a, k);
        }
        prop_assert!(max_abs_diff(&got, &want) <= tol(&x) * 10.0);
    }

    #[test]
    fn khatri_rao_matches_columnwise_kronecker_brute_force(
        rows in prop::collection::vec(1usize..=4, 1..=4), r in 1usize..=4, seed in any::<u64>(), skip_pick in 0usize..5,
    ) {
        let mats: Vec<Array2<f64>> = rows.iter().enumerate().map(|(k, &d)| gaussian2(d, r, seed ^ k as u64)).collect();
        let views: Vec<ArrayView2<'_, f64>> = mats.iter().map(|m| m.view()).collect();
        let skip = (skip_pick < rows.len() && rows.len() > 1).then_some(skip_pick);
        let used: Vec<&Array2<f64>> = mats.iter().enumerate().filter(|&(k, _)| Some(k) != skip).map(|(_, m)| m).collect();
        let used_rows: Vec<usize> = used.iter().map(|m| m.nrows()).collect();
        let got = khatri_rao(&views, skip).unwrap();
        prop_assert_eq!(got.dim(), (used_rows.iter().product::<usize>(), r));
        // Row index: the first matrix's row varies slowest.
        for (row, idx) in indices(&used_rows).into_iter().enumerate() {
            for c in 0..r {
                let want: f64 = used.iter().zip(&idx).map(|(m, &i)| m[[i, c]]).product();
                prop_assert!((got[[row, c]] - want).abs() <= 1e-12 * (1.0 + want.abs()));
            }
        }
    }

    #[test]
    fn kron_matches_brute_force(i in 1usize..=4, j in 1usize..=4, k in 1usize..=4, l in 1usize..=4, seed in any::<u64>()) {
        let a = gaussian2(i, j, seed);
        let b = gaussian2(k, l, seed ^ 7);
        let got = kron(&a.view(), &b.view());
        prop_assert_eq!(got.dim(), (i * k, j * l));
        for (p, q, r, s) in itertools(i, j, k, l) {
            prop_assert_eq!(got[[p * k + r, q * l + s]], a[[p, q]] * b[[r, s]]);
        }
    }

    #[test]
    fn generalized_mode_dot_with_identity_is_the_mode_product((shape, seed) in shape_and_seed(), mode_pick in 0usize..4, j in 1usize..=4) {
        let mode = mode_pick % shape.len();
        let g = gaussian(&shape, seed);
        let a = gaussian2(j, shape[mode], seed ^ 8);
        let plain = mode_dot(&g.view(), &a.view(), mode).unwrap();
        let ident = generalized_mode_dot(&g.view(), &a.view(), mode, |v| Activation::Identity.apply(v)).unwrap();
        prop_assert_eq!(&ident, &plain);
        prop_assert!(max_abs_diff(&ident, &mode_dot_brute_force(&g, &a, mode)) <= tol(&g));
    }

    #[test]
    fn generalized_mode_dot_with_relu_clamps_the_mode_product((shape, seed) in shape_and_seed(), mode_pick in 0usize..4, j in 1usize..=4) {
        let mode = mode_pick % shape.len();
        let g = gaussian(&shape, seed);
        let a = gaussian2(j, shape[mode], seed ^ 9);
        let plain = mode_dot_brute_force(&g, &a, mode);
        let relu = generalized_mode_dot(&g.view(), &a.view(), mode, |v| Activation::Relu.apply(v)).unwrap();
        let clamped = plain.mapv(|v| v.max(0.0));
        prop_assert!(max_abs_diff(&relu, &clamped) <= tol(&g));
        prop_assert!(relu.iter().all(|&v| v >= 0.0));
        // Any elementwise closure is applied after the product.
        let tanh = generalized_mode_dot(&g.view(), &a.view(), mode, |v: f64| v.tanh()).unwrap();
        prop_assert!(max_abs_diff(&tanh, &plain.mapv(f64::tanh)) <= tol(&g));
    }

    #[test]
    fn norm_inner_and_relative_error_match_their_definitions((shape, seed) in shape_and_seed()) {
        let x = gaussian(&shape, seed);
        let y = gaussian(&shape, seed ^ 11);
        let sq: f64 = x.iter().map(|v| v * v).sum();
        assert_abs_diff_eq!(norm(&x.view()), sq.sqrt(), epsilon = 1e-12 * (1.0 + sq));
        let xy: f64 = x.iter().zip(y.iter()).map(|(a, b)| a * b).sum();
        assert_abs_diff_eq!(inner(&x.view(), &y.view()).unwrap(), xy, epsilon = 1e-12 * (1.0 + sq));
        let diff: f64 = x.iter().zip(y.iter()).map(|(a, b)| (a - b) * (a - b)).sum();
        let rel = relative_error(&x.view(), &y.view()).unwrap();
        assert_abs_diff_eq!(rel, (diff / sq).sqrt(), epsilon = 1e-12 * (1.0 + rel));
    }
}

/// All `(p, q, r, s)` in `0..i × 0..j × 0..k × 0..l`.
fn itertools(i: usize, j: usize, k: usize, l: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut v = Vec::new();
    for p in 0..i {
        for q in 0..j {
            for r in 0..k {
                for s in 0..l {
                    v.push((p, q, r, s));
                }
            }
        }
    }
    v
}

/// The unfoldings, mode products and Khatri–Rao products of a seeded batch of tensors (orders
/// 1–5) agree with what the pinned TensorLy computes from the same `.npy` files.
#[test]
fn unfold_mode_dot_and_khatri_rao_match_tensorly() {
    if !peers::available("unfold_mode_dot_and_khatri_rao_match_tensorly") {
        return;
    }
    let shapes: [&[usize]; 8] = [
        &[7],
        &[3, 5],
        &[2, 3, 4],
        &[4, 1, 3],
        &[2, 3, 2, 5],
        &[5, 4, 3, 2],
        &[2, 2, 3, 2, 2],
        &[1, 6, 2],
    ];
    let mut inputs: Vec<(String, ArrayD<f64>)> = Vec::new();
    let mut cases = Vec::new();
    for (c, shape) in shapes.iter().enumerate() {
        let x = gaussian(shape, 100 + c as u64);
        let mode = c % shape.len();
        let a = gaussian2(3, shape[mode], 200 + c as u64).into_dyn();
        inputs.push((format!("x{c}"), x.clone()));
        inputs.push((format!("a{c}"), a.clone()));
        cases.push((x, a, mode));
    }
    let modes = Array1::from_iter(cases.iter().map(|c| c.2 as f64)).into_dyn();
    inputs.push(("modes".into(), modes));
    let kr_mats: Vec<Array2<f64>> = [3usize, 4, 2]
        .iter()
        .enumerate()
        .map(|(k, &d)| gaussian2(d, 5, 300 + k as u64))
        .collect();
    for (k, m) in kr_mats.iter().enumerate() {
        inputs.push((format!("k{k}"), m.clone().into_dyn()));
    }
    let script = r#"
import tensorly as tl
modes = [int(m) for m in load('modes')]
for c, mode in enumerate(modes):
    x = tl.tensor(load(f'x{c}')); a = tl.tensor(load(f'a{c}'))
    save(f'u{c}', tl.unfold(x, mode))
    save(f'm{c}', tl.tenalg.mode_dot(x, a, mode))
ks = [tl.tensor(load(f'k{k}')) for k in range(3)]
save('kr', tl.tenalg.khatri_rao(ks))
save('kr_skip1', tl.tenalg.khatri_rao(ks, skip_matrix=1))
assert tl.__version__ == '0.10.0', tl.__version__
"#;
    let refs: Vec<(&str, &ArrayD<f64>)> = inputs.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let mut names: Vec<String> = (0..cases.len())
        .flat_map(|c| [format!("u{c}"), format!("m{c}")])
        .collect();
    names.push("kr".into());
    names.push("kr_skip1".into());
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let out = python_npy(script, &refs, &name_refs);
    for (c, (x, a, mode)) in cases.iter().enumerate() {
        let u = unfold(&x.view(), *mode).unwrap().into_dyn();
        assert_eq!(u.shape(), out[2 * c].shape(), "case {c}: unfolding shape");
        assert_eq!(
            max_abs_diff(&u, &out[2 * c]),
            0.0,
            "case {c}: unfolding differs from TensorLy"
        );
        let a2 = a.view().into_dimensionality::<ndarray::Ix2>().unwrap();
        let m = mode_dot(&x.view(), &a2, *mode).unwrap();
        assert!(
            max_abs_diff(&m, &out[2 * c + 1]) < 1e-12,
            "case {c}: mode_dot differs from TensorLy"
        );
    }
    let views: Vec<ArrayView2<'_, f64>> = kr_mats.iter().map(|m| m.view()).collect();
    let kr = khatri_rao(&views, None).unwrap().into_dyn();
    assert!(
        max_abs_diff(&kr, &out[out.len() - 2]) < 1e-14,
        "khatri_rao differs from TensorLy"
    );
    let kr1 = khatri_rao(&views, Some(1)).unwrap().into_dyn();
    assert!(
        max_abs_diff(&kr1, &out[out.len() - 1]) < 1e-14,
        "khatri_rao with skip differs from TensorLy"
    );
}

#[test]
fn algebra_reports_shape_errors_instead_of_panicking() {
    let x = gaussian(&[2, 3, 4], 1);
    let a = gaussian2(2, 5, 2);
    assert!(matches!(
        mode_dot(&x.view(), &a.view(), 1),
        Err(gbtd::GbtdError::Shape(_))
    ));
    // A mode out of range is a mode error, the same for every function that takes modes.
    assert!(matches!(
        mode_dot(&x.view(), &a.view(), 3),
        Err(gbtd::GbtdError::Mode(_))
    ));
    assert!(matches!(unfold(&x.view(), 3), Err(gbtd::GbtdError::Mode(_))));
    let c = gaussian2(3, 3, 5);
    assert!(matches!(
        gbtd::multi_mode_dot(&x.view(), &[c.view(), c.view()], Some(&[1, 1]), None, false),
        Err(gbtd::GbtdError::Mode(_))
    ));
    let m = gaussian2(3, 7, 3);
    assert!(matches!(
        fold(&m.view(), 1, &[2, 3, 4]),
        Err(gbtd::GbtdError::Shape(_))
    ));
    let b = gaussian2(4, 2, 4);
    assert!(matches!(
        khatri_rao(&[a.view(), b.view()], None),
        Err(gbtd::GbtdError::Shape(_))
    ));
    assert!(matches!(
        khatri_rao::<f64>(&[], None),
        Err(gbtd::GbtdError::Empty(_))
    ));
}
