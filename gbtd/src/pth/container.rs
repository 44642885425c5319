//! One open checkpoint, zip or legacy ([`Container`]): the plan of its tensors (each view checked
//! against its storage, see [`super::view`]) and the bytes of one tensor.

use std::io::{Read, Seek, SeekFrom};

use super::legacy::Legacy;
use super::pickle::{Object, TensorRef};
use super::tensors::{parse_pid, select, storage_pid};
use super::view::{Entry, Storage, check_view, gather};
use super::zip::Archive;
use super::{PthError, PthFormat, PthResult};

/// The model's tensors of a checkpoint, each checked against its storage, and how they were
/// found (see the module doc of [`super`]).
pub(super) struct Plan {
    pub(super) entries: Vec<Entry>,
    pub(super) wrapper: Option<String>,
    pub(super) stripped_prefix: Option<String>,
    pub(super) ignored: Vec<String>,
}

/// The container format of an open checkpoint.
enum Source<R> {
    Zip(Archive<R>),
    Legacy(Legacy<R>),
}

/// An open checkpoint.
pub(super) struct Container<R> {
    source: Source<R>,
    /// Whether the storages are big-endian.
    pub(super) big_endian: bool,
}

impl<R: Read + Seek> Container<R> {
    /// Opens a checkpoint: a zip archive (`PK`) or a legacy stream (a pickle, `0x80`).
    pub(super) fn open(mut r: R) -> PthResult<Self> {
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
            let (archive, big_endian) = Archive::open(r, file_len)?;
            Ok(Container {
                source: Source::Zip(archive),
                big_endian,
            })
        } else if n >= 1 && head[0] == 0x80 {
            let (legacy, big_endian) = Legacy::open(r, file_len)?;
            Ok(Container {
                source: Source::Legacy(legacy),
                big_endian,
            })
        } else {
            Err(PthError::NotCheckpoint(
                "neither a zip archive nor a legacy pickle stream (expected a file written by torch.save)"
                    .into(),
            ))
        }
    }

    pub(super) fn format(&self) -> PthFormat {
        match self.source {
            Source::Zip(_) => PthFormat::Zip,
            Source::Legacy(_) => PthFormat::Legacy,
        }
    }

    /// Parses the object and checks every tensor's view against its storage.
    pub(super) fn plan(&mut self) -> PthResult<Plan> {
        let object = match &mut self.source {
            Source::Zip(z) => z.object()?,
            Source::Legacy(l) => l.take_object()?,
        };
        let found = select(&object)?;
        let mut entries = Vec::with_capacity(found.tensors.len());
        for (name, t) in found.tensors {
            entries.push(self.entry(&object, name, t)?);
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
            wrapper: found.wrapper,
            stripped_prefix,
            ignored: found.ignored,
        })
    }

    /// Resolves a tensor's storage and validates its view.
    fn entry(&mut self, object: &Object, name: String, t: &TensorRef) -> PthResult<Entry> {
        let bad = |what: String| PthError::BadTensor {
            name: name.clone(),
            what,
        };
        let pid = storage_pid(object, t).ok_or_else(|| bad("its storage is not a persistent id".into()))?;
        let (dtype, key, numel, view_offset) = parse_pid(object, pid).map_err(bad)?;
        let (avail_bytes, numel) = match &mut self.source {
            Source::Zip(z) => (z.storage_size(&key)?, numel),
            Source::Legacy(l) => {
                let n = l.storage_numel(&key)?;
                (n.saturating_mul(dtype.size() as u64), n)
            }
        };
        let storage = Storage {
            dtype,
            key,
            view_offset,
            numel,
            avail_bytes,
        };
        check_view(name, t, storage)
    }

    /// The tensor's elements as contiguous row-major bytes (still in the file's byte order).
    pub(super) fn view_bytes(&mut self, e: &Entry) -> PthResult<Vec<u8>> {
        let storage = match &mut self.source {
            Source::Zip(z) => z.read_storage(&e.key, e.needed)?,
            Source::Legacy(l) => l.read_storage(&e.key, e.needed)?,
        };
        Ok(gather(storage, e))
    }
}

/// Reads until `buf` is full or the reader ends; the number of bytes read.
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
