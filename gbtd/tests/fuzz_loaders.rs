//! Mutation fuzzing of every loader that reads user files: both PyTorch checkpoint formats
//! (`gbtd::pth`), the restricted pickle reader (`gbtd::pth::pickle`), and `.npy`, `.npz` and
//! `.safetensors` through the public `gbtd::formats` functions.
//!
//! Starting from valid files (checkpoints written by the pinned torch, the others by gbtd), each
//! case truncates, flips bytes, overwrites integers (pickle arguments, legacy storage sizes, npy
//! and safetensors headers) or rebuilds a checkpoint's zip with one mutated member. The rule:
//! a typed error or a consistent result (each tensor's data length matches its shape); never a
//! panic (caught and reported with its case), an abort, or a single allocation larger than
//! `16 MiB + 64 × input length` (a counting allocator records the largest request).
//!
//! The same counting allocator checks that reading a `.npy` file requests the array's buffer
//! once, not the file's size twice.
//!
//! `cargo test` runs a fixed seed and a fixed number of cases. `scripts/fuzz_loaders.sh` runs the
//! same test for a number of seconds (`GBTD_FUZZ_SECONDS`, seed from `GBTD_FUZZ_SEED` or the
//! clock, printed for reproduction).
use std::io::{Cursor, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use gbtd::pth;
use gbtd::pth::pickle::{self, Limits};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

/// Integers that break size arithmetic.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 40,
    1 << 60,
    u64::MAX,
];

fn mutate(rng: &mut ChaCha8Rng, seed: &[u8], sites: &[usize]) -> (Vec<u8>, &'static str) {
    let mut b = seed.to_vec();
    let n = b.len().max(1);
    let kind = rng.random_range(0..6);
    let name = match kind {
        0 => {
            b.truncate(rng.random_range(0..n));
            "truncate"
        }
        1 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..n);
                if let Some(x) = b.get_mut(i) {
                    *x = rng.random();
                }
            }
            "random bytes"
        }
        2 => {
            let i = rng.random_range(0..n);
            if let Some(x) = b.get_mut(i) {
                *x ^= 1 << rng.random_range(0..8);
            }
            "bit flip"
        }
        3 | 4 => {
            // An interesting integer of 1, 2, 4 or 8 bytes, at a known number site or anywhere.
            let at = if kind == 3 && !sites.is_empty() {
                sites[rng.random_range(0..sites.len())]
            } else {
                rng.random_range(0..n)
            };
            let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
            let w = [1, 2, 4, 8][rng.random_range(0..4)];
            for (k, byte) in v.to_le_bytes()[..w].iter().enumerate() {
                if let Some(x) = b.get_mut(at + k) {
                    *x = *byte;
                }
            }
            if kind == 3 {
                "number at a header site"
            } else {
                "number anywhere"
            }
        }
        _ => {
            // Splice: duplicate or delete a chunk.
            let i = rng.random_range(0..n);
            let len = rng.random_range(0..64).min(b.len().saturating_sub(i));
            if rng.random() {
                let chunk: Vec<u8> = b[i..i + len].to_vec();
                b.splice(i..i, chunk);
                "duplicate chunk"
            } else {
                b.drain(i..i + len);
                "delete chunk"
            }
        }
    };
    (b, name)
}

/// Offsets of the integer arguments of pickle opcodes (K, M, J, LONG1, BINUNICODE lengths ...).
fn pickle_sites(p: &[u8]) -> Vec<usize> {
    p.iter()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'K' | b'M' | b'J' | 0x8a | b'X' | b'q' | b'h' | b'r' | b'j'))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Offsets of a legacy checkpoint's storage element counts (after its five pickles).
fn legacy_sites(b: &[u8]) -> Vec<usize> {
    let mut sites = pickle_sites(b);
    let mut pos = 0;
    for _ in 0..5 {
        let (_, used) = pickle::unpickle(&b[pos..], Limits::for_len(b.len())).unwrap();
        pos += used;
    }
    sites.extend(storage_headers(b, pos).expect("the seed's storage section parses"));
    sites
}

/// Offsets of the 8-byte element counts in a legacy storage section starting at `pos`: the
/// element sizes are not in the section, so the walk tries 1, 2, 4 and 8 and keeps the split
/// that ends exactly at the end of the file.
fn storage_headers(b: &[u8], pos: usize) -> Option<Vec<usize>> {
    if pos == b.len() {
        return Some(Vec::new());
    }
    let n = u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().unwrap()) as usize;
    for es in [1, 2, 4, 8] {
        let next = n.checked_mul(es).and_then(|x| x.checked_add(pos + 8))?;
        if next <= b.len()
            && let Some(mut rest) = storage_headers(b, next)
        {
            rest.insert(0, pos);
            return Some(rest);
        }
    }
    None
}

/// The members of a zip archive.
fn unzip(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(Cursor::new(b)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut v).unwrap();
            (f.name().to_string(), v)
        })
        .collect()
}

/// A stored zip of `members`; `None` when the writer refuses them (a mutated name that
/// duplicates another ...).
fn rezip(members: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        w.start_file(name.as_str(), opts).ok()?;
        w.write_all(data).ok()?;
    }
    Some(w.finish().ok()?.into_inner())
}

#[derive(Default)]
struct Report {
    cases: usize,
    ok: usize,
    failures: Vec<String>,
}

impl Report {
    /// Runs one case: `f` must not panic, must not allocate beyond the bound, and returns
    /// `Ok(true)` for a consistent result, `Ok(false)` for a typed error, `Err` for an
    /// inconsistent result.
    fn case(&mut self, what: &str, input_len: usize, f: impl FnOnce() -> Result<bool, String>) {
        self.cases += 1;
        counting_alloc::reset();
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(f));
        let peak = counting_alloc::largest();
        let bound = (16 << 20) + 64 * input_len;
        match r {
            Ok(Ok(true)) => self.ok += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => self.failures.push(format!("{what}: inconsistent result: {e}")),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.failures.push(format!("{what}: panic: {msg}"));
            }
        }
        if peak > bound {
            self.failures.push(format!(
                "{what}: allocated {peak} bytes at once from a {input_len}-byte input"
            ));
        }
        if t.elapsed() > Duration::from_secs(2) {
            self.failures.push(format!("{what}: took {:?}", t.elapsed()));
        }
    }
}

fn check_ckpt(r: Result<pth::Checkpoint, pth::PthError>) -> Result<bool, String> {
    match r {
        Err(e) => {
            let msg = e.to_string();
            if msg.is_empty() || msg.contains('\n') {
                return Err(format!("error message not one line: {msg:?}"));
            }
            Ok(false)
        }
        Ok(ck) => {
            for t in &ck.tensors {
                let n: usize = t.shape.iter().product();
                if t.to_f64().len() != n {
                    return Err(format!("{}: data does not match shape {:?}", t.name, t.shape));
                }
            }
            Ok(true)
        }
    }
}

/// Lists and reads `path`: a typed error must be one line, a read tensor must match its shape.
fn check_io(path: &Path) -> Result<bool, String> {
    let one_line = |e: gbtd::formats::IoError| {
        let msg = e.to_string();
        if msg.is_empty() || msg.contains('\n') {
            Err(format!("error message not one line: {msg:?}"))
        } else {
            Ok(false)
        }
    };
    let listed = match gbtd::formats::list_tensors(path) {
        Ok(_) => true,
        Err(e) => one_line(e)?,
    };
    let read = match gbtd::formats::read_tensor(path, None) {
        Ok(t) => {
            let n: usize = t.data.shape().iter().product();
            let len = match &t.data {
                gbtd::formats::AnyTensor::F32(a) => a.len(),
                gbtd::formats::AnyTensor::F64(a) => a.len(),
            };
            if len != n {
                return Err(format!("data does not match shape {:?}", t.data.shape()));
            }
            true
        }
        Err(e) => one_line(e)?,
    };
    Ok(listed && read)
}

/// Cases per seed file in `cargo test`, or a time budget from `GBTD_FUZZ_SECONDS`.
/// With a time budget, each of the `phases` mutation loops gets an equal share of it.
struct Budget {
    cases: usize,
    per_phase: Option<Duration>,
    seed: u64,
}

fn budget(cases: usize, phases: u32) -> Budget {
    let secs = std::env::var("GBTD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let seed = std::env::var("GBTD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if secs.is_some() {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        } else {
            0x5eed_f022
        });
    if secs.is_some() {
        eprintln!("fuzz seed {seed} (rerun with GBTD_FUZZ_SEED={seed})");
    }
    Budget {
        cases,
        per_phase: secs.map(|s| Duration::from_secs(s) / phases),
        seed,
    }
}

impl Budget {
    /// Whether a loop that started at `start` and ran `done` cases goes on.
    fn more(&self, done: usize, start: Instant) -> bool {
        match self.per_phase {
            Some(d) => start.elapsed() < d,
            None => done < self.cases,
        }
    }
}

/// Runs `body` with panic messages silenced, and fails with every recorded problem.
fn run_quietly(name: &str, body: impl FnOnce(&mut Report)) {
    let mut report = Report::default();
    {
        // Silence the expected-to-be-caught panics; the guard restores the hook even if the
        // harness itself panics.
        type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;
        struct Restore(Option<Hook>);
        impl Drop for Restore {
            fn drop(&mut self) {
                if let Some(h) = self.0.take() {
                    std::panic::set_hook(h);
                }
            }
        }
        let _restore = Restore(Some(std::panic::take_hook()));
        std::panic::set_hook(Box::new(|_| {}));
        body(&mut report);
    }
    eprintln!(
        "{name}: {} cases, {} valid results, {} problems",
        report.cases,
        report.ok,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "{name}: {} problems, first ones:\n{}",
        report.failures.len(),
        report
            .failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A small checkpoint in both formats, written by the pinned torch: (zip bytes, legacy bytes).
fn torch_seeds() -> Option<(Vec<u8>, Vec<u8>)> {
    if !peers::available("fuzz_pytorch_checkpoints_and_pickles") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    peers::run_python(
        r#"
import sys, collections, torch
torch.manual_seed(0)
base = torch.randn(4, 3)
sd = collections.OrderedDict()
sd["conv.weight"] = torch.randn(2, 3, 3, 3)
sd["half"] = torch.randn(5).half()
sd["t"] = base.t()
sd["slice"] = base[1:, 1:]
sd["n"] = torch.tensor(7)
ck = {"epoch": 1, "state_dict": sd, "optimizer": {"state": {0: {"m": torch.ones(2)}}}}
torch.save(ck, sys.argv[1] + "/z.pth")
torch.save(ck, sys.argv[1] + "/l.pth", _use_new_zipfile_serialization=False)
"#,
        &[d],
    )
    .expect("seed script");
    let z = std::fs::read(dir.path().join("z.pth")).unwrap();
    let l = std::fs::read(dir.path().join("l.pth")).unwrap();
    // The seeds themselves are valid.
    pth::read_from(Cursor::new(&z)).unwrap();
    pth::read_from(Cursor::new(&l)).unwrap();
    Some((z, l))
}

#[test]
fn fuzz_pytorch_checkpoints_and_pickles() {
    let _serial = counting_alloc::serial();
    let Some((zip_seed, legacy_seed)) = torch_seeds() else {
        return;
    };
    let b = budget(1500, 3);
    run_quietly("checkpoints", |rep| {
        let mut rng = ChaCha8Rng::seed_from_u64(b.seed);
        // Legacy: raw byte mutations, aimed at pickle arguments and storage sizes.
        let sites = legacy_sites(&legacy_seed);
        let (mut i, start) = (0, Instant::now());
        while b.more(i, start) {
            let (m, how) = mutate(&mut rng, &legacy_seed, &sites);
            let len = m.len();
            rep.case(&format!("legacy #{i} ({how})"), len, || {
                let listed = pth::list_from(Cursor::new(&m)).is_ok();
                let _ = pth::read_tensor_from(Cursor::new(&m), Some("t"));
                let r = check_ckpt(pth::read_from(Cursor::new(&m)))?;
                if r && !listed {
                    return Err("read succeeded where list failed".into());
                }
                Ok(r)
            });
            i += 1;
        }
        // Zip: mutate one member (data.pkl, a storage, byteorder, a name) and rebuild the
        // archive so that the member CRCs hold; a third of the cases mutate the raw archive.
        let members = unzip(&zip_seed);
        let (mut i, start) = (0, Instant::now());
        while b.more(i, start) {
            let (m, how) = if i % 3 == 2 {
                mutate(&mut rng, &zip_seed, &[])
            } else {
                let mut ms = members.clone();
                let k = rng.random_range(0..ms.len());
                if rng.random_range(0..10) == 0 {
                    let (name, _) = mutate(&mut rng, ms[k].0.as_bytes(), &[]);
                    ms[k].0 = String::from_utf8_lossy(&name).into_owned();
                } else {
                    let sites = if ms[k].0.ends_with("data.pkl") {
                        pickle_sites(&ms[k].1)
                    } else {
                        Vec::new()
                    };
                    ms[k].1 = mutate(&mut rng, &ms[k].1, &sites).0;
                }
                // The zip writer itself may panic on a mutated name: such cases are skipped.
                match catch_unwind(|| rezip(&ms)).ok().flatten() {
                    Some(z) => (z, "zip member"),
                    None => continue,
                }
            };
            let len = m.len();
            rep.case(&format!("zip #{i} ({how})"), len, || {
                let _ = pth::list_from(Cursor::new(&m));
                let _ = pth::read_tensor_from(Cursor::new(&m), Some("t"));
                check_ckpt(pth::read_from(Cursor::new(&m)))
            });
            i += 1;
        }
        // The pickle reader alone, on the zip's data.pkl.
        let pkl = &members.iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1;
        let sites = pickle_sites(pkl);
        let (mut i, start) = (0, Instant::now());
        while b.more(i, start) {
            let (m, how) = mutate(&mut rng, pkl, &sites);
            let len = m.len();
            rep.case(&format!("pickle #{i} ({how})"), len, || {
                Ok(pickle::unpickle(&m, Limits::for_len(m.len())).is_ok())
            });
            i += 1;
        }
    });
}

#[test]
fn fuzz_npy_npz_safetensors() {
    let _serial = counting_alloc::serial();
    let dir = tempfile::tempdir().unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |ix| {
        (ix[0] * 20 + ix[1] * 5 + ix[2]) as f32 * 0.25
    });
    let npy = dir.path().join("seed.npy");
    gbtd::formats::write_npy(&npy, &x).unwrap();
    let st = dir.path().join("seed.safetensors");
    let tensors = vec![("a".to_string(), x.clone()), ("b".to_string(), x.mapv(|v| -v))];
    gbtd::formats::write_safetensors(&st, &tensors, &Default::default()).unwrap();
    let npz = dir.path().join("seed.npz");
    {
        let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&npz).unwrap());
        w.add_array("a", &x).unwrap();
        w.add_array("b", &x.mapv(|v| v as f64)).unwrap();
        w.finish().unwrap();
    }
    let b = budget(500, 3);
    run_quietly("npy/npz/safetensors", |rep| {
        let mut rng = ChaCha8Rng::seed_from_u64(b.seed ^ 0xa5a5);
        for seed_path in [&npy, &st, &npz] {
            let seed = std::fs::read(seed_path).unwrap();
            // npy: the header's dict text; safetensors: the 8-byte header length and JSON.
            let sites: Vec<usize> = (0..seed.len().min(128)).collect();
            let ext = seed_path.extension().unwrap().to_str().unwrap();
            let target = dir.path().join(format!("case.{ext}"));
            let (mut i, start) = (0, Instant::now());
            while b.more(i, start) {
                let (m, how) = mutate(&mut rng, &seed, &sites);
                std::fs::write(&target, &m).unwrap();
                rep.case(&format!("{ext} #{i} ({how})"), m.len(), || check_io(&target));
                i += 1;
            }
        }
    });
}

/// Every single-bit flip of an `.npy` seed's header and of a whole small `.npz` seed (fixed, no
/// randomness): the version byte (`1 -> 3` makes the header length a `u32`) and the zip
/// directory's sizes are where oversized allocations came from. Errors must be one line.
#[test]
fn every_bit_flip_of_npy_header_and_npz() {
    let _serial = counting_alloc::serial();
    let dir = tempfile::tempdir().unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |ix| {
        (ix[0] * 20 + ix[1] * 5 + ix[2]) as f32 * 0.25
    });
    let npy = dir.path().join("seed.npy");
    gbtd::formats::write_npy(&npy, &x).unwrap();
    let npz = dir.path().join("seed.npz");
    {
        let mut w = ndarray_npy::NpzWriter::new_compressed(std::fs::File::create(&npz).unwrap());
        w.add_array("a", &x).unwrap();
        w.add_array("b", &x.mapv(|v| v as f64)).unwrap();
        w.finish().unwrap();
    }
    // The uncompressed archive of `fuzz_npy_npz_safetensors`: its zip directory (the last
    // bytes) holds the member sizes.
    let stored = dir.path().join("stored.npz");
    {
        let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&stored).unwrap());
        w.add_array("a", &x).unwrap();
        w.add_array("b", &x.mapv(|v| v as f64)).unwrap();
        w.finish().unwrap();
    }
    let stored_len = std::fs::metadata(&stored).unwrap().len() as usize;
    let one_line = |r: Result<(), String>| match r {
        Err(e) if e.is_empty() || e.contains('\n') => Err(format!("error not one line: {e:?}")),
        Err(_) => Ok(false),
        Ok(()) => Ok(true),
    };
    run_quietly("bit flips", |rep| {
        let cases = [
            (&npy, 0..128),
            (&npz, 0..usize::MAX),
            (&stored, stored_len - 256..stored_len),
        ];
        for (seed_path, span) in cases {
            let seed = std::fs::read(seed_path).unwrap();
            let ext = seed_path.extension().unwrap().to_str().unwrap();
            let target = dir.path().join(format!("flip.{ext}"));
            for at in span.start..seed.len().min(span.end) {
                for bit in 0..8 {
                    let mut m = seed.clone();
                    m[at] ^= 1 << bit;
                    std::fs::write(&target, &m).unwrap();
                    rep.case(&format!("{ext} byte {at} bit {bit}"), m.len(), || {
                        let listed = gbtd::formats::list_tensors(&target).map(|_| ());
                        let name = (ext == "npz").then_some("a");
                        let read = gbtd::formats::read_tensor(&target, name).map(|_| ());
                        let a = one_line(listed.map_err(|e| e.to_string()))?;
                        let b = one_line(read.map_err(|e| e.to_string()))?;
                        Ok(a && b)
                    });
                }
            }
        }
    });
}

/// A `.npy` file (format 1.0) of `shape` with descriptor `descr`, holding `data`.
fn npy_file(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let fortran = if fortran { "True" } else { "False" };
    let mut dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((dict.len() as u16).to_le_bytes());
    b.extend(dict.as_bytes());
    b.extend(data);
    b
}

/// `.npy` data goes straight into the array: reading a 16 MiB array requests its own buffer and
/// less than 1 MiB besides (a read into a buffer then converted would request the file's size
/// twice), in C and Fortran order and when `f2` widens to `f32`.
#[test]
fn reading_npy_allocates_the_array_once() {
    let _serial = counting_alloc::serial();
    let dir = tempfile::tempdir().unwrap();
    let shape = [1024, 2048];
    let count = shape[0] * shape[1];
    let f64s: Vec<u8> = (0..count).flat_map(|i| (i as f64).to_be_bytes()).collect();
    let f16s: Vec<u8> = (0..count)
        .flat_map(|i| half::f16::from_f64((i % 2048) as f64).to_le_bytes())
        .collect();
    let cases = [
        (">f8", false, &f64s, count * 8),
        (">f8", true, &f64s, count * 8),
        ("<f2", false, &f16s, count * 4),
    ];
    for (descr, fortran, data, array_bytes) in cases {
        let path = dir.path().join("a.npy");
        std::fs::write(&path, npy_file(descr, fortran, &shape, data)).unwrap();
        let (t, total) = counting_alloc::total_of(|| gbtd::formats::read_tensor(&path, None).unwrap());
        let what = format!("{descr} fortran={fortran}");
        assert!(
            total < array_bytes + (1 << 20),
            "{what}: {total} bytes requested for a {array_bytes}-byte array"
        );
        // Element [i, j] is the file's element i + 1024 j (Fortran) or 2048 i + j (C).
        let at = |i: usize, j: usize| if fortran { i + 1024 * j } else { 2048 * i + j };
        let expect = |k: usize| {
            if descr == "<f2" {
                (k % 2048) as f64
            } else {
                k as f64
            }
        };
        for (i, j) in [(0, 0), (1, 0), (0, 1), (1023, 2047), (517, 1234)] {
            let got = match &t.data {
                gbtd::formats::AnyTensor::F64(a) => a[[i, j]],
                gbtd::formats::AnyTensor::F32(a) => a[[i, j]] as f64,
            };
            assert_eq!(got, expect(at(i, j)), "{what} [{i}, {j}]");
        }
    }
}
