//! A restricted pickle reader: enough of Python's pickle virtual machine to load what
//! `torch.save` writes for a state dict, and nothing that can run code.
//!
//! Why not a crate: `serde-pickle` has no hook for persistent ids (`PERSID`/`BINPERSID`), which
//! is how `torch.save` refers to tensor storages, and it cannot restrict or report globals;
//! candle's reader lives inside `candle-core` (a heavy tensor library) and `repugnant-pickle` is
//! not published as a maintained crate. The interpreter below is a small, bounded stack machine.
//!
//! Safety model:
//! - `GLOBAL`, `STACK_GLOBAL` and `INST` resolve a `module.name` against a fixed allow list
//!   ([`Callable`]); any other name is refused at once with [`PickleError::RefusedGlobal`]
//!   naming it (e.g. `os.system`, `builtins.eval`). No Python is ever called: the allowed
//!   callables are re-implemented here as pure data constructors.
//! - `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `OBJ`, `INST` and `BUILD` only act on those callables.
//! - Extension-registry opcodes (`EXT1/2/4`) and out-of-band buffers are refused.
//! - Every length is checked against the bytes left before anything is allocated; values carry
//!   their nesting depth and node count, so nesting is capped at [`Limits::max_depth`] (which
//!   also bounds the recursion of `Drop`) and the total number of nodes built, copies from the
//!   memo included, is capped at [`Limits::max_nodes`] (no "billion laughs").
//!
//! The memo holds copies, not shared references: a container stored with `BINPUT` and filled
//! afterwards is fetched back as it was when stored. `torch.save` only fetches immutable values
//! (strings, globals, storage ids, shape tuples) from the memo, so state dicts are unaffected.
//!
//! Integers are `i64`; the 10-byte magic number of the legacy torch format is kept as
//! [`Value::BigInt`] (little-endian two's complement bytes, at most 16 of them).

use std::collections::HashMap;

use crate::error::one_line;

/// Errors of the restricted unpickler; each message is one line.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PickleError {
    /// A global outside the allow list; nothing was called.
    #[error(
        "refused pickle global `{}.{}` (only state-dict types are allowed; this file may try to run code)",
        one_line(.module),
        one_line(.name)
    )]
    RefusedGlobal { module: String, name: String },
    #[error("pickle data truncated at byte {offset} (needed {needed} more bytes)")]
    Truncated { offset: usize, needed: u64 },
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnknownOpcode { opcode: u8, offset: usize },
    #[error("malformed pickle at byte {offset}: {}", one_line(.what))]
    Malformed { offset: usize, what: String },
    #[error("pickle exceeds the reader's limit on {what} ({limit}) at byte {offset}")]
    Limit {
        offset: usize,
        what: &'static str,
        limit: u64,
    },
    #[error("pickle ended without a STOP opcode")]
    NoStop,
}

/// Bounds that keep a hostile pickle from exhausting memory or the stack (a node is one value,
/// a few tens of bytes).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of containers (lists in lists ...).
    pub max_depth: u32,
    /// Most value nodes built in total, copies from the memo and `DUP` included.
    pub max_nodes: u64,
}

impl Limits {
    /// Limits scaled to an input of `len` bytes: nesting 256, and 8 nodes per byte with a
    /// floor of 2^20 (a node is created by at least one opcode byte except through the memo).
    pub fn for_len(len: usize) -> Self {
        Limits {
            max_depth: 256,
            max_nodes: (len as u64).saturating_mul(8).max(1 << 20),
        }
    }
}

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
    depth: u32,
    nodes: u64,
}

/// A dict's items in insertion order, with nesting depth and node count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    pub items: Vec<(Value, Value)>,
    depth: u32,
    nodes: u64,
}

impl Seq {
    fn from_vec(items: Vec<Value>) -> Seq {
        let mut s = Seq::default();
        for v in items {
            s.push(v);
        }
        s
    }
    fn push(&mut self, v: Value) {
        self.depth = self.depth.max(v.depth());
        self.nodes += v.nodes();
        self.items.push(v);
    }
}

impl Map {
    fn insert(&mut self, k: Value, v: Value) {
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

    fn kind(&self) -> &'static str {
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

/// A stack slot: a value or a `MARK`.
enum Slot {
    Mark,
    Val(Value),
}

/// Unpickles one object from the start of `data`.
///
/// Returns the object and the number of bytes consumed (up to and including `STOP`), so that
/// several pickles written one after another (the legacy torch format) can be read in turn.
pub fn unpickle(data: &[u8], limits: Limits) -> Result<(Value, usize), PickleError> {
    Machine {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
        limits,
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u64, Value>,
    nodes: u64,
    limits: Limits,
}

impl<'a> Machine<'a> {
    fn malformed(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.op_pos,
            what: what.into(),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(PickleError::Truncated {
                offset: self.pos,
                needed: n - left,
            });
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// A newline-terminated line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated {
                offset: self.pos,
                needed: 1,
            })?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| self.malformed("a text argument is not UTF-8"))
    }

    fn utf8(&self, b: &[u8]) -> Result<String, PickleError> {
        String::from_utf8(b.to_vec()).map_err(|_| self.malformed("a string is not valid UTF-8"))
    }

    /// Accounts for `v` against the node and depth limits.
    fn check(&mut self, v: &Value) -> Result<(), PickleError> {
        self.nodes = self.nodes.saturating_add(v.nodes());
        if self.nodes > self.limits.max_nodes {
            return Err(PickleError::Limit {
                offset: self.op_pos,
                what: "values built",
                limit: self.limits.max_nodes,
            });
        }
        if v.depth() > self.limits.max_depth {
            return Err(PickleError::Limit {
                offset: self.op_pos,
                what: "nesting depth",
                limit: self.limits.max_depth as u64,
            });
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        // A fresh scalar or container costs one node; copies are charged in full by the callers.
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(PickleError::Limit {
                offset: self.op_pos,
                what: "values built",
                limit: self.limits.max_nodes,
            });
        }
        if v.depth() > self.limits.max_depth {
            return Err(PickleError::Limit {
                offset: self.op_pos,
                what: "nesting depth",
                limit: self.limits.max_depth as u64,
            });
        }
        self.stack.push(Slot::Val(v));
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Slot::Val(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.malformed("unexpected MARK on the stack")),
            None => Err(self.malformed("stack underflow")),
        }
    }

    fn top_mut(&mut self) -> Result<&mut Value, PickleError> {
        let off = self.op_pos;
        match self.stack.last_mut() {
            Some(Slot::Val(v)) => Ok(v),
            _ => Err(PickleError::Malformed {
                offset: off,
                what: "stack underflow".into(),
            }),
        }
    }

    /// Pops everything down to the topmost MARK (which is removed too).
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let at = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| self.malformed("no MARK on the stack"))?;
        let items = self
            .stack
            .split_off(at + 1)
            .into_iter()
            .map(|s| match s {
                Slot::Val(v) => v,
                Slot::Mark => unreachable!("rposition found the topmost mark"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo key {key} was never stored")))?;
        self.check(&v)?;
        self.stack.push(Slot::Val(v));
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let v = match self.stack.last() {
            Some(Slot::Val(v)) => v.clone(),
            _ => return Err(self.malformed("memo store with an empty stack")),
        };
        self.check(&v)?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        let c = Callable::resolve(module, name)?;
        self.push(Value::Global(c))
    }

    fn run(mut self) -> Result<(Value, usize), PickleError> {
        while self.pos < self.data.len() {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.malformed(format!("pickle protocol {p} is unknown")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok((v, self.pos));
                }
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = match self.stack.last() {
                        Some(Slot::Val(v)) => v.clone(),
                        _ => return Err(self.malformed("DUP with an empty stack")),
                    };
                    self.check(&v)?;
                    self.stack.push(Slot::Val(v));
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        let n = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                        if n < 0 {
                            return Err(self.malformed("negative LONG4 length"));
                        }
                        n as u64
                    };
                    let bytes = self.take(n)?;
                    let v = long_value(bytes)
                        .ok_or_else(|| self.malformed(format!("an integer of {n} bytes is too large")))?;
                    self.push(v)?
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let t = line.trim_end_matches('L');
                    let v = match t {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            t.parse()
                                .map_err(|_| self.malformed(format!("bad integer literal {line:?}")))?,
                        ),
                    };
                    self.push(v)?
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line
                        .parse()
                        .map_err(|_| self.malformed(format!("bad float literal {line:?}")))?;
                    self.push(Value::Float(v))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s))?
                }
                b'V' => {
                    // Protocol 0 unicode: raw-unicode-escape; accepted when plain UTF-8 without escapes.
                    let line = self.line()?;
                    if line.contains('\\') {
                        return Err(self.malformed("escaped protocol-0 unicode is not supported"));
                    }
                    self.push(Value::Str(line.to_string()))?
                }
                b'S' => {
                    let line = self.line()?.trim();
                    let inner = line
                        .strip_prefix('\'')
                        .and_then(|l| l.strip_suffix('\''))
                        .or_else(|| line.strip_prefix('"').and_then(|l| l.strip_suffix('"')))
                        .ok_or_else(|| self.malformed("STRING argument is not quoted"))?;
                    if inner.contains('\\') {
                        return Err(self.malformed("escaped protocol-0 strings are not supported"));
                    }
                    self.push(Value::Str(inner.to_string()))?
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                        if n < 0 {
                            return Err(self.malformed("negative BINSTRING length"));
                        }
                        n as u64
                    } else {
                        self.u8()? as u64
                    };
                    let b = self.take(n)?;
                    // Python 2 str: decoded as text when it is UTF-8 (torch's legacy files), else bytes.
                    let v = match std::str::from_utf8(b) {
                        Ok(s) => Value::Str(s.to_string()),
                        Err(_) => Value::Bytes(b.to_vec()),
                    };
                    self.push(v)?
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b')' => self.push(Value::Tuple(Seq::default()))?,
                b']' => self.push(Value::List(Seq::default()))?,
                b'}' => self.push(Value::Dict(Map::default()))?,
                0x8f => self.push(Value::List(Seq::default()))?, // EMPTY_SET, kept as a list
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Seq::from_vec(items)))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Seq::from_vec(items)))?
                }
                b'l' | 0x91 => {
                    // LIST, FROZENSET (kept as a list)
                    let items = self.pop_mark()?;
                    self.push(Value::List(Seq::from_vec(items)))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut m = Map::default();
                    set_items(&mut m, items).map_err(|w| self.malformed(w))?;
                    self.push(Value::Dict(m))?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' | 0x90 => {
                    // APPENDS, ADDITEMS
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'g' => {
                    let line = self.line()?;
                    let k = line.parse().map_err(|_| self.malformed("bad GET argument"))?;
                    self.memo_get(k)?
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?
                }
                b'p' => {
                    let line = self.line()?;
                    let k = line.parse().map_err(|_| self.malformed("bad PUT argument"))?;
                    self.memo_put(k)?
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    }
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let c = Callable::resolve(module, name)?;
                    let args = self.pop_mark()?;
                    let v = self.call(&c, args)?;
                    self.push(v)?
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let v = self.call_value(cls, items)?;
                    self.push(v)?
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: callable(*args)
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let args = match args {
                        Value::Tuple(s) => s.items,
                        other => {
                            return Err(self
                                .malformed(format!("call arguments must be a tuple, not {}", other.kind())));
                        }
                    };
                    let v = self.call_value(f, args)?;
                    self.push(v)?
                }
                0x92 => {
                    // NEWOBJ_EX: cls, args, kwargs
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let nonempty = match &kwargs {
                        Value::Dict(m) => !m.items.is_empty(),
                        _ => true,
                    };
                    let args = match args {
                        Value::Tuple(s) if !nonempty => s.items,
                        _ => return Err(self.malformed("unsupported NEWOBJ_EX arguments")),
                    };
                    let v = self.call_value(f, args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: obj.__setstate__(state). OrderedDict (a state dict's `_metadata`)
                    // and tensors carry attributes that a state dict does not need: dropped.
                    let _state = self.pop()?;
                    match self.top_mut()? {
                        Value::Dict(_) | Value::Tensor(_) | Value::List(_) => {}
                        other => {
                            let k = other.kind();
                            return Err(self.malformed(format!("BUILD on a {k} is not allowed")));
                        }
                    }
                }
                b'P' => {
                    let line = self.line()?.to_string();
                    self.push(Value::Persistent(Box::new(Value::Str(line))))?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(Box::new(pid)))?
                }
                0x82..=0x84 => {
                    return Err(self.malformed("extension-registry opcodes (EXT1/2/4) are refused"));
                }
                0x97 | 0x98 => {
                    return Err(self.malformed("out-of-band buffers are not supported"));
                }
                _ => {
                    return Err(PickleError::UnknownOpcode {
                        opcode: op,
                        offset: self.op_pos,
                    });
                }
            }
        }
        Err(PickleError::NoStop)
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let max_depth = self.limits.max_depth;
        let off = self.op_pos;
        match self.top_mut()? {
            Value::List(s) => {
                for v in items {
                    s.push(v);
                }
                if s.depth + 1 > max_depth {
                    return Err(PickleError::Limit {
                        offset: off,
                        what: "nesting depth",
                        limit: max_depth as u64,
                    });
                }
                Ok(())
            }
            other => {
                let k = other.kind();
                Err(self.malformed(format!("APPEND to a {k}")))
            }
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let max_depth = self.limits.max_depth;
        let off = self.op_pos;
        match self.top_mut()? {
            Value::Dict(m) => {
                set_items(m, items).map_err(|w| PickleError::Malformed { offset: off, what: w })?;
                if m.depth + 1 > max_depth {
                    return Err(PickleError::Limit {
                        offset: off,
                        what: "nesting depth",
                        limit: max_depth as u64,
                    });
                }
                Ok(())
            }
            other => {
                let k = other.kind();
                Err(self.malformed(format!("SETITEM on a {k}")))
            }
        }
    }

    fn call_value(&mut self, f: Value, args: Vec<Value>) -> Result<Value, PickleError> {
        match f {
            Value::Global(c) => self.call(&c, args),
            other => Err(self.malformed(format!("call of a {} (not an allowed global)", other.kind()))),
        }
    }

    /// Runs one allowed constructor on its positional arguments.
    fn call(&mut self, c: &Callable, mut args: Vec<Value>) -> Result<Value, PickleError> {
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

fn set_items(m: &mut Map, items: Vec<Value>) -> Result<(), String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(k, v);
    }
    Ok(())
}

fn take_seq(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::List(s) | Value::Tuple(s) => Some(s.items),
        _ => None,
    }
}

fn int_seq(v: &Value) -> Option<Vec<i64>> {
    v.as_seq()?.iter().map(Value::as_int).collect()
}

/// Decodes a little-endian two's complement integer (LONG1/LONG4 payload).
fn long_value(b: &[u8]) -> Option<Value> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &[u8]) -> Result<Value, PickleError> {
        unpickle(b, Limits::for_len(b.len())).map(|(v, _)| v)
    }

    #[test]
    fn refuses_os_system_by_name() {
        // pickle.dumps of a class whose __reduce__ returns (os.system, ("touch x",)), protocol 2.
        let p = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00touch xq\x01\x85q\x02Rq\x03.";
        let e = run(p).unwrap_err();
        assert_eq!(
            e,
            PickleError::RefusedGlobal {
                module: "posix".into(),
                name: "system".into()
            }
        );
        let p4 = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(run(p4).unwrap_err().to_string().contains("builtins.eval"));
    }

    #[test]
    fn nested_lists_hit_the_depth_limit() {
        let mut p = vec![0x80, 2];
        for _ in 0..100_000 {
            p.extend_from_slice(b"](");
        }
        p.extend(std::iter::repeat_n(b'e', 100_000));
        p.push(b'.');
        let e = run(&p).unwrap_err();
        assert!(
            matches!(
                e,
                PickleError::Limit {
                    what: "nesting depth",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn memo_doubling_hits_the_node_limit() {
        // x = [..]; repeat: x = [x, x] through the memo -> 2^k nodes from O(k) bytes.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            p.extend_from_slice(b"(h\x00h\x00lq\x00");
        }
        p.push(b'.');
        let e = run(&p).unwrap_err();
        assert!(matches!(e, PickleError::Limit { .. }), "{e}");
    }

    #[test]
    fn big_ints_and_basic_values() {
        // The legacy torch magic number 0x1950a86a20f9469cfc6c as LONG1.
        let p = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(
            run(p).unwrap(),
            Value::BigInt(vec![0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19])
        );
        assert_eq!(run(b"\x80\x02\x8a\x01\xff.").unwrap(), Value::Int(-1));
        assert_eq!(run(b"I42\n.").unwrap(), Value::Int(42));
        assert!(matches!(
            run(b"\x80\x02X\xff\xff\xff\xff"),
            Err(PickleError::Truncated { .. })
        ));
    }
}
