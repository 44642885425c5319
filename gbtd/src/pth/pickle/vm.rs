//! The pickle virtual machine's state: the input, the stack of [`Id`]s, the memo, and the
//! accounting of everything built against [`Limits`]. The opcodes are in [`super::opcodes`],
//! the calls of allowed globals in [`super::torch`].

use std::collections::HashMap;

use super::value::{Id, Object, Value};
use super::{Limits, PickleError};

/// A stack slot: a value or a `MARK`.
enum Slot {
    Mark,
    Val(Id),
}

/// Unpickles one object from the start of `data`.
///
/// Returns the object and the number of bytes consumed (up to and including `STOP`), so that
/// several pickles written one after another (the legacy torch format) can be read in turn.
pub fn unpickle(data: &[u8], limits: Limits) -> Result<(Object, usize), PickleError> {
    Machine {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        built: 0,
        obj: Object::new(limits),
    }
    .run()
}

pub(super) struct Machine<'a> {
    data: &'a [u8],
    /// Position of the next byte to read.
    pub(super) pos: usize,
    /// Position of the opcode being run (for messages).
    pub(super) op_pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u64, Id>,
    /// Values built and references stored into containers so far.
    built: u64,
    pub(super) obj: Object,
}

impl<'a> Machine<'a> {
    pub(super) fn malformed(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.op_pos,
            what: what.into(),
        }
    }

    /// Whether input is left.
    pub(super) fn more(&self) -> bool {
        self.pos < self.data.len()
    }

    pub(super) fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
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

    /// The next `N` bytes.
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N as u64)?.try_into().expect("take returns N bytes"))
    }

    pub(super) fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    /// A newline-terminated line (protocol 0 arguments), without the newline.
    pub(super) fn line(&mut self) -> Result<&'a str, PickleError> {
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

    /// Counts `n` more values or references against [`Limits::max_nodes`].
    pub(super) fn charge(&mut self, n: u64) -> Result<(), PickleError> {
        self.built = self.built.saturating_add(n);
        if self.built > self.obj.limits().max_nodes {
            return Err(PickleError::Limit {
                offset: self.op_pos,
                what: "values built",
                limit: self.obj.limits().max_nodes,
            });
        }
        Ok(())
    }

    /// Adds a value to the object, counting it and the references it holds.
    pub(super) fn alloc(&mut self, v: Value) -> Result<Id, PickleError> {
        let refs = match &v {
            Value::List(s) | Value::Tuple(s) => s.len() as u64,
            Value::Dict(d) => 2 * d.items().len() as u64,
            Value::Str(s) => s.len() as u64 / 64,
            Value::Bytes(b) | Value::BigInt(b) => b.len() as u64 / 64,
            _ => 0,
        };
        self.charge(1 + refs)?;
        Ok(self.obj.alloc(v))
    }

    /// Builds a value and pushes it.
    pub(super) fn push(&mut self, v: Value) -> Result<(), PickleError> {
        let id = self.alloc(v)?;
        self.stack.push(Slot::Val(id));
        Ok(())
    }

    /// Pushes a reference to an existing value (`DUP`, memo `GET`): no copy.
    pub(super) fn push_id(&mut self, id: Id) -> Result<(), PickleError> {
        self.charge(1)?;
        self.stack.push(Slot::Val(id));
        Ok(())
    }

    pub(super) fn push_mark(&mut self) {
        self.stack.push(Slot::Mark);
    }

    pub(super) fn pop(&mut self) -> Result<Id, PickleError> {
        match self.stack.pop() {
            Some(Slot::Val(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.malformed("unexpected MARK on the stack")),
            None => Err(self.malformed("stack underflow")),
        }
    }

    /// The value on top of the stack, left there.
    pub(super) fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(Slot::Val(v)) => Ok(*v),
            Some(Slot::Mark) => Err(self.malformed("unexpected MARK on the stack")),
            None => Err(self.malformed("stack underflow")),
        }
    }

    /// Pops everything down to the topmost MARK (which is removed too).
    pub(super) fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let at = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| self.malformed("no MARK on the stack"))?;
        let items = self
            .stack
            .drain(at + 1..)
            .map(|s| match s {
                Slot::Val(v) => v,
                Slot::Mark => unreachable!("rposition found the topmost mark"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    /// Memo `GET`: pushes the memoized value itself, as Python does.
    pub(super) fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.malformed(format!("memo key {key} was never stored")))?;
        self.push_id(id)
    }

    /// Memo `PUT`/`MEMOIZE`: remembers the value on top of the stack (not a copy of it).
    pub(super) fn memo_put(&mut self, key: Option<u64>) -> Result<(), PickleError> {
        let id = self.top()?;
        let key = key.unwrap_or(self.memo.len() as u64);
        self.charge(1)?;
        self.memo.insert(key, id);
        Ok(())
    }

    /// The items of the list or tuple `id` (a copy of the references, counted).
    pub(super) fn seq_items(&mut self, id: Id) -> Result<Option<Vec<Id>>, PickleError> {
        let Some(items) = self.obj.as_seq(id) else {
            return Ok(None);
        };
        let items = items.to_vec();
        self.charge(items.len() as u64)?;
        Ok(Some(items))
    }

    /// `APPEND`/`APPENDS`: extends the list on top of the stack.
    pub(super) fn append(&mut self, items: Vec<Id>) -> Result<(), PickleError> {
        self.charge(items.len() as u64)?;
        let target = self.top()?;
        match self.obj.get_mut(target) {
            Value::List(s) => {
                s.extend(items);
                Ok(())
            }
            other => {
                let k = other.kind();
                Err(self.malformed(format!("APPEND to a {k}")))
            }
        }
    }

    /// `SETITEM`/`SETITEMS`: sets `items` (keys and values alternating) in the dict `dict`.
    pub(super) fn set_items(&mut self, dict: Id, items: Vec<Id>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of items for a dict"));
        }
        self.charge(items.len() as u64)?;
        let offset = self.op_pos;
        for pair in items.chunks_exact(2) {
            self.obj
                .dict_set(dict, pair[0], pair[1])
                .map_err(|what| PickleError::Malformed { offset, what })?;
        }
        Ok(())
    }

    /// Ends the run: the object with `root` as its root, and the bytes consumed.
    pub(super) fn finish(mut self, root: Id) -> (Object, usize) {
        self.obj.set_root(root);
        (self.obj, self.pos)
    }
}
