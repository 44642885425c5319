//! The values a state dict's pickle holds.

use super::torch::Callable;

/// A tensor as `_rebuild_tensor_v2` describes it: a view into a storage.
///
/// `storage` is whatever the persistent id was (for `torch.save`, a tuple
/// `("storage", StorageType, key, location, numel[, view_metadata])`); `offset`, `shape` and
/// `stride` count elements, as in torch.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: Value,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A decoded pickle value (only what a state dict contains).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for `i64`: little-endian two's complement bytes (at most 16).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Seq),
    Tuple(Seq),
    /// Dicts and `OrderedDict`s, in insertion order (duplicate keys keep the last value).
    Dict(Map),
    /// An allowed global.
    Global(Callable),
    /// The object a persistent id names (`BINPERSID`), left for the caller to resolve.
    Persistent(Box<Value>),
    /// A rebuilt tensor.
    Tensor(Box<TensorRef>),
    /// `torch.device`.
    Device(String),
}

/// A list or tuple with its nesting depth and node count kept up to date.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Seq {
    pub items: Vec<Value>,
    pub(super) depth: u32,
    nodes: u64,
}

/// A dict's items in insertion order, with nesting depth and node count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    pub items: Vec<(Value, Value)>,
    pub(super) depth: u32,
    nodes: u64,
}

impl Seq {
    pub(super) fn from_vec(items: Vec<Value>) -> Seq {
        let mut s = Seq::default();
        for v in items {
            s.push(v);
        }
        s
    }
    pub(super) fn push(&mut self, v: Value) {
        self.depth = self.depth.max(v.depth());
        self.nodes += v.nodes();
        self.items.push(v);
    }
}

impl Map {
    pub(super) fn insert(&mut self, k: Value, v: Value) {
        self.depth = self.depth.max(k.depth()).max(v.depth());
        self.nodes += k.nodes() + v.nodes();
        if let Some(slot) = self.items.iter_mut().find(|(key, _)| *key == k) {
            slot.1 = v;
        } else {
            self.items.push((k, v));
        }
    }

    /// The value stored under the string key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.items.iter().find_map(|(k, v)| match k {
            Value::Str(s) if s == key => Some(v),
            _ => None,
        })
    }
}

impl Value {
    /// Nesting depth: 0 for scalars, 1 + the deepest child for containers.
    pub fn depth(&self) -> u32 {
        match self {
            Value::List(s) | Value::Tuple(s) => s.depth + 1,
            Value::Dict(m) => m.depth + 1,
            Value::Persistent(v) => v.depth() + 1,
            Value::Tensor(t) => t.storage.depth() + 1,
            _ => 0,
        }
    }

    /// Number of nodes (this value and everything inside it).
    pub fn nodes(&self) -> u64 {
        match self {
            Value::List(s) | Value::Tuple(s) => s.nodes + 1,
            Value::Dict(m) => m.nodes + 1,
            Value::Persistent(v) => v.nodes() + 1,
            Value::Tensor(t) => t.storage.nodes() + 1 + (t.shape.len() + t.stride.len()) as u64,
            Value::Str(s) => 1 + s.len() as u64 / 64,
            Value::Bytes(b) | Value::BigInt(b) => 1 + b.len() as u64 / 64,
            _ => 1,
        }
    }

    /// The integer, if this is an `Int` (or a `Bool`, as Python treats it).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The string, if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(s) | Value::Tuple(s) => Some(&s.items),
            _ => None,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Persistent(_) => "persistent id",
            Value::Tensor(_) => "tensor",
            Value::Device(_) => "device",
        }
    }
}

pub(super) fn set_items(m: &mut Map, items: Vec<Value>) -> Result<(), String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(k, v);
    }
    Ok(())
}

pub(super) fn take_seq(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::List(s) | Value::Tuple(s) => Some(s.items),
        _ => None,
    }
}

pub(super) fn int_seq(v: &Value) -> Option<Vec<i64>> {
    v.as_seq()?.iter().map(Value::as_int).collect()
}

/// Decodes a little-endian two's complement integer (LONG1/LONG4 payload).
pub(super) fn long_value(b: &[u8]) -> Option<Value> {
    if b.is_empty() {
        return Some(Value::Int(0));
    }
    if b.len() > 16 {
        return None;
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let mut buf = [if neg { 0xff } else { 0 }; 16];
    buf[..b.len()].copy_from_slice(b);
    let v = i128::from_le_bytes(buf);
    Some(match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(b.to_vec()),
    })
}
