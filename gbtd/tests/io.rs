//! Reading and writing tensor files (`gbtd::formats`): round trips through files written by other
//! implementations (ndarray-npy, the safetensors crate, numpy itself), half-precision files of
//! every finite bit pattern against numpy's conversion, and every malformed-input case returning
//! its typed error instead of panicking or allocating what a corrupt header claims.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use gbtd::GbtdError;
use gbtd::formats::{
    AnyTensor, DType, IoError, list_tensors, read_safetensors_metadata, read_tensor, write_npy,
    write_safetensors,
};
use gbtd::{Decomposition, Method};
use ndarray::{ArrayD, Dimension, IxDyn};
use ndarray_npy::{NpzWriter, read_npy, write_npy as npy_write};
use peers::run_python;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

fn sample(shape: &[usize]) -> ArrayD<f64> {
    ArrayD::from_shape_fn(IxDyn(shape), |ix| {
        let k: usize = ix.slice().iter().enumerate().map(|(i, &v)| (i + 2) * v).sum();
        (k as f64 * 0.37).sin() + 0.01 * k as f64
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Files in `dir` (names), to check that nothing was left behind.
fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn st_file(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, sh, b)| (n.to_string(), TensorView::new(*d, sh.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn npy_f64_and_f32_round_trip_from_ndarray_npy() {
    let dir = tempfile::tempdir().unwrap();
    let x = sample(&[3, 4, 5]);
    let p64 = dir.path().join("x64.npy");
    let p32 = dir.path().join("x32.npy");
    npy_write(&p64, &x).unwrap();
    npy_write(&p32, &x.mapv(|v| v as f32)).unwrap();

    let t = read_tensor(&p64, None).unwrap();
    assert_eq!(t.dtype, DType::F64);
    assert_eq!(t.data, AnyTensor::F64(x.clone()));
    let t = read_tensor(&p32, None).unwrap();
    assert_eq!(t.dtype, DType::F32);
    assert_eq!(t.data, AnyTensor::F32(x.mapv(|v| v as f32)));
    // Conversion to the other precision.
    assert_eq!(t.data.to_real::<f64>(), x.mapv(|v| v as f32 as f64));

    let info = list_tensors(&p64).unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].shape, vec![3, 4, 5]);
    assert_eq!(info[0].dtype, "<f8");
    assert!(info[0].readable);
}

#[test]
fn numpy_layouts_endianness_and_half_precision_decode_like_numpy() {
    if !peers::available("numpy_layouts_endianness_and_half_precision_decode_like_numpy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // numpy writes the same values in Fortran order, big-endian f4 and f8, and f16, plus an f64
    // reference of each exactly as numpy converts it.
    run_python(
        r#"
import sys, numpy as np
d = sys.argv[1]
x = np.sin(np.arange(2*3*4*5, dtype=np.float64) * 0.7).reshape(2, 3, 4, 5) * 3.0
np.save(d + '/fortran.npy', np.asfortranarray(x))
np.save(d + '/big8.npy', x.astype('>f8'))
np.save(d + '/big4.npy', x.astype('>f4'))
np.save(d + '/ref4.npy', x.astype('<f4').astype(np.float64))
np.save(d + '/half.npy', x.astype(np.float16))
np.save(d + '/bighalf.npy', x.astype('>f2'))
np.save(d + '/refhalf.npy', x.astype(np.float16).astype(np.float64))
np.save(d + '/ref.npy', x)
np.savez(d + '/pair.npz', kernel=x, bias=np.arange(3.0))
np.savez_compressed(d + '/single.npz', only=x.astype(np.float32))
"#,
        &[s(d)],
    )
    .unwrap();
    let reference: ArrayD<f64> = read_npy(d.join("ref.npy")).unwrap();
    let ref4: ArrayD<f64> = read_npy(d.join("ref4.npy")).unwrap();
    let refhalf: ArrayD<f64> = read_npy(d.join("refhalf.npy")).unwrap();

    let f = read_tensor(&d.join("fortran.npy"), None).unwrap();
    assert_eq!(
        f.data,
        AnyTensor::F64(reference.clone()),
        "Fortran order is reordered to C order"
    );
    let b8 = read_tensor(&d.join("big8.npy"), None).unwrap();
    assert_eq!(b8.data, AnyTensor::F64(reference.clone()));
    let b4 = read_tensor(&d.join("big4.npy"), None).unwrap();
    assert_eq!(b4.dtype, DType::F32);
    assert_eq!(b4.data.to_real::<f64>(), ref4);
    for name in ["half.npy", "bighalf.npy"] {
        let h = read_tensor(&d.join(name), None).unwrap();
        assert_eq!(h.dtype, DType::F16);
        assert_eq!(h.data.to_real::<f64>(), refhalf, "{name}");
    }

    // npz: chosen by name; the single-array archive needs no name.
    let k = read_tensor(&d.join("pair.npz"), Some("kernel")).unwrap();
    assert_eq!(k.name, "kernel");
    assert_eq!(k.data, AnyTensor::F64(reference.clone()));
    let only = read_tensor(&d.join("single.npz"), None).unwrap();
    assert_eq!(only.name, "only");
    assert_eq!(only.data.to_real::<f64>(), ref4);
    let names: Vec<(String, Vec<usize>)> = list_tensors(&d.join("pair.npz"))
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.shape))
        .collect();
    assert_eq!(
        names,
        vec![
            ("kernel".to_string(), vec![2, 3, 4, 5]),
            ("bias".to_string(), vec![3])
        ]
    );
}

#[test]
fn half_precision_files_of_every_finite_bit_pattern_read_like_numpy() {
    if !peers::available("half_precision_files_of_every_finite_bit_pattern_read_like_numpy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // numpy writes every finite float16 pattern as little- and big-endian `f2` arrays, with its
    // own float16 → float32 conversion, and the float32 values of every finite bfloat16 pattern
    // (the upper half of a float32; numpy has no bfloat16 type).
    run_python(
        r#"
import sys, numpy as np
d = sys.argv[1]
bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
h = bits.view(np.float16)
h = h[np.isfinite(h)]
np.save(d + '/f16.npy', h)
np.save(d + '/f16be.npy', h.astype('>f2'))
np.save(d + '/f16ref.npy', h.astype(np.float32))
bf = (bits.astype(np.uint32) << 16).view(np.float32)
keep = np.isfinite(bf)
np.save(d + '/bf16bits.npy', bits[keep])
np.save(d + '/bf16ref.npy', bf[keep])
"#,
        &[s(d)],
    )
    .unwrap();
    let want16: ndarray::Array1<f32> = read_npy(d.join("f16ref.npy")).unwrap();
    for name in ["f16.npy", "f16be.npy"] {
        let t = read_tensor(&d.join(name), None).unwrap();
        assert_eq!(t.dtype, DType::F16);
        let AnyTensor::F32(got) = t.data else {
            panic!("{name}: f16 loads as f32")
        };
        assert_eq!(got.len(), want16.len());
        for (g, w) in got.iter().zip(want16.iter()) {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}: {g} vs numpy {w}");
        }
    }
    // bfloat16 through a safetensors file of the raw little-endian bit patterns.
    let bits: ndarray::Array1<u16> = read_npy(d.join("bf16bits.npy")).unwrap();
    let wantbf: ndarray::Array1<f32> = read_npy(d.join("bf16ref.npy")).unwrap();
    let raw: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let p = d.join("bf16.safetensors");
    st_file(&p, &[("w", Dtype::BF16, vec![bits.len()], raw)]);
    let t = read_tensor(&p, None).unwrap();
    assert_eq!(t.dtype, DType::BF16);
    let AnyTensor::F32(got) = t.data else {
        panic!("bf16 loads as f32")
    };
    for (g, w) in got.iter().zip(wantbf.iter()) {
        assert_eq!(g.to_bits(), w.to_bits(), "bf16: {g} vs {w}");
    }
}

#[test]
fn safetensors_by_name_in_all_float_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    // IEEE 754 binary16 / bfloat16 encodings of 1, -2, 0.5, 65504, 2^-24, 2^-14.
    let half: Vec<u8> = [0x3C00u16, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x0400]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let bhalf: Vec<u8> = [0x3F80u16, 0xC000, 0x3F00]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let f64s: Vec<u8> = [1.5f64, -2.25].iter().flat_map(|x| x.to_le_bytes()).collect();
    st_file(
        &p,
        &[
            (
                "conv.weight",
                Dtype::F32,
                vec![2, 2],
                le_f32(&[1.0, 2.0, 3.0, 4.5]),
            ),
            ("half", Dtype::F16, vec![2, 3], half),
            ("bhalf", Dtype::BF16, vec![3], bhalf),
            ("double", Dtype::F64, vec![2], f64s),
            ("ints", Dtype::I32, vec![2], vec![0; 8]),
        ],
    );
    let t = read_tensor(&p, Some("conv.weight")).unwrap();
    assert_eq!(t.dtype, DType::F32);
    assert_eq!(
        t.data.to_real::<f64>().into_raw_vec_and_offset().0,
        vec![1.0, 2.0, 3.0, 4.5]
    );
    let h = read_tensor(&p, Some("half")).unwrap();
    assert_eq!(h.dtype, DType::F16);
    assert_eq!(h.data.shape(), &[2, 3]);
    let want = [1.0, -2.0, 0.5, 65504.0, 2f64.powi(-24), 2f64.powi(-14)];
    assert_eq!(h.data.to_real::<f64>().into_raw_vec_and_offset().0, want.to_vec());
    let b = read_tensor(&p, Some("bhalf")).unwrap();
    assert_eq!(
        b.data.to_real::<f64>().into_raw_vec_and_offset().0,
        vec![1.0, -2.0, 0.5]
    );
    let d = read_tensor(&p, Some("double")).unwrap();
    assert_eq!(
        d.data,
        AnyTensor::F64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.5, -2.25]).unwrap())
    );

    match read_tensor(&p, Some("ints")) {
        Err(IoError::UnsupportedDtype { name, dtype, .. }) => {
            assert_eq!(name, "ints");
            assert_eq!(dtype, "I32");
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
    match read_tensor(&p, Some("conv.bias")) {
        Err(e @ IoError::TensorNotFound { .. }) => {
            let msg = e.to_string();
            for n in ["conv.weight", "half", "bhalf", "double", "ints"] {
                assert!(msg.contains(&format!("'{n}'")), "{msg}");
            }
        }
        other => panic!("expected TensorNotFound, got {other:?}"),
    }
    assert!(matches!(
        read_tensor(&p, None),
        Err(IoError::NameRequired { count: 5, .. })
    ));
    let listed: Vec<String> = list_tensors(&p).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(listed, vec!["bhalf", "conv.weight", "double", "half", "ints"]);
}

#[test]
fn missing_names_are_listed_and_npy_takes_no_name() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("two.npz");
    let mut w = NpzWriter::new_compressed(File::create(&npz).unwrap());
    w.add_array("a", &sample(&[2, 2])).unwrap();
    w.add_array("b", &sample(&[3])).unwrap();
    w.finish().unwrap();
    let err = read_tensor(&npz, Some("c")).unwrap_err();
    assert!(matches!(err, IoError::TensorNotFound { .. }));
    assert!(err.to_string().contains("'a', 'b'"), "{err}");
    let err = read_tensor(&npz, None).unwrap_err();
    assert!(matches!(err, IoError::NameRequired { count: 2, .. }), "{err}");
    assert!(read_tensor(&npz, Some("b")).is_ok());

    let npy = dir.path().join("x.npy");
    npy_write(&npy, &sample(&[2])).unwrap();
    assert!(matches!(
        read_tensor(&npy, Some("x")),
        Err(IoError::NameNotApplicable { .. })
    ));
}

#[test]
fn non_finite_and_empty_tensors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut x = sample(&[2, 3]);
    x[[1, 2]] = f64::NAN;
    let p = dir.path().join("nan.npy");
    npy_write(&p, &x).unwrap();
    match read_tensor(&p, None) {
        Err(IoError::Tensor {
            source: GbtdError::NonFinite(msg),
            ..
        }) => assert!(msg.contains("flat index 5"), "{msg}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    x[[1, 2]] = f64::INFINITY;
    npy_write(&p, &x).unwrap();
    assert!(matches!(
        read_tensor(&p, None),
        Err(IoError::Tensor {
            source: GbtdError::NonFinite(_),
            ..
        })
    ));
    let e = dir.path().join("empty.npy");
    npy_write(&e, &ArrayD::<f32>::zeros(IxDyn(&[0, 3]))).unwrap();
    assert!(matches!(
        read_tensor(&e, None),
        Err(IoError::Tensor {
            source: GbtdError::Empty(_),
            ..
        })
    ));
}

/// `list_tensors` reads headers only: an `.npz` member whose (compressed) data is cut short is
/// still listed with its shape, while reading it is an error.
#[test]
fn listing_reads_only_headers() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("m.npy");
    npy_write(&good, &sample(&[64, 64])).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let p = dir.path().join("cut.npz");
    let mut zip = zip::ZipWriter::new(File::create(&p).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("whole.npy", opts).unwrap();
    zip.write_all(&bytes).unwrap();
    zip.start_file("cut.npy", opts).unwrap();
    zip.write_all(&bytes[..bytes.len() / 3]).unwrap();
    zip.finish().unwrap();
    let listed: Vec<(String, Vec<usize>)> = list_tensors(&p)
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.shape))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("whole".to_string(), vec![64, 64]),
            ("cut".to_string(), vec![64, 64])
        ]
    );
    assert!(read_tensor(&p, Some("whole")).is_ok());
    assert!(matches!(
        read_tensor(&p, Some("cut")),
        Err(IoError::Corrupt { .. })
    ));
}

#[test]
fn corrupt_truncated_and_unsupported_files_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.npy");
    npy_write(&good, &sample(&[4, 4])).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    // Truncated data, truncated header, trailing garbage, not an npy at all.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("trunc_data.npy", bytes[..bytes.len() - 8].to_vec()),
        ("trunc_header.npy", bytes[..20].to_vec()),
        ("trailing.npy", [bytes.clone(), vec![0u8; 3]].concat()),
        ("garbage.npy", b"this is not a numpy file at all".to_vec()),
        ("empty.npy", Vec::new()),
        ("garbage.npz", b"PK\x03\x04 but then nothing".to_vec()),
        (
            "garbage.safetensors",
            b"\xff\xff\xff\xff\xff\xff\xff\x7f{}".to_vec(),
        ),
        ("short.safetensors", vec![1, 2, 3]),
    ];
    for (name, content) in cases {
        let p = d.join(name);
        std::fs::write(&p, content).unwrap();
        match read_tensor(&p, None) {
            Err(IoError::Corrupt { .. }) => {}
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
    }

    // A header claiming 10^12 elements with 16 bytes of data: rejected before any allocation.
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut huge = b"\x93NUMPY\x01\x00".to_vec();
    huge.extend_from_slice(&(h.len() as u16).to_le_bytes());
    huge.extend_from_slice(h.as_bytes());
    huge.extend_from_slice(&[0u8; 16]);
    let p = d.join("huge.npy");
    std::fs::write(&p, huge).unwrap();
    let err = read_tensor(&p, None).unwrap_err();
    assert!(matches!(err, IoError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("only 16 bytes follow"), "{err}");

    // A truncated safetensors file.
    let st = d.join("t.safetensors");
    st_file(&st, &[("w", Dtype::F32, vec![4], le_f32(&[1.0, 2.0, 3.0, 4.0]))]);
    let b = std::fs::read(&st).unwrap();
    std::fs::write(&st, &b[..b.len() - 4]).unwrap();
    assert!(matches!(read_tensor(&st, None), Err(IoError::Corrupt { .. })));

    // Unknown extension and missing file.
    assert!(matches!(
        read_tensor(&d.join("x.csv"), None),
        Err(IoError::UnknownFormat { .. })
    ));
    assert!(matches!(
        read_tensor(&d.join("absent.npy"), None),
        Err(IoError::Read { .. })
    ));

    // Integer and pickled-object arrays are refused, the pickle never loaded (numpy writes them).
    if !peers::available("corrupt_truncated_and_unsupported_files_give_typed_errors (numpy part)") {
        return;
    }
    run_python(
        r#"
import sys, numpy as np
np.save(sys.argv[1], np.arange(6).reshape(2, 3))
np.save(sys.argv[2], np.array([{'a': 1}, None], dtype=object), allow_pickle=True)
"#,
        &[s(&d.join("int.npy")), s(&d.join("obj.npy"))],
    )
    .unwrap();
    match read_tensor(&d.join("int.npy"), None) {
        Err(IoError::UnsupportedDtype { dtype, .. }) => assert_eq!(dtype, "<i8"),
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
    match read_tensor(&d.join("obj.npy"), None) {
        Err(IoError::UnsupportedDtype { dtype, .. }) => assert_eq!(dtype, "|O"),
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
}

#[test]
fn written_npy_is_read_by_numpy_and_writes_are_atomic() {
    if !peers::available("written_npy_is_read_by_numpy_and_writes_are_atomic") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = sample(&[3, 2, 4]);
    let p = d.join("out.npy");
    write_npy(&p, &x).unwrap();
    let p32 = d.join("out32.npy");
    write_npy(&p32, &x.mapv(|v| v as f32)).unwrap();
    // numpy recomputes a checksum of what it loads.
    let out = run_python(
        r#"
import sys, numpy as np
a = np.load(sys.argv[1]); b = np.load(sys.argv[2])
w = np.arange(a.size).reshape(a.shape)
print(a.dtype, b.dtype, a.shape, repr(float((a * w).sum())), repr(float((b.astype(np.float64) * w).sum())))
"#,
        &[s(&p), s(&p32)],
    )
    .unwrap();
    let w = ArrayD::from_shape_fn(IxDyn(&[3, 2, 4]), |ix| (ix[0] * 8 + ix[1] * 4 + ix[2]) as f64);
    let want = (&x * &w).sum();
    let want32 = (&x.mapv(|v| v as f32 as f64) * &w).sum();
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&parts[..5], &["float64", "float32", "(3,", "2,", "4)"]);
    let got: f64 = parts[5].parse().unwrap();
    let got32: f64 = parts[6].parse().unwrap();
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    assert!((got32 - want32).abs() <= 1e-9 * want32.abs().max(1.0));
    assert_eq!(
        dir_entries(d),
        vec!["out.npy", "out32.npy"],
        "no temporary files left"
    );

    // Overwrite keeps the file valid; a write into a missing directory fails and leaves nothing.
    write_npy(&p, &x.mapv(|v| 2.0 * v)).unwrap();
    let back: ArrayD<f64> = read_npy(&p).unwrap();
    assert_eq!(back, x.mapv(|v| 2.0 * v));
    let missing = d.join("no/such/dir/out.npy");
    match write_npy(&missing, &x) {
        Err(e @ IoError::MissingDirectory { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no/such/dir does not exist") && !msg.contains(".gbtd-"),
                "{msg}"
            );
        }
        other => panic!("expected a missing-directory error, got {other:?}"),
    }
    assert!(!missing.exists());
    assert_eq!(dir_entries(d), vec!["out.npy", "out32.npy"]);

    // An error inside the writer leaves the previous content untouched and no temporary file.
    let err = gbtd::formats::write_atomic(&p, |w| {
        use std::io::Write;
        w.write_all(b"partial")?;
        Err(std::io::Error::other("simulated failure"))
    });
    assert!(matches!(err, Err(IoError::Write { .. })));
    let back: ArrayD<f64> = read_npy(&p).unwrap();
    assert_eq!(back, x.mapv(|v| 2.0 * v));
    assert_eq!(dir_entries(d), vec!["out.npy", "out32.npy"]);
}

#[test]
fn safetensors_writer_round_trips_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let p: PathBuf = dir.path().join("t.safetensors");
    let a = sample(&[2, 3]);
    let b = sample(&[4]);
    let mut meta = BTreeMap::new();
    meta.insert("method".to_string(), "cp".to_string());
    write_safetensors(&p, &[("a".into(), a.clone()), ("b".into(), b.clone())], &meta).unwrap();
    assert_eq!(read_safetensors_metadata(&p).unwrap(), meta);
    // Read back with the safetensors crate directly, independently of gbtd's reader.
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor("a").unwrap();
    assert_eq!(v.dtype(), Dtype::F64);
    assert_eq!(v.shape(), &[2, 3]);
    let vals: Vec<f64> = v
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, a.iter().copied().collect::<Vec<_>>());
    assert_eq!(read_tensor(&p, Some("b")).unwrap().data, AnyTensor::F64(b));

    // f32 tensors are stored as F32.
    let p32 = dir.path().join("t32.safetensors");
    write_safetensors(&p32, &[("a".into(), a.mapv(|v| v as f32))], &BTreeMap::new()).unwrap();
    let t = read_tensor(&p32, None).unwrap();
    assert_eq!(t.dtype, DType::F32);
    assert_eq!(t.data, AnyTensor::F32(a.mapv(|v| v as f32)));
}

// ---------------------------------------------------------------------------------------------
// Factor files
// ---------------------------------------------------------------------------------------------

/// Reads tensor `name` of a safetensors file as f64 with the safetensors crate alone.
fn st_read(bytes: &[u8], name: &str) -> ArrayD<f64> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let v = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("tensor {name} missing"));
    let vals: Vec<f64> = match v.dtype() {
        Dtype::F64 => v
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F32 => v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    };
    ArrayD::from_shape_vec(IxDyn(v.shape()), vals).unwrap()
}

/// Brute-force value of a (partial) Tucker term at index `ix`, straight from the documented layout:
/// `Σ_j core[j] Π_{m∈modes} A_m[i_m, j_m]`, with `j_k = i_k` on kept modes.
fn tucker_entry(core: &ArrayD<f64>, factors: &[(usize, ArrayD<f64>)], ix: &[usize]) -> f64 {
    let mut total = 0.0;
    for (j, &g) in core.indexed_iter() {
        let j = j.slice();
        let kept_ok = (0..ix.len()).all(|k| factors.iter().any(|(m, _)| *m == k) || j[k] == ix[k]);
        if !kept_ok {
            continue;
        }
        let mut p = g;
        for (m, a) in factors {
            p *= a[[ix[*m], j[*m]]];
        }
        total += p;
    }
    total
}

fn test_tensor(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut g = gbtd::random::rng(seed);
    gbtd::random::randn::<f64>(shape, &mut g)
}

#[test]
fn factor_files_follow_the_documented_layout_for_every_method() {
    use gbtd::btd::{BtdOptions, btd};
    use gbtd::cp::{CpOptions, parafac};
    use gbtd::formats::{FactorsFile, read_factors, write_factors};
    use gbtd::tucker::{TuckerOptions, tucker};

    let dir = tempfile::tempdir().unwrap();
    let shape = [5usize, 4, 3, 2];
    let x = test_tensor(&shape, 7);
    let xv = x.view();
    let tk = TuckerOptions::new(vec![3, 2])
        .with_modes(vec![0, 1])
        .with_n_iter_max(3);
    let full = TuckerOptions::new(vec![3, 3, 2, 2]).with_n_iter_max(3);
    let cpo = CpOptions::new(3).with_n_iter_max(5);
    let bo = BtdOptions::new(2, vec![2, 2])
        .with_modes(vec![0, 1])
        .with_n_iter_max(3);
    let cases: Vec<(Method, Box<dyn Decomposition<f64>>)> = vec![
        (Method::Tucker2, Box::new(tucker(&xv, &tk).unwrap())),
        (Method::Tucker, Box::new(tucker(&xv, &full).unwrap())),
        (Method::Cp, Box::new(parafac(&xv, &cpo).unwrap())),
        (Method::Btd { terms: 2 }, Box::new(btd(&xv, &bo).unwrap())),
    ];
    for (method, d) in cases {
        let p = dir.path().join(format!("{method}.safetensors"));
        let mut info = BTreeMap::new();
        info.insert("rel_error".to_string(), "0.5".to_string());
        let want = d.reconstruct().unwrap();
        let n_params = d.n_params();
        let file = FactorsFile {
            method,
            decomposition: d,
            info: info.clone(),
        };
        write_factors(&p, &file).unwrap();

        // The metadata, as documented.
        let meta = read_safetensors_metadata(&p).unwrap();
        assert_eq!(meta["format"], "gbtd.factors");
        assert_eq!(meta["format_version"], "1");
        assert_eq!(meta["method"], method.as_str());
        assert_eq!(meta["shape"], "[5,4,3,2]");
        assert_eq!(meta["dtype"], "F64");
        assert_eq!(meta["rel_error"], "0.5");

        // Rebuild by brute force from the raw tensors, using only the documented names.
        let bytes = std::fs::read(&p).unwrap();
        let modes: Vec<usize> = serde_json::from_str(&meta["modes"]).unwrap();
        let mut brute = ArrayD::<f64>::zeros(IxDyn(&shape));
        match method {
            Method::Cp => {
                assert_eq!(meta["modes"], "[0,1,2,3]");
                assert_eq!(meta["ranks"], "[3]");
                assert_eq!(meta["terms"], "3");
                let w = st_read(&bytes, "weights");
                let f: Vec<ArrayD<f64>> = (0..4).map(|m| st_read(&bytes, &format!("factor.{m}"))).collect();
                for (ix, v) in brute.indexed_iter_mut() {
                    *v = (0..3)
                        .map(|r| w[[r]] * (0..4).map(|m| f[m][[ix[m], r]]).product::<f64>())
                        .sum();
                }
            }
            Method::Btd { .. } => {
                assert_eq!(meta["modes"], "[0,1]");
                assert_eq!(meta["ranks"], "[2,2]");
                assert_eq!(meta["terms"], "2");
                for t in 0..2 {
                    let core = st_read(&bytes, &format!("term.{t}.core"));
                    let f: Vec<(usize, ArrayD<f64>)> = modes
                        .iter()
                        .map(|&m| (m, st_read(&bytes, &format!("term.{t}.factor.{m}"))))
                        .collect();
                    for (ix, v) in brute.indexed_iter_mut() {
                        *v += tucker_entry(&core, &f, ix.slice());
                    }
                }
            }
            _ => {
                assert_eq!(meta["terms"], "1");
                let core = st_read(&bytes, "core");
                let f: Vec<(usize, ArrayD<f64>)> = modes
                    .iter()
                    .map(|&m| (m, st_read(&bytes, &format!("factor.{m}"))))
                    .collect();
                for (ix, v) in brute.indexed_iter_mut() {
                    *v = tucker_entry(&core, &f, ix.slice());
                }
            }
        }
        let diff = (&brute - &want).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        assert!(diff < 1e-12, "{method}: brute-force rebuild differs by {diff}");

        // read_factors gives back the same decomposition (f64 stored exactly) and the info.
        let back = read_factors::<f64>(&p).unwrap();
        assert_eq!(back.method, method);
        assert_eq!(back.decomposition.shape(), shape.to_vec());
        assert_eq!(back.info, info);
        assert_eq!(back.decomposition.reconstruct().unwrap(), want);
        assert_eq!(back.decomposition.n_params(), n_params);
    }
}

#[test]
fn f32_factors_are_stored_as_f32() {
    use gbtd::formats::{AnyFactors, FactorsFile, read_factors_any, write_factors};
    use gbtd::tucker::{TuckerOptions, tucker};
    let dir = tempfile::tempdir().unwrap();
    let x = test_tensor(&[4, 3, 2], 3).mapv(|v| v as f32);
    let t = tucker(&x.view(), &TuckerOptions::new(vec![2, 2, 2])).unwrap();
    let p = dir.path().join("f.safetensors");
    let file = FactorsFile {
        method: Method::Tucker,
        decomposition: Box::new(t.clone()),
        info: BTreeMap::new(),
    };
    write_factors(&p, &file).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.iter().all(|(_, v)| v.dtype() == Dtype::F32));
    match read_factors_any(&p).unwrap() {
        AnyFactors::F32(f) => assert_eq!(f.decomposition.reconstruct().unwrap(), t.reconstruct().unwrap()),
        AnyFactors::F64(_) => panic!("expected f32 factors"),
    }
}

#[test]
fn invalid_factor_files_are_rejected_with_typed_errors() {
    use gbtd::btd::{BlockTerm, Btd};
    use gbtd::formats::{FactorsFile, read_factors, write_factors};
    use gbtd::tucker::{TuckerOptions, tucker};
    let dir = tempfile::tempdir().unwrap();
    let x = test_tensor(&[4, 3, 2], 5);
    let t = tucker(&x.view(), &TuckerOptions::new(vec![2, 2, 2])).unwrap();
    let good = dir.path().join("good.safetensors");
    let file = FactorsFile {
        method: Method::Tucker,
        decomposition: Box::new(t.clone()),
        info: BTreeMap::new(),
    };
    write_factors(&good, &file).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let meta = read_safetensors_metadata(&good).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .iter()
        .map(|(n, v)| (n.to_string(), v.shape().to_vec(), v.data().to_vec()))
        .collect();

    // Rewrites the file with edited metadata and tensors.
    let variant =
        |name: &str, edit_meta: &dyn Fn(&mut BTreeMap<String, String>), drop: Option<&str>, add: bool| {
            let mut m = meta.clone();
            edit_meta(&mut m);
            let mut ts: Vec<(String, TensorView<'_>)> = tensors
                .iter()
                .filter(|(n, _, _)| Some(n.as_str()) != drop)
                .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F64, s.clone(), b).unwrap()))
                .collect();
            let extra = vec![0u8; 8];
            if add {
                ts.push((
                    "stray".into(),
                    TensorView::new(Dtype::F64, vec![1], &extra).unwrap(),
                ));
            }
            let out = safetensors::serialize(ts, Some(m.into_iter().collect())).unwrap();
            let p = dir.path().join(name);
            std::fs::write(&p, out).unwrap();
            read_factors::<f64>(&p)
        };
    type Edit = Box<dyn Fn(&mut BTreeMap<String, String>)>;
    let cases: Vec<(&str, Edit, Option<&str>, bool)> = vec![
        (
            "no_format",
            Box::new(|m| {
                m.remove("format");
            }),
            None,
            false,
        ),
        (
            "other_format",
            Box::new(|m| {
                m.insert("format".into(), "pytorch".into());
            }),
            None,
            false,
        ),
        (
            "version",
            Box::new(|m| {
                m.insert("format_version".into(), "9".into());
            }),
            None,
            false,
        ),
        (
            "method",
            Box::new(|m| {
                m.insert("method".into(), "svd".into());
            }),
            None,
            false,
        ),
        (
            "shape",
            Box::new(|m| {
                m.insert("shape".into(), "[4,3,5]".into());
            }),
            None,
            false,
        ),
        (
            "shape_text",
            Box::new(|m| {
                m.insert("shape".into(), "four".into());
            }),
            None,
            false,
        ),
        (
            "huge",
            Box::new(|m| {
                m.insert("shape".into(), "[100000,100000,100000]".into());
            }),
            None,
            false,
        ),
        (
            "ranks",
            Box::new(|m| {
                m.insert("ranks".into(), "[2,2]".into());
            }),
            None,
            false,
        ),
        (
            "modes",
            Box::new(|m| {
                m.insert("modes".into(), "[0,0,1]".into());
            }),
            None,
            false,
        ),
        ("missing", Box::new(|_| {}), Some("factor.1"), false),
        ("stray", Box::new(|_| {}), None, true),
    ];
    for (name, edit, drop, add) in cases {
        match variant(&format!("{name}.safetensors"), &*edit, drop, add) {
            Err(IoError::Factors { .. }) => {}
            other => panic!("{name}: expected IoError::Factors, got {other:?}"),
        }
    }
    // The unedited rewrite is accepted (the harness itself is sound).
    assert!(variant("same.safetensors", &|_| {}, None, false).is_ok());

    // Non-finite factor values.
    let mut bad = t.clone();
    bad.factors[0][[0, 0]] = f64::NAN;
    let p = dir.path().join("nan.safetensors");
    let file = FactorsFile {
        method: Method::Tucker,
        decomposition: Box::new(bad),
        info: BTreeMap::new(),
    };
    write_factors(&p, &file).unwrap();
    assert!(matches!(
        read_factors::<f64>(&p),
        Err(IoError::Tensor {
            source: GbtdError::NonFinite(_),
            ..
        })
    ));
    // Writing refuses a decomposition that does not fit the layout, and leaves no file: a method
    // label that does not match it, a factor whose columns disagree with the core, a BTD whose
    // terms have different ranks, and repeated modes.
    let p = dir.path().join("mismatch.safetensors");
    let mut wrong_rows = t.clone();
    wrong_rows.factors[1] = ndarray::Array2::zeros((3, 3));
    let uneven = Btd {
        terms: vec![
            BlockTerm {
                core: ArrayD::zeros(IxDyn(&[2, 2, 2])),
                factors: vec![ndarray::Array2::zeros((4, 2)), ndarray::Array2::zeros((3, 2))],
            },
            BlockTerm {
                core: ArrayD::zeros(IxDyn(&[1, 2, 2])),
                factors: vec![ndarray::Array2::zeros((4, 1)), ndarray::Array2::zeros((3, 2))],
            },
        ],
        modes: vec![0, 1],
        shape: vec![4, 3, 2],
        convergence: Default::default(),
    };
    let mut repeated = t.clone();
    repeated.modes = vec![0, 0, 2];
    let refused: Vec<(Method, Box<dyn Decomposition<f64>>)> = vec![
        (Method::Cp, Box::new(t.clone())),
        (Method::Btd { terms: 1 }, Box::new(t.clone())),
        (Method::Tucker, Box::new(wrong_rows)),
        (Method::Btd { terms: 2 }, Box::new(uneven)),
        (Method::Tucker, Box::new(repeated)),
    ];
    for (method, decomposition) in refused {
        let file = FactorsFile {
            method,
            decomposition,
            info: BTreeMap::new(),
        };
        let err = write_factors(&p, &file).unwrap_err();
        assert!(matches!(err, IoError::Factors { .. }), "{method}: {err}");
        assert!(!p.exists(), "{method}: a refused write left a file");
    }
}
