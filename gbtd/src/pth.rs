//! PyTorch checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt` written by `torch.save`) read as named
//! tensors, without running any of the pickled code (see [`crate::pickle`]).
//!
//! Both container formats are read:
//! - **zip** (torch ≥ 1.6): `PREFIX/data.pkl` holds the pickled object, `PREFIX/data/KEY` the raw
//!   bytes of each storage, `PREFIX/byteorder` the byte order (little when absent); `PREFIX` is
//!   whatever directory the archive uses (torch writes the file's stem).
//! - **legacy** (`_use_new_zipfile_serialization=False`, and every file before torch 1.6): five
//!   pickles one after another (the magic number `0x1950a86a20f9469cfc6c`, the protocol version
//!   1001, a sys-info dict with `little_endian`, the object, the list of storage keys), then for
//!   each key in that order an 8-byte element count followed by the storage's raw bytes.
//!
//! In both, a tensor is `_rebuild_tensor_v2(storage, offset, size, stride, ...)` whose storage is
//! the persistent id `("storage", torch.<T>Storage, key, location, numel[, view])`. Tensors are
//! materialised as contiguous row-major arrays (views with an offset or non-contiguous strides
//! are gathered), in their original dtype ([`PthData`]); [`PthTensor::to_f32`] and
//! [`PthTensor::to_f64`] convert.
//!
//! Which tensors are returned, and under which names:
//! - Names are the dotted paths of the tensors in the pickled object (dict keys, list indices).
//! - A bare state dict (a dict with tensor values) is returned as is.
//! - Otherwise, when the top-level dict has a `state_dict`, `model_state_dict`, `model_state` or
//!   `model` entry that holds tensors (Lightning, timm, torchvision training scripts), only that
//!   entry's tensors are returned, named relative to it; tensors elsewhere (optimizer moments,
//!   EMA copies) are not decoded and are listed by path in [`Checkpoint::ignored`], since they
//!   are not the model's weights (an optimizer's `exp_avg` of a conv has the conv's shape).
//! - Without such an entry every tensor is returned under its full path.
//! - When every returned name starts with `module.` (a model saved through
//!   `DistributedDataParallel`/`DataParallel`), that prefix is stripped and recorded in
//!   [`Checkpoint::stripped_prefix`].
//!
//! Integer and bool buffers (`num_batches_tracked` ...) are returned with their dtype; deciding
//! what to decompose is the caller's job.
//!
//! Limits: nothing is allocated from a size the file declares before the bytes are known to be
//! there (storage sizes are checked against the bytes present, every product is checked for
//! overflow), and a view may not materialise more than `max(storage elements, 2^20)` elements.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use crate::error::one_line;
use crate::pickle::{self, Limits, PickleError, StorageDtype, TensorRef, Value};

/// Element type of a checkpoint tensor (torch's dtype).
pub type DType = StorageDtype;

/// Which `torch.save` container a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthFormat {
    /// torch ≥ 1.6 zip archive.
    Zip,
    /// `_use_new_zipfile_serialization=False` / pre-1.6 stream.
    Legacy,
}

/// Errors reading a checkpoint; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("cannot read {}: {source}", one_line(.context))]
    Io { context: String, source: std::io::Error },
    #[error(
        "{0}; if this checkpoint is trusted, re-save its weights with `torch.save(model.state_dict(), PATH)` or as safetensors"
    )]
    Refused(PickleError),
    #[error("bad pickle in the checkpoint: {0}")]
    Pickle(PickleError),
    #[error("not a PyTorch checkpoint: {}", one_line(.0))]
    NotCheckpoint(String),
    #[error("bad zip checkpoint: {}", one_line(.0))]
    Zip(String),
    #[error("storage `{}`: {}", one_line(.key), one_line(.what))]
    BadStorage { key: String, what: String },
    #[error("no tensor named `{}` in the checkpoint; it holds: {}", one_line(.name), one_line(.available))]
    NoSuchTensor { name: String, available: String },
    #[error("the checkpoint holds {count} tensors, name the one to use; it holds: {}", one_line(.available))]
    NameRequired { count: usize, available: String },
    #[error("tensor `{}`: {}", one_line(.name), one_line(.what))]
    BadTensor { name: String, what: String },
}

impl From<PickleError> for PthError {
    fn from(e: PickleError) -> Self {
        match e {
            PickleError::RefusedGlobal { .. } => PthError::Refused(e),
            _ => PthError::Pickle(e),
        }
    }
}

/// Result alias of this module.
pub type PthResult<T> = std::result::Result<T, PthError>;

/// A tensor's name, dtype and shape, without its data.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Contiguous row-major data in the tensor's own dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum PthData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I16(Vec<i16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// One named tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: PthData,
}

/// What [`list`] finds: the tensors that [`read`] would return, without their data.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub format: PthFormat,
    pub tensors: Vec<TensorInfo>,
    /// The wrapper key the tensors were taken from (`state_dict`, `model` ...), if any.
    pub wrapper: Option<String>,
    /// `module.` when a DataParallel prefix was stripped from every name.
    pub stripped_prefix: Option<String>,
    /// Paths of tensors outside the chosen state dict (optimizer state ...), not decoded.
    pub ignored: Vec<String>,
}

/// A decoded checkpoint: the model's tensors plus how they were found (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub format: PthFormat,
    pub tensors: Vec<PthTensor>,
    pub wrapper: Option<String>,
    pub stripped_prefix: Option<String>,
    pub ignored: Vec<String>,
}

impl PthTensor {
    /// The tensor as an `f32` array (integers and bools converted with `as`; bool → 0/1).
    pub fn to_f32(&self) -> ArrayD<f32> {
        let v: Vec<f32> = match &self.data {
            PthData::F32(d) => d.clone(),
            PthData::F64(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::F16(d) => d.iter().map(|x| x.to_f32()).collect(),
            PthData::BF16(d) => d.iter().map(|x| x.to_f32()).collect(),
            PthData::I64(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::I32(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::I16(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::I8(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::U8(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::Bool(d) => d.iter().map(|&x| x as u8 as f32).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).expect("shape and data length agree")
    }

    /// The tensor as an `f64` array (exact for every dtype except `int64` beyond 2^53).
    pub fn to_f64(&self) -> ArrayD<f64> {
        let v: Vec<f64> = match &self.data {
            PthData::F32(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::F64(d) => d.clone(),
            PthData::F16(d) => d.iter().map(|x| x.to_f64()).collect(),
            PthData::BF16(d) => d.iter().map(|x| x.to_f64()).collect(),
            PthData::I64(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::I32(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::I16(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::I8(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::U8(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::Bool(d) => d.iter().map(|&x| x as u8 as f64).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).expect("shape and data length agree")
    }

    /// Whether the dtype is a floating-point one (the tensors worth decomposing).
    pub fn is_float(&self) -> bool {
        is_float(self.dtype)
    }
}

/// Whether `d` is a floating-point dtype.
pub fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// Whether `path` has a checkpoint extension (`.pth`, `.pt`, `.bin`, `.ckpt`, any case).
pub fn has_checkpoint_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "pth" | "pt" | "bin" | "ckpt"))
        .unwrap_or(false)
}

/// Reads every model tensor of the checkpoint at `path`.
pub fn read(path: &Path) -> PthResult<Checkpoint> {
    read_from(open(path)?)
}

/// Lists the model tensors of the checkpoint at `path` without reading their data: only the
/// pickled object is read (and, for the legacy format, each storage's 8-byte size header);
/// every view is still checked against its storage's size.
pub fn list(path: &Path) -> PthResult<Listing> {
    list_from(open(path)?)
}

fn open(path: &Path) -> PthResult<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| PthError::Io {
            context: path.display().to_string(),
            source,
        })
}

/// [`read`] from any seekable reader (a file, or a `Cursor` over bytes).
pub fn read_from<R: Read + Seek>(r: R) -> PthResult<Checkpoint> {
    let mut c = Container::open(r)?;
    let plan = c.plan()?;
    let mut tensors = Vec::with_capacity(plan.entries.len());
    for e in &plan.entries {
        let bytes = c.view_bytes(e)?;
        tensors.push(PthTensor {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            data: decode(e.dtype, &bytes, c.big_endian),
        });
    }
    Ok(Checkpoint {
        format: c.format(),
        tensors,
        wrapper: plan.wrapper,
        stripped_prefix: plan.stripped_prefix,
        ignored: plan.ignored,
    })
}

/// Reads the one model tensor named `name` (as [`list`] names it) from the checkpoint at
/// `path`, decoding no other storage. Without a name the checkpoint must hold exactly one tensor.
pub fn read_tensor(path: &Path, name: Option<&str>) -> PthResult<PthTensor> {
    read_tensor_from(open(path)?, name)
}

/// [`read_tensor`] from any seekable reader.
pub fn read_tensor_from<R: Read + Seek>(r: R, name: Option<&str>) -> PthResult<PthTensor> {
    let mut c = Container::open(r)?;
    let plan = c.plan()?;
    let names = || abbreviate(plan.entries.iter().map(|e| e.name.as_str()));
    let e = match name {
        Some(n) => plan
            .entries
            .iter()
            .find(|e| e.name == n)
            .ok_or_else(|| PthError::NoSuchTensor {
                name: n.to_string(),
                available: names(),
            })?,
        None if plan.entries.len() == 1 => &plan.entries[0],
        None => {
            return Err(PthError::NameRequired {
                count: plan.entries.len(),
                available: names(),
            });
        }
    };
    let bytes = c.view_bytes(e)?;
    Ok(PthTensor {
        name: e.name.clone(),
        dtype: e.dtype,
        shape: e.shape.clone(),
        data: decode(e.dtype, &bytes, c.big_endian),
    })
}

/// The first few names, then how many more.
fn abbreviate<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    const SHOW: usize = 8;
    let n = names.len();
    let mut s: Vec<String> = names.take(SHOW).map(String::from).collect();
    if n > SHOW {
        s.push(format!("... ({} more)", n - SHOW));
    }
    if s.is_empty() {
        "(no tensors)".into()
    } else {
        s.join(", ")
    }
}

/// [`list`] from any seekable reader.
pub fn list_from<R: Read + Seek>(r: R) -> PthResult<Listing> {
    let mut c = Container::open(r)?;
    let plan = c.plan()?;
    Ok(Listing {
        format: c.format(),
        tensors: plan
            .entries
            .iter()
            .map(|e| TensorInfo {
                name: e.name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
            })
            .collect(),
        wrapper: plan.wrapper,
        stripped_prefix: plan.stripped_prefix,
        ignored: plan.ignored,
    })
}

/// The legacy format's magic number, `0x1950a86a20f9469cfc6c`, little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// Largest `data.pkl` accepted (real ones are kilobytes to a few megabytes).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// A view may always materialise this many elements, even beyond its storage's size.
const VIEW_FLOOR: u64 = 1 << 20;
/// Deflate cannot expand data by more than about 1032×.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Where one tensor's data lives and how to gather it.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    /// Element offset into the storage.
    offset: usize,
    key: String,
    /// Bytes of the storage a gather touches: `(max index + 1) · element size` (0 when empty).
    needed: u64,
}

struct Plan {
    entries: Vec<Entry>,
    wrapper: Option<String>,
    stripped_prefix: Option<String>,
    ignored: Vec<String>,
}

enum Source<R> {
    Zip {
        archive: zip::ZipArchive<R>,
        prefix: String,
        file_len: u64,
    },
    Legacy {
        reader: R,
        /// The pickled object (taken out by [`Container::plan`]).
        object: Value,
    },
}

struct Container<R> {
    source: Source<R>,
    big_endian: bool,
    /// Legacy: each storage's (byte offset of its data, element count).
    legacy_storages: HashMap<String, (u64, u64)>,
}

impl<R: Read + Seek> Container<R> {
    fn open(mut r: R) -> PthResult<Self> {
        let io = |source| PthError::Io {
            context: "the checkpoint".into(),
            source,
        };
        let file_len = r.seek(SeekFrom::End(0)).map_err(io)?;
        r.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut r, &mut head).map_err(io)?;
        r.seek(SeekFrom::Start(0)).map_err(io)?;
        if n >= 2 && &head[..2] == b"PK" {
            let mut archive = zip::ZipArchive::new(r).map_err(|e| PthError::Zip(e.to_string()))?;
            let prefix = archive
                .file_names()
                .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
                .min_by_key(|n| n.len())
                .map(|n| n[..n.len() - "data.pkl".len()].to_string())
                .ok_or_else(|| PthError::Zip("no data.pkl entry (not a torch.save archive)".into()))?;
            let mut big_endian = false;
            let order_name = format!("{prefix}byteorder");
            if archive.file_names().any(|n| n == order_name) {
                let order = read_entry(&mut archive, &order_name, 64, file_len)?;
                big_endian = match order.as_slice() {
                    b"little" => false,
                    b"big" => true,
                    other => {
                        return Err(PthError::Zip(format!(
                            "unknown byteorder {:?}",
                            String::from_utf8_lossy(other)
                        )));
                    }
                };
            }
            Ok(Container {
                source: Source::Zip {
                    archive,
                    prefix,
                    file_len,
                },
                big_endian,
                legacy_storages: HashMap::new(),
            })
        } else if n >= 1 && head[0] == 0x80 {
            Self::open_legacy(r, file_len)
        } else {
            Err(PthError::NotCheckpoint(
                "neither a zip archive nor a legacy pickle stream (expected a file written by torch.save)"
                    .into(),
            ))
        }
    }

    /// Reads the five legacy pickles from a prefix of the file that doubles until they parse
    /// (they precede every storage), then walks the storage headers by seeking past the data.
    fn open_legacy(mut r: R, file_len: u64) -> PthResult<Self> {
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
        if magic != Value::BigInt(LEGACY_MAGIC.to_vec()) {
            return Err(PthError::NotCheckpoint(
                "the first pickle is not torch's magic number".into(),
            ));
        }
        if proto != Value::Int(1001) {
            return Err(PthError::NotCheckpoint(format!(
                "unsupported legacy protocol version {proto:?} (expected 1001)"
            )));
        }
        let big_endian = match &sys {
            Value::Dict(m) => matches!(m.get("little_endian"), Some(Value::Bool(false))),
            _ => false,
        };
        let keys: Vec<String> = keys_value
            .as_seq()
            .ok_or_else(|| PthError::NotCheckpoint("the storage key list is not a list".into()))?
            .iter()
            .map(key_string)
            .collect::<Option<_>>()
            .ok_or_else(|| PthError::NotCheckpoint("a storage key is not a string".into()))?;
        let dtypes = storage_dtypes(&object);
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
        Ok(Container {
            source: Source::Legacy { reader: r, object },
            big_endian,
            legacy_storages: storages,
        })
    }

    fn format(&self) -> PthFormat {
        match self.source {
            Source::Zip { .. } => PthFormat::Zip,
            Source::Legacy { .. } => PthFormat::Legacy,
        }
    }

    /// Parses the object and checks every tensor's view against its storage.
    fn plan(&mut self) -> PthResult<Plan> {
        let object = match &mut self.source {
            Source::Zip {
                archive,
                prefix,
                file_len,
            } => {
                let name = format!("{prefix}data.pkl");
                let pkl = read_entry(archive, &name, MAX_PICKLE_BYTES, *file_len)?;
                pickle::unpickle(&pkl, Limits::for_len(pkl.len()))?.0
            }
            Source::Legacy { object, .. } => std::mem::replace(object, Value::None),
        };
        let (found, wrapper, ignored) = select(&object);
        let mut entries = Vec::with_capacity(found.len());
        for (name, t) in found {
            entries.push(self.entry(name, t)?);
        }
        let stripped_prefix = if !entries.is_empty() && entries.iter().all(|e| e.name.starts_with("module."))
        {
            for e in &mut entries {
                e.name.drain(.."module.".len());
            }
            Some("module.".to_string())
        } else {
            None
        };
        Ok(Plan {
            entries,
            wrapper,
            stripped_prefix,
            ignored,
        })
    }

    /// Resolves a tensor's storage and validates its view.
    fn entry(&mut self, name: String, t: &TensorRef) -> PthResult<Entry> {
        let bad = |what: String| PthError::BadTensor {
            name: name.clone(),
            what,
        };
        let pid = match &t.storage {
            Value::Persistent(p) => p.as_seq().unwrap_or(&[]),
            _ => return Err(bad("its storage is not a persistent id".into())),
        };
        let (dtype, key, numel, view_offset) = parse_pid(pid).map_err(bad)?;
        let (avail_bytes, storage_numel) = match &mut self.source {
            Source::Zip { archive, prefix, .. } => {
                let entry = format!("{prefix}data/{key}");
                let f = archive.by_name(&entry).map_err(|e| PthError::BadStorage {
                    key: key.clone(),
                    what: format!("missing from the archive ({e})"),
                })?;
                (f.size(), numel)
            }
            Source::Legacy { .. } => {
                let (_, n) = self
                    .legacy_storages
                    .get(&key)
                    .ok_or_else(|| PthError::BadStorage {
                        key: key.clone(),
                        what: "not among the file's storages".into(),
                    })?;
                (n.saturating_mul(dtype.size() as u64), *n)
            }
        };
        if t.shape.len() != t.stride.len() {
            return Err(bad(format!(
                "{} sizes but {} strides",
                t.shape.len(),
                t.stride.len()
            )));
        }
        if t.offset < 0 || t.shape.iter().chain(&t.stride).any(|&x| x < 0) {
            return Err(bad("negative size, stride or offset".into()));
        }
        let shape: Vec<usize> = t.shape.iter().map(|&x| x as usize).collect();
        let stride: Vec<usize> = t.stride.iter().map(|&x| x as usize).collect();
        let count = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| bad("element count overflows".into()))?;
        let offset = (t.offset as u64)
            .checked_add(view_offset)
            .ok_or_else(|| bad("offset overflows".into()))?;
        let needed = if count == 0 {
            0
        } else {
            let last = shape
                .iter()
                .zip(&stride)
                .try_fold(offset, |a, (&d, &s)| {
                    (d as u64 - 1)
                        .checked_mul(s as u64)
                        .and_then(|x| a.checked_add(x))
                })
                .ok_or_else(|| bad("view extent overflows".into()))?;
            if last >= storage_numel {
                return Err(bad(format!(
                    "view reaches element {last} of a {storage_numel}-element storage `{key}`"
                )));
            }
            (last + 1)
                .checked_mul(dtype.size() as u64)
                .ok_or_else(|| bad("byte size overflows".into()))?
        };
        if needed > avail_bytes {
            return Err(PthError::BadStorage {
                key,
                what: format!("needs {needed} bytes but holds {avail_bytes}"),
            });
        }
        if count > storage_numel.max(VIEW_FLOOR) {
            return Err(bad(format!(
                "a view of {count} elements over a {storage_numel}-element storage is larger than the file justifies"
            )));
        }
        Ok(Entry {
            name,
            dtype,
            shape,
            stride,
            offset: offset as usize,
            key,
            needed,
        })
    }

    /// The tensor's elements as contiguous row-major bytes (still in the file's byte order).
    fn view_bytes(&mut self, e: &Entry) -> PthResult<Vec<u8>> {
        let storage: Vec<u8> = match &mut self.source {
            Source::Zip {
                archive,
                prefix,
                file_len,
            } => {
                let name = format!("{prefix}data/{}", e.key);
                read_storage(archive, &name, e.needed, *file_len, &e.key)?
            }
            Source::Legacy { reader, .. } => {
                let (start, _) = self.legacy_storages[&e.key];
                let bad = |source: std::io::Error| PthError::BadStorage {
                    key: e.key.clone(),
                    what: format!("cannot be read ({source})"),
                };
                reader.seek(SeekFrom::Start(start)).map_err(bad)?;
                // `needed` was checked against the bytes the file holds after `start`.
                let mut buf = vec![0u8; e.needed as usize];
                reader.read_exact(&mut buf).map_err(bad)?;
                buf
            }
        };
        Ok(gather(storage, e))
    }
}

/// The five pickles of a legacy stream and the offset after them; `Err(None)` when `b` ends
/// before they do (read more), `Err(Some(_))` for any other problem.
fn parse_legacy_pickles(b: &[u8], limits: Limits) -> Result<([Value; 5], u64), Option<PthError>> {
    const WHAT: [&str; 5] = [
        "magic number",
        "protocol version",
        "sys info",
        "object",
        "storage keys",
    ];
    let mut pos = 0;
    let mut out: Vec<Value> = Vec::with_capacity(5);
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
    let arr: [Value; 5] = out.try_into().expect("five pickles");
    Ok((arr, pos as u64))
}

/// Copies a strided view out of `storage` into row-major order.
fn gather(mut storage: Vec<u8>, e: &Entry) -> Vec<u8> {
    let es = e.dtype.size();
    let count: usize = e.shape.iter().product();
    if count == 0 {
        return Vec::new();
    }
    // Row-major contiguous view: one slice.
    let mut expect = 1;
    let mut contiguous = true;
    for (&d, &s) in e.shape.iter().zip(&e.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect *= d;
    }
    if contiguous {
        if e.offset == 0 {
            storage.truncate(count * es);
            return storage;
        }
        return storage[e.offset * es..(e.offset + count) * es].to_vec();
    }
    let mut out = Vec::with_capacity(count * es);
    let nd = e.shape.len();
    let mut idx = vec![0usize; nd];
    let mut at = e.offset;
    for _ in 0..count {
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        // Odometer increment, last axis fastest.
        for ax in (0..nd).rev() {
            idx[ax] += 1;
            at += e.stride[ax];
            if idx[ax] < e.shape[ax] {
                break;
            }
            at -= e.stride[ax] * e.shape[ax];
            idx[ax] = 0;
        }
    }
    out
}

/// Decodes contiguous bytes into typed data, byte-swapping big-endian files.
fn decode(dtype: DType, b: &[u8], big: bool) -> PthData {
    macro_rules! chunks {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().expect("exact chunk");
                    if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }
                })
                .collect()
        };
    }
    match dtype {
        DType::F32 => PthData::F32(chunks!(f32, 4)),
        DType::F64 => PthData::F64(chunks!(f64, 8)),
        DType::F16 => {
            let bits: Vec<u16> = chunks!(u16, 2);
            PthData::F16(bits.into_iter().map(f16::from_bits).collect())
        }
        DType::BF16 => {
            let bits: Vec<u16> = chunks!(u16, 2);
            PthData::BF16(bits.into_iter().map(bf16::from_bits).collect())
        }
        DType::I64 => PthData::I64(chunks!(i64, 8)),
        DType::I32 => PthData::I32(chunks!(i32, 4)),
        DType::I16 => PthData::I16(chunks!(i16, 2)),
        DType::I8 => PthData::I8(b.iter().map(|&x| x as i8).collect()),
        DType::U8 => PthData::U8(b.to_vec()),
        DType::Bool => PthData::Bool(b.iter().map(|&x| x != 0).collect()),
    }
}

/// `("storage", StorageType, key, location, numel[, view_metadata])` →
/// (dtype, key, numel, element offset of a legacy storage view).
fn parse_pid(pid: &[Value]) -> Result<(DType, String, u64, u64), String> {
    if pid.len() < 5 || pid[0].as_str() != Some("storage") {
        return Err("its persistent id is not a torch storage reference".into());
    }
    let dtype = match &pid[1] {
        Value::Global(pickle::Callable::Storage(d)) => *d,
        _ => return Err("its storage type is not a torch storage class".into()),
    };
    let key = key_string(&pid[2]).ok_or("its storage key is not a string")?;
    let numel = pid[4]
        .as_int()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("its storage size is not a non-negative integer")?;
    // Pre-1.0 storage views: (view_key, offset, view_size) into the root storage `key`.
    let view_offset = match pid.get(5).and_then(Value::as_seq) {
        Some([_, off, _]) => off
            .as_int()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or("bad storage view offset")?,
        _ => 0,
    };
    Ok((dtype, key, numel, view_offset))
}

fn key_string(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Every storage key referenced by a tensor in `v`, with its element type.
fn storage_dtypes(v: &Value) -> HashMap<String, DType> {
    let mut all = Vec::new();
    walk(v, String::new(), &mut all);
    let mut map = HashMap::new();
    for (_, t) in all {
        if let Value::Persistent(p) = &t.storage
            && let Some(pid) = p.as_seq()
            && let Ok((d, k, _, _)) = parse_pid(pid)
        {
            map.insert(k, d);
        }
    }
    map
}

/// Collects `(dotted path, tensor)` for every tensor in `v` (depth is bounded by the unpickler).
fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a TensorRef)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Tensor(t) => out.push((path, t)),
        Value::Dict(m) => {
            for (k, child) in &m.items {
                let k = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Float(f) => f.to_string(),
                    _ => continue,
                };
                walk(child, join(&k), out);
            }
        }
        Value::List(s) | Value::Tuple(s) => {
            for (i, child) in s.items.iter().enumerate() {
                walk(child, join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// Keys of the usual checkpoint wrappers, in order of preference.
const WRAPPERS: [&str; 4] = ["state_dict", "model_state_dict", "model_state", "model"];

/// Picks the model's tensors (see the module doc): (tensors, wrapper key, ignored paths).
fn select(object: &Value) -> (Vec<(String, &TensorRef)>, Option<String>, Vec<String>) {
    let mut all = Vec::new();
    walk(object, String::new(), &mut all);
    if let Value::Dict(m) = object {
        let bare = m.items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
        if !bare {
            for w in WRAPPERS {
                if let Some(inner) = m.get(w) {
                    let mut chosen = Vec::new();
                    walk(inner, String::new(), &mut chosen);
                    if !chosen.is_empty() {
                        let prefix = format!("{w}.");
                        let ignored = all
                            .iter()
                            .filter(|(p, _)| !p.starts_with(&prefix))
                            .map(|(p, _)| p.clone())
                            .collect();
                        return (chosen, Some(w.to_string()), ignored);
                    }
                }
            }
        }
    }
    (all, None, Vec::new())
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a whole small archive member, refusing more than `max` bytes.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    max: u64,
    file_len: u64,
) -> PthResult<Vec<u8>> {
    let f = archive
        .by_name(name)
        .map_err(|e| PthError::Zip(format!("{name}: {e}")))?;
    check_ratio(&f, f.size(), file_len, name)?;
    if f.size() > max {
        return Err(PthError::Zip(format!(
            "{name} is {} bytes (limit {max})",
            f.size()
        )));
    }
    let mut out = Vec::new();
    // `take` bounds the read even if the declared size lies; the vector grows with real data.
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| PthError::Zip(format!("{name}: {e}")))?;
    if out.len() as u64 > max {
        return Err(PthError::Zip(format!("{name} exceeds {max} bytes")));
    }
    Ok(out)
}

/// Reads the first `needed` bytes of a storage member.
fn read_storage<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    needed: u64,
    file_len: u64,
    key: &str,
) -> PthResult<Vec<u8>> {
    let f = archive.by_name(name).map_err(|e| PthError::BadStorage {
        key: key.into(),
        what: format!("missing from the archive ({e})"),
    })?;
    check_ratio(&f, needed, file_len, name)?;
    // A stored member's bytes are in the file (check_ratio): reserving them is justified. A
    // compressed one grows with the data actually inflated.
    let mut out = if f.compression() == zip::CompressionMethod::Stored {
        Vec::with_capacity(needed as usize)
    } else {
        Vec::new()
    };
    f.take(needed)
        .read_to_end(&mut out)
        .map_err(|e| PthError::BadStorage {
            key: key.into(),
            what: format!("cannot be read ({e})"),
        })?;
    if (out.len() as u64) < needed {
        return Err(PthError::BadStorage {
            key: key.into(),
            what: format!("holds {} bytes, {needed} needed", out.len()),
        });
    }
    Ok(out)
}

/// Refuses members whose data could not have come from a file of `file_len` bytes.
fn check_ratio<R: Read>(
    f: &zip::read::ZipFile<'_, R>,
    wanted: u64,
    file_len: u64,
    name: &str,
) -> PthResult<()> {
    let packed = f.compressed_size();
    let ratio = if f.compression() == zip::CompressionMethod::Stored {
        1
    } else {
        MAX_DEFLATE_RATIO
    };
    if packed > file_len || wanted > packed.saturating_mul(ratio) {
        return Err(PthError::Zip(format!(
            "{name} declares more data ({wanted} bytes from {packed} stored) than the {file_len}-byte file holds"
        )));
    }
    Ok(())
}
