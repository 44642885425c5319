//! The allow list: torch's storage types and the few globals a state dict needs, each a pure
//! data constructor re-implemented here ([`Callable`]), and the calls of those constructors.

use super::PickleError;
use super::value::{Id, TensorRef, Value};
use super::vm::Machine;

/// Element types of torch storages (`torch.FloatStorage` ... ; `UntypedStorage` is bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// The torch dtype name (`float32`, `bfloat16`, `int64`, `bool` ...).
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::F64 => "float64",
            StorageDtype::F16 => "float16",
            StorageDtype::BF16 => "bfloat16",
            StorageDtype::I64 => "int64",
            StorageDtype::I32 => "int32",
            StorageDtype::I16 => "int16",
            StorageDtype::I8 => "int8",
            StorageDtype::U8 => "uint8",
            StorageDtype::Bool => "bool",
        }
    }
}

/// The allowed globals. Each is a pure constructor re-implemented in Rust.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Callable {
    /// `collections.OrderedDict`: builds an empty [`Value::Dict`].
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
    /// and the older `_rebuild_tensor(storage, offset, size, stride)`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks)` and
    /// `_rebuild_parameter_with_state(data, requires_grad, hooks, state)`: returns `data`.
    RebuildParameter,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`: calls `func(*args)`
    /// when `func` is itself allowed; the subclass type and its state are dropped.
    RebuildFromType,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter` as a type argument (not callable).
    TensorType,
    /// `torch.FloatStorage`, `torch.UntypedStorage` ...: a storage type tag in persistent ids.
    Storage(StorageDtype),
    /// `torch.device(str[, index])`: kept as a string such as `cuda:0`.
    Device,
    /// `torch.Size(iterable)`: a tuple of ints.
    Size,
    /// `builtins.set` / `builtins.frozenset` (and the `__builtin__` spelling): a list.
    Set,
    /// `_codecs.encode(str, "latin1")`, protocol 2's spelling of a `bytes` object.
    Encode,
}

impl Callable {
    /// Resolves `module.name` against the allow list.
    pub fn resolve(module: &str, name: &str) -> Result<Callable, PickleError> {
        use StorageDtype::*;
        let c = match (module, name) {
            ("collections", "OrderedDict") => Callable::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Callable::RebuildTensor,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Callable::RebuildParameter
            }
            ("torch._tensor", "_rebuild_from_type_v2") => Callable::RebuildFromType,
            ("torch", "Tensor") | ("torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter") => {
                Callable::TensorType
            }
            ("torch", "device") => Callable::Device,
            ("torch", "Size") => Callable::Size,
            ("builtins" | "__builtin__", "set" | "frozenset") => Callable::Set,
            ("_codecs", "encode") => Callable::Encode,
            ("torch", s) | ("torch.storage", s) => Callable::Storage(match s {
                "FloatStorage" => F32,
                "DoubleStorage" => F64,
                "HalfStorage" => F16,
                "BFloat16Storage" => BF16,
                "LongStorage" => I64,
                "IntStorage" => I32,
                "ShortStorage" => I16,
                "CharStorage" => I8,
                "ByteStorage" | "UntypedStorage" => U8,
                "BoolStorage" => Bool,
                _ => return Err(refuse(module, name)),
            }),
            _ => return Err(refuse(module, name)),
        };
        Ok(c)
    }
}

fn refuse(module: &str, name: &str) -> PickleError {
    PickleError::RefusedGlobal {
        module: module.to_string(),
        name: name.to_string(),
    }
}

impl Machine<'_> {
    /// Calls `f`, which must be an allowed global.
    pub(super) fn call_value(&mut self, f: Id, args: Vec<Id>) -> Result<Id, PickleError> {
        match self.obj.get(f) {
            Value::Global(c) => {
                let c = c.clone();
                self.call(&c, args)
            }
            other => {
                let k = other.kind();
                Err(self.malformed(format!("call of a {k} (not an allowed global)")))
            }
        }
    }

    /// Runs one allowed constructor on its positional arguments; the result may be one of them
    /// (a parameter is its tensor).
    pub(super) fn call(&mut self, c: &Callable, args: Vec<Id>) -> Result<Id, PickleError> {
        let bad = |m: &Self, what: &str| m.malformed(format!("bad arguments to {c:?}: {what}"));
        match c {
            Callable::OrderedDict => {
                let dict = self.alloc(Value::Dict(Box::default()))?;
                if let Some(&items) = args.first() {
                    // OrderedDict([(k, v), ...])
                    let pairs = self.seq_items(items)?.ok_or_else(|| bad(self, "items"))?;
                    for pair in pairs {
                        let kv = self.seq_items(pair)?.ok_or_else(|| bad(self, "item"))?;
                        if kv.len() != 2 {
                            return Err(bad(self, "item is not a pair"));
                        }
                        self.set_items(dict, kv)?;
                    }
                }
                Ok(dict)
            }
            Callable::RebuildTensor => {
                if args.len() < 4 {
                    return Err(bad(self, "fewer than 4"));
                }
                let offset = self.obj.as_int(args[1]).ok_or_else(|| bad(self, "offset"))?;
                let shape = self.int_seq(args[2]).ok_or_else(|| bad(self, "size"))?;
                let stride = self.int_seq(args[3]).ok_or_else(|| bad(self, "stride"))?;
                self.alloc(Value::Tensor(Box::new(TensorRef {
                    storage: args[0],
                    offset,
                    shape,
                    stride,
                })))
            }
            Callable::RebuildParameter => match args.first() {
                Some(&t) if matches!(self.obj.get(t), Value::Tensor(_)) => Ok(t),
                _ => Err(bad(self, "data is not a tensor")),
            },
            Callable::RebuildFromType => {
                if args.len() < 3 {
                    return Err(bad(self, "fewer than 3"));
                }
                let inner = self.seq_items(args[2])?.ok_or_else(|| bad(self, "args"))?;
                match self.obj.get(args[0]) {
                    Value::Global(f) if *f != Callable::RebuildFromType => {
                        let f = f.clone();
                        self.call(&f, inner)
                    }
                    _ => Err(bad(self, "func")),
                }
            }
            Callable::Device => {
                let name = args.first().and_then(|&a| self.obj.as_str(a));
                let index = args.get(1).and_then(|&a| self.obj.as_int(a));
                let device = match (name, index) {
                    (Some(s), Some(i)) => format!("{s}:{i}"),
                    (Some(s), None) => s.to_string(),
                    (None, _) => return Err(bad(self, "device name")),
                };
                self.alloc(Value::Device(device))
            }
            Callable::Size => {
                let items = match args.first() {
                    None => Vec::new(),
                    Some(&v) => self.seq_items(v)?.ok_or_else(|| bad(self, "sizes"))?,
                };
                self.alloc(Value::Tuple(items))
            }
            Callable::Set => {
                let items = match args.first() {
                    None => Vec::new(),
                    Some(&v) => self.seq_items(v)?.ok_or_else(|| bad(self, "items"))?,
                };
                self.alloc(Value::List(items))
            }
            Callable::Encode => {
                let text = args.first().and_then(|&a| self.obj.as_str(a));
                let Some(text) = text else {
                    return Err(bad(self, "text"));
                };
                // latin-1: each char is one byte.
                let b: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                let b = b.ok_or_else(|| bad(self, "not latin-1"))?;
                self.alloc(Value::Bytes(b))
            }
            Callable::TensorType | Callable::Storage(_) => {
                Err(self.malformed(format!("{c:?} is a type tag here, not a callable")))
            }
        }
    }

    /// The integers of the list or tuple `id`.
    fn int_seq(&self, id: Id) -> Option<Vec<i64>> {
        self.obj.as_seq(id)?.iter().map(|&i| self.obj.as_int(i)).collect()
    }
}
