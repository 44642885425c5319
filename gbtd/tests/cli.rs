//! End-to-end tests of the `gbtd` binary: `decompose` → `reconstruct` round trips for every method
//! on fixtures written here (ndarray-npy for .npy/.npz, the safetensors crate for .safetensors),
//! the reported error and parameter counts checked against values recomputed in the test, and every
//! bad input answered by one `error:` line, a non-zero status and no output file.
//! The binary runs with `LD_LIBRARY_PATH` removed (gbtd must not need it).
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{Array2, ArrayD, IxDyn};
use ndarray_npy::{NpzWriter, read_npy, write_npy};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::Value;

fn gbtd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gbtd"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run gbtd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "gbtd failed: {}", stderr(o));
    stdout(o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn randn(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut g = gbtd::random::rng(seed);
    gbtd::random::randn::<f64>(shape, &mut g)
}

fn mat(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    randn(&[rows, cols], seed).into_dimensionality().unwrap()
}

/// `‖a − b‖ / ‖a‖`, computed here.
fn rel_err(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = a.iter().map(|x| x * x).sum();
    (num / den).sqrt()
}

/// `G ×_0 A ×_1 B` for a 4-D `G` by explicit sums: an exact Tucker-2 term.
fn tucker2_term(g: &ArrayD<f64>, a: &Array2<f64>, b: &Array2<f64>) -> ArrayD<f64> {
    let (o, i) = (a.nrows(), b.nrows());
    let (kh, kw) = (g.shape()[2], g.shape()[3]);
    ArrayD::from_shape_fn(IxDyn(&[o, i, kh, kw]), |ix| {
        let mut v = 0.0;
        for p in 0..a.ncols() {
            for q in 0..b.ncols() {
                v += g[[p, q, ix[2], ix[3]]] * a[[ix[0], p]] * b[[ix[1], q]];
            }
        }
        v
    })
}

struct Run {
    json: Value,
    rebuilt: ArrayD<f64>,
}

/// `decompose --json --out F` then `reconstruct F --out R.npy`; returns the report and R.
fn decompose_and_rebuild(dir: &Path, input: &Path, extra: &[&str], tag: &str) -> Run {
    let factors = dir.join(format!("{tag}.safetensors"));
    let rebuilt = dir.join(format!("{tag}.npy"));
    let mut args = vec!["decompose", s(input), "--json", "--out", s(&factors)];
    args.extend_from_slice(extra);
    let out = gbtd(&args);
    let text = ok(&out);
    assert!(stderr(&out).is_empty(), "stderr not empty: {}", stderr(&out));
    assert_eq!(text.lines().count(), 1, "one JSON object on one line: {text}");
    let json: Value = serde_json::from_str(&text).unwrap();
    let msg = ok(&gbtd(&["reconstruct", s(&factors), "--out", s(&rebuilt)]));
    assert!(msg.contains("wrote"), "{msg}");
    let rebuilt = match read_npy::<_, ArrayD<f64>>(&rebuilt) {
        Ok(a) => a,
        Err(_) => read_npy::<_, ArrayD<f32>>(&rebuilt).unwrap().mapv(|v| v as f64),
    };
    Run { json, rebuilt }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn uint(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}")) as usize
}

fn check_report(run: &Run, x: &ArrayD<f64>, params_after: usize, max_iter: usize, tol_err: f64) {
    let j = &run.json;
    let recomputed = rel_err(x, &run.rebuilt);
    let reported = num(j, "rel_error");
    assert!(
        (reported - recomputed).abs() <= tol_err * recomputed.max(1e-300) + 1e-12,
        "reported {reported} vs recomputed {recomputed}"
    );
    assert_eq!(uint(j, "params_before"), x.len());
    assert_eq!(uint(j, "params_after"), params_after);
    let compression = num(j, "compression");
    assert!((compression - x.len() as f64 / params_after as f64).abs() < 1e-9);
    let iters = uint(j, "iterations");
    assert!(iters <= max_iter);
    assert_eq!(j["error_history"].as_array().unwrap().len(), iters + 1);
    assert!(num(j, "seconds") >= 0.0);
    assert!(j["converged"].is_boolean());
}

#[test]
fn every_method_round_trips_through_a_factors_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shape = [8usize, 6, 3, 3];
    let x = randn(&shape, 11);
    let input = d.join("kernel.npy");
    write_npy(&input, &x).unwrap();
    let (o, i, k) = (8, 6, 9);

    let run = decompose_and_rebuild(
        d,
        &input,
        &["--method", "tucker2", "--rank", "3,2", "--max-iter", "5"],
        "t2",
    );
    check_report(&run, &x, 3 * 2 * k + o * 3 + i * 2, 5, 1e-9);
    assert_eq!(run.json["method"], "tucker2");
    assert_eq!(run.json["modes"], serde_json::json!([0, 1]));
    assert_eq!(run.json["ranks"], serde_json::json!([3, 2]));
    assert_eq!(run.json["dtype"], "f64");

    let run = decompose_and_rebuild(
        d,
        &input,
        &["--method", "tucker", "--rank", "3,2,2,3", "--max-iter", "4"],
        "t",
    );
    check_report(&run, &x, 3 * 2 * 2 * 3 + o * 3 + i * 2 + 3 * 2 + 3 * 3, 4, 1e-9);

    let run = decompose_and_rebuild(
        d,
        &input,
        &["--method", "cp", "--rank", "4", "--max-iter", "7", "--tol", "0"],
        "cp",
    );
    check_report(&run, &x, 4 * (o + i + 3 + 3) + 4, 7, 1e-9);
    assert_eq!(uint(&run.json, "iterations"), 7, "tol 0 runs every sweep");
    assert_eq!(run.json["converged"], false);

    let run = decompose_and_rebuild(
        d,
        &input,
        &[
            "--method",
            "btd",
            "--terms",
            "2",
            "--rank",
            "2,2",
            "--max-iter",
            "4",
        ],
        "btd",
    );
    check_report(&run, &x, 2 * (2 * 2 * k + o * 2 + i * 2), 4, 1e-9);
    assert_eq!(uint(&run.json, "terms"), 2);
}

#[test]
fn exact_low_rank_kernels_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Exact Tucker-2 of rank (2,3) and exact sum of two block terms of rank (2,2), built here.
    let g = randn(&[2, 3, 3, 3], 1);
    let x_t2 = tucker2_term(&g, &mat(7, 2, 2), &mat(5, 3, 3));
    let p = d.join("t2.npy");
    write_npy(&p, &x_t2).unwrap();
    let run = decompose_and_rebuild(d, &p, &["--method", "tucker2", "--rank", "2,3"], "t2");
    assert!(num(&run.json, "rel_error") < 1e-10, "{}", run.json);
    assert!(rel_err(&x_t2, &run.rebuilt) < 1e-10);

    let x_btd = &tucker2_term(&randn(&[2, 2, 3, 3], 4), &mat(9, 2, 5), &mat(8, 2, 6))
        + &tucker2_term(&randn(&[2, 2, 3, 3], 7), &mat(9, 2, 8), &mat(8, 2, 9));
    let p = d.join("btd.npy");
    write_npy(&p, &x_btd).unwrap();
    let run = decompose_and_rebuild(
        d,
        &p,
        &[
            "--method",
            "btd",
            "--terms",
            "2",
            "--rank",
            "2,2",
            "--max-iter",
            "300",
            "--tol",
            "1e-14",
        ],
        "btd",
    );
    assert!(rel_err(&x_btd, &run.rebuilt) < 1e-6, "{}", run.json);

    // Exact rank-3 CP tensor: Σ_r a_r ∘ b_r ∘ c_r.
    let (a, b, c) = (mat(6, 3, 10), mat(5, 3, 11), mat(4, 3, 12));
    let x_cp = ArrayD::from_shape_fn(IxDyn(&[6, 5, 4]), |ix| {
        (0..3)
            .map(|r| a[[ix[0], r]] * b[[ix[1], r]] * c[[ix[2], r]])
            .sum::<f64>()
    });
    let p = d.join("cp.npy");
    write_npy(&p, &x_cp).unwrap();
    let run = decompose_and_rebuild(
        d,
        &p,
        &[
            "--method",
            "cp",
            "--rank",
            "3",
            "--max-iter",
            "500",
            "--tol",
            "1e-15",
        ],
        "cp",
    );
    assert!(rel_err(&x_cp, &run.rebuilt) < 1e-6, "{}", run.json);
}

#[test]
fn npz_and_safetensors_inputs_by_name_and_f32_precision() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = randn(&[6, 5, 3, 3], 21);
    let x32 = x.mapv(|v| v as f32);

    let npz = d.join("w.npz");
    let mut w = NpzWriter::new(File::create(&npz).unwrap());
    w.add_array("bias", &randn(&[6], 1)).unwrap();
    w.add_array("weight", &x).unwrap();
    w.finish().unwrap();
    let run = decompose_and_rebuild(
        d,
        &npz,
        &["--tensor", "weight", "--method", "tucker2", "--rank", "2,2"],
        "npz",
    );
    check_report(&run, &x, 2 * 2 * 9 + 6 * 2 + 5 * 2, 100, 1e-9);
    assert_eq!(run.json["tensor"], "weight");

    let st = d.join("w.safetensors");
    let bytes: Vec<u8> = x32.iter().flat_map(|v| v.to_le_bytes()).collect();
    let other = vec![0u8; 4 * 6];
    let views = vec![
        (
            "layer.weight",
            TensorView::new(Dtype::F32, vec![6, 5, 3, 3], &bytes).unwrap(),
        ),
        (
            "layer.bias",
            TensorView::new(Dtype::F32, vec![6], &other).unwrap(),
        ),
    ];
    std::fs::write(&st, safetensors::serialize(views, None).unwrap()).unwrap();
    let run = decompose_and_rebuild(
        d,
        &st,
        &[
            "--tensor",
            "layer.weight",
            "--method",
            "cp",
            "--rank",
            "3",
            "--max-iter",
            "10",
        ],
        "st",
    );
    let x32_64 = x32.mapv(|v| v as f64);
    // Computed and stored in f32: the report matches the f32 rebuild to f32 accuracy.
    check_report(&run, &x32_64, 3 * (6 + 5 + 3 + 3) + 3, 10, 1e-5);
    assert_eq!(run.json["dtype"], "f32");
    assert_eq!(run.json["input_dtype"], "f32");
    let factors = std::fs::read(d.join("st.safetensors")).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&factors).unwrap();
    assert!(parsed.iter().all(|(_, v)| v.dtype() == Dtype::F32));
    assert!(
        read_npy::<_, ArrayD<f32>>(d.join("st.npy")).is_ok(),
        "f32 factors rebuild as f32"
    );

    // --dtype f64 computes an f32 input in double precision.
    let out = ok(&gbtd(&[
        "decompose",
        s(&st),
        "--tensor",
        "layer.weight",
        "--method",
        "cp",
        "--rank",
        "3",
        "--max-iter",
        "10",
        "--dtype",
        "f64",
        "--json",
    ]));
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["dtype"], "f64");
    assert!((num(&j, "rel_error") - num(&run.json, "rel_error")).abs() < 1e-3);
}

#[test]
fn human_output_is_a_table_and_info_lists_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = randn(&[6, 4, 3, 3], 5);
    let p = d.join("k.npy");
    write_npy(&p, &x).unwrap();
    let out = gbtd(&[
        "decompose",
        s(&p),
        "--method",
        "tucker2",
        "--rank",
        "3,2",
        "--max-iter",
        "3",
    ]);
    let text = ok(&out);
    // Not a terminal: the progress bar draws nothing.
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    for label in [
        "relative error",
        "params before",
        "params after",
        "compression",
        "iterations",
        "seconds",
    ] {
        assert!(text.contains(label), "missing '{label}' in:\n{text}");
    }
    assert!(text.contains(&format!("{}", 6 * 4 * 9)), "{text}");
    // Values are aligned in one column.
    let cols: Vec<usize> = text
        .lines()
        .skip(1)
        .map(|l| {
            // Start of the value: the first non-space after the label's two-space gap.
            let label_start = l.len() - l.trim_start().len();
            let gap = label_start + l[label_start..].find("  ").unwrap();
            gap + l[gap..].find(|c: char| c != ' ').unwrap()
        })
        .collect();
    assert!(cols.windows(2).all(|w| w[0] == w[1]), "{text}");

    let st = d.join("f.safetensors");
    ok(&gbtd(&[
        "decompose",
        s(&p),
        "--method",
        "btd",
        "--terms",
        "2",
        "--rank",
        "2,2",
        "--out",
        s(&st),
        "-q",
    ]));
    let info = ok(&gbtd(&["info", s(&st)]));
    for name in [
        "term.0.core",
        "term.1.factor.0",
        "term.1.factor.1",
        "gbtd.factors",
        "[6,4,3,3]",
    ] {
        assert!(info.contains(name), "missing {name} in:\n{info}");
    }
    let info = ok(&gbtd(&["info", s(&p)]));
    assert!(info.contains("[6, 4, 3, 3]") && info.contains("<f8"), "{info}");
}

/// Runs a failing command: non-zero status, exactly one `error:` line, no panic, no output.
fn expect_failure(args: &[&str], outputs: &[&PathBuf], needle: &str) {
    let out = gbtd(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    assert!(stdout(&out).is_empty(), "{args:?}: stdout {}", stdout(&out));
    for p in outputs {
        assert!(!p.exists(), "{args:?} left {}", p.display());
    }
}

#[test]
fn bad_input_gives_one_error_line_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = randn(&[6, 4, 3, 3], 8);
    let k = d.join("k.npy");
    write_npy(&k, &x).unwrap();
    let mut bad = x.clone();
    bad[[1, 2, 0, 1]] = f64::NAN;
    let nan = d.join("nan.npy");
    write_npy(&nan, &bad).unwrap();
    let npz = d.join("two.npz");
    let mut w = NpzWriter::new(File::create(&npz).unwrap());
    w.add_array("w", &x).unwrap();
    w.add_array("b", &randn(&[6], 2)).unwrap();
    w.finish().unwrap();
    let txt = d.join("k.txt");
    std::fs::write(&txt, "1 2 3").unwrap();
    let corrupt = d.join("corrupt.npy");
    let bytes = std::fs::read(&k).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let out = d.join("out.safetensors");
    let o = &[&out];
    let (ks, ns, zs) = (s(&k), s(&nan), s(&npz));
    let outs = s(&out);
    let missing = d.join("missing.npy");

    fn with_out<'a>(extra: &[&'a str], out: &'a str) -> Vec<&'a str> {
        let mut v = vec!["decompose"];
        v.extend_from_slice(extra);
        v.extend_from_slice(&["--out", out]);
        v
    }
    expect_failure(
        &with_out(&[s(&missing), "--method", "cp", "--rank", "2"], outs),
        o,
        "missing.npy",
    );
    expect_failure(
        &with_out(&[s(&txt), "--method", "cp", "--rank", "2"], outs),
        o,
        "unknown file type",
    );
    expect_failure(
        &with_out(&[zs, "--tensor", "kernel", "--method", "cp", "--rank", "2"], outs),
        o,
        "'w', 'b'",
    );
    expect_failure(
        &with_out(&[zs, "--method", "cp", "--rank", "2"], outs),
        o,
        "--tensor",
    );
    expect_failure(
        &with_out(&[ks, "--method", "tucker2", "--rank", "3,x"], outs),
        o,
        "'x'",
    );
    expect_failure(
        &with_out(&[ks, "--method", "tucker2", "--rank", "3,5"], outs),
        o,
        "exceeds",
    );
    expect_failure(
        &with_out(&[ks, "--method", "tucker2", "--rank", "3,0"], outs),
        o,
        "at least 1",
    );
    expect_failure(
        &with_out(&[ks, "--method", "tucker", "--rank", "3,3"], outs),
        o,
        "one rank per mode",
    );
    expect_failure(
        &with_out(&[ks, "--method", "cp", "--rank", "3,3"], outs),
        o,
        "single rank",
    );
    expect_failure(
        &with_out(&[ks, "--method", "tucker2"], outs),
        o,
        "--rank is required",
    );
    expect_failure(
        &with_out(&[ks, "--method", "btd", "--rank", "2,2"], outs),
        o,
        "--terms",
    );
    expect_failure(
        &with_out(&[ks, "--method", "cp", "--rank", "2", "--terms", "2"], outs),
        o,
        "--terms",
    );
    expect_failure(
        &with_out(
            &[ks, "--method", "tucker", "--rank", "2,2", "--modes", "0,7"],
            outs,
        ),
        o,
        "mode 7",
    );
    expect_failure(
        &with_out(&[ns, "--method", "tucker2", "--rank", "2,2"], outs),
        o,
        "NaN",
    );
    expect_failure(
        &with_out(&[ks, "--method", "svd", "--rank", "2"], outs),
        o,
        "invalid value 'svd'",
    );
    expect_failure(
        &with_out(&[ks, "--method", "cp", "--rank", "2", "--tol", "-1"], outs),
        o,
        "--tol",
    );
    expect_failure(
        &with_out(&[s(&corrupt), "--method", "cp", "--rank", "2"], outs),
        o,
        "truncated",
    );
    expect_failure(
        &with_out(&[ks, "--method", "cp", "--rank", "2", "--tensor", "w"], outs),
        o,
        "--tensor",
    );
    let npy_out = d.join("out.npy");
    expect_failure(
        &[
            "decompose",
            ks,
            "--method",
            "cp",
            "--rank",
            "2",
            "--out",
            s(&npy_out),
        ],
        &[&npy_out],
        ".safetensors",
    );
    let deep = d.join("no/such/dir/f.safetensors");
    expect_failure(
        &[
            "decompose",
            ks,
            "--method",
            "cp",
            "--rank",
            "2",
            "--out",
            s(&deep),
        ],
        &[&deep],
        "does not exist",
    );

    // reconstruct: not a factors file, a plain safetensors file, a missing file.
    let rec = d.join("rec.npy");
    let r = &[&rec];
    expect_failure(&["reconstruct", ks, "--out", s(&rec)], r, ".safetensors");
    let plain = d.join("plain.safetensors");
    let data = vec![0u8; 16];
    let views = vec![("w", TensorView::new(Dtype::F32, vec![4], &data).unwrap())];
    std::fs::write(&plain, safetensors::serialize(views, None).unwrap()).unwrap();
    expect_failure(
        &["reconstruct", s(&plain), "--out", s(&rec)],
        r,
        "gbtd decompose --out",
    );
    expect_failure(
        &["reconstruct", s(&d.join("nope.safetensors")), "--out", s(&rec)],
        r,
        "nope.safetensors",
    );
    expect_failure(&["info", s(&d.join("nope.npz"))], &[], "nope.npz");
    // Ranks whose factors and workspace would not fit are refused before anything is
    // allocated (CP rank 100000: a 100000² Gram matrix), with the bytes needed.
    expect_failure(
        &with_out(&[ks, "--method", "cp", "--rank", "100000"], outs),
        o,
        "bytes of factors and workspace",
    );
    expect_failure(
        &with_out(
            &[ks, "--method", "btd", "--terms", "1000000", "--rank", "1,1"],
            outs,
        ),
        o,
        "bytes of factors and workspace",
    );
    // reconstruct into a missing directory names the directory, not a temporary file.
    let factors = d.join("f.safetensors");
    ok(&gbtd(&[
        "decompose",
        ks,
        "--method",
        "cp",
        "--rank",
        "2",
        "--out",
        s(&factors),
        "--quiet",
    ]));
    let nowhere = d.join("absent/r.npy");
    let absent = d.join("absent");
    let out = gbtd(&["reconstruct", s(&factors), "--out", s(&nowhere)]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("directory {} does not exist", absent.display())) && !err.contains(".gbtd-"),
        "{err}"
    );
    std::fs::remove_file(&factors).unwrap();

    // Nothing but the fixtures is left in the directory (no temporary files either).
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "corrupt.npy",
            "k.npy",
            "k.txt",
            "nan.npy",
            "plain.safetensors",
            "two.npz"
        ]
    );
}

/// Medium problems split their products over threads (in fixed 512-column pieces) and their
/// Gram matrices into fixed pieces, so the factors are bitwise the same whatever the number of
/// threads the process is given. `--threads 2` gives two threads even on a one-core machine,
/// which `blas-info` confirms (the pool and OpenBLAS), so the comparison is never between two
/// single-threaded runs.
#[test]
fn factors_do_not_depend_on_the_thread_count() {
    let info = ok(&gbtd(&["blas-info", "--json", "--threads", "2"]));
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["threads"], 2, "{info}");
    assert_eq!(info["openblas_threads"], 2, "{info}");
    let dir = tempfile::tempdir().unwrap();
    // 60³ with rank 10: 2·|X|·R ≈ 4.3 MFLOP per product, inside the split range.
    let input = dir.path().join("x.npy");
    write_npy(&input, &randn(&[60, 60, 60], 77)).unwrap();
    for (method, rank) in [("tucker", "10,10,10"), ("cp", "10")] {
        let mut factors = Vec::new();
        for threads in ["1", "2"] {
            let out = dir.path().join(format!("{method}-{threads}.safetensors"));
            let o = Command::new(env!("CARGO_BIN_EXE_gbtd"))
                .args(["decompose", s(&input), "--method", method, "--rank", rank])
                .args(["--max-iter", "5", "--tol", "0", "--quiet", "--out", s(&out)])
                .args(["--threads", threads])
                .env_remove("LD_LIBRARY_PATH")
                .env_remove("OPENBLAS_NUM_THREADS")
                .output()
                .expect("run gbtd");
            ok(&o);
            let bytes = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut tensors: Vec<(String, Vec<u8>)> = st
                .tensors()
                .into_iter()
                .map(|(n, t)| (n, t.data().to_vec()))
                .collect();
            tensors.sort();
            factors.push(tensors);
        }
        assert!(!factors[0].is_empty());
        assert!(
            factors[0] == factors[1],
            "{method}: factors differ between 1 and 2 threads"
        );
    }
}

/// Ranks that make the layer larger than the original are warned about on stderr (not with
/// `--json` or `--quiet`); compressing ranks are not. Parameter counts computed here.
#[test]
fn growing_ranks_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k.npy");
    // A depthwise-like kernel (8, 1, 5, 5): 200 parameters.
    write_npy(&k, &randn(&[8, 1, 5, 5], 3)).unwrap();
    let ks = s(&k);
    // CP rank R holds R·(8 + 1 + 5 + 5) + R weights: rank 2 → 40 < 200, rank 20 → 400 > 200.
    let run = |rank: &str, extra: &[&str]| {
        let mut args = vec![
            "decompose",
            ks,
            "--method",
            "cp",
            "--rank",
            rank,
            "--max-iter",
            "3",
        ];
        args.extend_from_slice(extra);
        gbtd(&args)
    };
    let grow = run("20", &[]);
    ok(&grow);
    let err = stderr(&grow);
    assert!(
        err.contains("warning: these ranks make the layer larger than the original"),
        "{err}"
    );
    for extra in [&["--json"][..], &["--quiet"][..]] {
        let o = run("20", extra);
        ok(&o);
        assert!(!stderr(&o).contains("warning"), "{extra:?}: {}", stderr(&o));
    }
    let shrink = run("2", &[]);
    ok(&shrink);
    assert!(!stderr(&shrink).contains("warning"), "{}", stderr(&shrink));
}

/// f32 values near `f32::MAX` (whose squares overflow f32, which made LAPACK fail) decompose:
/// `X = Y·2^127` is exact, and the relative error is scale-invariant, so every method must give
/// the error of `Y` itself, and the rebuilt tensor must be `2^127` times `Y`'s. Forcing
/// `--dtype f32` says to use f64 instead, without output.
#[test]
fn values_near_f32_max_decompose() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Y in [1, 1.99]: X = Y·2^127 reaches 3.4e38, just below f32::MAX.
    let y = randn(&[8, 6, 3, 3], 21).mapv(|v| (1.5 + 0.16 * v.clamp(-3.0, 3.0)) as f32);
    let scale = 2f32.powi(127);
    let x = y.mapv(|v| v * scale);
    assert!(x.iter().all(|v| v.is_finite()) && x.iter().any(|&v| v > 3.0e38));
    let (yp, xp) = (d.join("y.npy"), d.join("x.npy"));
    write_npy(&yp, &y).unwrap();
    write_npy(&xp, &x).unwrap();
    for (tag, method) in [
        ("tucker2", &["--method", "tucker2", "--rank", "3,2"][..]),
        ("cp", &["--method", "cp", "--rank", "3"][..]),
        ("btd", &["--method", "btd", "--terms", "2", "--rank", "2,2"][..]),
    ] {
        let mut ya = method.to_vec();
        ya.extend_from_slice(&["--dtype", "f64"]);
        let small = decompose_and_rebuild(d, &yp, &ya, &format!("{tag}-y"));
        let big = decompose_and_rebuild(d, &xp, method, &format!("{tag}-x"));
        let (es, eb) = (num(&small.json, "rel_error"), num(&big.json, "rel_error"));
        assert!(es > 0.0 && (es - eb).abs() <= 1e-9 * es, "{tag}: {es} vs {eb}");
        let expect = small.rebuilt.mapv(|v| v * f64::from(scale));
        assert!(rel_err(&big.rebuilt, &expect) < 1e-6, "{tag}: rebuilt differs");
    }
    let out = d.join("f.safetensors");
    expect_failure(
        &[
            "decompose",
            s(&xp),
            "--method",
            "cp",
            "--rank",
            "3",
            "--dtype",
            "f32",
            "--out",
            s(&out),
        ],
        &[&out],
        "rerun with --dtype f64",
    );
}

/// `gbtd info` marks conv kernels: 4-D floating-point tensors in PyTorch's `(out, in, kh, kw)`
/// layout, "depthwise" when `in = 1`; biases, matrices and integer buffers are not. The table
/// has the column and `--json` the same facts.
#[test]
fn info_marks_conv_kernels_in_the_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("m.safetensors");
    let f32s = |n: usize| -> Vec<u8> { (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect() };
    let (conv, dw, pw, bias, fc) = (f32s(8 * 4 * 9), f32s(8 * 9), f32s(8 * 4), f32s(8), f32s(10 * 8));
    let ints: Vec<u8> = (0..16i64).flat_map(|i| i.to_le_bytes()).collect();
    let views = vec![
        (
            "conv.weight",
            TensorView::new(Dtype::F32, vec![8, 4, 3, 3], &conv).unwrap(),
        ),
        (
            "dw.weight",
            TensorView::new(Dtype::F32, vec![8, 1, 3, 3], &dw).unwrap(),
        ),
        (
            "pw.weight",
            TensorView::new(Dtype::F32, vec![8, 4, 1, 1], &pw).unwrap(),
        ),
        ("conv.bias", TensorView::new(Dtype::F32, vec![8], &bias).unwrap()),
        (
            "fc.weight",
            TensorView::new(Dtype::F32, vec![10, 8], &fc).unwrap(),
        ),
        (
            "counts",
            TensorView::new(Dtype::I64, vec![2, 2, 2, 2], &ints).unwrap(),
        ),
    ];
    std::fs::write(&st, safetensors::serialize(views, None).unwrap()).unwrap();
    let want = [
        ("conv.weight", "yes", true, false),
        ("dw.weight", "depthwise", true, true),
        ("pw.weight", "yes", true, false),
        ("conv.bias", "no", false, false),
        ("fc.weight", "no", false, false),
        ("counts", "no", false, false),
    ];

    let table = ok(&gbtd(&["info", s(&st)]));
    let header = table.lines().nth(1).unwrap();
    assert!(header.trim_end().ends_with("conv kernel"), "{table}");
    for (name, label, _, _) in want {
        let line = table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"));
        assert_eq!(line.split_whitespace().last(), Some(label), "{line}");
    }

    let json: Value = serde_json::from_str(&ok(&gbtd(&["info", s(&st), "--json"]))).unwrap();
    assert_eq!(json["format"], "safetensors");
    let tensors = json["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), want.len());
    for (name, _, conv, depthwise) in want {
        let t = tensors.iter().find(|t| t["name"] == name).unwrap();
        assert_eq!(t["conv_kernel"], conv, "{t}");
        assert_eq!(t["depthwise"], depthwise, "{t}");
    }
    let c = tensors.iter().find(|t| t["name"] == "conv.weight").unwrap();
    assert_eq!(c["shape"], serde_json::json!([8, 4, 3, 3]));
    assert_eq!(c["elements"], 8 * 4 * 9);
    assert_eq!(c["dtype"], "F32");

    // A .npy kernel, no metadata.
    let p = dir.path().join("k.npy");
    write_npy(&p, &randn(&[6, 4, 3, 3], 1)).unwrap();
    let json: Value = serde_json::from_str(&ok(&gbtd(&["info", s(&p), "--json"]))).unwrap();
    assert_eq!(json["tensors"][0]["conv_kernel"], true);
    assert_eq!(json["format"], "npy");
}
