//! Writing a collective factorization ([`crate::collective`]) as a compressed checkpoint: each
//! kernel `NAME.weight` becomes the chain [`LayerChain::from_collective`] gives it, in the format
//! of [`super`] (the description's `collective` block lists the copies of the shared tensors).
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ndarray::Array4;
use serde_json::{Value, json};

use super::{METADATA_KEY, conv_json, write_entries};
use crate::collective::Collective;
use crate::compress::CompressError;
use crate::compress::model::{ModelFile, RawTensor, raw_from_real};
use crate::error::GbtdError;
use crate::formats::{DType, NamedTensor, TensorInfo};
use crate::layers::LayerChain;
use crate::real::Real;

/// The module names `NAME` of `kernels` (tensor names of the model at `model`, whose tensors are
/// `tensors`), checked before any work to be replaceable by chains: each is named `NAME.weight`
/// ([`CompressError::NotAWeight`] otherwise), and the model holds none of `NAME.0.weight`,
/// `NAME.1.weight`, `NAME.2.weight`, `NAME.2.bias` yet ([`CompressError::NameClash`]).
pub fn check_replaceable(
    model: &Path,
    tensors: &[TensorInfo],
    kernels: &[&str],
) -> Result<Vec<String>, CompressError> {
    let present: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let mut names = Vec::with_capacity(kernels.len());
    for k in kernels {
        let Some(name) = k.strip_suffix(".weight") else {
            return Err(CompressError::NotAWeight(k.to_string()));
        };
        let chain = [0, 1, 2].map(|i| format!("{name}.{i}.weight"));
        if let Some(clash) = chain
            .iter()
            .chain([&format!("{name}.2.bias")])
            .find(|n| present.contains(n.as_str()))
        {
            return Err(CompressError::NameClash(format!(
                "{} already has a tensor '{clash}' (is it already compressed?); give the uncompressed model",
                model.display()
            )));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// A chain weight stored as `F64` when `f64_out`, else as `F32` (rounded from `f64`).
fn stored<T: Real>(w: &Array4<T>, f64_out: bool) -> RawTensor {
    if f64_out {
        raw_from_real(w.shape(), w.iter().map(|v| v.to_f64_exact()))
    } else {
        raw_from_real(w.shape(), w.iter().map(|v| v.to_f64_exact() as f32))
    }
}

/// The description entry of kernel `k` (module `name`, chain `chain` of `R` terms and ranks
/// `[d4*, d3*]`, relative error `err`).
fn layer_entry<T: Real>(
    name: &str,
    k: &NamedTensor,
    chain: &LayerChain<T>,
    err: f64,
    bias: bool,
) -> Result<Value, CompressError> {
    let dims = chain.dims().map_err(CompressError::Collective)?;
    let (r, d4s, d3s) = (dims.terms, dims.d4_star, dims.d3_star);
    let &[o, i, kh, kw] = k.data.shape() else {
        return Err(CompressError::Collective(GbtdError::Shape(format!(
            "kernel '{}' has shape {:?}, expected (out, in, kh, kw)",
            k.name,
            k.data.shape()
        ))));
    };
    let mut last = conv_json(format!("{name}.2.weight"), r * d4s, o, [1, 1], 1, true);
    last["bias"] = if bias {
        json!(format!("{name}.2.bias"))
    } else {
        Value::Null
    };
    Ok(json!({
        "name": name, "shape": [o, i, kh, kw], "dtype": k.dtype.to_string(), "method": "collective",
        "terms": r, "ranks": [d4s, d3s], "groups": r, "bias": bias, "relative_error": err,
        "params_before": o * i * kh * kw, "params_after": chain.n_params(),
        "chain": [
            conv_json(format!("{name}.0.weight"), i, r * d3s, [1, 1], 1, true),
            conv_json(format!("{name}.1.weight"), r * d3s, r * d4s, [kh, kw], r, false),
            last,
        ],
    }))
}

/// Writes the model at `model` to `out` with each of `kernels` (read from it, in the order
/// factorized) replaced by its chain from the collective factorization `c`, and `NAME.bias`
/// moved to `NAME.2.bias`; every other tensor is copied unchanged (see [`super`]). `selection`
/// (how the kernels were chosen, for example a regular expression) is recorded as the
/// description's `collective.tensors`. A kernel's chain is stored as `F64` when the kernel is
/// `f64`, else as `F32`.
///
/// Errors: those of [`check_replaceable`], [`CompressError::Collective`] when `c` does not
/// factorize `kernels` (their count or shapes), and reading or writing failures.
pub fn write_collective<T: Real>(
    model: &Path,
    kernels: &[NamedTensor],
    c: &Collective<T>,
    selection: &str,
    out: &Path,
) -> Result<(), CompressError> {
    let file = ModelFile::open(model)?;
    let tensors = file.list()?;
    let kernel_names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
    let names = check_replaceable(model, &tensors, &kernel_names)?;
    let chains = LayerChain::from_collective(c).map_err(CompressError::Collective)?;
    if chains.len() != kernels.len() {
        return Err(CompressError::Collective(GbtdError::Shape(format!(
            "it factorizes {} kernels, {} are to be replaced",
            chains.len(),
            kernels.len()
        ))));
    }
    // What each replaced tensor becomes: a kernel's index, or the index of the kernel whose
    // bias it is.
    let mut role: HashMap<String, (usize, bool)> = HashMap::new();
    let mut layers = Vec::with_capacity(kernels.len());
    for (l, (k, name)) in kernels.iter().zip(&names).enumerate() {
        let bias = format!("{name}.bias");
        let has_bias = tensors.iter().any(|t| t.name == bias);
        if has_bias {
            role.insert(bias, (l, true));
        }
        role.insert(k.name.clone(), (l, false));
        layers.push(layer_entry(name, k, &chains[l], c.rel_errors[l], has_bias)?);
    }
    let mut entries = Vec::with_capacity(tensors.len() + 2 * kernels.len());
    for t in &tensors {
        match role.get(&t.name) {
            Some(&(l, false)) => {
                let (ch, f64_out) = (&chains[l], kernels[l].dtype == DType::F64);
                for (i, w) in [&ch.reduce, &ch.grouped, &ch.expand].into_iter().enumerate() {
                    entries.push((format!("{}.{i}.weight", names[l]), stored(w, f64_out)));
                }
            }
            Some(&(l, true)) => entries.push((format!("{}.2.bias", names[l]), file.read_raw(&t.name)?)),
            None => entries.push((t.name.clone(), file.read_raw(&t.name)?)),
        }
    }
    let copied: BTreeSet<&str> = tensors
        .iter()
        .filter(|t| !role.contains_key(&t.name))
        .map(|t| t.name.as_str())
        .collect();
    let shared = [0, 1].map(|i| {
        names
            .iter()
            .map(|n| format!("{n}.{i}.weight"))
            .collect::<Vec<_>>()
    });
    let ranks = chains[0].dims().map_err(CompressError::Collective)?;
    let ranks = [ranks.d4_star, ranks.d3_star];
    let description = json!({
        "format": METADATA_KEY,
        "version": 1,
        "generator": format!("gbtd {}", env!("CARGO_PKG_VERSION")),
        "source": model.display().to_string(),
        "method": "collective",
        "rank_rule": format!("fixed:{},{}", ranks[0], ranks[1]),
        "layers": layers,
        "skipped": [],
        "collective": {
            "shared": shared,
            "tensors": selection,
            "terms": c.n_terms(),
            "ranks": ranks,
            "params_collective": c.n_params(),
            "params_independent": c.n_params_independent(),
        },
    });
    write_entries(&file, entries, &copied, &description, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaceable_kernels_are_named_weights_whose_chain_names_are_free() {
        let info = |name: &str| TensorInfo {
            name: name.into(),
            dtype: "F32".into(),
            shape: vec![4, 4, 3, 3],
            readable: true,
        };
        let model = Path::new("m.safetensors");
        let tensors = [info("a.weight"), info("b.weight"), info("b.2.bias"), info("c")];
        assert_eq!(
            check_replaceable(model, &tensors, &["a.weight"]).unwrap(),
            vec!["a".to_string()]
        );
        let e = check_replaceable(model, &tensors, &["a.weight", "b.weight"]).unwrap_err();
        assert!(e.to_string().contains("already has a tensor 'b.2.bias'"), "{e}");
        let e = check_replaceable(model, &tensors, &["c"]).unwrap_err();
        assert!(matches!(e, CompressError::NotAWeight(ref t) if t == "c"), "{e}");
    }
}
