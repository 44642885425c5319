//! The `gbtd` factors file: a decomposition ([`crate::decomposition::Decomposition`]: Tucker,
//! Tucker-2, CP or BTD) stored in a `.safetensors` file that [`read_factors`] turns back into the
//! same decomposition, so that the tensor can be rebuilt (`gbtd reconstruct`). The layout,
//! version 1:
//!
//! | method | tensors (shapes for an input of shape `d_0 × … × d_{N-1}`) |
//! | --- | --- |
//! | `tucker`, `tucker2` | `core` (`r_m` on each factorized mode `m`, `d_m` elsewhere); `factor.{m}` (`d_m × r_m`) for each factorized mode `m` |
//! | `cp` | `weights` (`R`); `factor.{m}` (`d_m × R`) for every mode `m` |
//! | `btd` | for each term `t < R`: `term.{t}.core` and `term.{t}.factor.{m}`, as for Tucker |
//!
//! Factor names carry the tensor **mode** they multiply (`factor.1` multiplies mode 1), not the
//! position in the rank list. All tensors share one dtype (`F32` or `F64`, that of the
//! computation). The safetensors `__metadata__` holds, as strings:
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `gbtd.factors` |
//! | `format_version` | `1` |
//! | `method` | `tucker`, `tucker2`, `cp` or `btd` |
//! | `shape` | JSON list, the shape of the decomposed tensor, e.g. `[512,512,3,3]` |
//! | `modes` | JSON list of the factorized modes, e.g. `[0,1]` (all modes for `cp`) |
//! | `ranks` | JSON list of the ranks, one per factorized mode (`[R]` for `cp`) |
//! | `terms` | number of terms: `R` for `btd` and `cp`, `1` for Tucker |
//! | `dtype` | `F32` or `F64` |
//!
//! plus free-form informational keys (see [`FactorsFile::info`]) such as `rel_error`,
//! `iterations`, `source`. The same checks run on writing and on reading: the layout keys must
//! be consistent, and the tensors present must be exactly those the layout names, with the
//! shapes it implies (and finite values, on reading), before anything is rebuilt.
use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array2, ArrayD, Ix1, Ix2};

use super::safetensors::{deserialize_safetensors, st_names, st_tensor, write_safetensors};
use super::{DType, IoError, IoResult, checked_len, corrupt, name_list, read_bytes};
use crate::btd::{BlockTerm, Btd};
use crate::cp::Cp;
use crate::decomposition::{Decomposition, Method};
use crate::options::Convergence;
use crate::real::Real;
use crate::tensor::{validate_modes, validate_tensor};
use crate::tucker::Tucker;

/// The contents of a factors file: the method label, the decomposition and free-form
/// information.
#[derive(Debug)]
pub struct FactorsFile<T: Real> {
    /// How the decomposition was computed (`tucker` and `tucker2` store the same kind of
    /// decomposition; the label records which the user asked for).
    pub method: Method,
    /// The decomposition; its [`Decomposition::shape`] is the shape of the decomposed tensor.
    pub decomposition: Box<dyn Decomposition<T>>,
    /// Informational metadata (for example `rel_error`, `iterations`, `source`), stored in the
    /// safetensors `__metadata__` next to the layout keys. Keys must not be layout keys.
    pub info: BTreeMap<String, String>,
}

/// A factors file in the precision it was stored with.
#[derive(Debug)]
pub enum AnyFactors {
    /// `F32` factors.
    F32(FactorsFile<f32>),
    /// `F64` factors.
    F64(FactorsFile<f64>),
}

/// The value of the metadata key `format` in every factors file.
pub const FACTORS_FORMAT: &str = "gbtd.factors";
/// The factors layout version written by this crate.
pub const FACTORS_VERSION: &str = "1";
/// Metadata keys that describe the layout; [`FactorsFile::info`] may not use them.
pub const LAYOUT_KEYS: [&str; 8] = [
    "format",
    "format_version",
    "method",
    "shape",
    "modes",
    "ranks",
    "terms",
    "dtype",
];
/// The largest tensor [`read_factors`] accepts to describe (elements), 2^32: a guard against
/// metadata that would make a rebuild exhaust memory.
pub const MAX_ELEMENTS: usize = 1 << 32;

fn json_list(v: &[usize]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn factors_err(path: &Path, msg: impl Into<String>) -> IoError {
    IoError::Factors {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The layout keys of a factors file.
struct Layout {
    method: Method,
    shape: Vec<usize>,
    modes: Vec<usize>,
    ranks: Vec<usize>,
    terms: usize,
}

impl Layout {
    /// The layout of `file`'s decomposition.
    fn of<T: Real>(file: &FactorsFile<T>) -> Self {
        let d = &file.decomposition;
        Layout {
            method: file.method,
            shape: d.shape(),
            modes: d.modes(),
            ranks: d.ranks(),
            terms: d.terms(),
        }
    }

    /// Checks that the keys are consistent with each other.
    fn validate(&self) -> Result<(), String> {
        let n = self.shape.len();
        match checked_len(&self.shape) {
            _ if n == 0 => return Err("the shape is empty".into()),
            Some(len) if len > 0 && len <= MAX_ELEMENTS => {}
            _ => return Err(format!("shape {:?} is empty or too large to rebuild", self.shape)),
        }
        validate_modes(&self.modes, n).map_err(|e| e.to_string())?;
        let terms = self.terms;
        if self.method == Method::Cp {
            if self.modes != (0..n).collect::<Vec<_>>() || self.ranks.len() != 1 || self.ranks[0] != terms {
                return Err(format!(
                    "CP needs modes 0..{n}, one rank equal to terms; got modes {:?}, ranks {:?}, terms {terms}",
                    self.modes, self.ranks
                ));
            }
        } else if self.ranks.len() != self.modes.len() {
            return Err(format!(
                "{} ranks for {} modes",
                self.ranks.len(),
                self.modes.len()
            ));
        }
        if self.ranks.contains(&0)
            || terms == 0
            || (!self.method.is_btd() && self.method != Method::Cp && terms != 1)
        {
            return Err(format!("invalid ranks {:?} or terms {terms}", self.ranks));
        }
        Ok(())
    }

    /// Shape of a Tucker (or BTD term) core.
    fn core_shape(&self) -> Vec<usize> {
        let mut s = self.shape.clone();
        for (&m, &r) in self.modes.iter().zip(&self.ranks) {
            s[m] = r;
        }
        s
    }

    /// The names and shapes of the tensors the layout stores, in the order of the module
    /// documentation.
    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let factors = |prefix: &str| -> Vec<(String, Vec<usize>)> {
            self.modes
                .iter()
                .zip(&self.ranks)
                .map(|(&m, &r)| (format!("{prefix}factor.{m}"), vec![self.shape[m], r]))
                .collect()
        };
        match self.method {
            Method::Tucker | Method::Tucker2 => {
                let mut out = vec![("core".to_string(), self.core_shape())];
                out.extend(factors(""));
                out
            }
            Method::Cp => {
                let mut out = vec![("weights".to_string(), vec![self.terms])];
                out.extend(
                    self.shape
                        .iter()
                        .enumerate()
                        .map(|(m, &d)| (format!("factor.{m}"), vec![d, self.terms])),
                );
                out
            }
            Method::Btd { .. } => (0..self.terms)
                .flat_map(|t| {
                    let mut out = vec![(format!("term.{t}.core"), self.core_shape())];
                    out.extend(factors(&format!("term.{t}.")));
                    out
                })
                .collect(),
        }
    }
}

/// Writes a decomposition as a factors `.safetensors` file (layout in the module documentation),
/// atomically, in `T`'s precision. Its parts are checked against the layout first (so a BTD whose
/// terms have different ranks, or a method label that does not match the decomposition, is
/// refused).
pub fn write_factors<T: Real>(path: &Path, file: &FactorsFile<T>) -> IoResult<()> {
    let layout = Layout::of(file);
    layout.validate().map_err(|m| factors_err(path, m))?;
    let tensors = file.decomposition.named_tensors();
    let expected = layout.tensors();
    let got: Vec<(&str, &[usize])> = tensors.iter().map(|(n, a)| (n.as_str(), a.shape())).collect();
    let want: Vec<(&str, &[usize])> = expected.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    if got != want {
        let mismatch = got
            .iter()
            .zip(&want)
            .find(|(g, w)| g != w)
            .map(|((gn, gs), (wn, ws))| {
                format!("'{gn}' of shape {gs:?} where '{wn}' of shape {ws:?} belongs")
            })
            .unwrap_or_else(|| format!("{} tensors where the layout has {}", got.len(), want.len()));
        return Err(factors_err(
            path,
            format!(
                "the {} decomposition does not fit its layout (modes {:?}, ranks {:?}, {} terms): {mismatch}",
                layout.method, layout.modes, layout.ranks, layout.terms
            ),
        ));
    }
    let mut meta = BTreeMap::new();
    for (k, v) in &file.info {
        if LAYOUT_KEYS.contains(&k.as_str()) {
            return Err(factors_err(
                path,
                format!("info key '{k}' is reserved for the layout"),
            ));
        }
        meta.insert(k.clone(), v.clone());
    }
    let put = |m: &mut BTreeMap<String, String>, k: &str, v: String| m.insert(k.to_string(), v);
    put(&mut meta, "format", FACTORS_FORMAT.into());
    put(&mut meta, "format_version", FACTORS_VERSION.into());
    put(&mut meta, "method", layout.method.as_str().into());
    put(&mut meta, "shape", json_list(&layout.shape));
    put(&mut meta, "modes", json_list(&layout.modes));
    put(&mut meta, "ranks", json_list(&layout.ranks));
    put(&mut meta, "terms", layout.terms.to_string());
    let dtype = if DType::of::<T>() == DType::F32 {
        "F32"
    } else {
        "F64"
    };
    put(&mut meta, "dtype", dtype.into());
    write_safetensors(path, &tensors, &meta)
}

/// Parses and checks the layout keys; returns the layout and the stored dtype.
fn parse_layout(meta: &BTreeMap<String, String>, path: &Path) -> IoResult<(Layout, DType)> {
    let get = |k: &str| {
        meta.get(k).ok_or_else(|| {
            factors_err(
                path,
                format!("metadata key '{k}' is missing (was it written by `gbtd decompose --out`?)"),
            )
        })
    };
    let list = |k: &str| -> IoResult<Vec<usize>> {
        let v = get(k)?;
        serde_json::from_str(v)
            .map_err(|_| factors_err(path, format!("metadata '{k}' = '{v}' is not a list of sizes")))
    };
    let format = get("format")?;
    if format != FACTORS_FORMAT {
        return Err(factors_err(
            path,
            format!("format is '{format}', expected '{FACTORS_FORMAT}'"),
        ));
    }
    let version = get("format_version")?;
    if version != FACTORS_VERSION {
        return Err(factors_err(
            path,
            format!("format_version {version} is not supported (this gbtd reads version {FACTORS_VERSION})"),
        ));
    }
    let t = get("terms")?;
    let terms: usize = t
        .parse()
        .map_err(|_| factors_err(path, format!("metadata 'terms' = '{t}' is not a count")))?;
    let m = get("method")?;
    let method = Method::parse(m, terms).ok_or_else(|| factors_err(path, format!("unknown method '{m}'")))?;
    let dt = get("dtype")?;
    let dtype = match dt.as_str() {
        "F32" => DType::F32,
        "F64" => DType::F64,
        other => return Err(factors_err(path, format!("unsupported dtype '{other}'"))),
    };
    let layout = Layout {
        method,
        shape: list("shape")?,
        modes: list("modes")?,
        ranks: list("ranks")?,
        terms,
    };
    layout.validate().map_err(|m| factors_err(path, m))?;
    Ok((layout, dtype))
}

/// Reads a factors file written by [`write_factors`] in its stored precision.
pub fn read_factors_any(path: &Path) -> IoResult<AnyFactors> {
    let meta = super::safetensors::read_safetensors_metadata(path)?;
    let (_, dtype) = parse_layout(&meta, path)?;
    Ok(match dtype {
        DType::F64 => AnyFactors::F64(read_factors(path)?),
        _ => AnyFactors::F32(read_factors(path)?),
    })
}

/// Reads a factors file written by [`write_factors`], converting to `T`. The metadata, the tensor
/// names and every shape are checked against each other (no missing or extra tensor) and the
/// values must be finite; any mismatch is [`IoError::Factors`].
pub fn read_factors<T: Real>(path: &Path) -> IoResult<FactorsFile<T>> {
    let bytes = read_bytes(path)?;
    let st = deserialize_safetensors(&bytes, path)?;
    let (_, raw_meta) = ::safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(path, format!("not a readable .safetensors file: {e}")))?;
    let meta: BTreeMap<String, String> = raw_meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let (l, _) = parse_layout(&meta, path)?;
    let mut parts: BTreeMap<String, ArrayD<T>> = BTreeMap::new();
    for (name, shape) in l.tensors() {
        let t = st_tensor(&st, &name, path).map_err(|e| match e {
            IoError::TensorNotFound { .. } => factors_err(path, format!("tensor '{name}' is missing")),
            other => other,
        })?;
        if t.data.shape() != shape.as_slice() {
            return Err(factors_err(
                path,
                format!(
                    "tensor '{name}' has shape {:?}, expected {shape:?}",
                    t.data.shape()
                ),
            ));
        }
        let a = t.data.to_real::<T>();
        validate_tensor(&a.view(), &format!("tensor '{name}'")).map_err(|source| IoError::Tensor {
            path: path.to_path_buf(),
            source,
        })?;
        parts.insert(name, a);
    }
    let extra: Vec<String> = st_names(&st)
        .into_iter()
        .filter(|n| !parts.contains_key(n))
        .collect();
    if !extra.is_empty() {
        return Err(factors_err(
            path,
            format!("unexpected tensors: {}", name_list(&extra)),
        ));
    }
    let decomposition = assemble(&l, parts).map_err(|m| factors_err(path, m))?;
    let info = meta
        .into_iter()
        .filter(|(k, _)| !LAYOUT_KEYS.contains(&k.as_str()))
        .collect();
    Ok(FactorsFile {
        method: l.method,
        decomposition,
        info,
    })
}

/// Builds the decomposition from the checked tensors of layout `l`.
fn assemble<T: Real>(
    l: &Layout,
    mut parts: BTreeMap<String, ArrayD<T>>,
) -> Result<Box<dyn Decomposition<T>>, String> {
    let mut take = |name: String| parts.remove(&name).ok_or(format!("tensor '{name}' is missing"));
    let matrix = |a: ArrayD<T>| -> Result<Array2<T>, String> {
        a.into_dimensionality::<Ix2>().map_err(|e| e.to_string())
    };
    Ok(match l.method {
        Method::Tucker | Method::Tucker2 => {
            let core = take("core".into())?;
            let factors = l
                .modes
                .iter()
                .map(|m| matrix(take(format!("factor.{m}"))?))
                .collect::<Result<_, _>>()?;
            Box::new(Tucker {
                core,
                factors,
                modes: l.modes.clone(),
                convergence: Convergence::default(),
            })
        }
        Method::Cp => {
            let weights = take("weights".into())?
                .into_dimensionality::<Ix1>()
                .map_err(|e| e.to_string())?;
            let factors = (0..l.shape.len())
                .map(|m| matrix(take(format!("factor.{m}"))?))
                .collect::<Result<_, _>>()?;
            Box::new(Cp {
                weights,
                factors,
                convergence: Convergence::default(),
            })
        }
        Method::Btd { .. } => {
            let mut terms = Vec::with_capacity(l.terms);
            for t in 0..l.terms {
                let core = take(format!("term.{t}.core"))?;
                let factors = l
                    .modes
                    .iter()
                    .map(|m| matrix(take(format!("term.{t}.factor.{m}"))?))
                    .collect::<Result<_, _>>()?;
                terms.push(BlockTerm { core, factors });
            }
            Box::new(Btd {
                terms,
                modes: l.modes.clone(),
                shape: l.shape.clone(),
                convergence: Convergence::default(),
            })
        }
    })
}
