//! The tensors of the unpickled object: every `_rebuild_tensor_v2` under its dotted path, the
//! storage each refers to, and the choice of the model's state dict among them.
//!
//! The object may share values (a tensor saved under two names is one value, as in Python) and
//! may even contain itself, so the walk is bounded: it refuses a cycle, nesting deeper than
//! [`Limits::max_depth`](super::pickle::Limits), and more than
//! [`Limits::max_nodes`](super::pickle::Limits) visits (a value shared `2^k` times is visited
//! `2^k` times; each tensor name costs one visit more per 16 bytes).

use std::borrow::Cow;
use std::collections::HashMap;

use super::pickle::{Callable, Id, Object, TensorRef, Value};
use super::{DType, PthError, PthResult};

/// A tensor found in the object, under its dotted path.
pub(super) type Found<'a> = (String, &'a TensorRef);

/// `("storage", StorageType, key, location, numel[, view_metadata])` →
/// (dtype, key, numel, element offset of a legacy storage view).
pub(super) fn parse_pid(obj: &Object, pid: &[Id]) -> Result<(DType, String, u64, u64), String> {
    if pid.len() < 5 || obj.as_str(pid[0]) != Some("storage") {
        return Err("its persistent id is not a torch storage reference".into());
    }
    let dtype = match obj.get(pid[1]) {
        Value::Global(Callable::Storage(d)) => *d,
        _ => return Err("its storage type is not a torch storage class".into()),
    };
    let key = key_string(obj, pid[2]).ok_or("its storage key is not a string")?;
    let numel = obj
        .as_int(pid[4])
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("its storage size is not a non-negative integer")?;
    // Pre-1.0 storage views: (view_key, offset, view_size) into the root storage `key`.
    let view_offset = match pid.get(5).and_then(|&v| obj.as_seq(v)) {
        Some(&[_, off, _]) => obj
            .as_int(off)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or("bad storage view offset")?,
        _ => 0,
    };
    Ok((dtype, key, numel, view_offset))
}

/// The persistent id of a tensor's storage, as the items of its tuple (empty when it is not one).
pub(super) fn storage_pid<'a>(obj: &'a Object, t: &TensorRef) -> Option<&'a [Id]> {
    match obj.get(t.storage) {
        Value::Persistent(p) => Some(obj.as_seq(*p).unwrap_or(&[])),
        _ => None,
    }
}

/// A storage key: a string, or an integer written in decimal.
pub(super) fn key_string(obj: &Object, id: Id) -> Option<String> {
    match obj.get(id) {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Every storage key referenced by a tensor in the object, with its element type.
pub(super) fn storage_dtypes(obj: &Object) -> PthResult<HashMap<String, DType>> {
    let mut map = HashMap::new();
    for (_, t) in walk(obj, obj.root())? {
        if let Some(pid) = storage_pid(obj, t)
            && let Ok((d, k, _, _)) = parse_pid(obj, pid)
        {
            map.insert(k, d);
        }
    }
    Ok(map)
}

/// Keys of the usual checkpoint wrappers, in order of preference.
const WRAPPERS: [&str; 4] = ["state_dict", "model_state_dict", "model_state", "model"];

/// The model's tensors, chosen as the module doc of [`super`] says, with the wrapper key they
/// were found under and the paths of the tensors left out.
pub(super) struct Selection<'a> {
    pub(super) tensors: Vec<Found<'a>>,
    pub(super) wrapper: Option<String>,
    pub(super) ignored: Vec<String>,
}

/// Picks the model's tensors (see [`Selection`]).
pub(super) fn select(obj: &Object) -> PthResult<Selection<'_>> {
    let all = walk(obj, obj.root())?;
    if let Some(top) = obj.as_dict(obj.root()) {
        let bare = top
            .items()
            .iter()
            .any(|&(_, v)| matches!(obj.get(v), Value::Tensor(_)));
        if !bare {
            for w in WRAPPERS {
                if let Some(inner) = obj.dict_get(top, w) {
                    let chosen = walk(obj, inner)?;
                    if !chosen.is_empty() {
                        let prefix = format!("{w}.");
                        let ignored = all
                            .iter()
                            .filter(|(p, _)| !p.starts_with(&prefix))
                            .map(|(p, _)| p.clone())
                            .collect();
                        return Ok(Selection {
                            tensors: chosen,
                            wrapper: Some(w.to_string()),
                            ignored,
                        });
                    }
                }
            }
        }
    }
    Ok(Selection {
        tensors: all,
        wrapper: None,
        ignored: Vec::new(),
    })
}

/// Every tensor reachable from `from`, under its dotted path (dict keys that are strings,
/// numbers or bools, and list or tuple indices), in depth-first order.
fn walk(obj: &Object, from: Id) -> PthResult<Vec<Found<'_>>> {
    let mut w = Walk {
        obj,
        on_path: vec![false; obj.len()],
        path: Vec::new(),
        visits: 0,
        out: Vec::new(),
    };
    w.visit(from)?;
    Ok(w.out)
}

struct Walk<'a> {
    obj: &'a Object,
    /// The containers on the current path (a cycle returns to one of them).
    on_path: Vec<bool>,
    /// The current path's segments.
    path: Vec<Cow<'a, str>>,
    visits: u64,
    out: Vec<Found<'a>>,
}

impl<'a> Walk<'a> {
    fn visit(&mut self, id: Id) -> PthResult<()> {
        let limits = self.obj.limits();
        self.count(1)?;
        let v = self.obj.get(id);
        if let Value::Tensor(t) = v {
            let len: usize = self.path.iter().map(|s| s.len() + 1).sum();
            self.count(len as u64 / 16)?;
            self.out.push((self.path.join("."), t));
            return Ok(());
        }
        if !matches!(v, Value::Dict(_) | Value::List(_) | Value::Tuple(_)) {
            return Ok(());
        }
        if self.on_path[id.index()] {
            return Err(self.refuse("contains itself (a reference cycle)".into()));
        }
        if self.path.len() >= limits.max_depth as usize {
            return Err(self.refuse(format!("nests containers more than {} deep", limits.max_depth)));
        }
        self.on_path[id.index()] = true;
        match v {
            Value::Dict(d) => {
                for &(k, child) in d.items() {
                    let seg = match self.obj.get(k) {
                        Value::Str(s) => Cow::Borrowed(s.as_str()),
                        Value::Int(i) => Cow::Owned(i.to_string()),
                        Value::Bool(b) => Cow::Owned(b.to_string()),
                        Value::Float(f) => Cow::Owned(f.to_string()),
                        _ => continue,
                    };
                    self.descend(seg, child)?;
                }
            }
            Value::List(items) | Value::Tuple(items) => {
                for (i, &child) in items.iter().enumerate() {
                    self.descend(Cow::Owned(i.to_string()), child)?;
                }
            }
            _ => {}
        }
        self.on_path[id.index()] = false;
        Ok(())
    }

    fn descend(&mut self, seg: Cow<'a, str>, child: Id) -> PthResult<()> {
        self.path.push(seg);
        self.visit(child)?;
        self.path.pop();
        Ok(())
    }

    /// Counts `n` visits against [`Limits::max_nodes`](super::pickle::Limits).
    fn count(&mut self, n: u64) -> PthResult<()> {
        self.visits = self.visits.saturating_add(n);
        let max = self.obj.limits().max_nodes;
        if self.visits > max {
            return Err(self.refuse(format!(
                "refers to its shared values more than {max} times (a pickle built to expand)"
            )));
        }
        Ok(())
    }

    /// The error for an object that cannot be walked, naming where (the path shortened).
    fn refuse(&self, what: String) -> PthError {
        const SHOW: usize = 120;
        let mut at = String::new();
        for (i, seg) in self.path.iter().enumerate() {
            if i > 0 {
                at.push('.');
            }
            at.extend(seg.chars().take(SHOW + 1 - at.chars().count().min(SHOW)));
            if at.chars().count() > SHOW {
                at = at.chars().take(SHOW).chain("...".chars()).collect();
                break;
            }
        }
        PthError::BadObject(format!("the pickled object {what}, at `{at}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pth::pickle::{Limits, unpickle};

    fn text(s: &str) -> Vec<u8> {
        let mut b = vec![b'X'];
        b.extend((s.len() as u32).to_le_bytes());
        b.extend(s.as_bytes());
        b
    }

    /// `_rebuild_tensor_v2(("storage", FloatStorage, key, "cpu", 4), 0, (2, 2), (2, 1), False,
    /// OrderedDict())`, as `torch.save` writes it with protocol 2.
    fn tensor(key: &str) -> Vec<u8> {
        let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
        p.extend(text("storage"));
        p.extend(b"ctorch\nFloatStorage\n");
        p.extend(text(key));
        p.extend(text("cpu"));
        p.extend(b"K\x04tQK\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtR");
        p
    }

    fn object(body: &[u8]) -> Object {
        let mut p = vec![0x80, 2];
        p.extend(body);
        p.push(b'.');
        unpickle(&p, Limits::for_len(p.len())).unwrap().0
    }

    fn names(obj: &Object) -> PthResult<Vec<String>> {
        Ok(select(obj)?.tensors.into_iter().map(|(n, _)| n).collect())
    }

    #[test]
    fn a_tensor_saved_under_two_names_is_found_under_both() {
        // {"a": t, "b": t, "c": [t]} with t memoized, as torch.save writes tied weights.
        let mut b = b"}(".to_vec();
        b.extend(text("a"));
        b.extend(tensor("0"));
        b.extend(b"q\x01");
        b.extend(text("b"));
        b.extend(b"h\x01");
        b.extend(text("c"));
        b.extend(b"h\x01\x85u");
        let obj = object(&b);
        let found = select(&obj).unwrap().tensors;
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c.0"]);
        assert!(std::ptr::eq(found[0].1, found[1].1));
        assert_eq!(storage_dtypes(&obj).unwrap()["0"], DType::F32);
    }

    #[test]
    fn cycles_depth_and_expanding_shares_are_refused_by_the_walk() {
        // d = {"w": t}; d["self"] = d.
        let mut b = b"}q\x00(".to_vec();
        b.extend(text("w"));
        b.extend(tensor("0"));
        b.extend(text("self"));
        b.extend(b"h\x00u");
        let e = names(&object(&b)).unwrap_err();
        assert!(
            matches!(e, PthError::BadObject(_)) && e.to_string().contains("contains itself"),
            "{e}"
        );
        assert!(e.to_string().ends_with("at `self`"), "{e}");

        // 300 nested lists around a tensor.
        let mut b = b"]".repeat(300);
        b.extend(tensor("0"));
        b.extend(b"a".repeat(300));
        let e = names(&object(&b)).unwrap_err();
        assert!(e.to_string().contains("more than 256 deep"), "{e}");

        // x = {"t": t}; 40 times x = {"a": x, "b": x}: 2^40 paths from a few hundred bytes.
        let mut b = b"}q\x00".to_vec();
        b.extend(text("t"));
        b.extend(tensor("0"));
        b.push(b's');
        for _ in 0..40 {
            b.push(b'(');
            b.extend(text("a"));
            b.extend(b"h\x00");
            b.extend(text("b"));
            b.extend(b"h\x00dq\x00");
        }
        let obj = object(&b);
        assert!(obj.len() < 500);
        let e = names(&obj).unwrap_err();
        assert!(e.to_string().contains("shared values more than"), "{e}");
    }
}
