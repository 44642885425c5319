//! The pickle virtual machine: a bounded stack machine over the opcodes of protocols 0 to 5.

use std::collections::HashMap;

use super::torch::Callable;
use super::value::{Map, Seq, Value, long_value, set_items};
use super::{Limits, PickleError};

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

pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u64, Value>,
    nodes: u64,
    limits: Limits,
}

impl<'a> Machine<'a> {
    pub(super) fn malformed(&self, what: impl Into<String>) -> PickleError {
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
}
