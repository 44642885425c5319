//! Dict keys compared as Python compares them, in constant time per lookup.
//!
//! Each value used as a key gets a canonical key: the first value with equal content. A dict
//! indexes its items by canonical key ([`KeyIndex`]), so a lookup compares two `Id`s. Content
//! follows Python's equality: `True`, `1` and `1.0` are one key (bools and integral floats
//! count as integers), `str` and `bytes` differ, tuples are equal when their items are, and
//! globals and devices compare by value. Tensors and persistent ids compare by identity (as
//! Python objects without `__eq__` do); NaN floats compare by their bits. Lists and dicts are
//! unhashable, as in Python, and refused as keys.
//!
//! Cost: each value is given its canonical key once (hashing and comparing its content), so a
//! key fetched again and again from the memo costs one hash-map lookup each time, however long
//! its text, and any sequence of `SETITEM`s takes time linear in the pickle's length.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};

use super::torch::Callable;
use super::value::{Id, Value};

/// What a key is compared by (see the module doc).
#[derive(Debug, Hash, PartialEq, Eq)]
enum Content<'a> {
    None,
    Int(i64),
    BigInt(&'a [u8]),
    Float(u64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Global(&'a Callable),
    Device(&'a str),
    /// The canonical keys of the items.
    Tuple(Vec<Id>),
    Identity(Id),
}

/// A float as Python compares it with integers: integral values within `i64` are integers.
fn float_content<'a>(f: f64) -> Content<'a> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) {
        Content::Int(f as i64)
    } else {
        Content::Float(f.to_bits())
    }
}

/// The canonical key of every value used as a key so far.
#[derive(Debug, Clone, Default)]
pub(super) struct Keys {
    hasher: RandomState,
    /// Value → its canonical key.
    canonical: HashMap<Id, Id>,
    /// Content hash → the canonical key with that hash (the first one, on a collision).
    by_hash: HashMap<u64, Id>,
    /// Canonical keys whose hash was already taken by another content (64-bit collisions).
    collided: Vec<(u64, Id)>,
}

impl Keys {
    /// The canonical key of `key` (a value of `values`), computed once per value. Tuples of
    /// tuples are followed at most `max_depth` deep.
    pub(super) fn canonical(&mut self, values: &[Value], key: Id, max_depth: u32) -> Result<Id, String> {
        self.canonical_at(values, key, 0, max_depth)
    }

    fn canonical_at(&mut self, values: &[Value], key: Id, depth: u32, max_depth: u32) -> Result<Id, String> {
        if let Some(&c) = self.canonical.get(&key) {
            return Ok(c);
        }
        if let Value::Tuple(items) = &values[key.index()] {
            if depth >= max_depth {
                return Err(format!("a dict key nests tuples more than {max_depth} deep"));
            }
            for &item in items {
                self.canonical_at(values, item, depth + 1, max_depth)?;
            }
        }
        let content = self.content(values, key)?;
        let hash = self.hasher.hash_one(&content);
        let c = match self.lookup(values, hash, &content) {
            Some(c) => c,
            None => {
                match self.by_hash.entry(hash) {
                    Entry::Occupied(_) => self.collided.push((hash, key)),
                    Entry::Vacant(slot) => {
                        slot.insert(key);
                    }
                }
                key
            }
        };
        self.canonical.insert(key, c);
        Ok(c)
    }

    /// The content of `key`, whose tuple items (if any) already have canonical keys.
    fn content<'a>(&self, values: &'a [Value], key: Id) -> Result<Content<'a>, String> {
        Ok(match &values[key.index()] {
            Value::None => Content::None,
            Value::Bool(b) => Content::Int(*b as i64),
            Value::Int(i) => Content::Int(*i),
            Value::BigInt(b) => Content::BigInt(b),
            Value::Float(f) => float_content(*f),
            Value::Str(s) => Content::Str(s),
            Value::Bytes(b) => Content::Bytes(b),
            Value::Global(c) => Content::Global(c),
            Value::Device(d) => Content::Device(d),
            Value::Tuple(items) => Content::Tuple(items.iter().map(|i| self.canonical[i]).collect()),
            Value::Tensor(_) | Value::Persistent(_) => Content::Identity(key),
            v @ (Value::List(_) | Value::Dict(_)) => {
                return Err(format!("a {} is not a valid dict key (unhashable)", v.kind()));
            }
        })
    }

    /// The canonical key with content `content` (of hash `hash`), if any.
    fn lookup(&self, values: &[Value], hash: u64, content: &Content<'_>) -> Option<Id> {
        let same = |c: Id| self.content(values, c).is_ok_and(|other| other == *content);
        match self.by_hash.get(&hash) {
            None => None,
            Some(&c) if same(c) => Some(c),
            Some(_) => self
                .collided
                .iter()
                .find(|&&(h, c)| h == hash && same(c))
                .map(|&(_, c)| c),
        }
    }

    /// The canonical key equal to the string `key`, if a dict ever used one.
    pub(super) fn find_str(&self, values: &[Value], key: &str) -> Option<Id> {
        let content = Content::Str(key);
        self.lookup(values, self.hasher.hash_one(&content), &content)
    }
}

/// A dict's index: canonical key → position of its item.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct KeyIndex(HashMap<Id, usize>);

impl KeyIndex {
    pub(super) fn get(&self, canonical: Id) -> Option<usize> {
        self.0.get(&canonical).copied()
    }

    pub(super) fn insert(&mut self, canonical: Id, pos: usize) {
        self.0.insert(canonical, pos);
    }
}
