//! The compressed checkpoint: a `.safetensors` file in which each compressed conv `NAME.weight`
//! (and `NAME.bias`) is replaced by the weights of the three convs an `nn.Sequential` named
//! `NAME` would hold, PyTorch layout:
//!
//! | tensor | shape | conv |
//! | --- | --- | --- |
//! | `NAME.0.weight` | `(R·r_in, in, 1, 1)` | 1×1, stride 1, padding 0, groups 1 |
//! | `NAME.1.weight` | `(R·r_out, r_in, kh, kw)` | kh×kw, stride/padding/dilation of the original conv, groups `R` |
//! | `NAME.2.weight` | `(out, R·r_out, 1, 1)` | 1×1, stride 1, padding 0, groups 1 |
//! | `NAME.2.bias` | `(out,)` | the original `NAME.bias`, if there was one (unchanged dtype) |
//!
//! Every other tensor of the input is copied unchanged with its dtype (integer and bool buffers
//! included); a `.safetensors` input's own metadata is kept. The chains are `F32` (from `f32`,
//! `f16` and `bf16` kernels) or `F64` (from `f64` kernels).
//!
//! The metadata key `gbtd.compress` holds one JSON object: `format` (`"gbtd.compress"`),
//! `version` (1), `source`, `method`, `rank_rule`, `layers` (one entry per replaced conv: `name`,
//! `shape`, `method`, `terms`, `ranks` as `[r_out, r_in]` (`[K]` for CP), `groups`, `bias`,
//! `relative_error`, the report's counts, and `chain`: the three convs with `weight`,
//! `in_channels`, `out_channels`, `kernel_size`, `groups`, `stride`, `padding` and, on the last,
//! `bias`), and `skipped` (`name`, `tensor`, `shape`, `reason`). The middle conv's `stride` and
//! `padding` are `null`: "those of the original conv", which a state dict does not record.
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

use super::model::{RawTensor, raw_from_real};
use super::{AnyChain, CompressError, Compressed, LayerReport};
use crate::formats::{IoError, write_atomic};
use crate::layers::LayerChain;
use crate::real::Real;

/// The metadata key of the description.
pub const METADATA_KEY: &str = "gbtd.compress";

pub mod collective;
pub mod description;

pub use collective::{check_replaceable, write_collective};
pub use description::{ChainConv, DescribedLayer, Description, DescriptionError, read_description};

fn conv_json(weight: String, cin: usize, cout: usize, k: [usize; 2], groups: usize, fixed: bool) -> Value {
    let (stride, padding) = if fixed {
        (json!([1, 1]), json!([0, 0]))
    } else {
        (Value::Null, Value::Null)
    };
    json!({"weight": weight, "in_channels": cin, "out_channels": cout, "kernel_size": k,
           "groups": groups, "stride": stride, "padding": padding})
}

fn layer_json(l: &LayerReport) -> Value {
    let [o, i, kh, kw] = l.shape;
    let (r, ro, ri) = l.chain_dims();
    let n = &l.name;
    let mut last = conv_json(format!("{n}.2.weight"), r * ro, o, [1, 1], 1, true);
    last["bias"] = if l.bias {
        json!(format!("{n}.2.bias"))
    } else {
        Value::Null
    };
    json!({
        "name": n, "shape": l.shape, "dtype": l.dtype, "method": l.method.as_str(), "terms": r,
        "ranks": l.ranks, "groups": r, "bias": l.bias, "relative_error": l.relative_error,
        "params_before": l.params_before, "params_after": l.params_after,
        "macs_before": l.macs_before, "macs_after": l.macs_after,
        "seconds": l.seconds, "iterations": l.iterations,
        "chain": [
            conv_json(format!("{n}.0.weight"), i, r * ri, [1, 1], 1, true),
            conv_json(format!("{n}.1.weight"), r * ri, r * ro, [kh, kw], r, false),
            last,
        ],
    })
}

/// The `gbtd.compress` metadata object.
pub(crate) fn metadata_json(c: &Compressed) -> Value {
    json!({
        "format": "gbtd.compress",
        "version": 1,
        "generator": format!("gbtd {}", env!("CARGO_PKG_VERSION")),
        "source": c.source,
        "method": c.method.as_str(),
        "rank_rule": c.rank_rule,
        "layers": c.layers.iter().map(layer_json).collect::<Vec<_>>(),
        "skipped": c.skipped.iter().map(|s| json!({
            "name": s.name(), "tensor": s.tensor, "shape": s.shape, "dtype": s.dtype, "reason": s.reason,
        })).collect::<Vec<_>>(),
    })
}

fn chain_tensors<T: Real>(name: &str, c: &LayerChain<T>) -> Vec<(String, RawTensor)> {
    [("0", &c.reduce), ("1", &c.grouped), ("2", &c.expand)]
        .into_iter()
        .map(|(i, w)| {
            (
                format!("{name}.{i}.weight"),
                raw_from_real(w.shape(), w.iter().copied()),
            )
        })
        .collect()
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
                entries.extend(match &self.chains[i] {
                    AnyChain::F32(c) => chain_tensors(name, c),
                    AnyChain::F64(c) => chain_tensors(name, c),
                });
            } else if let Some(&i) = bias_of.get(&t.name) {
                entries.push((
                    format!("{}.2.bias", self.layers[i].name),
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
    let werr = |e: String| {
        CompressError::Io(IoError::Write {
            path: out.to_path_buf(),
            source: std::io::Error::other(e),
        })
    };
    let mut views = Vec::with_capacity(entries.len());
    for (name, t) in &entries {
        let v = TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
            .map_err(|e| werr(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), v));
    }
    let mut meta: HashMap<String, String> = model.metadata()?.into_iter().collect();
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    meta.insert(METADATA_KEY.into(), description.to_string());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| werr(e.to_string()))?;
    drop(entries);
    write_atomic(out, |w| w.write_all(&bytes))?;
    Ok(())
}
