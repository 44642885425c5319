//! A restricted pickle reader: enough of Python's pickle virtual machine to load what
//! `torch.save` writes for a state dict, and nothing that can run code.
//!
//! Why not a crate: `serde-pickle` has no hook for persistent ids (`PERSID`/`BINPERSID`), which
//! is how `torch.save` refers to tensor storages, and it cannot restrict or report globals;
//! candle's reader lives inside `candle-core` (a heavy tensor library) and `repugnant-pickle` is
//! not published as a maintained crate. The interpreter here is a small, bounded stack machine.
//!
//! Modules: `vm` holds the machine's state (stack, memo, accounting), `opcodes` runs each
//! opcode, `torch` is the allow list of globals, `value` the value model and `keys` the
//! dict keys.
//!
//! Safety model:
//! - `GLOBAL`, `STACK_GLOBAL` and `INST` resolve a `module.name` against a fixed allow list
//!   ([`Callable`]); any other name is refused at once with [`PickleError::RefusedGlobal`]
//!   naming it (e.g. `os.system`, `builtins.eval`). No Python is ever called: the allowed
//!   callables are re-implemented here as pure data constructors.
//! - `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `OBJ`, `INST` and `BUILD` only act on those callables.
//! - Extension-registry opcodes (`EXT1/2/4`) and out-of-band buffers are refused.
//! - Every length is checked against the bytes left before anything is allocated, and the
//!   values built plus the references stored into containers are capped at
//!   [`Limits::max_nodes`], so memory stays linear in the pickle's length.
//!
//! Memo and sharing, as in Python: the result is an [`Object`], an arena of [`Value`]s that
//! refer to each other by [`Id`]. The memo holds ids, so a value fetched with `GET` (or `DUP`)
//! is the very value stored, not a copy: a container filled after it was memoized is seen
//! filled everywhere, and a value used `2^k` times costs nothing more than one use (no "billion
//! laughs"). Objects may share parts and even contain themselves; readers that walk them (the
//! checkpoint reader) bound their walk by [`Limits::max_depth`] and [`Limits::max_nodes`].
//!
//! Dicts keep insertion order and compare keys as Python does, through a hash index, so
//! `SETITEMS` on a dict of a million keys takes linear time (see `keys`).
//!
//! Integers are `i64`; the 10-byte magic number of the legacy torch format is kept as
//! [`Value::BigInt`] (little-endian two's complement bytes, at most 16 of them).

mod keys;
mod opcodes;
mod torch;
mod value;
mod vm;

pub use torch::{Callable, StorageDtype};
pub use value::{Dict, Id, Object, TensorRef, Value};
pub use vm::unpickle;

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

/// Bounds that keep a hostile pickle from exhausting memory, time or the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting a reader of the object follows (containers in containers, tuples in a
    /// dict key).
    pub max_depth: u32,
    /// Most values built plus references stored into containers (a value is a few tens of
    /// bytes); also the most values a reader of the object visits, shared ones counted at
    /// each visit.
    pub max_nodes: u64,
}

impl Limits {
    /// Limits scaled to an input of `len` bytes: nesting 256, and 8 values per byte with a
    /// floor of 2^20 and a ceiling of 2^32 - 1 (every value and reference costs at least one
    /// opcode byte, so real pickles stay far below).
    pub fn for_len(len: usize) -> Self {
        Limits {
            max_depth: 256,
            max_nodes: (len as u64).saturating_mul(8).clamp(1 << 20, u32::MAX as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &[u8]) -> Result<Object, PickleError> {
        unpickle(b, Limits::for_len(b.len())).map(|(v, _)| v)
    }

    fn root(o: &Object) -> &Value {
        o.get(o.root())
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
    fn deep_nesting_is_read_without_recursion() {
        // 100,000 nested lists: the arena is flat, so neither reading nor dropping recurses;
        // readers that walk the object bound their depth themselves.
        let mut p = vec![0x80, 2];
        for _ in 0..100_000 {
            p.extend_from_slice(b"](");
        }
        p.extend(std::iter::repeat_n(b'e', 100_000));
        p.push(b'.');
        let o = run(&p).unwrap();
        assert_eq!(o.len(), 100_000);
    }

    #[test]
    fn a_list_may_contain_itself() {
        // x = []; x.append(x) (Python: x[0] is x). Sharing through the memo, and its bounds,
        // are tested in gbtd/tests/pickle.rs against Python.
        let o = run(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert_eq!(o.as_seq(o.root()).unwrap(), [o.root()]);
    }

    #[test]
    fn dict_keys_compare_as_in_python() {
        // {1: 'a', True: 'b', 1.0: 'c', 'k': 1, 'k': 2} -> Python: {1: 'c', 'k': 2}.
        let p = b"\x80\x02}(K\x01X\x01\x00\x00\x00a\x88X\x01\x00\x00\x00bG?\xf0\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00cX\x01\x00\x00\x00kK\x01X\x01\x00\x00\x00kK\x02u.";
        let o = run(p).unwrap();
        let d = o.as_dict(o.root()).unwrap();
        let items: Vec<(&Value, &Value)> = d.items().iter().map(|&(k, v)| (o.get(k), o.get(v))).collect();
        assert_eq!(
            items,
            [
                (&Value::Int(1), &Value::Str("c".into())),
                (&Value::Str("k".into()), &Value::Int(2))
            ]
        );
        assert_eq!(o.dict_get(d, "k").and_then(|v| o.as_int(v)), Some(2));
        assert_eq!(o.dict_get(d, "missing"), None);
        // A list as a key is unhashable, as in Python.
        let e = run(b"\x80\x02}]K\x01s.").unwrap_err();
        assert!(e.to_string().contains("unhashable"), "{e}");
        // Tuple keys compare by their items.
        let p = b"\x80\x02}(K\x01K\x02\x86K\x03K\x01K\x02\x86K\x04u.";
        let o = run(p).unwrap();
        assert_eq!(o.as_dict(o.root()).unwrap().items().len(), 1);
    }

    #[test]
    fn big_ints_and_basic_values() {
        // The legacy torch magic number 0x1950a86a20f9469cfc6c as LONG1.
        let p = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(
            root(&run(p).unwrap()),
            &Value::BigInt(vec![0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19])
        );
        assert_eq!(root(&run(b"\x80\x02\x8a\x01\xff.").unwrap()), &Value::Int(-1));
        assert_eq!(root(&run(b"I42\n.").unwrap()), &Value::Int(42));
        assert!(matches!(
            run(b"\x80\x02X\xff\xff\xff\xff"),
            Err(PickleError::Truncated { .. })
        ));
    }

    #[test]
    fn references_count_against_the_limit() {
        // One list appended to itself a million times through DUP costs a reference each.
        let mut p = vec![0x80, 2, b']'];
        for _ in 0..300_000 {
            p.extend_from_slice(b"2a");
        }
        p.push(b'.');
        let limits = Limits {
            max_depth: 256,
            max_nodes: 100_000,
        };
        let e = unpickle(&p, limits).unwrap_err();
        assert!(
            matches!(
                e,
                PickleError::Limit {
                    what: "values built",
                    ..
                }
            ),
            "{e}"
        );
    }
}
