//! PyTorch checkpoints (`gbtd::pth`) against the pinned torch: fixtures in both container formats
//! are written by `torch.save` at test time, and every value is compared with torch's own
//! reading of the same tensor (`t.double().numpy()` saved as `.npy`). Malicious pickles built by
//! Python's `pickle` (and by `torch.save` of an object with a hostile `__reduce__`) must be
//! refused by name without creating the file their payload would create.
//!
//! The tests skip with a message when the project's `.venv` is missing, and fail instead when the
//! `CI` environment variable is set.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gbtd::pth::pickle::{self, Limits, PickleError};
use gbtd::pth::{self, PthData, PthError, PthFormat};
use ndarray::ArrayD;

/// Writes every fixture into `argv[1]` and a manifest `manifest.json`:
/// `{file: {"wrapper": ..., "tensors": {name: [dtype, shape, ref.npy or null]}}}`.
const FIXTURES: &str = r#"
import sys, os, json, pickle, zipfile, collections
import numpy as np, torch, torchvision
d = sys.argv[1]
torch.manual_seed(0)
manifest = {}
nref = [0]

def ref(t):
    nref[0] += 1
    p = os.path.join(d, "ref%d.npy" % nref[0])
    np.save(p, t.detach().double().numpy())
    return p

def save(name, obj, model_sd, wrapper, refs=True, prefix=""):
    for fmt in ("zip", "legacy"):
        f = "%s_%s.pth" % (name, fmt)
        torch.save(obj, os.path.join(d, f), _use_new_zipfile_serialization=(fmt == "zip"))
        manifest[f] = {"wrapper": wrapper, "tensors": {
            k[len(prefix):]: [str(v.dtype).replace("torch.", ""), list(v.shape), ref(v) if refs else None]
            for k, v in model_sd.items()}}

base = torch.randn(6, 5)
big = torch.arange(60, dtype=torch.float64).reshape(4, 15) * 0.5 - 3
sd = collections.OrderedDict()
sd["conv.weight"] = torch.randn(4, 3, 3, 3)
sd["half"] = torch.randn(3, 7).half()
sd["bf"] = torch.randn(2, 3, 4).bfloat16()
sd["double"] = torch.randn(5).double()
sd["bn.num_batches_tracked"] = torch.tensor(17)
sd["idx"] = torch.tensor([[1, -2, 3], [2**40, 5, -6]], dtype=torch.int64)
sd["mask"] = torch.tensor([True, False, True])
sd["int32"] = torch.tensor([7, -8], dtype=torch.int32)
sd["u8"] = torch.tensor([0, 255, 3], dtype=torch.uint8)
sd["transposed"] = base.t()
sd["sliced"] = big[1:, 2::3]
sd["shares_base"] = base[2:4]
sd["empty"] = torch.zeros(0, 3)
sd["scalar"] = torch.tensor(2.5)
assert not sd["transposed"].is_contiguous() and sd["sliced"].storage_offset() > 0
save("bare", sd, sd, None)

small = collections.OrderedDict((k, sd[k]) for k in ["conv.weight", "bn.num_batches_tracked", "transposed"])
opt_state = {"state": {0: {"momentum_buffer": torch.ones(4, 3, 3, 3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
save("wrap_state_dict", {"epoch": 3, "state_dict": small, "optimizer": opt_state, "best": 0.5}, small, "state_dict")
save("wrap_model", {"model": small, "args": {"lr": 0.1, "name": "x"}}, small, "model")
save("wrap_model_state", {"model_state": small, "step": 10}, small, "model_state")
ddp = collections.OrderedDict(("module." + k, v) for k, v in small.items())
save("ddp", ddp, ddp, None, prefix="module.")
param = {"w": torch.nn.Parameter(torch.randn(2, 2)), "b": torch.nn.Parameter(torch.randn(3), requires_grad=False)}
save("params", param, param, None)

m = torchvision.models.resnet18(weights=None)
save("resnet18", m.state_dict(), m.state_dict(), None, refs=False)

# A big-endian zip checkpoint: torch cannot write one on this machine, so a little-endian one is
# rewritten (byteorder "big", every storage byte-swapped; storage keys follow insertion order).
be = collections.OrderedDict([("a", torch.randn(3, 4)), ("b", torch.randn(5).double()),
                              ("c", torch.randn(2, 2).half()), ("d", torch.tensor([1, -2, 2**50]))])
torch.save(be, os.path.join(d, "le.pth"))
with zipfile.ZipFile(os.path.join(d, "le.pth")) as zin, zipfile.ZipFile(os.path.join(d, "bigendian_zip.pth"), "w") as zout:
    for info in zin.infolist():
        data = zin.read(info.filename)
        if info.filename.endswith("/byteorder"):
            data = b"big"
        elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
            t = list(be.values())[int(info.filename.rsplit("/", 1)[1])]
            data = np.frombuffer(data, dtype=t.numpy().dtype).byteswap().tobytes()
        zout.writestr(info.filename.replace("le/", "bigendian_zip/", 1), data)
manifest["bigendian_zip.pth"] = {"wrapper": None, "tensors": {
    k: [str(v.dtype).replace("torch.", ""), list(v.shape), ref(v)] for k, v in be.items()}}
# Shared objects, as torch.save writes them (pickle's memo): a tensor saved under three names, a
# dict that contains itself, and a dict doubled 40 times (2^40 paths to one tensor).
tied = torch.randn(2, 3)
save("tied", {"a": tied, "b": tied, "c": [tied]}, {"a": tied, "b": tied, "c.0": tied}, None)
cyclic = {"w": torch.ones(2)}
cyclic["self"] = cyclic
doubled = {"t": torch.ones(2)}
for _ in range(40):
    doubled = {"a": doubled, "b": doubled}
for fmt in ("zip", "legacy"):
    for name, obj in (("cyclic", cyclic), ("doubled", doubled)):
        torch.save(obj, os.path.join(d, "%s_%s.pth" % (name, fmt)), _use_new_zipfile_serialization=(fmt == "zip"))
# A whole pickled module (not a state dict): refused, with a hint.
torch.save(torch.nn.Linear(2, 2), os.path.join(d, "module_zip.pth"))

# Hostile payloads: each would create `marker` when loaded by Python's pickle.
marker = os.path.join(d, "PWNED")
class System:
    def __reduce__(self): return (os.system, ("touch " + marker,))
class Exec:
    def __reduce__(self): return (exec, ("open(%r, 'w').close()" % marker,))
with open(os.path.join(d, "evil_system.pkl"), "wb") as f: pickle.dump(System(), f, protocol=2)
with open(os.path.join(d, "evil_exec.pkl"), "wb") as f: pickle.dump(Exec(), f, protocol=4)
# The same payload as the data.pkl of a zip checkpoint, next to a real tensor storage.
with zipfile.ZipFile(os.path.join(d, "evil_zip.pth"), "w") as z:
    z.writestr("evil_zip/data.pkl", pickle.dumps({"w": System()}, protocol=2))
    z.writestr("evil_zip/byteorder", "little")
    z.writestr("evil_zip/data/0", b"\0" * 16)
# torch.save itself of a state dict carrying the object, in both formats.
for fmt in ("zip", "legacy"):
    torch.save({"w": torch.ones(2), "x": System()}, os.path.join(d, "evil_sd_%s.pth" % fmt),
               _use_new_zipfile_serialization=(fmt == "zip"))
json.dump(manifest, open(os.path.join(d, "manifest.json"), "w"))
print(marker)
"#;

/// One file's entry in the manifest.
struct FileSpec {
    wrapper: Option<String>,
    tensors: BTreeMap<String, (String, Vec<usize>, Option<String>)>,
}

struct Fixtures {
    _dir: tempfile::TempDir,
    path: PathBuf,
    manifest: BTreeMap<String, FileSpec>,
}

/// The fixtures, generated once per test run; `None` (with a message) when Python is absent.
fn fixtures() -> Option<&'static Fixtures> {
    static F: OnceLock<Option<Fixtures>> = OnceLock::new();
    F.get_or_init(|| {
        if !peers::available("pth checkpoint tests") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        peers::run_python(FIXTURES, &[path.to_str().unwrap()]).expect("fixture script");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("manifest.json")).unwrap())
                .expect("manifest");
        let manifest = json
            .as_object()
            .expect("manifest object")
            .iter()
            .map(|(file, spec)| {
                let spec = FileSpec {
                    wrapper: spec["wrapper"].as_str().map(String::from),
                    tensors: serde_json::from_value(spec["tensors"].clone()).expect("tensor table"),
                };
                (file.clone(), spec)
            })
            .collect();
        Some(Fixtures {
            _dir: dir,
            path,
            manifest,
        })
    })
    .as_ref()
}

fn read_npy(p: &str) -> ArrayD<f64> {
    ndarray_npy::read_npy(p).unwrap()
}

/// Reads `file` both ways (list and read) and checks names, dtypes, shapes and every value.
fn check_file(fx: &Fixtures, file: &str) -> pth::Checkpoint {
    let spec = &fx.manifest[file];
    let path = fx.path.join(file);
    let ck = pth::read(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let listing = pth::list(&path).unwrap();
    let want_format = if file.ends_with("_zip.pth") {
        PthFormat::Zip
    } else {
        PthFormat::Legacy
    };
    assert_eq!(ck.format, want_format, "{file}");
    assert_eq!(listing.format, want_format);
    assert_eq!(ck.wrapper, spec.wrapper, "{file}");
    let got: BTreeMap<&str, &pth::PthTensor> = ck.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    assert_eq!(got.len(), ck.tensors.len(), "{file}: duplicate names");
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        spec.tensors.keys().map(String::as_str).collect::<Vec<_>>(),
        "{file}: names"
    );
    assert_eq!(listing.tensors.len(), ck.tensors.len());
    for (info, t) in listing.tensors.iter().zip(&ck.tensors) {
        assert_eq!(
            (&info.name, info.dtype, &info.shape),
            (&t.name, t.dtype, &t.shape)
        );
    }
    for (name, (dtype, shape, refp)) in &spec.tensors {
        let t = got[name.as_str()];
        assert_eq!(t.dtype.name(), dtype, "{file}: {name} dtype");
        assert_eq!(&t.shape, shape, "{file}: {name} shape");
        if let Some(refp) = refp {
            let want = read_npy(refp);
            let have = t.to_f64();
            assert_eq!(have.shape(), want.shape(), "{file}: {name}");
            // Every dtype here converts to f64 exactly, so the values must be equal.
            assert_eq!(have, want, "{file}: {name} values");
            let f32s = t.to_f32();
            for (a, b) in f32s.iter().zip(want.iter()) {
                assert_eq!(*a, *b as f32, "{file}: {name} as f32");
            }
        }
    }
    ck
}

#[test]
fn bare_state_dict_every_dtype_and_view_in_both_formats() {
    let Some(fx) = fixtures() else { return };
    for f in ["bare_zip.pth", "bare_legacy.pth"] {
        let ck = check_file(fx, f);
        assert!(ck.ignored.is_empty() && ck.stripped_prefix.is_none());
        let by = |n: &str| ck.tensors.iter().find(|t| t.name == n).unwrap();
        assert!(matches!(by("half").data, PthData::F16(_)));
        assert!(matches!(by("bf").data, PthData::BF16(_)));
        assert!(matches!(by("mask").data, PthData::Bool(ref v) if v == &[true, false, true]));
        assert!(matches!(by("bn.num_batches_tracked").data, PthData::I64(ref v) if v == &[17]));
        assert!(!by("idx").is_float() && by("conv.weight").is_float());
    }
}

#[test]
fn wrappers_keep_the_model_and_list_the_rest() {
    let Some(fx) = fixtures() else { return };
    for fmt in ["zip", "legacy"] {
        let ck = check_file(fx, &format!("wrap_state_dict_{fmt}.pth"));
        assert_eq!(ck.ignored, vec!["optimizer.state.0.momentum_buffer".to_string()]);
        check_file(fx, &format!("wrap_model_{fmt}.pth"));
        check_file(fx, &format!("wrap_model_state_{fmt}.pth"));
        let ck = check_file(fx, &format!("ddp_{fmt}.pth"));
        assert_eq!(ck.stripped_prefix.as_deref(), Some("module."));
        check_file(fx, &format!("params_{fmt}.pth"));
    }
}

#[test]
fn one_tensor_by_name_matches_the_full_read() {
    let Some(fx) = fixtures() else { return };
    for f in ["bare_zip.pth", "bare_legacy.pth"] {
        let path = fx.path.join(f);
        let all = pth::read(&path).unwrap();
        for want in &all.tensors {
            assert_eq!(&pth::read_tensor(&path, Some(&want.name)).unwrap(), want, "{f}");
        }
        let e = pth::read_tensor(&path, Some("nope")).unwrap_err();
        assert!(
            matches!(e, PthError::NoSuchTensor { .. }) && e.to_string().contains("conv.weight"),
            "{e}"
        );
        let e = pth::read_tensor(&path, None).unwrap_err();
        assert!(
            matches!(e, PthError::NameRequired { count, .. } if count == all.tensors.len()),
            "{e}"
        );
    }
}

#[test]
fn resnet18_state_dict_names_and_shapes_match_torchvision() {
    let Some(fx) = fixtures() else { return };
    for f in ["resnet18_zip.pth", "resnet18_legacy.pth"] {
        let ck = check_file(fx, f);
        assert_eq!(ck.tensors.len(), fx.manifest[f].tensors.len());
        let conv1 = ck.tensors.iter().find(|t| t.name == "conv1.weight").unwrap();
        assert_eq!(conv1.shape, vec![64, 3, 7, 7]);
    }
    // Both formats decode to the same data.
    let a = pth::read(&fx.path.join("resnet18_zip.pth")).unwrap();
    let b = pth::read(&fx.path.join("resnet18_legacy.pth")).unwrap();
    assert_eq!(a.tensors, b.tensors);
}

fn assert_refused(e: &PickleError, fx: &Fixtures, what: &str) {
    match e {
        PickleError::RefusedGlobal { module, name } => {
            assert!(
                (module == "posix" || module == "os") && name == "system"
                    || module == "builtins" && name == "exec",
                "{what}: refused {module}.{name}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&format!("{module}.{name}")), "{msg}");
        }
        other => panic!("{what}: expected a refusal, got {other}"),
    }
    assert!(!fx.path.join("PWNED").exists(), "{what}: the payload ran");
}

#[test]
fn malicious_pickles_are_refused_by_name_and_never_run() {
    let Some(fx) = fixtures() else { return };
    for f in ["evil_system.pkl", "evil_exec.pkl"] {
        let bytes = std::fs::read(fx.path.join(f)).unwrap();
        let e = pickle::unpickle(&bytes, Limits::for_len(bytes.len())).unwrap_err();
        assert_refused(&e, fx, f);
    }
    for f in ["evil_zip.pth", "evil_sd_zip.pth", "evil_sd_legacy.pth"] {
        for r in [
            pth::read(&fx.path.join(f)).map(|_| ()),
            pth::list(&fx.path.join(f)).map(|_| ()),
        ] {
            match r {
                Err(PthError::Refused(e)) => assert_refused(&e, fx, f),
                other => panic!("{f}: expected a refusal, got {other:?}"),
            }
        }
    }
    // The payload is live: Python's own unpickler does create the file.
    let evil = fx.path.join("evil_system.pkl");
    peers::run_python(
        "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
        &[evil.to_str().unwrap()],
    )
    .unwrap();
    assert!(fx.path.join("PWNED").exists(), "the control payload did not run");
    std::fs::remove_file(fx.path.join("PWNED")).unwrap();
}

#[test]
fn shared_tensors_are_read_under_each_name_and_cycles_are_refused() {
    let Some(fx) = fixtures() else { return };
    for fmt in ["zip", "legacy"] {
        let ck = check_file(fx, &format!("tied_{fmt}.pth"));
        assert_eq!(ck.tensors.len(), 3);
        assert!(ck.tensors.iter().all(|t| t.data == ck.tensors[0].data));
        for (file, what) in [("cyclic", "contains itself"), ("doubled", "shared values")] {
            let path = fx.path.join(format!("{file}_{fmt}.pth"));
            assert!(std::fs::metadata(&path).unwrap().len() < 4096);
            for e in [pth::read(&path).unwrap_err(), pth::list(&path).unwrap_err()] {
                let msg = e.to_string();
                assert!(
                    matches!(e, PthError::BadObject(_)) && msg.contains(what),
                    "{file}_{fmt}: {msg}"
                );
            }
        }
    }
}

#[test]
fn big_endian_zip_checkpoints_are_byte_swapped() {
    let Some(fx) = fixtures() else { return };
    check_file(fx, "bigendian_zip.pth");
}

#[test]
fn a_pickled_module_is_refused_with_a_hint() {
    let Some(fx) = fixtures() else { return };
    let e = pth::read(&fx.path.join("module_zip.pth")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PthError::Refused(_)), "{msg}");
    assert!(
        msg.contains("torch.nn.modules.linear.Linear") && msg.contains("state_dict()"),
        "{msg}"
    );
}

#[test]
fn gbtd_info_and_decompose_read_checkpoints() {
    let Some(fx) = fixtures() else { return };
    let gbtd = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_gbtd"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.success(), text)
    };
    for fmt in ["zip", "legacy"] {
        let file = fx.path.join(format!("resnet18_{fmt}.pth"));
        let f = file.to_str().unwrap();
        let (ok, out) = gbtd(&["info", f]);
        assert!(ok, "{out}");
        assert!(
            out.contains("PyTorch checkpoint") && out.contains("layer1.0.conv1.weight"),
            "{out}"
        );
        assert!(
            out.contains("[64, 64, 3, 3]") && out.contains("int64 (unsupported)"),
            "{out}"
        );
        // The tensor read through gbtd::formats is torch's, widened to f32.
        let t = gbtd::formats::read_tensor(&file, Some("layer1.0.conv1.weight")).unwrap();
        let want = pth::read_tensor(&file, Some("layer1.0.conv1.weight"))
            .unwrap()
            .to_f32();
        assert_eq!(t.data, gbtd::formats::AnyTensor::F32(want));
        let out_path = fx.path.join(format!("factors_{fmt}.safetensors"));
        let (ok, out) = gbtd(&[
            "decompose",
            f,
            "--tensor",
            "layer1.0.conv1.weight",
            "--method",
            "tucker2",
            "--rank",
            "16,16",
            "--quiet",
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert!(ok && out_path.exists(), "{out}");
        let (ok, out) = gbtd(&[
            "decompose",
            f,
            "--tensor",
            "bn1.num_batches_tracked",
            "--method",
            "cp",
            "--rank",
            "1",
        ]);
        assert!(!ok && out.contains("int64"), "{out}");
    }
}

#[test]
fn not_a_checkpoint_and_missing_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pth");
    std::fs::write(&p, b"hello world").unwrap();
    let e = pth::read(&p).unwrap_err();
    assert!(matches!(e, PthError::NotCheckpoint(_)), "{e}");
    let e = pth::read(&dir.path().join("missing.pth")).unwrap_err();
    assert!(e.to_string().contains("missing.pth"), "{e}");
    assert!(pth::has_checkpoint_extension(Path::new("a/b.CKPT")));
    assert!(!pth::has_checkpoint_extension(Path::new("a/b.npy")));
}
