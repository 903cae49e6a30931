//! Test support for the rewriter tests: a PHP value model with its own serializer and parser
//! (independent of the code under test), generators of values paired with their expected
//! rewritten form, and MySQL literal encoding.
#![allow(dead_code)]

use proptest::prelude::*;

pub const FROM: &str = "https://shop.example.com";
pub const TO: &str = "http://clone1.localhost:8080";

/// A PHP value as `serialize()` writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Php {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    /// A string whose content is itself `serialize()`d data (double serialization).
    Serialized(Box<Php>),
    Array(Vec<(Key, Php)>),
    Object {
        class: String,
        props: Vec<(Prop, Php)>,
    },
    /// `C:` custom serialization of class `Legacy`, whose payload is one serialized value.
    Custom(Box<Php>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Int(i64),
    Str(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prop {
    Public(String),
    Protected(String),
    /// A private property declared by the object's own class.
    Private(String),
}

pub fn serialize(v: &Php) -> Vec<u8> {
    let mut out = Vec::new();
    ser(v, &mut out);
    out
}

fn ser_str(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("s:{}:\"", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\";");
}

fn ser(v: &Php, out: &mut Vec<u8>) {
    match v {
        Php::Null => out.extend_from_slice(b"N;"),
        Php::Bool(b) => out.extend_from_slice(if *b { b"b:1;" } else { b"b:0;" }),
        Php::Int(i) => out.extend_from_slice(format!("i:{i};").as_bytes()),
        Php::Float(f) => out.extend_from_slice(format!("d:{f:?};").as_bytes()),
        Php::Str(s) => ser_str(s, out),
        Php::Serialized(inner) => ser_str(&serialize(inner), out),
        Php::Array(items) => {
            out.extend_from_slice(format!("a:{}:{{", items.len()).as_bytes());
            for (k, v) in items {
                match k {
                    Key::Int(i) => out.extend_from_slice(format!("i:{i};").as_bytes()),
                    Key::Str(s) => ser_str(s, out),
                }
                ser(v, out);
            }
            out.push(b'}');
        }
        Php::Object { class, props } => {
            out.extend_from_slice(
                format!("O:{}:\"{}\":{}:{{", class.len(), class, props.len()).as_bytes(),
            );
            for (p, v) in props {
                let name = match p {
                    Prop::Public(n) => n.as_bytes().to_vec(),
                    Prop::Protected(n) => [b"\0*\0", n.as_bytes()].concat(),
                    Prop::Private(n) => [b"\0", class.as_bytes(), b"\0", n.as_bytes()].concat(),
                };
                ser_str(&name, out);
                ser(v, out);
            }
            out.push(b'}');
        }
        Php::Custom(inner) => {
            let payload = serialize(inner);
            out.extend_from_slice(format!("C:6:\"Legacy\":{}:{{", payload.len()).as_bytes());
            out.extend_from_slice(&payload);
            out.push(b'}');
        }
    }
}

/// Replaces [`Php::Serialized`] by the plain string it is, as a parser sees it.
pub fn flatten(v: &Php) -> Php {
    match v {
        Php::Serialized(inner) => Php::Str(serialize(inner)),
        Php::Array(items) => {
            Php::Array(items.iter().map(|(k, v)| (k.clone(), flatten(v))).collect())
        }
        Php::Object { class, props } => Php::Object {
            class: class.clone(),
            props: props.iter().map(|(p, v)| (p.clone(), flatten(v))).collect(),
        },
        Php::Custom(inner) => Php::Custom(Box::new(flatten(inner))),
        other => other.clone(),
    }
}

/// Parses serialized data completely (the test's own parser, not the library's).
pub fn parse(data: &[u8]) -> Result<Php, String> {
    let mut p = P { d: data, i: 0 };
    let v = p.value()?;
    if p.i != data.len() {
        return Err(format!("trailing bytes at {}", p.i));
    }
    Ok(v)
}

struct P<'a> {
    d: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }
    fn eat(&mut self, t: &[u8]) -> Result<(), String> {
        if self.d[self.i..].starts_with(t) {
            self.i += t.len();
            Ok(())
        } else {
            self.err(&format!("expected {:?}", String::from_utf8_lossy(t)))
        }
    }
    fn until(&mut self, end: u8) -> Result<&[u8], String> {
        let start = self.i;
        match self.d[start..].iter().position(|&b| b == end) {
            Some(n) => {
                self.i += n + 1;
                Ok(&self.d[start..start + n])
            }
            None => self.err("unterminated"),
        }
    }
    fn num(&mut self, end: u8) -> Result<i64, String> {
        let s = self.until(end)?;
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad number before byte {}", self.i))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.num(b':')? as usize;
        self.eat(b"\"")?;
        if self.i + n > self.d.len() {
            return self.err("length past the end");
        }
        let s = self.d[self.i..self.i + n].to_vec();
        self.i += n;
        self.eat(b"\"")?;
        Ok(s)
    }
    fn key(&mut self) -> Result<Key, String> {
        match self.value()? {
            Php::Int(i) => Ok(Key::Int(i)),
            Php::Str(s) => Ok(Key::Str(s)),
            _ => self.err("bad key"),
        }
    }
    fn value(&mut self) -> Result<Php, String> {
        let t = *self.d.get(self.i).ok_or("end of data")?;
        if t == b'N' {
            self.eat(b"N;")?;
            return Ok(Php::Null);
        }
        self.i += 1;
        self.eat(b":")?;
        match t {
            b'b' => Ok(Php::Bool(self.num(b';')? != 0)),
            b'i' => Ok(Php::Int(self.num(b';')?)),
            b'd' => {
                let s = self.until(b';')?;
                Ok(Php::Float(
                    std::str::from_utf8(s)
                        .unwrap()
                        .parse()
                        .map_err(|e| format!("{e}"))?,
                ))
            }
            b's' => {
                let s = self.bytes()?;
                self.eat(b";")?;
                Ok(Php::Str(s))
            }
            b'a' => {
                let n = self.num(b':')?;
                self.eat(b"{")?;
                let mut items = Vec::new();
                for _ in 0..n {
                    let k = self.key()?;
                    items.push((k, self.value()?));
                }
                self.eat(b"}")?;
                Ok(Php::Array(items))
            }
            b'O' => {
                let class = String::from_utf8(self.bytes()?).unwrap();
                self.eat(b":")?;
                let n = self.num(b':')?;
                self.eat(b"{")?;
                let mut props = Vec::new();
                for _ in 0..n {
                    let Key::Str(name) = self.key()? else {
                        return self.err("numeric property");
                    };
                    let prop = if let Some(rest) = name.strip_prefix(b"\0*\0") {
                        Prop::Protected(String::from_utf8(rest.to_vec()).unwrap())
                    } else if let Some(rest) = name.strip_prefix(b"\0") {
                        let sep = rest
                            .iter()
                            .position(|&b| b == 0)
                            .ok_or("bad private name")?;
                        Prop::Private(String::from_utf8(rest[sep + 1..].to_vec()).unwrap())
                    } else {
                        Prop::Public(String::from_utf8(name).unwrap())
                    };
                    props.push((prop, self.value()?));
                }
                self.eat(b"}")?;
                Ok(Php::Object { class, props })
            }
            b'C' => {
                let class = self.bytes()?;
                if class != b"Legacy" {
                    return self.err("unexpected custom class");
                }
                self.eat(b":")?;
                let n = self.num(b':')? as usize;
                self.eat(b"{")?;
                if self.i + n > self.d.len() {
                    return self.err("payload past the end");
                }
                let inner = parse(&self.d[self.i..self.i + n])?;
                self.i += n;
                self.eat(b"}")?;
                Ok(Php::Custom(Box::new(inner)))
            }
            _ => self.err("unknown type"),
        }
    }
}

/// URL forms of [`FROM`] and what they become with [`TO`].
pub const URL_CASES: &[(&str, &str)] = &[
    ("https://shop.example.com", "http://clone1.localhost:8080"),
    (
        "https://shop.example.com/wp-content/uploads/2024/05/küche.jpg",
        "http://clone1.localhost:8080/wp-content/uploads/2024/05/küche.jpg",
    ),
    (
        "http://shop.example.com/?p=12&x=1",
        "http://clone1.localhost:8080/?p=12&x=1",
    ),
    (
        "https://www.shop.example.com/about/",
        "http://clone1.localhost:8080/about/",
    ),
    (
        "//shop.example.com/wp-includes/js/x.js",
        "//clone1.localhost:8080/wp-includes/js/x.js",
    ),
    (
        "https:\\/\\/shop.example.com\\/shop\\/",
        "http:\\/\\/clone1.localhost:8080\\/shop\\/",
    ),
    (
        "HTTPS://Shop.Example.COM/Cart",
        "http://clone1.localhost:8080/Cart",
    ),
    (
        "https%3A%2F%2Fshop.example.com%2Fcheckout",
        "http%3A%2F%2Fclone1.localhost:8080%2Fcheckout",
    ),
    ("shop.example.com", "clone1.localhost:8080"),
    // Not the site: left as they are.
    (
        "https://shop.example.com.evil.org/",
        "https://shop.example.com.evil.org/",
    ),
    (
        "https://shop.example.community/",
        "https://shop.example.community/",
    ),
    ("https://myshop.example.com/", "https://myshop.example.com/"),
    (
        "mailto:admin@shop.example.com",
        "mailto:admin@shop.example.com",
    ),
    ("ftp://shop.example.com/pub", "ftp://shop.example.com/pub"),
    (
        "https://shop.example.com:8443/",
        "https://shop.example.com:8443/",
    ),
];

/// URL forms of [`FROM`] that come back unchanged when rewritten to [`TO`] and back: the
/// canonical ones (scheme of `FROM`, no `www.`, lowercase) and the ones left alone.
pub const ROUND_TRIP_CASES: &[(&str, &str)] = &[
    ("https://shop.example.com", "http://clone1.localhost:8080"),
    (
        "https://shop.example.com/wp-content/uploads/2024/05/küche.jpg",
        "http://clone1.localhost:8080/wp-content/uploads/2024/05/küche.jpg",
    ),
    (
        "//shop.example.com/wp-includes/js/x.js",
        "//clone1.localhost:8080/wp-includes/js/x.js",
    ),
    (
        "https:\\/\\/shop.example.com\\/shop\\/",
        "http:\\/\\/clone1.localhost:8080\\/shop\\/",
    ),
    (
        "https%3A%2F%2Fshop.example.com%2Fcheckout",
        "http%3A%2F%2Fclone1.localhost:8080%2Fcheckout",
    ),
    ("shop.example.com", "clone1.localhost:8080"),
    (
        "https://shop.example.com.evil.org/",
        "https://shop.example.com.evil.org/",
    ),
    (
        "mailto:admin@shop.example.com",
        "mailto:admin@shop.example.com",
    ),
    (
        "https://shop.example.com:8443/",
        "https://shop.example.com:8443/",
    ),
];

/// Random text that can not form a host or look like serialized data on its own (no `.`, `:`,
/// `;`), with multibyte characters, quotes, backslashes and braces.
pub fn text() -> impl Strategy<Value = Vec<u8>> {
    "[a-zA-Z0-9 äöüßé日本語🎉'\"\\\\{}()\n\t\r\0\u{1a}%_-]{0,12}".prop_map(String::into_bytes)
}

/// A string and its expected rewritten form, made of text and URL segments separated by spaces.
pub fn string_pair(
    urls: &'static [(&'static str, &'static str)],
) -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let segment = prop_oneof![
        text().prop_map(|t| (t.clone(), t)),
        (0..urls.len())
            .prop_map(move |i| (urls[i].0.as_bytes().to_vec(), urls[i].1.as_bytes().to_vec())),
        (0..urls.len()).prop_map(move |i| {
            // A JSON document holding the URL, slashes escaped the way json_encode does.
            let j =
                |s: &str| format!("{{\"url\":\"{}\",\"n\":1}}", s.replace('/', "\\/")).into_bytes();
            (j(urls[i].0), j(urls[i].1))
        }),
    ];
    prop::collection::vec(segment, 0..5).prop_map(|segs| {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (i, (x, y)) in segs.into_iter().enumerate() {
            if i > 0 {
                a.push(b' ');
                b.push(b' ');
            }
            a.extend(x);
            b.extend(y);
        }
        (a, b)
    })
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        (-5i64..100).prop_map(Key::Int),
        "[a-z_]{1,8}|[äöü日本]{1,3}".prop_map(|s| Key::Str(s.into_bytes())),
    ]
}

fn prop_name() -> impl Strategy<Value = Prop> {
    ("[a-z_]{1,8}", 0..3).prop_map(|(n, v)| match v {
        0 => Prop::Public(n),
        1 => Prop::Protected(n),
        _ => Prop::Private(n),
    })
}

/// A PHP value holding URLs, and the same value with the URLs rewritten as expected.
pub fn php_pair(
    urls: &'static [(&'static str, &'static str)],
) -> impl Strategy<Value = (Php, Php)> {
    let leaf = prop_oneof![
        Just((Php::Null, Php::Null)),
        any::<bool>().prop_map(|b| (Php::Bool(b), Php::Bool(b))),
        any::<i64>().prop_map(|i| (Php::Int(i), Php::Int(i))),
        (-1000i32..1000).prop_map(|i| (
            Php::Float(f64::from(i) / 8.0),
            Php::Float(f64::from(i) / 8.0)
        )),
        string_pair(urls).prop_map(|(a, b)| (Php::Str(a), Php::Str(b))),
        string_pair(urls).prop_map(|(a, b)| (Php::Str(a), Php::Str(b))),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec((key(), inner.clone()), 0..5).prop_map(|items| {
                let (a, b) = items
                    .into_iter()
                    .map(|(k, (x, y))| ((k.clone(), x), (k, y)))
                    .unzip();
                (Php::Array(a), Php::Array(b))
            }),
            (
                prop_oneof![
                    Just("Widget"),
                    Just("stdClass"),
                    Just("Unknown_Plugin_Class")
                ],
                prop::collection::vec((prop_name(), inner.clone()), 0..4)
            )
                .prop_map(|(class, props)| {
                    let (a, b) = props
                        .into_iter()
                        .map(|(p, (x, y))| ((p.clone(), x), (p, y)))
                        .unzip();
                    (
                        Php::Object {
                            class: class.to_string(),
                            props: a,
                        },
                        Php::Object {
                            class: class.to_string(),
                            props: b,
                        },
                    )
                }),
            inner
                .clone()
                .prop_map(|(a, b)| (Php::Serialized(Box::new(a)), Php::Serialized(Box::new(b)))),
            inner.prop_map(|(a, b)| (Php::Custom(Box::new(a)), Php::Custom(Box::new(b)))),
        ]
    })
}

/// Writes `value` as a MySQL single-quoted literal the way mysqldump does (`\'`), or with doubled
/// quotes and raw control characters when `doubled`.
pub fn sql_literal(value: &[u8], doubled: bool) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in value {
        match b {
            b'\'' if doubled => out.extend_from_slice(b"''"),
            b'\'' => out.extend_from_slice(b"\\'"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0 => out.extend_from_slice(b"\\0"),
            b'"' if !doubled => out.extend_from_slice(b"\\\""),
            b'\n' if !doubled => out.extend_from_slice(b"\\n"),
            b'\r' if !doubled => out.extend_from_slice(b"\\r"),
            0x1a if !doubled => out.extend_from_slice(b"\\Z"),
            b'\t' if doubled => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
    out.push(b'\'');
    out
}

/// Whether `hay` mentions `needle`, ignoring ASCII case.
pub fn contains_ci(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}
