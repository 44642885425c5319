//! Reading back the `gbtd.compress` description that [`super`] writes: the fields a consumer of
//! the chains needs, checked (format, version, three convs per conv layer with a 4-mode shape,
//! two linear layers per linear layer with a 2-mode shape). Other fields are ignored, and so is
//! an unknown key.
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use super::METADATA_KEY;
use crate::formats::{self, Format, IoError};

/// The description of a compressed checkpoint, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// The format version (1).
    pub version: u64,
    /// The replaced convs, in the order listed.
    pub layers: Vec<DescribedLayer>,
}

/// One replaced layer.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedLayer {
    /// The layer's module name `NAME` (its weight was `NAME.weight`).
    pub name: String,
    /// The original weight's shape: `(out, in/G, kh, kw)` for a conv with `G` groups, `(out, in)`
    /// for a linear layer.
    pub shape: Vec<usize>,
    /// `tucker2`, `btd`, `cp`, `collective`, `svd`, ... (empty when not recorded).
    pub method: String,
    /// The recorded ranks, `[r_out, r_in]` (`[K]` for CP, `[r]` for SVD; empty when not
    /// recorded).
    pub ranks: Vec<usize>,
    /// The relative kernel error the writer measured, if recorded.
    pub relative_error: Option<f64>,
    /// The layers that replace it.
    pub chain: DescribedChain,
}

/// The layers that replace one layer.
#[derive(Debug, Clone, PartialEq)]
pub enum DescribedChain {
    /// A conv: reduce (groups `G`), middle (groups `G·R`), expand (groups `G`).
    Conv([ChainConv; 3]),
    /// A linear layer: two linear layers (their `groups` are 1).
    Linear([ChainConv; 2]),
}

impl DescribedChain {
    /// The layers in order.
    pub fn layers(&self) -> &[ChainConv] {
        match self {
            DescribedChain::Conv(c) => c,
            DescribedChain::Linear(c) => c,
        }
    }

    /// The last layer, which carries the original bias.
    pub fn last(&self) -> &ChainConv {
        let l = self.layers();
        &l[l.len() - 1]
    }
}

/// One conv (or linear layer) of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainConv {
    /// The name of its weight tensor.
    pub weight: String,
    /// Its number of groups (`G·R` for the middle conv, `G` for the 1×1 convs, 1 for a linear
    /// layer).
    pub groups: usize,
    /// The name of its bias tensor (last layer only), if any.
    pub bias: Option<String>,
}

/// Errors of [`read_description`].
#[derive(Debug, Error)]
pub enum DescriptionError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file is not a compressed checkpoint.
    #[error(
        "{}: not written by gbtd compress ({reason}); give the file `gbtd compress --out` or `gbtd collective --out` wrote",
        path.display()
    )]
    NotCompressed {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: &'static str,
    },
    /// The description is not valid JSON of the expected shape.
    #[error("{}: the '{METADATA_KEY}' metadata is not a valid description of compressed layers: {msg}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The description names another format.
    #[error("{}: the '{METADATA_KEY}' metadata says format '{format}', expected '{METADATA_KEY}'", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it names.
        format: String,
    },
    /// A version this build does not read.
    #[error(
        "{}: compressed-checkpoint format version {version} is not supported by this gbtd (it reads version 1); update gbtd",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it names.
        version: u64,
    },
    /// A layer whose chain does not list three convs (two linear layers for a linear layer).
    #[error(
        "{}: layer '{layer}' lists {convs} layers in its chain, expected 3 convs (reduce, grouped, expand) or 2 linear layers",
        path.display()
    )]
    ChainLength {
        /// The file.
        path: PathBuf,
        /// The layer.
        layer: String,
        /// The number of convs listed.
        convs: usize,
    },
    /// A layer whose shape is not that of a conv kernel (or of a linear weight).
    #[error("{}: layer '{layer}' has shape {shape:?}, expected a conv kernel (out, in, kh, kw) or a linear weight (out, in)", path.display())]
    KernelShape {
        /// The file.
        path: PathBuf,
        /// The layer.
        layer: String,
        /// The shape listed.
        shape: Vec<usize>,
    },
}

/// Reads and checks the description in the `.safetensors` file at `path` (see the module
/// documentation of [`super`]).
pub fn read_description(path: &Path) -> Result<Description, DescriptionError> {
    let not_compressed = |reason| DescriptionError::NotCompressed {
        path: path.to_path_buf(),
        reason,
    };
    if Format::from_path(path)? != Format::Safetensors {
        return Err(not_compressed("a compressed checkpoint is a .safetensors file"));
    }
    let meta = formats::read_safetensors_metadata(path)?;
    let Some(text) = meta.get(METADATA_KEY) else {
        return Err(not_compressed("its metadata has no 'gbtd.compress' entry"));
    };
    parse(text, path)
}

fn parse(text: &str, path: &Path) -> Result<Description, DescriptionError> {
    let path = path.to_path_buf();
    let invalid = |msg: String| DescriptionError::Invalid {
        path: path.clone(),
        msg,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let format = string(&v, "format", "the description").map_err(invalid)?;
    if format != METADATA_KEY {
        return Err(DescriptionError::Format { path, format });
    }
    let version = need(&v, "version", "the description")
        .and_then(|x| x.as_u64().ok_or_else(|| "'version' is not a whole number".into()))
        .map_err(invalid)?;
    if version != 1 {
        return Err(DescriptionError::Version { path, version });
    }
    let Some(entries) = need(&v, "layers", "the description").map_err(invalid)?.as_array() else {
        return Err(invalid("'layers' is not a list".into()));
    };
    let mut layers = Vec::with_capacity(entries.len());
    for (n, l) in entries.iter().enumerate() {
        let at = format!("layer {n}");
        let name = string(l, "name", &at).map_err(invalid)?;
        let shape = counts(l, "shape", &at).map_err(invalid)?;
        let chain = need(l, "chain", &at)
            .and_then(|c| c.as_array().ok_or_else(|| format!("{at}: 'chain' is not a list")))
            .and_then(|c| {
                c.iter()
                    .enumerate()
                    .map(|(k, conv)| chain_conv(conv, &format!("{at}, chain conv {k}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(invalid)?;
        let convs = chain.len();
        let linear = matches!(field(l, "kind").and_then(Value::as_str), Some("linear"));
        let chain = match (linear, shape.len()) {
            (false, 4) => <[ChainConv; 3]>::try_from(chain).map(DescribedChain::Conv),
            (true, 2) => <[ChainConv; 2]>::try_from(chain).map(DescribedChain::Linear),
            _ => {
                return Err(DescriptionError::KernelShape {
                    path,
                    layer: name,
                    shape,
                });
            }
        };
        let Ok(chain) = chain else {
            return Err(DescriptionError::ChainLength {
                path,
                layer: name,
                convs,
            });
        };
        let method = match field(l, "method") {
            None => String::new(),
            Some(_) => string(l, "method", &at).map_err(invalid)?,
        };
        let ranks = match field(l, "ranks") {
            None => Vec::new(),
            Some(_) => counts(l, "ranks", &at).map_err(invalid)?,
        };
        let relative_error = match field(l, "relative_error") {
            None => None,
            Some(e) => Some(
                e.as_f64()
                    .ok_or_else(|| invalid(format!("{at}: 'relative_error' is not a number")))?,
            ),
        };
        layers.push(DescribedLayer {
            name,
            shape,
            method,
            ranks,
            relative_error,
            chain,
        });
    }
    Ok(Description { version, layers })
}

fn chain_conv(v: &Value, at: &str) -> Result<ChainConv, String> {
    Ok(ChainConv {
        weight: string(v, "weight", at)?,
        groups: match field(v, "groups") {
            None if field(v, "in_features").is_some() => 1,
            _ => count(need(v, "groups", at)?, "groups", at)?,
        },
        bias: match field(v, "bias") {
            None => None,
            Some(_) => Some(string(v, "bias", at)?),
        },
    })
}

/// `v[key]`, `None` when absent or `null`.
fn field<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn need<'v>(v: &'v Value, key: &str, at: &str) -> Result<&'v Value, String> {
    field(v, key).ok_or_else(|| format!("{at} has no '{key}'"))
}

fn string(v: &Value, key: &str, at: &str) -> Result<String, String> {
    need(v, key, at)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{at}: '{key}' is not a string"))
}

fn count(v: &Value, key: &str, at: &str) -> Result<usize, String> {
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| format!("{at}: '{key}' holds {v}, not a whole number >= 0"))
}

fn counts(v: &Value, key: &str, at: &str) -> Result<Vec<usize>, String> {
    need(v, key, at)?
        .as_array()
        .ok_or_else(|| format!("{at}: '{key}' is not a list"))?
        .iter()
        .map(|x| count(x, key, at))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layer() -> Value {
        let conv = |w: &str, g: usize| json!({"weight": w, "groups": g, "in_channels": 4});
        json!({"name": "a", "shape": [8, 4, 3, 3], "method": "btd", "ranks": [2, 2], "relative_error": 0.5,
               "chain": [conv("a.0.weight", 1), conv("a.1.weight", 2),
                         {"weight": "a.2.weight", "groups": 1, "bias": "a.2.bias"}]})
    }

    fn parsed(d: &Value) -> Result<Description, DescriptionError> {
        parse(&d.to_string(), Path::new("c.safetensors"))
    }

    #[test]
    fn reads_the_fields_and_ignores_the_rest() {
        let mut l = layer();
        l["extra"] = json!({"any": 1});
        let d = json!({"format": METADATA_KEY, "version": 1, "layers": [l], "source": "m"});
        let got = parsed(&d).unwrap();
        assert_eq!(got.version, 1);
        let l = &got.layers[0];
        assert_eq!(
            (l.name.as_str(), l.shape.clone(), l.method.as_str()),
            ("a", vec![8, 4, 3, 3], "btd")
        );
        assert_eq!((l.ranks.clone(), l.relative_error), (vec![2, 2], Some(0.5)));
        let DescribedChain::Conv(chain) = &l.chain else {
            panic!("a conv chain expected");
        };
        assert_eq!(chain[1].groups, 2);
        assert_eq!(chain[2].bias.as_deref(), Some("a.2.bias"));
        assert_eq!(chain[0].bias, None);
        // Optional fields may be absent or null.
        let mut l = layer();
        l.as_object_mut().unwrap().remove("method");
        l["ranks"] = Value::Null;
        let d = json!({"format": METADATA_KEY, "version": 1, "layers": [l]});
        let got = parsed(&d).unwrap();
        assert_eq!(
            (got.layers[0].method.as_str(), got.layers[0].ranks.len()),
            ("", 0)
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let ok = json!({"format": METADATA_KEY, "version": 1, "layers": [layer()]});
        let with = |f: &dyn Fn(&mut Value)| {
            let mut d = ok.clone();
            f(&mut d);
            parsed(&d).unwrap_err().to_string()
        };
        assert!(with(&|d| d["version"] = json!(2)).contains("version 2 is not supported"));
        assert!(with(&|d| d["format"] = json!("x")).contains("says format 'x'"));
        assert!(with(&|d| d["layers"] = json!("none")).contains("not a valid description"));
        let e = with(&|d| d["layers"][0]["chain"].as_array_mut().unwrap().truncate(2));
        assert!(e.contains("lists 2 layers"), "{e}");
        assert!(with(&|d| d["layers"][0]["shape"] = json!([8, 4])).contains("expected a conv kernel"));
        let e = with(&|d| d["layers"][0]["chain"][1]["groups"] = json!(-1));
        assert!(e.contains("layer 0, chain conv 1: 'groups' holds -1"), "{e}");
        assert!(with(&|d| d["layers"][0]["name"] = json!(3)).contains("'name' is not a string"));
        let e = parse("{", Path::new("c.safetensors")).unwrap_err().to_string();
        assert!(
            e.starts_with("c.safetensors: the 'gbtd.compress' metadata is not a valid"),
            "{e}"
        );
    }
}
