//! Whole-model compression of layers handed over from PyTorch: the same rank rules, per-layer
//! factorizations and report rows as `gbtd compress` ([`gbtd::compress::compress_layers`]).
use gbtd::Method;
use gbtd::compress::{
    AnyFactorized, CompressOptions, Factorized, LayerGeometry, LayerKind, LayerMeta, LayerReport, Overrides,
    RankRule, Skipped, WeightView, compress_layers as compress_all, writer,
};
use gbtd::options::IterOptions;
use gbtd::{GbtdError, Real};
use numpy::Element;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::arrays::{Floats, to_numpy};
use crate::run::{compress_err, detached, gbtd_err};

/// One layer's description from Python: `name`, `shape`, `dtype`, `bias`, `groups`,
/// `input_positions`, `output_positions`.
fn meta_of(d: &Bound<'_, PyDict>) -> PyResult<LayerMeta> {
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(k)?
            .ok_or_else(|| PyValueError::new_err(format!("layer description without '{k}'")))
    };
    let opt = |k: &str| -> PyResult<Option<u64>> {
        match d.get_item(k)? {
            Some(v) if !v.is_none() => Ok(Some(v.extract()?)),
            _ => Ok(None),
        }
    };
    Ok(LayerMeta {
        name: get("name")?.extract()?,
        shape: get("shape")?.extract()?,
        dtype: get("dtype")?.extract()?,
        bias: get("bias")?.extract()?,
        geometry: LayerGeometry {
            groups: get("groups")?.extract()?,
            input_positions: opt("input_positions")?,
            output_positions: opt("output_positions")?,
        },
    })
}

/// The report row as a dict.
fn report_dict<'py>(py: Python<'py>, l: &LayerReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let (r, ro, ri) = l.chain_dims();
    d.set_item("name", &l.name)?;
    d.set_item(
        "kind",
        match l.kind {
            LayerKind::Conv { .. } => "conv",
            LayerKind::Linear => "linear",
        },
    )?;
    d.set_item("shape", l.shape.clone())?;
    d.set_item("method", l.method_name())?;
    d.set_item("ranks", l.ranks.clone())?;
    d.set_item("terms", r)?;
    d.set_item("rank_out", ro)?;
    d.set_item("rank_in", ri)?;
    d.set_item("groups", l.conv_groups())?;
    d.set_item("relative_error", l.relative_error)?;
    d.set_item("params_before", l.params_before)?;
    d.set_item("params_after", l.params_after)?;
    d.set_item("macs_before", l.macs_before)?;
    d.set_item("macs_after", l.macs_after)?;
    d.set_item("seconds", l.seconds)?;
    d.set_item("iterations", l.iterations)?;
    Ok(d)
}

/// The factor weights in the order the replacing layers take them: reduce, middle, expand
/// (stacked over a conv's groups) or the two linear weights.
fn factor_arrays<'py, T: Real + Element>(py: Python<'py>, f: Factorized<T>) -> PyResult<Bound<'py, PyList>> {
    let arrays: Vec<Bound<'py, PyAny>> = match f {
        Factorized::Conv(c) => c
            .weights()
            .map_err(gbtd_err)?
            .into_iter()
            .map(|w| to_numpy(py, w))
            .collect(),
        Factorized::Linear(l) => vec![to_numpy(py, l.first), to_numpy(py, l.second)],
    };
    PyList::new(py, arrays)
}

/// Compresses layers given as descriptions (dicts, see `meta_of`) and `float32`/`float64`
/// weights, all under one rank rule: returns `{"layers": [...], "description": str,
/// "unmatched_overrides": [...]}`, where each layer is `{"name", "skipped": reason}` or `{"name",
/// "report": dict, "factors": [arrays]}` and `description` is the `gbtd.compress` JSON a
/// compressed checkpoint stores (with `source` as its source).
#[pyfunction]
#[pyo3(signature = (layers, weights, method_name, n_terms, rank_rule, overrides_json, n_iter_max, tol, seed, source))]
#[allow(clippy::too_many_arguments)]
pub fn compress_layers<'py>(
    py: Python<'py>,
    layers: Vec<Bound<'py, PyDict>>,
    weights: Vec<Bound<'py, PyAny>>,
    method_name: &str,
    n_terms: usize,
    rank_rule: &str,
    overrides_json: Option<&str>,
    n_iter_max: usize,
    tol: f64,
    seed: u64,
    source: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let metas = layers.iter().map(meta_of).collect::<PyResult<Vec<_>>>()?;
    let borrowed = weights
        .iter()
        .zip(&metas)
        .map(|(w, m)| Floats::extract(w, &format!("the weight of layer '{}'", m.name)))
        .collect::<PyResult<Vec<_>>>()?;
    let views: Vec<WeightView<'_>> = borrowed
        .iter()
        .map(|f| match f {
            Floats::F32(a) => WeightView::F32(a.as_array()),
            Floats::F64(a) => WeightView::F64(a.as_array()),
        })
        .collect();
    let method = match Method::parse(method_name, n_terms) {
        Some(m @ (Method::Tucker2 | Method::Cp | Method::Btd { .. })) => m,
        _ => {
            return Err(PyValueError::new_err(format!(
                "method must be 'tucker2', 'cp' or 'btd', got {method_name:?}"
            )));
        }
    };
    let rule: RankRule = rank_rule.parse().map_err(gbtd_err)?;
    let overrides = match overrides_json {
        Some(text) => Overrides::from_json_str(text).map_err(gbtd_err)?,
        None => Overrides::empty(),
    };
    if matches!(method, Method::Btd { terms: 0 }) {
        return Err(gbtd_err(GbtdError::Options("btd needs n_terms >= 1".into())));
    }
    let out = detached(
        py,
        |progress| {
            let mut opts = CompressOptions::new(method, rule.clone());
            opts.overrides = overrides;
            opts.iter = IterOptions {
                n_iter_max,
                tol,
                seed,
            };
            opts.progress = progress;
            compress_all(&metas, &views, &opts)
        },
        compress_err,
    )?;
    let list = PyList::empty(py);
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    for (meta, r) in metas.iter().zip(out.layers) {
        let d = PyDict::new(py);
        d.set_item("name", &meta.name)?;
        match r {
            Err(reason) => {
                d.set_item("skipped", &reason)?;
                skipped.push(Skipped {
                    tensor: format!("{}.weight", meta.name),
                    shape: meta.shape.clone(),
                    dtype: meta.dtype.clone(),
                    kernel: true,
                    reason,
                });
            }
            Ok((report, f)) => {
                d.set_item("report", report_dict(py, &report)?)?;
                d.set_item(
                    "factors",
                    match f {
                        AnyFactorized::F32(f) => factor_arrays(py, f)?,
                        AnyFactorized::F64(f) => factor_arrays(py, f)?,
                    },
                )?;
                reports.push(report);
            }
        }
        list.append(d)?;
    }
    let result = PyDict::new(py);
    result.set_item("layers", list)?;
    result.set_item(
        "description",
        writer::description_json(source, method, &rule.to_string(), &reports, &skipped).to_string(),
    )?;
    result.set_item("unmatched_overrides", out.unmatched_overrides)?;
    Ok(result)
}
