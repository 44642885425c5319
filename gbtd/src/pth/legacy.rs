//! The legacy `torch.save` stream (`_use_new_zipfile_serialization=False`, and every file before
//! torch 1.6): five pickles one after another (the magic number `0x1950a86a20f9469cfc6c`, the
//! protocol version 1001, a sys-info dict with `little_endian`, the object, the list of storage
//! keys), then for each key in that order an 8-byte element count followed by the storage's raw
//! bytes.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use super::pickle::{self, Limits, Object, PickleError, Value};
use super::tensors::{key_string, storage_dtypes};
use super::{PthError, PthResult};

/// The legacy format's magic number, `0x1950a86a20f9469cfc6c`, little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// An open legacy checkpoint.
pub(super) struct Legacy<R> {
    reader: R,
    /// The pickled object (taken out by [`Legacy::take_object`]).
    object: Option<Object>,
    /// Each storage's (byte offset of its data, element count).
    storages: HashMap<String, (u64, u64)>,
}

impl<R: Read + Seek> Legacy<R> {
    /// Opens the legacy stream of a `file_len`-byte file, with its byte order (`true`:
    /// big-endian): reads the five pickles from a prefix of the file that doubles until they
    /// parse (they precede every storage), then walks the storage headers by seeking past the
    /// data.
    pub(super) fn open(mut r: R, file_len: u64) -> PthResult<(Self, bool)> {
        let io = |source| PthError::Io {
            context: "the checkpoint".into(),
            source,
        };
        let limits = Limits::for_len(usize::try_from(file_len).unwrap_or(usize::MAX));
        let mut prefix: Vec<u8> = Vec::new();
        let mut want: u64 = 1 << 16;
        let (values, mut pos) = loop {
            let target = want.min(file_len);
            let have = prefix.len() as u64;
            if target > have {
                (&mut r)
                    .take(target - have)
                    .read_to_end(&mut prefix)
                    .map_err(io)?;
            }
            match parse_legacy_pickles(&prefix, limits) {
                Ok(v) => break v,
                Err(Some(e)) => return Err(e),
                Err(None) if (prefix.len() as u64) < file_len => want = want.saturating_mul(2),
                Err(None) => {
                    return Err(PthError::NotCheckpoint(
                        "legacy stream: the file ends inside its pickles".into(),
                    ));
                }
            }
        };
        drop(prefix);
        let [magic, proto, sys, object, keys_value] = values;
        if !matches!(magic.get(magic.root()), Value::BigInt(b) if *b == LEGACY_MAGIC) {
            return Err(PthError::NotCheckpoint(
                "the first pickle is not torch's magic number".into(),
            ));
        }
        let proto = proto.get(proto.root());
        if *proto != Value::Int(1001) {
            return Err(PthError::NotCheckpoint(format!(
                "unsupported legacy protocol version {proto:?} (expected 1001)"
            )));
        }
        let big_endian = sys.as_dict(sys.root()).is_some_and(|d| {
            sys.dict_get(d, "little_endian")
                .is_some_and(|v| *sys.get(v) == Value::Bool(false))
        });
        let keys: Vec<String> = keys_value
            .as_seq(keys_value.root())
            .ok_or_else(|| PthError::NotCheckpoint("the storage key list is not a list".into()))?
            .iter()
            .map(|&k| key_string(&keys_value, k))
            .collect::<Option<_>>()
            .ok_or_else(|| PthError::NotCheckpoint("a storage key is not a string".into()))?;
        let dtypes = storage_dtypes(&object)?;
        let mut storages = HashMap::new();
        for key in keys {
            let dtype = *dtypes.get(&key).ok_or_else(|| PthError::BadStorage {
                key: key.clone(),
                what: "listed but no tensor uses it (its element size is unknown)".into(),
            })?;
            let mut raw = [0u8; 8];
            r.seek(SeekFrom::Start(pos)).map_err(io)?;
            if pos.saturating_add(8) > file_len {
                return Err(PthError::BadStorage {
                    key,
                    what: "file ends before its element count".into(),
                });
            }
            r.read_exact(&mut raw).map_err(io)?;
            let numel = if big_endian {
                u64::from_be_bytes(raw)
            } else {
                u64::from_le_bytes(raw)
            };
            pos += 8;
            let left = file_len - pos;
            let nbytes = numel
                .checked_mul(dtype.size() as u64)
                .filter(|&n| n <= left)
                .ok_or_else(|| PthError::BadStorage {
                    key: key.clone(),
                    what: format!(
                        "declares {numel} {} elements but only {left} bytes remain in the file",
                        dtype.name()
                    ),
                })?;
            storages.insert(key, (pos, numel));
            pos += nbytes;
        }
        let legacy = Legacy {
            reader: r,
            object: Some(object),
            storages,
        };
        Ok((legacy, big_endian))
    }

    /// The pickled object, moved out (it is read once per opened file).
    pub(super) fn take_object(&mut self) -> PthResult<Object> {
        self.object
            .take()
            .ok_or_else(|| PthError::NotCheckpoint("the legacy object was already read".into()))
    }

    /// The element count of storage `key`.
    pub(super) fn storage_numel(&self, key: &str) -> PthResult<u64> {
        self.storages
            .get(key)
            .map(|&(_, n)| n)
            .ok_or_else(|| PthError::BadStorage {
                key: key.to_string(),
                what: "not among the file's storages".into(),
            })
    }

    /// The first `needed` bytes of storage `key` (checked against the file by [`Legacy::open`]
    /// and the view check).
    pub(super) fn read_storage(&mut self, key: &str, needed: u64) -> PthResult<Vec<u8>> {
        let (start, _) = self.storages[key];
        let bad = |source: std::io::Error| PthError::BadStorage {
            key: key.to_string(),
            what: format!("cannot be read ({source})"),
        };
        self.reader.seek(SeekFrom::Start(start)).map_err(bad)?;
        // `needed` was checked against the bytes the file holds after `start`.
        let mut buf = vec![0u8; needed as usize];
        self.reader.read_exact(&mut buf).map_err(bad)?;
        Ok(buf)
    }
}

/// The five pickles of a legacy stream and the offset after them; `Err(None)` when `b` ends
/// before they do (read more), `Err(Some(_))` for any other problem.
fn parse_legacy_pickles(b: &[u8], limits: Limits) -> Result<([Object; 5], u64), Option<PthError>> {
    const WHAT: [&str; 5] = [
        "magic number",
        "protocol version",
        "sys info",
        "object",
        "storage keys",
    ];
    let mut pos = 0;
    let mut out: Vec<Object> = Vec::with_capacity(5);
    for what in WHAT {
        match pickle::unpickle(&b[pos..], limits) {
            Ok((v, used)) => {
                out.push(v);
                pos += used;
            }
            Err(PickleError::Truncated { .. } | PickleError::NoStop) => return Err(None),
            Err(e @ PickleError::RefusedGlobal { .. }) => return Err(Some(PthError::Refused(e))),
            Err(e) => {
                return Err(Some(PthError::NotCheckpoint(format!("legacy {what}: {e}"))));
            }
        }
    }
    let arr: [Object; 5] = out.try_into().expect("five pickles");
    Ok((arr, pos as u64))
}
