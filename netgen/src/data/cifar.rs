//! Reader for the binary versions of CIFAR-10 and CIFAR-100.
//!
//! A CIFAR-10 file is a sequence of 3073-byte records: one label byte, then a 32×32 RGB image as
//! three 1024-byte planes (R, G, B), each row-major. CIFAR-100 records carry two label bytes,
//! coarse then fine (3074 bytes); the fine label (100 classes) is the one used.
use std::path::{Path, PathBuf};

use super::error::DataError;

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes of one CIFAR image (3 planes of 32×32).
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// Which CIFAR variant: decides the record layout, the file names and the class count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    Ten,
    Hundred,
}

impl Cifar {
    /// Label bytes per record.
    pub fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    pub fn classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    fn subdir(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar-10-batches-bin",
            Cifar::Hundred => "cifar-100-binary",
        }
    }

    fn train_files(self) -> Vec<String> {
        match self {
            Cifar::Ten => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Cifar::Hundred => vec!["train.bin".into()],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            Cifar::Ten => "test_batch.bin",
            Cifar::Hundred => "test.bin",
        }
    }

    fn names_file(self) -> &'static str {
        match self {
            Cifar::Ten => "batches.meta.txt",
            Cifar::Hundred => "fine_label_names.txt",
        }
    }
}

/// Images (each `3 × 32 × 32`, channel-major as in the file) and labels of one or more files.
#[derive(Debug, Default, Clone)]
pub struct CifarArrays {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

/// Appends the records of one CIFAR binary file to `out`, checking that the file is a whole
/// number of records and every (fine) label is below the class count.
pub fn read_cifar_file(path: &Path, kind: Cifar, out: &mut CifarArrays) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let rec = kind.label_bytes() + IMAGE_BYTES;
    if bytes.is_empty() || bytes.len() % rec != 0 {
        return Err(DataError::format(
            path,
            format!(
                "{} bytes is not a whole number of {rec}-byte CIFAR-{} records (file truncated or wrong variant)",
                bytes.len(),
                kind.classes()
            ),
        ));
    }
    let n = bytes.len() / rec;
    out.images.reserve(n * IMAGE_BYTES);
    out.labels.reserve(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[kind.label_bytes() - 1];
        if label as usize >= kind.classes() {
            return Err(DataError::format(
                path,
                format!("record {i} has label {label}, outside 0..{}", kind.classes()),
            ));
        }
        out.labels.push(label);
        out.images.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(())
}

/// The directory holding the `.bin` files: `dir` itself or the archive's sub-directory
/// (`cifar-10-batches-bin`, `cifar-100-binary`).
pub fn resolve_dir(dir: &Path, kind: Cifar) -> Result<PathBuf, DataError> {
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            what: format!("CIFAR-{} directory", kind.classes()),
            path: dir.to_path_buf(),
            hint: "download and unpack the binary version from https://www.cs.toronto.edu/~kriz/cifar.html"
                .into(),
        });
    }
    let sub = dir.join(kind.subdir());
    Ok(if sub.join(kind.test_file()).is_file() {
        sub
    } else {
        dir.to_path_buf()
    })
}

fn need(dir: &Path, name: &str, kind: Cifar) -> Result<PathBuf, DataError> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(DataError::NotFound {
            what: format!("CIFAR-{} file", kind.classes()),
            path: p,
            hint: format!(
                "the directory must hold the binary version's {} and {}",
                kind.train_files().join(", "),
                kind.test_file()
            ),
        })
    }
}

/// Reads the training and test splits of a CIFAR binary directory.
pub fn read_cifar(dir: &Path, kind: Cifar) -> Result<(CifarArrays, CifarArrays), DataError> {
    let dir = resolve_dir(dir, kind)?;
    let train_paths = kind
        .train_files()
        .iter()
        .map(|f| need(&dir, f, kind))
        .collect::<Result<Vec<_>, _>>()?;
    let test_path = need(&dir, kind.test_file(), kind)?;
    let mut train = CifarArrays::default();
    for p in &train_paths {
        read_cifar_file(p, kind, &mut train)?;
    }
    let mut test = CifarArrays::default();
    read_cifar_file(&test_path, kind, &mut test)?;
    Ok((train, test))
}

/// Class names from `batches.meta.txt` / `fine_label_names.txt` (one per non-empty line) when the
/// file is present and has exactly one name per class; otherwise the class numbers.
pub fn class_names(dir: &Path, kind: Cifar) -> Vec<String> {
    let numbers = || (0..kind.classes()).map(|i| i.to_string()).collect();
    let Ok(dir) = resolve_dir(dir, kind) else {
        return numbers();
    };
    let Ok(text) = std::fs::read_to_string(dir.join(kind.names_file())) else {
        return numbers();
    };
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() == kind.classes() {
        names
    } else {
        numbers()
    }
}
