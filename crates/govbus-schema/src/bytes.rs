//! Avro binary read in place: a reader that walks encoded bytes without
//! building values, reads one string field by path, and writes a record
//! with some fields left out. The router's fast path routes with it
//! (`govbus-router/src/fast.rs`); every function answers `None` for bytes
//! it cannot walk, never panics, and leaves the decision to the caller.

use apache_avro::Schema;

use crate::names::Names;

/// Appends `v` as an Avro long (zig-zag varint).
pub fn write_long(w: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        w.push((z as u8) | 0x80);
        z >>= 7;
    }
    w.push(z as u8);
}

/// A position in Avro-encoded bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from `pos`.
    pub fn new(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    /// Where the next read starts.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Reads a long (zig-zag varint); None past the end or over 64 bits.
    pub fn long(&mut self) -> Option<i64> {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        Some((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    /// Skips `n` bytes; None past the end.
    pub fn advance(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        (end <= self.buf.len()).then(|| self.pos = end)
    }

    /// Skips a length-prefixed `bytes` or `string`.
    pub fn skip_bytes(&mut self) -> Option<()> {
        let n = usize::try_from(self.long()?).ok()?;
        self.advance(n)
    }

    /// Reads a `string` (None when it is not UTF-8).
    pub fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.long()?).ok()?;
        let start = self.pos;
        self.advance(n)?;
        std::str::from_utf8(self.buf.get(start..self.pos)?).ok()
    }

    /// Runs `f` and answers the byte range it read.
    pub fn span(&mut self, f: impl FnOnce(&mut Self) -> Option<()>) -> Option<(usize, usize)> {
        let start = self.pos;
        f(self)?;
        Some((start, self.pos))
    }

    /// Skips a value of `s`.
    pub fn skip(&mut self, s: &Schema, names: &Names) -> Option<()> {
        match s {
            Schema::Null => Some(()),
            Schema::Boolean => self.advance(1),
            // Dates and timestamps out of range cannot be walked: the
            // general path refuses them with their field.
            Schema::Date => self
                .long()
                .filter(|d| crate::limits::date_problem(*d).is_none())
                .map(|_| ()),
            Schema::TimestampMillis | Schema::LocalTimestampMillis => self
                .long()
                .filter(|ms| crate::limits::timestamp_problem(*ms).is_none())
                .map(|_| ()),
            Schema::TimestampMicros | Schema::LocalTimestampMicros => self
                .long()
                .filter(|us| crate::limits::timestamp_problem(us.div_euclid(1_000)).is_none())
                .map(|_| ()),
            Schema::TimestampNanos | Schema::LocalTimestampNanos => self
                .long()
                .filter(|ns| crate::limits::timestamp_problem(ns.div_euclid(1_000_000)).is_none())
                .map(|_| ()),
            Schema::Int | Schema::Long | Schema::TimeMillis | Schema::TimeMicros => {
                self.long().map(|_| ())
            }
            // What a decoder would refuse is not walked either: an enum
            // index past its symbols, a string that is not UTF-8.
            Schema::Enum(e) => self
                .long()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < e.symbols.len())
                .map(|_| ()),
            Schema::Float => self.advance(4),
            Schema::Double => self.advance(8),
            Schema::String | Schema::Uuid => self.str().map(|_| ()),
            Schema::Bytes | Schema::BigDecimal => self.skip_bytes(),
            Schema::Fixed(f) => self.advance(f.size),
            Schema::Duration => self.advance(12),
            Schema::Decimal(d) => self.skip(&d.inner, names),
            Schema::Record(r) => {
                for f in &r.fields {
                    self.skip(&f.schema, names)?;
                }
                Some(())
            }
            Schema::Union(u) => {
                let i = usize::try_from(self.long()?).ok()?;
                self.skip(u.variants().get(i)?, names)
            }
            Schema::Array(a) => self.blocks(|r| r.skip(&a.items, names)),
            Schema::Map(m) => self.blocks(|r| {
                r.skip_bytes()?;
                r.skip(&m.types, names)
            }),
            Schema::Ref { name } => self.skip(names.get(name)?, names),
        }
    }

    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        loop {
            let n = self.long()?;
            if n == 0 {
                return Some(());
            }
            if n < 0 {
                self.long()?; // block size in bytes
            }
            for _ in 0..n.unsigned_abs() {
                item(self)?;
            }
        }
    }
}

fn resolve<'s>(s: &'s Schema, names: &'s Names) -> Option<&'s Schema> {
    match s {
        Schema::Ref { name } => names.get(name),
        other => Some(other),
    }
}

/// The string at `path` in a record's bytes: Some(Some(s)) a string (or an
/// enum's symbol), Some(None) null, None when the walk cannot tell (the
/// general path decides).
pub fn field_str<'a>(
    s: &'a Schema,
    names: &'a Names,
    bytes: &'a [u8],
    path: &[String],
) -> Option<Option<&'a str>> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut schema = resolve(s, names)?;
    let mut path = path;
    loop {
        let Schema::Record(rec) = schema else {
            return None;
        };
        let (first, rest) = path.split_first()?;
        let mut found = None;
        for f in &rec.fields {
            if f.name == *first {
                found = Some(&f.schema);
                break;
            }
            r.skip(&f.schema, names)?;
        }
        let mut fs = resolve(found?, names)?;
        if let Schema::Union(u) = fs {
            let i = usize::try_from(r.long()?).ok()?;
            fs = resolve(u.variants().get(i)?, names)?;
            if *fs == Schema::Null {
                // null.field is an error in CEL: let the general path say so.
                return if rest.is_empty() { Some(None) } else { None };
            }
        }
        if rest.is_empty() {
            return match fs {
                Schema::String => r.str().map(Some),
                Schema::Enum(e) => {
                    let i = usize::try_from(r.long()?).ok()?;
                    e.symbols.get(i).map(|s| Some(s.as_str()))
                }
                Schema::Null => Some(None),
                _ => None,
            };
        }
        schema = fs;
        path = rest;
    }
}

/// Writes a record's bytes without the `drops` paths (as the view's schema
/// has them: the same fields in the same order, minus the dropped ones).
pub fn project(
    s: &Schema,
    names: &Names,
    bytes: &[u8],
    drops: &[Vec<String>],
    w: &mut Vec<u8>,
) -> Option<()> {
    if drops.is_empty() {
        w.extend_from_slice(bytes);
        return Some(());
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    project_value(&mut r, resolve(s, names)?, names, drops, w)?;
    (r.pos == bytes.len()).then_some(())
}

fn project_value(
    r: &mut Reader<'_>,
    s: &Schema,
    names: &Names,
    drops: &[Vec<String>],
    w: &mut Vec<u8>,
) -> Option<()> {
    match resolve(s, names)? {
        Schema::Record(rec) => {
            for f in &rec.fields {
                let whole = drops
                    .iter()
                    .any(|d| matches!(d.as_slice(), [n] if *n == f.name));
                let inner: Vec<Vec<String>> = drops
                    .iter()
                    .filter_map(|d| match d.split_first() {
                        Some((n, rest)) if *n == f.name && !rest.is_empty() => Some(rest.to_vec()),
                        _ => None,
                    })
                    .collect();
                let start = r.pos;
                if whole {
                    r.skip(&f.schema, names)?;
                } else if inner.is_empty() {
                    r.skip(&f.schema, names)?;
                    w.extend_from_slice(r.buf.get(start..r.pos)?);
                } else {
                    project_value(r, &f.schema, names, &inner, w)?;
                }
            }
            Some(())
        }
        Schema::Union(u) => {
            let start = r.pos;
            let i = usize::try_from(r.long()?).ok()?;
            w.extend_from_slice(r.buf.get(start..r.pos)?);
            project_value(r, u.variants().get(i)?, names, drops, w)
        }
        other => {
            let start = r.pos;
            r.skip(other, names)?;
            w.extend_from_slice(r.buf.get(start..r.pos)?);
            Some(())
        }
    }
}
