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

mod torch;
mod value;
mod vm;

pub use torch::{Callable, StorageDtype};
pub use value::{Map, Seq, TensorRef, Value};
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
