//! The opcodes of pickle protocols 0 to 5, run on a [`Machine`]. Names follow Python's
//! `pickletools`.

use super::PickleError;
use super::torch::Callable;
use super::value::{Object, Value};
use super::vm::Machine;

impl Machine<'_> {
    pub(super) fn run(mut self) -> Result<(Object, usize), PickleError> {
        while self.more() {
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
                    self.array::<8>()?;
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(self.finish(root));
                }
                b'(' => self.push_mark(),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.push_id(top)?
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        let n = i32::from_le_bytes(self.array()?);
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
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u32::from_le_bytes(self.array()?) as u64,
                        0x8c => self.u8()? as u64,
                        _ => u64::from_le_bytes(self.array()?),
                    };
                    let b = self.take(n)?;
                    let s =
                        std::str::from_utf8(b).map_err(|_| self.malformed("a string is not valid UTF-8"))?;
                    self.push(Value::Str(s.to_string()))?
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
                        let n = i32::from_le_bytes(self.array()?);
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
                        b'B' => u32::from_le_bytes(self.array()?) as u64,
                        b'C' => self.u8()? as u64,
                        _ => u64::from_le_bytes(self.array()?),
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b'}' => self.push(Value::Dict(Box::default()))?,
                0x8f => self.push(Value::List(Vec::new()))?, // EMPTY_SET, kept as a list
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?
                }
                0x85..=0x87 => {
                    // TUPLE1/2/3
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?
                }
                b'l' | 0x91 => {
                    // LIST, FROZENSET (kept as a list)
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Box::default()))?;
                    let dict = self.top()?;
                    self.set_items(dict, items)?
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
                    let dict = self.top()?;
                    self.set_items(dict, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?;
                    self.set_items(dict, items)?
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
                    let k = u32::from_le_bytes(self.array()?) as u64;
                    self.memo_get(k)?
                }
                b'p' => {
                    let line = self.line()?;
                    let k = line.parse().map_err(|_| self.malformed("bad PUT argument"))?;
                    self.memo_put(Some(k))?
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(Some(k))?
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.array()?) as u64;
                    self.memo_put(Some(k))?
                }
                0x94 => self.memo_put(None)?, // MEMOIZE
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let c = Callable::resolve(module, name)?;
                    self.push(Value::Global(c))?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let c = match (self.obj.as_str(module), self.obj.as_str(name)) {
                        (Some(m), Some(n)) => Callable::resolve(m, n)?,
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    };
                    self.push(Value::Global(c))?
                }
                b'i' => {
                    // INST
                    let module = self.line()?;
                    let name = self.line()?;
                    let c = Callable::resolve(module, name)?;
                    let args = self.pop_mark()?;
                    let v = self.call(&c, args)?;
                    self.push_id(v)?
                }
                b'o' => {
                    // OBJ
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let v = self.call_value(cls, items)?;
                    self.push_id(v)?
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: callable(*args)
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let args = match self.obj.get(args) {
                        Value::Tuple(_) => self.seq_items(args)?.unwrap_or_default(),
                        other => {
                            let k = other.kind();
                            return Err(self.malformed(format!("call arguments must be a tuple, not {k}")));
                        }
                    };
                    let v = self.call_value(f, args)?;
                    self.push_id(v)?
                }
                0x92 => {
                    // NEWOBJ_EX: cls, args, kwargs (kwargs must be empty)
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let no_kwargs = self.obj.as_dict(kwargs).is_some_and(|d| d.items().is_empty());
                    let args = match self.obj.get(args) {
                        Value::Tuple(_) if no_kwargs => self.seq_items(args)?.unwrap_or_default(),
                        _ => return Err(self.malformed("unsupported NEWOBJ_EX arguments")),
                    };
                    let v = self.call_value(f, args)?;
                    self.push_id(v)?
                }
                b'b' => {
                    // BUILD: obj.__setstate__(state). OrderedDict (a state dict's `_metadata`)
                    // and tensors carry attributes that a state dict does not need: dropped.
                    self.pop()?;
                    let target = self.top()?;
                    match self.obj.get(target) {
                        Value::Dict(_) | Value::Tensor(_) | Value::List(_) => {}
                        other => {
                            let k = other.kind();
                            return Err(self.malformed(format!("BUILD on a {k} is not allowed")));
                        }
                    }
                }
                b'P' => {
                    // PERSID
                    let line = self.line()?.to_string();
                    let pid = self.alloc(Value::Str(line))?;
                    self.push(Value::Persistent(pid))?
                }
                b'Q' => {
                    // BINPERSID
                    let pid = self.pop()?;
                    self.push(Value::Persistent(pid))?
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
