//! The restricted pickle reader (`gbtd::pth::pickle`) on pickles built to be expensive, with
//! hand-written bytes: a dict of a million keys filled by `SETITEMS` (and keys set again, from
//! the memo and as fresh strings), and memoized values used many times over (a list doubled 60
//! times, a long string referenced 100,000 times, a list filled after it was memoized).
//!
//! The reader must give what Python's `pickle.loads` gives (checked against the pinned Python
//! when it is set up), and a counting allocator bounds the bytes it requests in total: a memo
//! that copied values instead of sharing them would need 2^60 lists or gigabytes of string
//! copies. The dict's cost is linear by construction (a hash index, see the `keys` module of
//! `gbtd::pth::pickle`); this test checks a million keys read correctly in bounded memory.
use gbtd::pth::pickle::{Limits, Object, Value, unpickle};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

const PROTO2: [u8; 2] = [0x80, 2];

/// BINUNICODE.
fn text(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

/// BININT.
fn int(out: &mut Vec<u8>, v: i32) {
    out.push(b'J');
    out.extend(v.to_le_bytes());
}

/// LONG_BINPUT / LONG_BINGET.
fn put(out: &mut Vec<u8>, k: u32) {
    out.push(b'r');
    out.extend(k.to_le_bytes());
}
fn get(out: &mut Vec<u8>, k: u32) {
    out.push(b'j');
    out.extend(k.to_le_bytes());
}

fn read(p: &[u8]) -> Object {
    unpickle(p, Limits::for_len(p.len())).unwrap().0
}

/// What the pinned Python prints for the pickle `p` with `script` (which finds the object in
/// `x`), or `None` when the Python peers are not set up.
fn python(test: &str, p: &[u8], script: &str) -> Option<String> {
    if !peers::available(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.pkl");
    std::fs::write(&file, p).unwrap();
    let code = format!("import pickle, sys\nx = pickle.load(open(sys.argv[1], 'rb'))\n{script}");
    let out = peers::run_python(&code, &[file.to_str().unwrap()]).expect("python reads the pickle");
    Some(out.trim().to_string())
}

const KEYS: u32 = 1_000_000;

/// The value of key `k{i}` after [`million_keys`].
fn final_value(i: u32) -> i64 {
    match i % 10 {
        0 => -(i as i64),
        5 => 2 * i as i64,
        _ => i as i64,
    }
}

/// `{"k0": 0, ..., "k999999": 999999}` as Python's pickler writes it (`SETITEMS` in batches of
/// 1,000, each key memoized), then every tenth key set again to `-i` through the memo (the same
/// key objects) and every tenth-plus-five to `2 i` with fresh, equal strings, in one `SETITEMS`.
fn million_keys() -> Vec<u8> {
    let mut p = PROTO2.to_vec();
    p.extend(b"}q\x00");
    for batch in 0..KEYS / 1000 {
        p.push(b'(');
        for i in batch * 1000..(batch + 1) * 1000 {
            text(&mut p, &format!("k{i}"));
            put(&mut p, i + 1);
            int(&mut p, i as i32);
        }
        p.push(b'u');
    }
    p.push(b'(');
    for i in (0..KEYS).step_by(5) {
        if i % 10 == 0 {
            get(&mut p, i + 1);
            int(&mut p, -(i as i32));
        } else {
            text(&mut p, &format!("k{i}"));
            int(&mut p, 2 * i as i32);
        }
    }
    p.extend(b"u.");
    p
}

#[test]
fn a_million_keys_set_by_setitems_read_as_python_reads_them() {
    let _serial = counting_alloc::serial();
    let p = million_keys();
    let (obj, total) = counting_alloc::total_of(|| read(&p));
    let d = obj.as_dict(obj.root()).unwrap();
    assert_eq!(d.items().len(), KEYS as usize);
    for (i, &(k, v)) in d.items().iter().enumerate() {
        let i = i as u32;
        assert_eq!(obj.as_str(k), Some(format!("k{i}").as_str()));
        assert_eq!(obj.as_int(v), Some(final_value(i)), "k{i}");
    }
    assert_eq!(
        obj.dict_get(d, "k123455").and_then(|v| obj.as_int(v)),
        Some(246_910)
    );
    // Everything built (values, memo, the dict and its key index) in a few hundred bytes per
    // key; the input is 23 bytes per key.
    let per_key = total / KEYS as usize;
    assert!(
        per_key < 1000,
        "{total} bytes requested in total ({per_key} per key)"
    );
    eprintln!(
        "{} input bytes; {total} bytes requested ({per_key} per key)",
        p.len()
    );

    let sum: i64 = (0..KEYS).map(final_value).sum();
    let want = format!("{} {} k0 k{}", KEYS, sum, KEYS - 1);
    if let Some(got) = python(
        "a_million_keys_set_by_setitems_read_as_python_reads_them",
        &p,
        "print(len(x), sum(x.values()), next(iter(x)), list(x)[-1])",
    ) {
        assert_eq!(got, want);
    }
}

#[test]
fn memoized_values_are_shared_as_in_python() {
    let _serial = counting_alloc::serial();
    let test = "memoized_values_are_shared_as_in_python";

    // x = []; 60 times: x = [x, x], both items fetched from the memo.
    let mut p = PROTO2.to_vec();
    p.extend(b"]q\x00");
    for _ in 0..60 {
        p.extend(b"(h\x00h\x00lq\x00");
    }
    p.push(b'.');
    let (obj, total) = counting_alloc::total_of(|| read(&p));
    assert!(total < 64 << 10, "{total} bytes for a {}-byte pickle", p.len());
    let mut x = obj.root();
    for level in 0..60 {
        let items = obj.as_seq(x).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1], "level {level}: the two items are one list");
        x = items[0];
    }
    assert_eq!(obj.as_seq(x), Some(&[][..]));
    if let Some(got) = python(
        test,
        &p,
        "n = 0\nwhile x: assert x[0] is x[1]; x = x[0]; n += 1\nprint(n)",
    ) {
        assert_eq!(got, "60");
    }

    // A 64 KiB string referenced 100,000 times: one string, not 6.4 GB of copies.
    let mut p = PROTO2.to_vec();
    text(&mut p, &"s".repeat(64 << 10));
    p.extend(b"q\x00](");
    for _ in 0..100_000 {
        p.extend(b"h\x00");
    }
    p.extend(b"e.");
    let (obj, total) = counting_alloc::total_of(|| read(&p));
    assert!(total < 8 << 20, "{total} bytes for a {}-byte pickle", p.len());
    let items = obj.as_seq(obj.root()).unwrap();
    assert_eq!(items.len(), 100_000);
    assert!(items.iter().all(|&i| i == items[0]));
    if let Some(got) = python(test, &p, "print(len(x), len(set(map(id, x))), len(x[0]))") {
        assert_eq!(got, "100000 1 65536");
    }

    // L = []; outer = [L, L]; then L.append(7): the change is seen through both references.
    let p = b"\x80\x02]q\x00(h\x00h\x00lh\x00K\x07a0.";
    let obj = read(p);
    let outer = obj.as_seq(obj.root()).unwrap();
    let inner: Vec<&Value> = obj
        .as_seq(outer[1])
        .unwrap()
        .iter()
        .map(|&i| obj.get(i))
        .collect();
    assert_eq!(
        (outer.len(), outer[0] == outer[1], inner),
        (2, true, vec![&Value::Int(7)])
    );
    if let Some(got) = python(test, p, "print(x, x[0] is x[1])") {
        assert_eq!(got, "[[7], [7]] True");
    }
}
