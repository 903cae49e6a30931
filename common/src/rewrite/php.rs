//! PHP `serialize()` data inside a value: parsing it and rewriting the strings it holds, with every
//! byte length (`s:N:`, `C:N:`) recomputed; and the choice, per value, between that, plain URL
//! replacement, and leaving the value alone.

use super::url::Matcher;
use super::{Counters, Edit};

/// Deepest nesting (arrays, objects, serialized strings inside serialized strings) rewritten.
/// Deeper values are left alone (and counted as unparseable).
pub(crate) const MAX_DEPTH: usize = 128;

/// Appends the edits (in `base` coordinates) that rewrite the value `val`.
///
/// - no mention of the `from` host: nothing;
/// - starts like PHP serialized data: parsed; strings inside are rewritten recursively (so
///   double-serialized data and JSON inside serialized strings work) and their lengths
///   recomputed; when it does not parse completely, nothing (and it is counted);
/// - otherwise: plain URL replacement (this covers JSON, HTML, text).
pub(crate) fn value_edits(
    m: &Matcher,
    val: &[u8],
    base: usize,
    depth: usize,
    edits: &mut Vec<Edit>,
    counters: &mut Counters,
) {
    if !m.may_match(val) {
        return;
    }
    let lead = val.iter().take_while(|&&b| is_php_trim(b)).count();
    let trail = val[lead..]
        .iter()
        .rev()
        .take_while(|&&b| is_php_trim(b))
        .count();
    let body = &val[lead..val.len() - trail];
    if !looks_serialized(body) {
        m.url_edits(val, base, edits);
        return;
    }
    if depth >= MAX_DEPTH {
        counters.unparseable += 1;
        return;
    }
    let mut parser = Parser {
        m,
        input: body,
        base: base + lead,
        pos: 0,
        depth: depth + 1,
        edits: Vec::new(),
        counters: Counters::default(),
        relengthed: false,
    };
    if parser.value().is_ok() && parser.pos == body.len() {
        counters.add(parser.counters);
        if depth == 0 && parser.relengthed {
            counters.serialized_relengthed += 1;
        }
        edits.append(&mut parser.edits);
    } else {
        counters.unparseable += 1;
    }
}

/// The characters PHP's `trim()` removes (WordPress trims before unserializing).
fn is_php_trim(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0 | 0x0b)
}

/// Whether `v` starts like a PHP serialized value (`a:2:{`, `s:5:"`, `O:8:"`, `i:-1;`, `N;`, …).
/// Such a value is either parsed completely or left alone: plain replacement inside it would
/// break its lengths.
pub(crate) fn looks_serialized(v: &[u8]) -> bool {
    match v {
        [b'N', b';', ..] => true,
        [t, b':', c, ..] => match t {
            b'a' | b'O' | b'C' | b's' | b'S' | b'E' => c.is_ascii_digit(),
            b'b' | b'i' | b'd' | b'r' | b'R' => c.is_ascii_digit() || matches!(c, b'-' | b'+'),
            _ => false,
        },
        _ => false,
    }
}

/// Whether `v` holds something like a serialized string (`s:12:"`) anywhere.
fn has_serialized_string(v: &[u8]) -> bool {
    v.windows(3)
        .enumerate()
        .filter(|(_, w)| w[0] == b's' && w[1] == b':' && w[2].is_ascii_digit())
        .any(|(i, _)| {
            let digits = v[i + 2..].iter().take_while(|b| b.is_ascii_digit()).count();
            v[i + 2 + digits..].starts_with(b":\"")
        })
}

struct Parser<'a, 'm> {
    m: &'m Matcher,
    input: &'a [u8],
    /// Offset of `input[0]` in the coordinates edits are given in.
    base: usize,
    pos: usize,
    depth: usize,
    edits: Vec<Edit>,
    counters: Counters,
    /// Some length was recomputed.
    relengthed: bool,
}

/// The input is not PHP serialized data.
struct Invalid;

type Parsed<T = ()> = Result<T, Invalid>;

impl Parser<'_, '_> {
    fn peek(&self) -> Parsed<u8> {
        self.input.get(self.pos).copied().ok_or(Invalid)
    }

    fn expect(&mut self, token: &[u8]) -> Parsed {
        if self.input[self.pos..].starts_with(token) {
            self.pos += token.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// `[0-9]+`, returned with where its digits are.
    fn uint(&mut self) -> Parsed<(usize, usize, usize)> {
        let start = self.pos;
        let mut n: usize = 0;
        while let Some(&b) = self.input.get(self.pos) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(b - b'0')))
                .ok_or(Invalid)?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(Invalid);
        }
        Ok((n, start, self.pos))
    }

    /// `[+-]?[0-9]+`.
    fn int(&mut self) -> Parsed {
        if matches!(self.peek()?, b'+' | b'-') {
            self.pos += 1;
        }
        self.uint().map(|_| ())
    }

    /// `N:"<N bytes>"`: returns where the bytes are and where the length digits are.
    fn counted_bytes(&mut self) -> Parsed<(usize, usize, usize, usize)> {
        let (n, len_start, len_end) = self.uint()?;
        self.expect(b":\"")?;
        let start = self.pos;
        let end = start.checked_add(n).ok_or(Invalid)?;
        if end > self.input.len() {
            return Err(Invalid);
        }
        self.pos = end;
        self.expect(b"\"")?;
        Ok((start, end, len_start, len_end))
    }

    /// After `s:`: `N:"<N bytes>";`, rewriting the bytes when `rewrite`.
    fn string(&mut self, rewrite: bool) -> Parsed {
        let (start, end, len_start, len_end) = self.counted_bytes()?;
        self.expect(b";")?;
        if rewrite {
            let mut inner = Vec::new();
            value_edits(
                self.m,
                &self.input[start..end],
                self.base + start,
                self.depth,
                &mut inner,
                &mut self.counters,
            );
            self.push_relengthed(end - start, len_start, len_end, inner);
        }
        Ok(())
    }

    /// Pushes `inner` (edits inside a counted run of `old_len` bytes) preceded by the edit of
    /// the count itself (digits at `len_start..len_end`) when the length changes.
    fn push_relengthed(
        &mut self,
        old_len: usize,
        len_start: usize,
        len_end: usize,
        mut inner: Vec<Edit>,
    ) {
        if inner.is_empty() {
            return;
        }
        let delta: isize = inner.iter().map(Edit::delta).sum();
        if delta != 0 {
            let new_len = old_len as isize + delta;
            self.edits.push(Edit {
                start: self.base + len_start,
                end: self.base + len_end,
                replacement: new_len.to_string().into_bytes(),
            });
            self.relengthed = true;
        }
        self.edits.append(&mut inner);
    }

    /// An array key or object property name: `i:N;` or `s:N:"…";` (never rewritten, like
    /// WP-CLI's search-replace: rewriting keys could merge two of them).
    fn key(&mut self) -> Parsed {
        match self.peek()? {
            b'i' => {
                self.expect(b"i:")?;
                self.int()?;
                self.expect(b";")
            }
            b's' => {
                self.expect(b"s:")?;
                self.string(false)
            }
            _ => Err(Invalid),
        }
    }

    /// `N:{` key/value × N `}`.
    fn members(&mut self) -> Parsed {
        let (n, _, _) = self.uint()?;
        self.expect(b":{")?;
        if self.depth >= MAX_DEPTH {
            return Err(Invalid);
        }
        self.depth += 1;
        for _ in 0..n {
            self.key()?;
            self.value()?;
        }
        self.depth -= 1;
        self.expect(b"}")
    }

    fn value(&mut self) -> Parsed {
        match self.peek()? {
            b'N' => self.expect(b"N;"),
            b'b' => {
                self.expect(b"b:")?;
                match self.peek()? {
                    b'0' | b'1' => self.pos += 1,
                    _ => return Err(Invalid),
                }
                self.expect(b";")
            }
            b'i' | b'r' | b'R' => {
                self.pos += 1;
                self.expect(b":")?;
                self.int()?;
                self.expect(b";")
            }
            b'd' => {
                self.expect(b"d:")?;
                let start = self.pos;
                while self
                    .input
                    .get(self.pos)
                    .is_some_and(|&b| b.is_ascii_digit() || b"+-.eEINFA".contains(&b))
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(Invalid);
                }
                self.expect(b";")
            }
            b's' => {
                self.expect(b"s:")?;
                self.string(true)
            }
            // Enum case `E:N:"Class:Case";`: a name, not data.
            b'E' => {
                self.expect(b"E:")?;
                self.string(false)
            }
            b'a' => {
                self.expect(b"a:")?;
                self.members()
            }
            b'O' => {
                self.expect(b"O:")?;
                self.counted_bytes()?;
                self.expect(b":")?;
                self.members()
            }
            b'C' => {
                self.expect(b"C:")?;
                self.counted_bytes()?;
                self.expect(b":")?;
                let (n, len_start, len_end) = self.uint()?;
                self.expect(b":{")?;
                let start = self.pos;
                let end = start.checked_add(n).ok_or(Invalid)?;
                if end > self.input.len() {
                    return Err(Invalid);
                }
                self.pos = end;
                self.expect(b"}")?;
                let inner = self.custom_payload(start, end)?;
                self.push_relengthed(n, len_start, len_end, inner);
                Ok(())
            }
            // `S:` (escaped binary strings) and anything else: not handled, leave alone.
            _ => Err(Invalid),
        }
    }

    /// The payload of a `C:` value (whatever the class's `Serializable::serialize` returned):
    /// a run of serialized values (SPL classes separate them with `;`, `:` and `x:`/`m:`
    /// markers) or, when nothing in it looks serialized, plain data.
    fn custom_payload(&mut self, start: usize, end: usize) -> Parsed<Vec<Edit>> {
        let payload = &self.input[start..end];
        if !self.m.may_match(payload) {
            return Ok(Vec::new());
        }
        let mut sub = Parser {
            m: self.m,
            input: payload,
            base: self.base + start,
            pos: 0,
            depth: self.depth + 1,
            edits: Vec::new(),
            counters: Counters::default(),
            relengthed: false,
        };
        if sub.depth < MAX_DEPTH && sub.value_run().is_ok() {
            self.counters.add(sub.counters);
            self.relengthed |= sub.relengthed;
            return Ok(sub.edits);
        }
        if looks_serialized(payload) || has_serialized_string(payload) {
            return Err(Invalid);
        }
        let mut edits = Vec::new();
        self.m.url_edits(payload, self.base + start, &mut edits);
        Ok(edits)
    }

    /// One or more serialized values separated by SPL markers, up to the end of the input.
    fn value_run(&mut self) -> Parsed {
        let mut values = 0;
        loop {
            while let Some(&b) = self.input.get(self.pos) {
                match b {
                    b';' | b':' => self.pos += 1,
                    b'x' | b'm' if self.input.get(self.pos + 1) == Some(&b':') => self.pos += 2,
                    _ => break,
                }
            }
            if self.pos == self.input.len() {
                return if values > 0 { Ok(()) } else { Err(Invalid) };
            }
            self.value()?;
            values += 1;
        }
    }
}
