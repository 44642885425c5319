//! The kernels the conversion factorizes, on ndarray (f64), and the tch ↔ ndarray copies.
use ndarray::{Array2, Array4, ArrayD, Axis, IxDyn, s};
use ndarray_linalg::SVD;
use tch::{Kind, Tensor};

use super::{ConvertError, Result};

/// A tch tensor as an f64 ndarray of the same shape (copied to the CPU).
pub fn to_nd(t: &Tensor) -> Result<ArrayD<f64>> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Double)?
        .f_contiguous()?
        .f_view([-1])?;
    let v = Vec::<f64>::try_from(flat)?;
    ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| ConvertError::Weights(e.to_string()))
}

/// An f64 ndarray as an f32 CPU tensor of the same shape.
pub fn to_tensor(a: &ArrayD<f64>) -> Result<Tensor> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let v: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_slice(&v).f_view(shape.as_slice())?)
}

/// The dense 3×3 kernel `(mid, in, kh, kw)` of `conv2 ∘ diag(s2) ∘ conv1`, PyTorch layout:
/// `K[o, c, i, j] = Σ_p conv2[o, p, i, j] · s2[g·d + p] · conv1[g·d + p, c]`, `d = mid / groups`
/// input channels per group of `conv2`, `g = o / d` the group of output `o`.
///
/// Shapes: `conv1` `(mid, in, 1, 1)`, `s2` `(mid)`, `conv2` `(mid, mid / groups, kh, kw)`.
pub fn composed_kernel(
    conv1: &ArrayD<f64>,
    s2: &[f64],
    conv2: &ArrayD<f64>,
    groups: usize,
) -> Result<Array4<f64>> {
    let bad = |m: String| ConvertError::Weights(m);
    let c1 = conv1
        .view()
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|e| bad(format!("conv1: {e}")))?;
    let c2 = conv2
        .view()
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|e| bad(format!("conv2: {e}")))?;
    let (mid, cin, h1, w1) = c1.dim();
    let (mid2, d, kh, kw) = c2.dim();
    if (h1, w1) != (1, 1) || mid2 != mid || s2.len() != mid || groups == 0 || d * groups != mid {
        return Err(bad(format!(
            "conv1 {:?}, bn2 scale {}, conv2 {:?} with {groups} groups do not compose",
            c1.dim(),
            s2.len(),
            c2.dim()
        )));
    }
    let mut k = Array4::<f64>::zeros((mid, cin, kh, kw));
    for g in 0..groups {
        let rows = g * d..(g + 1) * d;
        // M_g = diag(s2) conv1 on the group's channels: (d, in).
        let mut m = c1.slice(s![rows.clone(), .., 0, 0]).to_owned();
        for (p, mut row) in m.axis_iter_mut(Axis(0)).enumerate() {
            row *= s2[g * d + p];
        }
        for i in 0..kh {
            for j in 0..kw {
                let prod: Array2<f64> = c2.slice(s![rows.clone(), .., i, j]).dot(&m);
                k.slice_mut(s![rows.clone(), .., i, j]).assign(&prod);
            }
        }
    }
    Ok(k)
}

/// The pseudo-inverse `P⁺` `(in, out)` of a 1×1 conv weight `P` `(out, in, 1, 1)`, by the SVD
/// (singular values below `1e-10 · s_max` count as zero): `P⁺ P = I` when `P` has full column rank.
pub fn pinv_1x1(p: &ArrayD<f64>) -> Result<Array2<f64>> {
    let sh = p.shape();
    if sh.len() != 4 || sh[2] != 1 || sh[3] != 1 {
        return Err(ConvertError::Weights(format!(
            "a 1×1 projection weight is needed, got shape {sh:?}"
        )));
    }
    let m = p.slice(s![.., .., 0, 0]).to_owned();
    let (u, sv, vt) = m
        .svd(true, true)
        .map_err(|e| ConvertError::Weights(format!("SVD: {e}")))?;
    let (u, vt) = match (u, vt) {
        (Some(u), Some(vt)) => (u, vt),
        _ => return Err(ConvertError::Weights("SVD returned no singular vectors".into())),
    };
    let smax = sv.iter().copied().fold(0.0, f64::max);
    let mut out = Array2::<f64>::zeros((m.ncols(), m.nrows()));
    for (k, &s) in sv.iter().enumerate() {
        if s > 1e-10 * smax {
            // P⁺ = Σ_k v_k u_kᵀ / s_k
            let v = vt.row(k);
            let uk = u.column(k);
            for a in 0..v.len() {
                for b in 0..uk.len() {
                    out[[a, b]] += v[a] * uk[b] / s;
                }
            }
        }
    }
    Ok(out)
}

/// `K ×_1 Q`: the kernel `(o, a, kh, kw)` read through a 1×1 map `Q` `(a, b)`, i.e.
/// `K'[o, b, i, j] = Σ_c K[o, c, i, j] Q[c, b]`, shape `(o, b, kh, kw)`.
pub fn input_map(k: &Array4<f64>, q: &Array2<f64>) -> Result<Array4<f64>> {
    let (o, a, kh, kw) = k.dim();
    if q.nrows() != a {
        return Err(ConvertError::Weights(format!(
            "kernel with {a} input channels cannot be read through a {}×{} map",
            q.nrows(),
            q.ncols()
        )));
    }
    let mut out = Array4::<f64>::zeros((o, q.ncols(), kh, kw));
    for i in 0..kh {
        for j in 0..kw {
            let prod: Array2<f64> = k.slice(s![.., .., i, j]).dot(q);
            out.slice_mut(s![.., .., i, j]).assign(&prod);
        }
    }
    Ok(out)
}
