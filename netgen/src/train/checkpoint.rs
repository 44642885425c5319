//! Atomic files of a run directory and the `.safetensors` checkpoints.
//!
//! Every file is written as: a temporary file next to the target (`.tmp.NAME`), the bytes, `fsync`,
//! `rename` over the target, `fsync` of the directory. A process killed at any moment therefore
//! leaves either the previous file or the new one, never a partial one.
//!
//! Checkpoint files carry the run's step in their safetensors metadata (`"step"`), which PyTorch's
//! `safetensors.torch.load_file` ignores; a resume checks that the weights and the optimiser state
//! belong to the same step.
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};
use tch::{Kind, Tensor};

use super::{Result, TrainError, io_err};

/// Writes `path` atomically: `write` fills a temporary file in the same directory (it gets the
/// temporary path), which is then synced and renamed over `path`. On any error the temporary file
/// is removed and `path` is left as it was.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> std::result::Result<(), String>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io_err(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    // The temporary name keeps the extension (image encoders pick the format from it).
    let tmp = dir.join(format!(".tmp.{name}"));
    let result = (|| -> std::result::Result<(), String> {
        write(&tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("sync: {e}"))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("rename: {e}"))?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Writes a text file atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| e.to_string())?;
        f.write_all(text.as_bytes()).map_err(|e| e.to_string())
    })
}

/// A CPU, contiguous copy of a tensor viewed as safetensors data.
struct CpuView {
    tensor: Tensor,
    shape: Vec<usize>,
    dtype: Dtype,
}

impl CpuView {
    fn new(t: &Tensor) -> Result<Self> {
        let tensor = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Uint8 => Dtype::U8,
            k => return Err(TrainError::Config(format!("cannot save a tensor of kind {k:?}"))),
        };
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        Ok(Self { tensor, shape, dtype })
    }
}

impl View for &CpuView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let numel = self.tensor.numel();
        let mut v = vec![0u8; self.data_len()];
        // A CPU contiguous tensor of a supported kind: the copy cannot fail.
        self.tensor
            .f_copy_data_u8(&mut v, numel)
            .expect("copying a contiguous CPU tensor");
        v.into()
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Writes named tensors to `path` atomically, with `metadata` in the safetensors header.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views: Vec<(String, CpuView)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), CpuView::new(t)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), Some(metadata))
        .map_err(|e| io_err(path, e))?;
    write_atomic(path, |tmp| std::fs::write(tmp, &bytes).map_err(|e| e.to_string()))
}

/// Reads the safetensors metadata of `path`.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| io_err(path, format!("not a safetensors file ({e})")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Reads every tensor of a safetensors file.
pub fn load_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| io_err(path, format!("cannot read checkpoint ({e})")))
}

/// The loop position and bookkeeping saved in `state.safetensors` (as `meta.*` scalar tensors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopState {
    /// Completed optimisation steps.
    pub step: u64,
    /// Total steps of the run's schedule (fixed at the start, or fitted to a budget).
    pub total_steps: u64,
    /// Best test top-1 (%) so far (−∞ before the first evaluation).
    pub best_acc: f64,
    /// Step of the best evaluation.
    pub best_step: u64,
    /// Plateau-schedule factor.
    pub plateau_factor: f64,
    /// Plateau-schedule best accuracy.
    pub plateau_best: f64,
    /// Plateau-schedule evaluations without improvement.
    pub plateau_bad: u64,
    /// Training seconds spent before this process (for the run's wall-clock total).
    pub seconds: f64,
    /// The data-order seed (the data order is a function of `(seed, epoch)` and the position in the
    /// epoch; the loop draws no other random numbers).
    pub seed: u64,
}

impl LoopState {
    /// As named scalar tensors.
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        let i = |v: u64| Tensor::from_slice(&[v as i64]);
        let f = |v: f64| Tensor::from_slice(&[v]);
        vec![
            ("meta.step".into(), i(self.step)),
            ("meta.total_steps".into(), i(self.total_steps)),
            ("meta.best_acc".into(), f(self.best_acc)),
            ("meta.best_step".into(), i(self.best_step)),
            ("meta.plateau_factor".into(), f(self.plateau_factor)),
            ("meta.plateau_best".into(), f(self.plateau_best)),
            ("meta.plateau_bad".into(), i(self.plateau_bad)),
            ("meta.seconds".into(), f(self.seconds)),
            ("meta.seed".into(), i(self.seed)),
        ]
    }

    /// Reads the `meta.*` tensors of a state file.
    pub fn from_tensors(named: &[(String, Tensor)], path: &Path) -> Result<Self> {
        let get = |k: &str| -> Result<&Tensor> {
            named.iter().find(|(n, _)| n == k).map(|(_, t)| t).ok_or_else(|| {
                io_err(
                    path,
                    format!("missing {k}; the file is not a netgen training state"),
                )
            })
        };
        let i = |k: &str| -> Result<u64> { Ok(get(k)?.int64_value(&[0]) as u64) };
        let f = |k: &str| -> Result<f64> { Ok(get(k)?.double_value(&[0])) };
        Ok(Self {
            step: i("meta.step")?,
            total_steps: i("meta.total_steps")?,
            best_acc: f("meta.best_acc")?,
            best_step: i("meta.best_step")?,
            plateau_factor: f("meta.plateau_factor")?,
            plateau_best: f("meta.plateau_best")?,
            plateau_bad: i("meta.plateau_bad")?,
            seconds: f("meta.seconds")?,
            seed: i("meta.seed")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let a = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0]))];
        let mut meta = HashMap::new();
        meta.insert("step".to_string(), "1".to_string());
        save_tensors(&path, &a, meta).unwrap();
        // A writer that dies half-way through a valid file's bytes.
        let good = std::fs::read(&path).unwrap();
        let r = write_atomic(&path, |tmp| {
            std::fs::write(tmp, &good[..good.len() / 2]).unwrap();
            Err("killed".into())
        });
        assert!(r.is_err());
        let back = load_tensors(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back[0].1.equal(&a[0].1));
        assert_eq!(read_metadata(&path).unwrap()["step"], "1");
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["last.safetensors".to_string()]);
    }

    #[test]
    fn loop_state_round_trips() {
        let s = LoopState {
            step: 7,
            total_steps: 100,
            best_acc: 91.5,
            best_step: 5,
            plateau_factor: 0.1,
            plateau_best: 91.5,
            plateau_bad: 1,
            seconds: 12.25,
            seed: 42,
        };
        let t = s.to_tensors();
        assert_eq!(LoopState::from_tensors(&t, Path::new("x")).unwrap(), s);
        assert!(LoopState::from_tensors(&t[1..], Path::new("x")).is_err());
    }
}
