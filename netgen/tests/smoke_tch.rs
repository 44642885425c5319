//! Smoke test: tch/libtorch is wired. A grouped convolution (groups = 4, stride 2, padding 1)
//! through `tch` on the CPU equals a direct nested-loop convolution written here.
use tch::{Device, Kind, Tensor};

#[allow(clippy::too_many_arguments)]
fn naive_grouped_conv(
    x: &[f64],
    (n, cin, h, w): (usize, usize, usize, usize),
    k: &[f64],
    (cout, kh, kw): (usize, usize, usize),
    groups: usize,
    stride: usize,
    pad: usize,
) -> (Vec<f64>, usize, usize) {
    let cin_g = cin / groups;
    let cout_g = cout / groups;
    let oh = (h + 2 * pad - kh) / stride + 1;
    let ow = (w + 2 * pad - kw) / stride + 1;
    let mut y = vec![0.0; n * cout * oh * ow];
    for b in 0..n {
        for o in 0..cout {
            let g = o / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * cin + c) * h + iy as usize) * w + ix as usize];
                                let kv = k[((o * cin_g + ci) * kh + ky) * kw + kx];
                                acc += xv * kv;
                            }
                        }
                    }
                    y[((b * cout + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (y, oh, ow)
}

#[test]
fn grouped_conv_matches_nested_loops() {
    tch::manual_seed(7);
    let (n, cin, h, w, cout, groups) = (2usize, 8usize, 9usize, 7usize, 12usize, 4usize);
    let x = Tensor::randn(
        [n as i64, cin as i64, h as i64, w as i64],
        (Kind::Double, Device::Cpu),
    );
    let k = Tensor::randn(
        [cout as i64, (cin / groups) as i64, 3, 3],
        (Kind::Double, Device::Cpu),
    );
    let y = x.conv2d(&k, None::<Tensor>, [2, 2], [1, 1], [1, 1], groups as i64);

    let xs: Vec<f64> = Vec::try_from(x.flatten(0, -1)).unwrap();
    let ks: Vec<f64> = Vec::try_from(k.flatten(0, -1)).unwrap();
    let (expect, oh, ow) = naive_grouped_conv(&xs, (n, cin, h, w), &ks, (cout, 3, 3), groups, 2, 1);
    assert_eq!(y.size(), vec![n as i64, cout as i64, oh as i64, ow as i64]);
    let got: Vec<f64> = Vec::try_from(y.flatten(0, -1)).unwrap();
    let max_diff = got
        .iter()
        .zip(&expect)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-10, "max |tch - naive| = {max_diff}");
}
