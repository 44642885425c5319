//! The compressed checkpoint: a `.safetensors` file in which each compressed layer's
//! `NAME.weight` (and `NAME.bias`) is replaced by the weights of the layers an `nn.Sequential`
//! named `NAME` would hold, PyTorch layout. A conv with `G` groups (1 for a dense conv) whose
//! groups became chains with `R` terms of ranks `(r_out, r_in)` (see [`super::chain`]):
//!
//! | tensor | shape | conv |
//! | --- | --- | --- |
//! | `NAME.0.weight` | `(G·R·r_in, in/G, 1, 1)` | 1×1, stride 1, padding 0, groups `G` |
//! | `NAME.1.weight` | `(G·R·r_out, r_in, kh, kw)` | kh×kw, stride/padding/dilation of the original conv, groups `G·R` |
//! | `NAME.2.weight` | `(out, R·r_out, 1, 1)` | 1×1, stride 1, padding 0, groups `G` |
//! | `NAME.2.bias` | `(out,)` | the original `NAME.bias`, if there was one (unchanged dtype) |
//!
//! A linear layer `(out, in)` whose weight became a rank-`r` SVD:
//!
//! | tensor | shape | layer |
//! | --- | --- | --- |
//! | `NAME.0.weight` | `(r, in)` | linear, no bias |
//! | `NAME.1.weight` | `(out, r)` | linear |
//! | `NAME.1.bias` | `(out,)` | the original `NAME.bias`, if there was one |
//!
//! Every other tensor of the input is copied unchanged with its dtype (integer and bool buffers
//! included); a `.safetensors` input's own metadata is kept. The factors are `F32` (from `f32`,
//! `f16` and `bf16` weights) or `F64` (from `f64` weights).
//!
//! The metadata key `gbtd.compress` holds one JSON object: `format` (`"gbtd.compress"`),
//! `version` (1), `source`, `method`, `rank_rule`, `layers` (one entry per replaced layer:
//! `name`, `kind` (`conv` or `linear`), `shape`, `method` (`svd` for a linear layer), `terms`
//! (`R`), `ranks` as `[r_out, r_in]` (`[K]` for CP, `[r]` for SVD), `conv_groups` (`G`),
//! `groups` (of the middle conv, `G·R`), `bias`, `relative_error`, the report's counts, and
//! `chain`: the layers with `weight`, `in_channels` (`in_features`), `out_channels`
//! (`out_features`), and for convs `kernel_size`, `groups`, `stride`, `padding`; the last one has
//! `bias`), and `skipped` (`name`, `tensor`, `shape`, `reason`). The middle conv's `stride` and
//! `padding` are `null`: "those of the original conv", which a state dict does not record. A
//! reader that predates grouped convs and linear layers sees the same fields with `G = 1`.
//!
//! The file is written atomically ([`crate::formats::write_atomic`]).
//!
//! A collective factorization is written in the same format by [`write_collective`], and
//! [`read_description`] reads the description back (see [`collective`] and [`description`]).
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::TensorView;
use serde_json::{Value, json};

use super::chain::Factorized;
use super::layer::AnyFactorized;
use super::model::{RawTensor, raw_from_real};
use super::{CompressError, Compressed, LayerKind, LayerReport, Skipped};
use crate::decomposition::Method;
use crate::formats::{IoError, write_atomic};
use crate::real::Real;

/// The metadata key of the description.
pub const METADATA_KEY: &str = "gbtd.compress";

pub mod collective;
pub mod description;

pub use collective::{check_replaceable, write_collective};
pub use description::{
    ChainConv, DescribedChain, DescribedLayer, Description, DescriptionError, read_description,
};

fn conv_json(weight: String, cin: usize, cout: usize, k: [usize; 2], groups: usize, fixed: bool) -> Value {
    let (stride, padding) = if fixed {
        (json!([1, 1]), json!([0, 0]))
    } else {
        (Value::Null, Value::Null)
    };
    json!({"weight": weight, "in_channels": cin, "out_channels": cout, "kernel_size": k,
           "groups": groups, "stride": stride, "padding": padding})
}

/// One layer's entry of the `gbtd.compress` description (see the module documentation).
pub fn layer_json(l: &LayerReport) -> Value {
    let n = &l.name;
    let bias = |last: &str| {
        if l.bias {
            json!(format!("{n}.{last}.bias"))
        } else {
            Value::Null
        }
    };
    let (r, ro, ri) = l.chain_dims();
    let g = l.conv_groups();
    let chain = match l.kind {
        LayerKind::Conv { .. } => {
            let (o, i, kh, kw) = (l.shape[0], l.shape[1] * g, l.shape[2], l.shape[3]);
            let mut last = conv_json(format!("{n}.2.weight"), g * r * ro, o, [1, 1], g, true);
            last["bias"] = bias("2");
            json!([
                conv_json(format!("{n}.0.weight"), i, g * r * ri, [1, 1], g, true),
                conv_json(
                    format!("{n}.1.weight"),
                    g * r * ri,
                    g * r * ro,
                    [kh, kw],
                    g * r,
                    false
                ),
                last,
            ])
        }
        LayerKind::Linear => {
            let (o, i, rank) = (l.shape[0], l.shape[1], l.ranks[0]);
            json!([
                {"weight": format!("{n}.0.weight"), "in_features": i, "out_features": rank, "bias": Value::Null},
                {"weight": format!("{n}.1.weight"), "in_features": rank, "out_features": o, "bias": bias("1")},
            ])
        }
    };
    json!({
        "name": n, "kind": match l.kind { LayerKind::Conv { .. } => "conv", LayerKind::Linear => "linear" },
        "shape": l.shape, "dtype": l.dtype, "method": l.method_name(), "terms": r,
        "ranks": l.ranks, "conv_groups": g, "groups": g * r, "bias": l.bias,
        "relative_error": l.relative_error,
        "params_before": l.params_before, "params_after": l.params_after,
        "macs_before": l.macs_before, "macs_after": l.macs_after,
        "seconds": l.seconds, "iterations": l.iterations,
        "chain": chain,
    })
}

/// The `gbtd.compress` metadata object.
pub(crate) fn metadata_json(c: &Compressed) -> Value {
    description_json(&c.source, c.method, &c.rank_rule, &c.layers, &c.skipped)
}

/// The `gbtd.compress` metadata object for compressed `layers` and `skipped` candidates of the
/// model `source`, compressed by `method` under `rank_rule` (what [`Compressed::write`] stores
/// and what the Python package stores for a compressed PyTorch model).
pub fn description_json(
    source: &str,
    method: Method,
    rank_rule: &str,
    layers: &[LayerReport],
    skipped: &[Skipped],
) -> Value {
    json!({
        "format": "gbtd.compress",
        "version": 1,
        "generator": format!("gbtd {}", env!("CARGO_PKG_VERSION")),
        "source": source,
        "method": method.as_str(),
        "rank_rule": rank_rule,
        "layers": layers.iter().map(layer_json).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(|s| json!({
            "name": s.name(), "tensor": s.tensor, "shape": s.shape, "dtype": s.dtype, "reason": s.reason,
        })).collect::<Vec<_>>(),
    })
}

/// The tensors that replace layer `name`'s weight, named as in the module documentation.
fn factor_tensors<T: Real>(name: &str, f: &Factorized<T>) -> Result<Vec<(String, RawTensor)>, CompressError> {
    let raw = |a: &ndarray::ArrayViewD<'_, T>| raw_from_real(a.shape(), a.iter().copied());
    Ok(match f {
        Factorized::Conv(c) => c
            .weights()
            .map_err(|e| CompressError::Layer {
                name: name.to_string(),
                source: e,
            })?
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("{name}.{i}.weight"), raw(&w.view().into_dyn())))
            .collect(),
        Factorized::Linear(l) => vec![
            (format!("{name}.0.weight"), raw(&l.first.view().into_dyn())),
            (format!("{name}.1.weight"), raw(&l.second.view().into_dyn())),
        ],
    })
}

impl Compressed {
    /// Writes the compressed checkpoint to `out` (see the module documentation), atomically.
    pub fn write(&self, out: &Path) -> Result<(), CompressError> {
        let mut weight_of = HashMap::new();
        let mut bias_of = HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            weight_of.insert(format!("{}.weight", l.name), i);
            if l.bias {
                bias_of.insert(format!("{}.bias", l.name), i);
            }
        }
        let mut entries: Vec<(String, RawTensor)> =
            Vec::with_capacity(self.tensors.len() + 2 * self.layers.len());
        for t in &self.tensors {
            if let Some(&i) = weight_of.get(&t.name) {
                let name = &self.layers[i].name;
                entries.extend(match &self.factors[i] {
                    AnyFactorized::F32(f) => factor_tensors(name, f)?,
                    AnyFactorized::F64(f) => factor_tensors(name, f)?,
                });
            } else if let Some(&i) = bias_of.get(&t.name) {
                let last = match self.layers[i].kind {
                    LayerKind::Conv { .. } => 2,
                    LayerKind::Linear => 1,
                };
                entries.push((
                    format!("{}.{last}.bias", self.layers[i].name),
                    self.model.read_raw(&t.name)?,
                ));
            } else {
                entries.push((t.name.clone(), self.model.read_raw(&t.name)?));
            }
        }
        let originals: BTreeSet<&str> = self
            .tensors
            .iter()
            .filter(|t| !weight_of.contains_key(&t.name) && !bias_of.contains_key(&t.name))
            .map(|t| t.name.as_str())
            .collect();
        write_entries(&self.model, entries, &originals, &metadata_json(self), out)
    }
}

/// Writes `entries` (the output's tensors in order: the model's, with chains in place of the
/// replaced weights) to `out`, with the model's own metadata (`format` set to `pt` when absent)
/// and `description` under [`METADATA_KEY`], atomically. A name given twice is a
/// [`CompressError::NameClash`] (nothing is written) that says whether the model already has it
/// (it is one of `copied`, the tensors copied unchanged) or two layers produce it.
fn write_entries(
    model: &super::model::ModelFile,
    entries: Vec<(String, RawTensor)>,
    copied: &BTreeSet<&str>,
    description: &Value,
    out: &Path,
) -> Result<(), CompressError> {
    let mut seen = BTreeSet::new();
    for (name, _) in &entries {
        if !seen.insert(name.as_str()) {
            let clash = if copied.contains(name.as_str()) {
                "the model already has a tensor of that name"
            } else {
                "two layers produce it"
            };
            return Err(CompressError::NameClash(format!(
                "cannot write chain tensor '{name}': {clash}; exclude that layer with --skip"
            )));
        }
    }
    let mut meta: HashMap<String, String> = model.metadata()?.into_iter().collect();
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    meta.insert(METADATA_KEY.into(), description.to_string());
    write_raw(out, &entries, meta)?;
    Ok(())
}

/// Writes `entries` (names with their dtype, shape and little-endian bytes) and the string
/// metadata `meta` as a `.safetensors` file at `out`, atomically. Errors: a tensor whose bytes do
/// not match its dtype and shape, or a write failure (nothing is left at `out`).
pub fn write_raw(
    out: &Path,
    entries: &[(String, RawTensor)],
    meta: HashMap<String, String>,
) -> Result<(), IoError> {
    let werr = |e: String| IoError::Write {
        path: out.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let mut views = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let v = TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
            .map_err(|e| werr(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), v));
    }
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| werr(e.to_string()))?;
    write_atomic(out, |w| w.write_all(&bytes))
}
