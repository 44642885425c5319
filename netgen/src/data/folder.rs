//! Image folders in the ImageNet layout: `DIR/train/CLASS/*.{jpg,jpeg,png}` and
//! `DIR/val/CLASS/...`. Classes are the sub-directories of `train/`, sorted by name; label `k` is
//! the `k`-th name. `val/` may lack classes but may not add any. Files are sorted by name within
//! a class, so sample indices are the same on every machine.
//!
//! Images are decoded when a batch needs them (the `image` crate, JPEG and PNG), in the loader's
//! worker threads. Listing does not open the files, so a corrupt file is found at load time: it
//! is reported once on stderr with its path and replaced by the next readable sample of the same
//! split (its label comes along), so batches keep their size. Its path is recorded in
//! [`FolderSplit::skipped`].
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::DataError;

/// How many following samples are tried in place of an unreadable image before giving up.
const MAX_REPLACEMENTS: usize = 32;

/// One split of an image folder: file paths with their labels.
pub struct FolderSplit {
    pub items: Vec<(PathBuf, u32)>,
    skipped: Mutex<BTreeSet<PathBuf>>,
}

/// A decoded image: interleaved RGB bytes (`H × W × 3`) and its label.
pub struct Decoded {
    pub rgb: Vec<u8>,
    pub height: usize,
    pub width: usize,
    pub label: u32,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        v.push(e.path());
    }
    v.sort();
    Ok(v)
}

/// Class folders (sorted) of a split directory.
fn class_dirs(split: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    for p in read_dir_sorted(split)? {
        if p.is_dir() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, p));
        }
    }
    if out.is_empty() {
        return Err(DataError::NotFound {
            what: "class folders".into(),
            path: split.to_path_buf(),
            hint: "expected one sub-folder per class holding .jpg/.jpeg/.png images (DIR/train/CLASS/*.jpg)"
                .into(),
        });
    }
    Ok(out)
}

fn list_class(dir: &Path, label: u32, items: &mut Vec<(PathBuf, u32)>) -> Result<(), DataError> {
    let before = items.len();
    for p in read_dir_sorted(dir)? {
        if is_image(&p) && p.is_file() {
            items.push((p, label));
        }
    }
    if items.len() == before {
        return Err(DataError::EmptyClass(dir.to_path_buf()));
    }
    Ok(())
}

/// Lists `dir/train` and `dir/val`: returns the class names and the two splits.
pub fn list(dir: &Path) -> Result<(Vec<String>, FolderSplit, FolderSplit), DataError> {
    let hint = "expected the ImageNet layout DIR/train/CLASS/*.jpg and DIR/val/CLASS/*.jpg";
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            what: "image folder".into(),
            path: dir.into(),
            hint: hint.into(),
        });
    }
    let (train_dir, val_dir) = (dir.join("train"), dir.join("val"));
    for d in [&train_dir, &val_dir] {
        if !d.is_dir() {
            return Err(DataError::NotFound {
                what: "split folder".into(),
                path: d.clone(),
                hint: hint.into(),
            });
        }
    }
    let classes = class_dirs(&train_dir)?;
    let names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
    let mut train = Vec::new();
    for (k, (_, p)) in classes.iter().enumerate() {
        list_class(p, k as u32, &mut train)?;
    }
    let mut val = Vec::new();
    for (name, p) in class_dirs(&val_dir)? {
        let Ok(k) = names.binary_search(&name) else {
            return Err(DataError::format(
                &p,
                format!(
                    "validation class {name:?} has no training folder {}",
                    train_dir.join(&name).display()
                ),
            ));
        };
        list_class(&p, k as u32, &mut val)?;
    }
    Ok((names, FolderSplit::new(train), FolderSplit::new(val)))
}

/// Decodes one file to RGB.
fn decode(path: &Path) -> Result<(Vec<u8>, usize, usize), String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    let rgb = img.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok((rgb.into_raw(), h, w))
}

impl FolderSplit {
    pub fn new(items: Vec<(PathBuf, u32)>) -> Self {
        FolderSplit {
            items,
            skipped: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Paths found unreadable so far.
    pub fn skipped(&self) -> Vec<PathBuf> {
        self.skipped
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Decodes sample `index`, or the first readable sample after it (warning once per bad path).
    pub fn load(&self, index: usize) -> Result<Decoded, DataError> {
        let n = self.items.len();
        let mut first_err = None;
        for k in 0..MAX_REPLACEMENTS.min(n) {
            let (path, label) = &self.items[(index + k) % n];
            match decode(path) {
                Ok((rgb, height, width)) => {
                    return Ok(Decoded {
                        rgb,
                        height,
                        width,
                        label: *label,
                    });
                }
                Err(e) => {
                    let first_time = self
                        .skipped
                        .lock()
                        .map(|mut s| s.insert(path.clone()))
                        .unwrap_or(false);
                    if first_time {
                        eprintln!(
                            "warning: skipping unreadable image {} ({e}); the next readable image of the split is used in its place",
                            path.display()
                        );
                    }
                    first_err.get_or_insert((path.clone(), e));
                }
            }
        }
        let (path, mut detail) = first_err.unwrap_or_else(|| (PathBuf::new(), "empty split".into()));
        let tried = MAX_REPLACEMENTS.min(n);
        if tried > 1 {
            detail = format!("{detail}; the {} images after it are unreadable too", tried - 1);
        }
        Err(DataError::Decode { path, detail })
    }
}
