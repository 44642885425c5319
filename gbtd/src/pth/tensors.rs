//! The tensors of the unpickled object: every `_rebuild_tensor_v2` under its dotted path, the
//! storage each refers to, and the choice of the model's state dict among them.

use std::collections::HashMap;

use super::DType;
use super::pickle::{self, TensorRef, Value};

/// `("storage", StorageType, key, location, numel[, view_metadata])` →
/// (dtype, key, numel, element offset of a legacy storage view).
pub(super) fn parse_pid(pid: &[Value]) -> Result<(DType, String, u64, u64), String> {
    if pid.len() < 5 || pid[0].as_str() != Some("storage") {
        return Err("its persistent id is not a torch storage reference".into());
    }
    let dtype = match &pid[1] {
        Value::Global(pickle::Callable::Storage(d)) => *d,
        _ => return Err("its storage type is not a torch storage class".into()),
    };
    let key = key_string(&pid[2]).ok_or("its storage key is not a string")?;
    let numel = pid[4]
        .as_int()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("its storage size is not a non-negative integer")?;
    // Pre-1.0 storage views: (view_key, offset, view_size) into the root storage `key`.
    let view_offset = match pid.get(5).and_then(Value::as_seq) {
        Some([_, off, _]) => off
            .as_int()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or("bad storage view offset")?,
        _ => 0,
    };
    Ok((dtype, key, numel, view_offset))
}

pub(super) fn key_string(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Every storage key referenced by a tensor in `v`, with its element type.
pub(super) fn storage_dtypes(v: &Value) -> HashMap<String, DType> {
    let mut all = Vec::new();
    walk(v, String::new(), &mut all);
    let mut map = HashMap::new();
    for (_, t) in all {
        if let Value::Persistent(p) = &t.storage
            && let Some(pid) = p.as_seq()
            && let Ok((d, k, _, _)) = parse_pid(pid)
        {
            map.insert(k, d);
        }
    }
    map
}

/// Collects `(dotted path, tensor)` for every tensor in `v` (depth is bounded by the unpickler).
fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a TensorRef)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Tensor(t) => out.push((path, t)),
        Value::Dict(m) => {
            for (k, child) in &m.items {
                let k = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Float(f) => f.to_string(),
                    _ => continue,
                };
                walk(child, join(&k), out);
            }
        }
        Value::List(s) | Value::Tuple(s) => {
            for (i, child) in s.items.iter().enumerate() {
                walk(child, join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// Keys of the usual checkpoint wrappers, in order of preference.
const WRAPPERS: [&str; 4] = ["state_dict", "model_state_dict", "model_state", "model"];

/// Picks the model's tensors (see the module doc): (tensors, wrapper key, ignored paths).
pub(super) fn select(object: &Value) -> (Vec<(String, &TensorRef)>, Option<String>, Vec<String>) {
    let mut all = Vec::new();
    walk(object, String::new(), &mut all);
    if let Value::Dict(m) = object {
        let bare = m.items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
        if !bare {
            for w in WRAPPERS {
                if let Some(inner) = m.get(w) {
                    let mut chosen = Vec::new();
                    walk(inner, String::new(), &mut chosen);
                    if !chosen.is_empty() {
                        let prefix = format!("{w}.");
                        let ignored = all
                            .iter()
                            .filter(|(p, _)| !p.starts_with(&prefix))
                            .map(|(p, _)| p.clone())
                            .collect();
                        return (chosen, Some(w.to_string()), ignored);
                    }
                }
            }
        }
    }
    (all, None, Vec::new())
}
