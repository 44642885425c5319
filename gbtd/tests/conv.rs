//! `gbtd::conv`: the im2col + GEMM convolution against a naive seven-loop convolution written
//! here (random shapes, strides, padding, dilation, groups including depthwise, with and without
//! bias, f64 and f32), against `torch.nn.functional.conv2d` from the pinned PyTorch, and the
//! linearity of layer chains: running a chain's three convs equals one conv with its kernel, for
//! chains built from Tucker-2, BTD and CP decompositions.
mod common;

use gbtd::GbtdError;
use gbtd::btd::{BtdOptions, btd};
use gbtd::conv::{Conv2d, conv2d};
use gbtd::cp::{CpOptions, parafac};
use gbtd::layers::LayerChain;
use gbtd::tucker::{TuckerOptions, tucker};
use ndarray::{Array1, Array4, ArrayD};
use proptest::prelude::*;

use common::{config, gaussian, python_npy};

/// `y[i,k,p,q] = b[k] + Σ_m Σ_a Σ_b W[k,m,a,b] · x[i, γ(k)·cg + m, p·sh + a·dh − ph, q·sw + b·dw − pw]`
/// with seven explicit loops (i, k, p, q, m, a, b) and zero padding by bounds checks.
fn naive_conv(x: &Array4<f64>, w: &Array4<f64>, bias: Option<&Array1<f64>>, g: &Conv2d) -> Array4<f64> {
    let (n, c, h, wd) = x.dim();
    let (o, cg, kh, kw) = w.dim();
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    let ho = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    let wo = (wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    let og = o / g.groups;
    assert_eq!(c, cg * g.groups);
    let mut y = Array4::<f64>::zeros((n, o, ho, wo));
    for i in 0..n {
        for k in 0..o {
            let grp = k / og;
            for p in 0..ho {
                for q in 0..wo {
                    let mut acc = bias.map_or(0.0, |b| b[k]);
                    for m in 0..cg {
                        for a in 0..kh {
                            for b in 0..kw {
                                let ih = (p * sh + a * dh) as isize - ph as isize;
                                let iw = (q * sw + b * dw) as isize - pw as isize;
                                if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd {
                                    acc += w[[k, m, a, b]] * x[[i, grp * cg + m, ih as usize, iw as usize]];
                                }
                            }
                        }
                    }
                    y[[i, k, p, q]] = acc;
                }
            }
        }
    }
    y
}

fn arr4(shape: [usize; 4], seed: u64) -> Array4<f64> {
    gaussian(&shape, seed).into_dimensionality().unwrap()
}

fn max_abs(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// One random convolution problem.
#[derive(Debug, Clone)]
struct Case {
    n: usize,
    groups: usize,
    cg: usize,
    og: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    geo: Conv2d,
    bias: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..3, 1usize..4, 1usize..4, 1usize..4, 1usize..9, 1usize..9),
        (1usize..4, 1usize..4, 1usize..4, 1usize..4, 0usize..3, 0usize..3),
        (1usize..3, 1usize..3, any::<bool>(), any::<bool>(), 0u64..1000),
    )
        .prop_map(
            |((n, groups, cg, og, h, w), (kh, kw, sh, sw, ph, pw), (dh, dw, bias, depthwise, seed))| {
                // Depthwise: one input and one output channel per group.
                let (cg, og) = if depthwise { (1, 1) } else { (cg, og) };
                Case {
                    n,
                    groups,
                    cg,
                    og,
                    h,
                    w,
                    kh,
                    kw,
                    geo: Conv2d::default()
                        .with_stride(sh, sw)
                        .with_padding(ph, pw)
                        .with_dilation(dh, dw)
                        .with_groups(groups),
                    bias,
                    seed,
                }
            },
        )
        .prop_filter("the dilated kernel fits the padded input", |c| {
            c.geo.dilation.0 * (c.kh - 1) < c.h + 2 * c.geo.padding.0
                && c.geo.dilation.1 * (c.kw - 1) < c.w + 2 * c.geo.padding.1
        })
}

impl Case {
    fn data(&self) -> (Array4<f64>, Array4<f64>, Option<Array1<f64>>) {
        let c = self.cg * self.groups;
        let o = self.og * self.groups;
        let x = arr4([self.n, c, self.h, self.w], self.seed);
        let w = arr4([o, self.cg, self.kh, self.kw], self.seed + 1);
        let b = self
            .bias
            .then(|| gaussian(&[o], self.seed + 2).into_dimensionality().unwrap());
        (x, w, b)
    }
}

proptest! {
    #![proptest_config(config(200, 0xc0 ^ 0x2d))]

    #[test]
    fn im2col_gemm_matches_the_seven_loop_convolution_f64(c in case()) {
        let (x, w, b) = c.data();
        let want = naive_conv(&x, &w, b.as_ref(), &c.geo);
        let got = conv2d(&x.view(), &w.view(), b.as_ref().map(|b| b.view()).as_ref(), &c.geo).unwrap();
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        prop_assert!(max_abs(&got, &want) <= 1e-12 * scale, "{:?}: diff {}", c, max_abs(&got, &want));
    }

    #[test]
    fn im2col_gemm_matches_the_seven_loop_convolution_f32(c in case()) {
        let (x, w, b) = c.data();
        let want = naive_conv(&x, &w, b.as_ref(), &c.geo);
        let (x32, w32) = (x.mapv(|v| v as f32), w.mapv(|v| v as f32));
        let b32 = b.as_ref().map(|b| b.mapv(|v| v as f32));
        let got = conv2d(&x32.view(), &w32.view(), b32.as_ref().map(|b| b.view()).as_ref(), &c.geo)
            .unwrap()
            .mapv(f64::from);
        // Inputs rounded to f32 and f32 accumulation over at most 3·3·3 + 1 terms.
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        prop_assert!(max_abs(&got, &want) <= 1e-5 * scale, "{:?}: diff {}", c, max_abs(&got, &want));
    }
}

#[test]
fn output_size_follows_the_pytorch_formula() {
    let g = Conv2d::default()
        .with_stride(2, 3)
        .with_padding(1, 2)
        .with_dilation(2, 1);
    // ⌊(10 + 2 − 2·2 − 1)/2⌋ + 1 = 4, ⌊(7 + 4 − 1·1 − 1)/3⌋ + 1 = 4
    assert_eq!(g.output_size((10, 7), (3, 2)).unwrap(), (4, 4));
    assert_eq!(Conv2d::same(3, 5).output_size((9, 9), (3, 5)).unwrap(), (9, 9));
    assert_eq!(Conv2d::same(3, 5).padding, (1, 2));
}

#[test]
fn shapes_that_do_not_fit_are_errors() {
    let x = arr4([1, 4, 5, 5], 1);
    let w = arr4([6, 3, 3, 3], 2);
    let conv = |w: &Array4<f64>, b: Option<&Array1<f64>>, g: Conv2d| {
        conv2d(&x.view(), &w.view(), b.map(|b| b.view()).as_ref(), &g)
    };
    // 3 input channels per group, 4 in the input.
    assert!(matches!(
        conv(&w, None, Conv2d::default()),
        Err(GbtdError::Shape(_))
    ));
    // 2 groups of 2 channels: kernel must be (o, 2, .., ..).
    assert!(matches!(
        conv(&w, None, Conv2d::default().with_groups(2)),
        Err(GbtdError::Shape(_))
    ));
    let w2 = arr4([6, 2, 3, 3], 3);
    assert!(conv(&w2, None, Conv2d::default().with_groups(2)).is_ok());
    // Output channels not divisible by the groups.
    let w4 = arr4([5, 1, 3, 3], 3);
    assert!(matches!(
        conv(&w4, None, Conv2d::default().with_groups(4)),
        Err(GbtdError::Shape(_))
    ));
    assert!(matches!(
        conv(&w2, None, Conv2d::default().with_groups(0)),
        Err(GbtdError::Options(_))
    ));
    assert!(matches!(
        conv(&w2, None, Conv2d::default().with_groups(2).with_stride(0, 1)),
        Err(GbtdError::Options(_))
    ));
    // A 7×7 kernel on a 5×5 input without padding.
    let big = arr4([2, 4, 7, 7], 4);
    assert!(matches!(
        conv(&big, None, Conv2d::default()),
        Err(GbtdError::Shape(_))
    ));
    assert!(conv(&big, None, Conv2d::same(7, 7)).is_ok());
    let bias = Array1::<f64>::zeros(5);
    assert!(matches!(
        conv(&w2, Some(&bias), Conv2d::default().with_groups(2)),
        Err(GbtdError::Shape(_))
    ));
}

/// x shape, w shape, stride, padding, dilation, groups, bias.
type TorchCase = (
    [usize; 4],
    [usize; 4],
    (usize, usize),
    (usize, usize),
    (usize, usize),
    usize,
    bool,
);

#[test]
fn matches_torch_conv2d() {
    if !peers::available("matches_torch_conv2d") {
        return;
    }
    let cases: [TorchCase; 5] = [
        ([2, 6, 11, 9], [4, 6, 3, 3], (1, 1), (1, 1), (1, 1), 1, true),
        ([1, 6, 12, 10], [9, 2, 3, 2], (2, 1), (2, 0), (1, 2), 3, false),
        ([2, 5, 8, 8], [5, 1, 5, 5], (1, 2), (2, 2), (1, 1), 5, true),
        ([1, 8, 7, 7], [16, 8, 1, 1], (1, 1), (0, 0), (1, 1), 1, true),
        ([3, 4, 13, 6], [6, 2, 7, 1], (3, 1), (3, 0), (2, 1), 2, false),
    ];
    // One Python run for every case: inputs x{t}, w{t}, b{t}, output y{t}.
    let mut script = String::from("import torch\n");
    let mut data = Vec::new();
    for (t, (xs, ws, st, pad, dil, groups, with_bias)) in cases.iter().enumerate() {
        data.push((format!("x{t}"), gaussian(xs, 100 + t as u64)));
        data.push((format!("w{t}"), gaussian(ws, 200 + t as u64)));
        data.push((format!("b{t}"), gaussian(&[ws[0]], 300 + t as u64)));
        let bias = if *with_bias {
            format!("torch.from_numpy(load('b{t}'))")
        } else {
            "None".into()
        };
        script.push_str(&format!(
            "save('y{t}', torch.nn.functional.conv2d(torch.from_numpy(load('x{t}')), torch.from_numpy(load('w{t}')), {bias}, stride={st:?}, padding={pad:?}, dilation={dil:?}, groups={groups}).numpy())\n"
        ));
    }
    let inputs: Vec<(&str, &ArrayD<f64>)> = data.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let names: Vec<String> = (0..cases.len()).map(|t| format!("y{t}")).collect();
    let outputs: Vec<&str> = names.iter().map(String::as_str).collect();
    let wanted = python_npy(&script, &inputs, &outputs);
    for (t, ((_, _, st, pad, dil, groups, with_bias), want)) in cases.iter().zip(wanted).enumerate() {
        let geo = Conv2d::default()
            .with_stride(st.0, st.1)
            .with_padding(pad.0, pad.1)
            .with_dilation(dil.0, dil.1)
            .with_groups(*groups);
        let x4: Array4<f64> = data[3 * t].1.clone().into_dimensionality().unwrap();
        let w4: Array4<f64> = data[3 * t + 1].1.clone().into_dimensionality().unwrap();
        let b1: Array1<f64> = data[3 * t + 2].1.clone().into_dimensionality().unwrap();
        let got = conv2d(
            &x4.view(),
            &w4.view(),
            with_bias.then(|| b1.view()).as_ref(),
            &geo,
        )
        .unwrap();
        let want: Array4<f64> = want.into_dimensionality().unwrap();
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(
            max_abs(&got, &want) <= 1e-12 * scale,
            "case {t}: diff {}",
            max_abs(&got, &want)
        );
    }
}

/// Runs the chain and the dense conv with the chain's kernel (and, independently, the naive conv
/// with the decomposition's own reconstruction) under a non-trivial geometry.
fn check_chain(chain: &LayerChain<f64>, reconstruction: &ArrayD<f64>, what: &str) {
    let (out, inp) = (chain.expand.dim().0, chain.reduce.dim().1);
    let x = arr4([2, inp, 9, 8], 77);
    let bias: Array1<f64> = gaussian(&[out], 78).into_dimensionality().unwrap();
    for geo in [
        Conv2d::same(3, 3),
        Conv2d::default()
            .with_stride(2, 1)
            .with_padding(2, 1)
            .with_dilation(2, 1),
    ] {
        let y_chain = chain.forward(&x.view(), &geo, Some(&bias.view())).unwrap();
        let kernel = chain.kernel().unwrap();
        let y_dense = conv2d(&x.view(), &kernel.view(), Some(&bias.view()), &geo).unwrap();
        let scale = y_dense.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(
            max_abs(&y_chain, &y_dense) <= 1e-11 * scale,
            "{what}: chain vs its kernel"
        );
        let w: Array4<f64> = reconstruction.clone().into_dimensionality().unwrap();
        let y_naive = naive_conv(&x, &w, Some(&bias), &geo);
        assert!(
            max_abs(&y_chain, &y_naive) <= 1e-10 * scale,
            "{what}: chain vs the naive conv"
        );
    }
}

#[test]
fn chains_compute_the_conv_with_their_kernel() {
    let x = gaussian(&[8, 6, 3, 3], 5);
    let t = tucker(&x.view(), &TuckerOptions::new(vec![3, 2]).with_modes(vec![0, 1])).unwrap();
    check_chain(
        &LayerChain::from_tucker(&t).unwrap(),
        &t.reconstruct().unwrap(),
        "Tucker-2",
    );
    let b = btd(&x.view(), &BtdOptions::new(3, vec![2, 2]).with_modes(vec![0, 1])).unwrap();
    let chain = LayerChain::from_btd(&b).unwrap();
    assert_eq!(chain.groups, 3);
    check_chain(&chain, &b.reconstruct().unwrap(), "BTD");
    let c = parafac(&x.view(), &CpOptions::new(5)).unwrap();
    let chain = LayerChain::from_cp(&c).unwrap();
    assert_eq!(chain.grouped.dim(), (5, 1, 3, 3));
    check_chain(&chain, &c.reconstruct().unwrap(), "CP");
}

#[test]
fn a_chain_refuses_a_grouped_spatial_geometry() {
    let x = gaussian(&[4, 4, 3, 3], 6);
    let t = tucker(&x.view(), &TuckerOptions::new(vec![2, 2]).with_modes(vec![0, 1])).unwrap();
    let chain = LayerChain::from_tucker(&t).unwrap();
    let input = arr4([1, 4, 5, 5], 7);
    let e = chain.forward(&input.view(), &Conv2d::same(3, 3).with_groups(2), None);
    assert!(matches!(e, Err(GbtdError::Shape(_))));
}
