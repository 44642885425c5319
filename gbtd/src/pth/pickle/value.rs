//! The value model: an unpickled object is an arena of [`Value`]s that refer to each other by
//! [`Id`], as Python objects refer to each other by reference. A value fetched from the memo is
//! the same value (the same `Id`), not a copy; a container filled after it was memoized is seen
//! filled from everywhere it is referenced; cycles are representable.

use super::Limits;
use super::keys::{KeyIndex, Keys};
use super::torch::Callable;

/// A value's place in its [`Object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(u32);

impl Id {
    /// The position in the arena.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view into a storage.
///
/// `storage` is whatever the persistent id was (for `torch.save`, a tuple
/// `("storage", StorageType, key, location, numel[, view_metadata])`); `offset`, `shape` and
/// `stride` count elements, as in torch.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: Id,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A decoded pickle value (only what a state dict contains); containers hold [`Id`]s.
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
    /// Lists, and sets (kept as lists).
    List(Vec<Id>),
    Tuple(Vec<Id>),
    /// Dicts and `OrderedDict`s.
    Dict(Box<Dict>),
    /// An allowed global.
    Global(Callable),
    /// The object a persistent id names (`BINPERSID`), left for the caller to resolve.
    Persistent(Id),
    /// A rebuilt tensor.
    Tensor(Box<TensorRef>),
    /// `torch.device`.
    Device(String),
}

impl Value {
    /// The Python type name, for messages.
    pub fn kind(&self) -> &'static str {
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

/// A dict's items in insertion order. Keys compare as Python compares them (`1`, `1.0` and
/// `True` are one key; see [`super::keys`]); setting an existing key keeps its place and its
/// first key object and replaces the value, as in Python. Lookups and insertions take constant
/// time (a hash index of the keys).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dict {
    items: Vec<(Id, Id)>,
    index: KeyIndex,
}

impl Dict {
    /// The `(key, value)` pairs in insertion order.
    pub fn items(&self) -> &[(Id, Id)] {
        &self.items
    }
}

/// An unpickled object: the arena of every value built, and the root.
#[derive(Debug, Clone)]
pub struct Object {
    values: Vec<Value>,
    keys: Keys,
    root: Id,
    limits: Limits,
}

impl Object {
    pub(super) fn new(limits: Limits) -> Self {
        Object {
            values: Vec::new(),
            keys: Keys::default(),
            root: Id(0),
            limits,
        }
    }

    /// The object the pickle returns.
    pub fn root(&self) -> Id {
        self.root
    }

    pub(super) fn set_root(&mut self, root: Id) {
        self.root = root;
    }

    /// The limits the object was read under; readers of the object bound their walks by them.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of values in the arena.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the arena is empty (never, once a pickle was read).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value `id` refers to.
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id.index()]
    }

    pub(super) fn get_mut(&mut self, id: Id) -> &mut Value {
        &mut self.values[id.index()]
    }

    /// Adds `v` to the arena (the caller accounts for it against the limits).
    pub(super) fn alloc(&mut self, v: Value) -> Id {
        let id = Id(u32::try_from(self.values.len()).expect("the node limit keeps ids within u32"));
        self.values.push(v);
        id
    }

    /// The integer, if `id` is an `Int` (or a `Bool`, as Python treats it).
    pub fn as_int(&self, id: Id) -> Option<i64> {
        match self.get(id) {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The string, if `id` is a `Str`.
    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if `id` is a list or a tuple.
    pub fn as_seq(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Value::List(s) | Value::Tuple(s) => Some(s),
            _ => None,
        }
    }

    /// The dict, if `id` is one.
    pub fn as_dict(&self, id: Id) -> Option<&Dict> {
        match self.get(id) {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value stored under the string key `key` in `dict`.
    pub fn dict_get(&self, dict: &Dict, key: &str) -> Option<Id> {
        let canonical = self.keys.find_str(&self.values, key)?;
        dict.index.get(canonical).map(|pos| dict.items[pos].1)
    }

    /// `dict[key] = value` for the dict `dict` (see [`Dict`]); an error names an unhashable key.
    pub(super) fn dict_set(&mut self, dict: Id, key: Id, value: Id) -> Result<(), String> {
        let canonical = self.keys.canonical(&self.values, key, self.limits.max_depth)?;
        match &mut self.values[dict.index()] {
            Value::Dict(d) => {
                match d.index.get(canonical) {
                    Some(pos) => d.items[pos].1 = value,
                    None => {
                        d.index.insert(canonical, d.items.len());
                        d.items.push((key, value));
                    }
                }
                Ok(())
            }
            other => Err(format!("SETITEM on a {}", other.kind())),
        }
    }
}
