//! Loading named weights (e.g. a torchvision state dict exported with
//! `safetensors.torch.save_file`) into a `VarStore` by name, strictly: every variable of the store
//! (parameters and BN running statistics) must be present with the same shape, and every tensor of
//! the file must belong to the store, except PyTorch's `*.num_batches_tracked` counters, which
//! netgen's BN does not keep (it uses a fixed momentum) and which are skipped.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tch::Tensor;
use tch::nn::VarStore;

use super::layers::numel;
use super::{NnError, Result};

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of store variables that were overwritten (all of them).
    pub loaded: usize,
    /// Names in the source that were skipped (`*.num_batches_tracked`).
    pub skipped: Vec<String>,
}

/// Suffix of PyTorch's BN step counter, which has no counterpart in netgen's BN.
const SKIPPED_SUFFIX: &str = "num_batches_tracked";

/// Reads a `.safetensors` file and loads it into `vs` with [`load_named`].
pub fn load_safetensors(vs: &VarStore, path: &Path) -> Result<LoadReport> {
    let named = Tensor::read_safetensors(path).map_err(|e| NnError::Load {
        path: path.display().to_string(),
        msg: format!("cannot read safetensors: {e}"),
    })?;
    load_named(vs, named, &path.display().to_string())
}

/// Copies the named tensors into the store's variables of the same name (converted to the
/// variable's kind and device), after checking that names and shapes match exactly. On any
/// mismatch nothing is copied and the error lists the missing, unexpected and mis-shaped names.
pub fn load_named(vs: &VarStore, named: Vec<(String, Tensor)>, source: &str) -> Result<LoadReport> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut src: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (name, t) in named {
        if name.ends_with(SKIPPED_SUFFIX) && !vars.contains_key(&name) {
            skipped.push(name);
        } else {
            src.insert(name, t);
        }
    }
    let var_names: BTreeSet<&String> = vars.keys().collect();
    let src_names: BTreeSet<&String> = src.keys().collect();
    let missing: Vec<&str> = var_names.difference(&src_names).map(|s| s.as_str()).collect();
    let unexpected: Vec<&str> = src_names.difference(&var_names).map(|s| s.as_str()).collect();
    let mismatched: Vec<String> = vars
        .iter()
        .filter_map(|(name, v)| {
            let s = src.get(name)?;
            (s.size() != v.size()).then(|| format!("{name}: file {:?}, network {:?}", s.size(), v.size()))
        })
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        let mut msg = Vec::new();
        let list = |v: &[&str]| {
            let head: Vec<&str> = v.iter().take(12).copied().collect();
            let more = if v.len() > 12 {
                format!(", … ({} in all)", v.len())
            } else {
                String::new()
            };
            format!("{}{more}", head.join(", "))
        };
        if !missing.is_empty() {
            msg.push(format!("missing in the file: {}", list(&missing)));
        }
        if !unexpected.is_empty() {
            msg.push(format!("not in the network: {}", list(&unexpected)));
        }
        if !mismatched.is_empty() {
            let m: Vec<&str> = mismatched.iter().map(String::as_str).collect();
            msg.push(format!("shape mismatch: {}", list(&m)));
        }
        return Err(NnError::Load {
            path: source.to_string(),
            msg: msg.join("; "),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, v) in &vars {
            let s = &src[name];
            let mut v = v.shallow_clone();
            v.f_copy_(&s.f_to_device(v.device())?.f_to_kind(v.kind())?)?;
        }
        Ok(())
    })?;
    Ok(LoadReport {
        loaded: vars.len(),
        skipped,
    })
}

/// Number of trainable scalars of the store: every trainable tensor counted once, so a tensor
/// shared by several units (a CRU share group's weights) counts once. BN running statistics are
/// buffers and do not count.
pub fn trainable_param_count(vs: &VarStore) -> usize {
    vs.trainable_variables().iter().map(numel).sum()
}
