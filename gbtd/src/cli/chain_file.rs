//! The description that `gbtd compress --out` and `gbtd collective --out` store in a compressed
//! checkpoint: the `__metadata__` key `gbtd.compress` of a `.safetensors` file holds one JSON
//! object, `{"format": "gbtd.compress", "version": 1, "layers": [...], ...}`, one entry per
//! replaced conv `NAME` with its original `shape` `(out, in, kh, kw)` and the three convs of its
//! chain (`NAME.0.weight` 1×1, `NAME.1.weight` kh×kw with `groups = R`, `NAME.2.weight` 1×1 and
//! `NAME.2.bias` when the original had a bias). This module reads the fields `gbtd verify` needs;
//! other fields are ignored.
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use gbtd::formats::{self, Format};

/// The metadata key of the description.
pub const METADATA_KEY: &str = "gbtd.compress";

/// The description of a compressed checkpoint (the fields `verify` uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ChainFile {
    /// Always `gbtd.compress`.
    pub format: String,
    /// Format version; 1 is the one described here.
    pub version: u64,
    /// The replaced convs.
    pub layers: Vec<LayerEntry>,
}

/// One replaced conv.
#[derive(Debug, Clone, Deserialize)]
pub struct LayerEntry {
    /// The conv's name `NAME` (its kernel was `NAME.weight`).
    pub name: String,
    /// The original kernel's shape `(out, in, kh, kw)`.
    pub shape: Vec<usize>,
    /// `tucker2`, `btd`, `cp`, `collective`, ...
    #[serde(default)]
    pub method: String,
    /// Ranks `[r_out, r_in]` (`[K]` for CP).
    #[serde(default)]
    pub ranks: Vec<usize>,
    /// The relative kernel error the writer measured, if recorded.
    #[serde(default)]
    pub relative_error: Option<f64>,
    /// The three convs: reduce, grouped, expand.
    pub chain: Vec<ChainConv>,
}

/// One conv of a chain.
#[derive(Debug, Clone, Deserialize)]
pub struct ChainConv {
    /// Name of its weight tensor.
    pub weight: String,
    /// Its number of groups (`R` for the middle conv, 1 for the others).
    pub groups: usize,
    /// Name of its bias tensor (last conv only), if any.
    #[serde(default)]
    pub bias: Option<String>,
}

/// Reads and checks the description in the `.safetensors` file at `path`.
pub fn read(path: &Path) -> Result<ChainFile> {
    if Format::from_path(path)? != Format::Safetensors {
        bail!(
            "{}: not written by gbtd compress (a compressed checkpoint is a .safetensors file); give the file `gbtd compress --out` or `gbtd collective --out` wrote",
            path.display()
        );
    }
    let meta = formats::read_safetensors_metadata(path)?;
    let Some(text) = meta.get(METADATA_KEY) else {
        bail!(
            "{}: not written by gbtd compress (its metadata has no '{METADATA_KEY}' entry); give the file `gbtd compress --out` or `gbtd collective --out` wrote",
            path.display()
        );
    };
    let file: ChainFile = serde_json::from_str(text).with_context(|| {
        format!(
            "{}: the '{METADATA_KEY}' metadata is not a valid description of compressed layers",
            path.display()
        )
    })?;
    if file.format != METADATA_KEY {
        bail!(
            "{}: the '{METADATA_KEY}' metadata says format '{}', expected '{METADATA_KEY}'",
            path.display(),
            file.format
        );
    }
    if file.version != 1 {
        bail!(
            "{}: compressed-checkpoint format version {} is not supported by this gbtd (it reads version 1); update gbtd",
            path.display(),
            file.version
        );
    }
    for l in &file.layers {
        if l.chain.len() != 3 {
            bail!(
                "{}: layer '{}' lists {} convs in its chain, expected 3 (reduce, grouped, expand)",
                path.display(),
                l.name,
                l.chain.len()
            );
        }
        if l.shape.len() != 4 {
            bail!(
                "{}: layer '{}' has shape {:?}, expected a conv kernel (out, in, kh, kw)",
                path.display(),
                l.name,
                l.shape
            );
        }
    }
    Ok(file)
}
