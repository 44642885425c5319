//! PyTorch checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt` written by `torch.save`) read as named
//! tensors, without running any of the pickled code (see [`pickle`]).
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
//!   A tensor saved under several names (one object in the pickle, e.g. tied weights) is
//!   returned under each of them.
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
//! The walk that names the tensors refuses an object that contains itself, nests deeper than 256
//! containers or reaches its shared values more often than the pickle's size justifies
//! ([`PthError::BadObject`]).
//!
//! Modules, by job: `container` opens a file as either format and plans its tensors, `zip` and
//! `legacy` read the two formats, [`pickle`] is the restricted unpickler, `tensors` finds the
//! tensors in the unpickled object and chooses the model's, `view` checks each tensor's view
//! against its storage and gathers it, `data` decodes storage bytes into typed data.

mod container;
mod data;
mod legacy;
pub mod pickle;
mod tensors;
mod view;
pub(crate) mod zip;

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

pub use data::PthData;

use crate::error::one_line;
use container::Container;
use data::decode;
use pickle::{PickleError, StorageDtype};

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
    /// The object cannot be walked for its tensors: a reference cycle, nesting deeper than the
    /// limit, or shared values that would expand beyond it.
    #[error("{}", one_line(.0))]
    BadObject(String),
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
