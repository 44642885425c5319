//! The allow list: torch's storage types and the few globals a state dict needs, each a pure
//! data constructor re-implemented here ([`Callable`]), and the calls of those constructors.

use super::PickleError;
use super::value::{Map, Seq, TensorRef, Value, int_seq, take_seq};
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
#[derive(Debug, Clone, PartialEq)]
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
    pub(super) fn call_value(&mut self, f: Value, args: Vec<Value>) -> Result<Value, PickleError> {
        match f {
            Value::Global(c) => self.call(&c, args),
            other => Err(self.malformed(format!("call of a {} (not an allowed global)", other.kind()))),
        }
    }

    /// Runs one allowed constructor on its positional arguments.
    pub(super) fn call(&mut self, c: &Callable, mut args: Vec<Value>) -> Result<Value, PickleError> {
        let bad = |m: &Self, what: &str| m.malformed(format!("bad arguments to {c:?}: {what}"));
        match c {
            Callable::OrderedDict => {
                if args.is_empty() {
                    Ok(Value::Dict(Map::default()))
                } else {
                    // OrderedDict([(k, v), ...])
                    let mut m = Map::default();
                    for pair in take_seq(args.swap_remove(0)).ok_or_else(|| bad(self, "items"))? {
                        let mut kv = take_seq(pair).ok_or_else(|| bad(self, "item"))?;
                        if kv.len() != 2 {
                            return Err(bad(self, "item is not a pair"));
                        }
                        let v = kv.pop().unwrap();
                        let k = kv.pop().unwrap();
                        m.insert(k, v);
                    }
                    Ok(Value::Dict(m))
                }
            }
            Callable::RebuildTensor => {
                if args.len() < 4 {
                    return Err(bad(self, "fewer than 4"));
                }
                let mut it = args.into_iter();
                let storage = it.next().unwrap();
                let offset = it.next().unwrap().as_int().ok_or_else(|| bad(self, "offset"))?;
                let shape = int_seq(&it.next().unwrap()).ok_or_else(|| bad(self, "size"))?;
                let stride = int_seq(&it.next().unwrap()).ok_or_else(|| bad(self, "stride"))?;
                Ok(Value::Tensor(Box::new(TensorRef {
                    storage,
                    offset,
                    shape,
                    stride,
                })))
            }
            Callable::RebuildParameter => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(bad(self, "data is not a tensor")),
            },
            Callable::RebuildFromType => {
                if args.len() < 3 {
                    return Err(bad(self, "fewer than 3"));
                }
                let mut it = args.into_iter();
                let func = it.next().unwrap();
                let _ty = it.next().unwrap();
                let inner = take_seq(it.next().unwrap()).ok_or_else(|| bad(self, "args"))?;
                match func {
                    Value::Global(f) if f != Callable::RebuildFromType => self.call(&f, inner),
                    _ => Err(bad(self, "func")),
                }
            }
            Callable::Device => match args.first() {
                Some(Value::Str(s)) => {
                    let s = match args.get(1).and_then(Value::as_int) {
                        Some(i) => format!("{s}:{i}"),
                        None => s.clone(),
                    };
                    Ok(Value::Device(s))
                }
                _ => Err(bad(self, "device name")),
            },
            Callable::Size => {
                let items = match args.into_iter().next() {
                    None => Vec::new(),
                    Some(v) => take_seq(v).ok_or_else(|| bad(self, "sizes"))?,
                };
                Ok(Value::Tuple(Seq::from_vec(items)))
            }
            Callable::Set => {
                let items = match args.into_iter().next() {
                    None => Vec::new(),
                    Some(v) => take_seq(v).ok_or_else(|| bad(self, "items"))?,
                };
                Ok(Value::List(Seq::from_vec(items)))
            }
            Callable::Encode => match args.first() {
                Some(Value::Str(s)) => {
                    // latin-1: each char is one byte.
                    let b: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    Ok(Value::Bytes(b.ok_or_else(|| bad(self, "not latin-1"))?))
                }
                _ => Err(bad(self, "text")),
            },
            Callable::TensorType | Callable::Storage(_) => {
                Err(self.malformed(format!("{c:?} is a type tag here, not a callable")))
            }
        }
    }
}
