//! Site URLs and finding the URL variants of one site in a byte string (http/https/scheme-less,
//! with or without `www.`, JSON-escaped or percent-encoded slashes, bare host).

use super::{Edit, RewriteError};

/// A site URL: `http(s)://host[:port][/path]`, normalized (lowercase scheme and host, no
/// trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUrl {
    pub scheme: String,
    pub host: String,
    pub port: Option<String>,
    /// Empty, or starting with `/` and not ending with `/`.
    pub path: String,
}

impl SiteUrl {
    /// Parses a site URL; `which` ("from" / "to") names it in errors.
    pub fn parse(which: &'static str, url: &str) -> Result<Self, RewriteError> {
        let bad = |reason: &'static str| RewriteError::InvalidUrl {
            which,
            url: url.to_string(),
            reason,
        };
        let trimmed = url.trim();
        let lower = trimmed.to_ascii_lowercase();
        let (scheme, rest) = if lower.starts_with("https://") {
            ("https", &trimmed[8..])
        } else if lower.starts_with("http://") {
            ("http", &trimmed[7..])
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        if rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("it must not contain whitespace or control characters"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad("it must not have a query (?) or fragment (#)"));
        }
        if rest.contains(['\\', '\'', '"', '%', '<', '>', '`']) {
            return Err(bad("it must not contain \\ ' \" % < > or `"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("it must not contain user info (user@host)"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("its port must be 1 to 5 digits"));
                }
                (h, Some(p.to_string()))
            }
            None => (authority, None),
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            || host.starts_with('.')
            || host.ends_with('.')
            || host.contains("..")
        {
            return Err(bad(
                "its host must be letters, digits, '-', '_' and single dots (no IPv6 literals)",
            ));
        }
        let path = path.trim_end_matches('/');
        if path.contains("//") {
            return Err(bad("its path must not contain an empty segment (//)"));
        }
        Ok(Self {
            scheme: scheme.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }

    /// `host[:port]`.
    pub fn authority(&self) -> String {
        match &self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.clone(),
        }
    }

    /// The host without a leading `www.` (kept when nothing with a dot would remain).
    fn bare_host(&self) -> &str {
        match self.host.strip_prefix("www.") {
            Some(rest) if rest.contains('.') => rest,
            _ => &self.host,
        }
    }
}

impl std::fmt::Display for SiteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority(), self.path)
    }
}

/// How the slashes of one URL occurrence are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slash {
    /// `/` preceded by this many backslashes: 0 plain, 1 JSON (`\/`), 3 JSON in JSON, …
    Escaped(usize),
    /// `%2F` (`true`) or `%2f` (`false`).
    Percent(bool),
}

impl Slash {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Slash::Escaped(k) => {
                out.extend(std::iter::repeat_n(b'\\', k));
                out.push(b'/');
            }
            Slash::Percent(true) => out.extend_from_slice(b"%2F"),
            Slash::Percent(false) => out.extend_from_slice(b"%2f"),
        }
    }

    /// The length of this style's slash at `hay[at..]`, if there is one.
    fn matches(self, hay: &[u8], at: usize) -> Option<usize> {
        let rest = hay.get(at..)?;
        match self {
            Slash::Escaped(k) => {
                (rest.len() > k && rest[..k].iter().all(|&b| b == b'\\') && rest[k] == b'/')
                    .then_some(k + 1)
            }
            Slash::Percent(_) => {
                (rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2f")).then_some(3)
            }
        }
    }

    /// The slash written at `hay[at..]`, if any.
    fn detect(hay: &[u8], at: usize) -> Option<Slash> {
        let rest = hay.get(at..)?;
        if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2f") {
            return Some(Slash::Percent(rest[2] == b'F'));
        }
        let k = rest.iter().take_while(|&&b| b == b'\\').count();
        (rest.get(k) == Some(&b'/')).then_some(Slash::Escaped(k))
    }
}

/// Finds and replaces the URL variants of the `from` site.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    /// Lowercase host without `www.`: every variant contains it.
    host: Vec<u8>,
    port: Option<Vec<u8>>,
    path: Vec<u8>,
    bare_hosts: bool,
    to_scheme: Vec<u8>,
    to_authority: Vec<u8>,
    to_path: Vec<u8>,
    /// `from` and `to` are the same site: nothing is ever rewritten.
    identity: bool,
    /// Index in `host` of the byte searched for first (the rarest one).
    anchor: usize,
}

impl Matcher {
    pub fn new(from: &SiteUrl, to: &SiteUrl, bare_hosts: bool) -> Self {
        let host = from.bare_host().as_bytes().to_vec();
        let anchor = rarest_byte(&host);
        Self {
            identity: from == to,
            host,
            port: from.port.as_ref().map(|p| p.as_bytes().to_vec()),
            path: from.path.as_bytes().to_vec(),
            bare_hosts,
            to_scheme: to.scheme.as_bytes().to_vec(),
            to_authority: to.authority().into_bytes(),
            to_path: to.path.as_bytes().to_vec(),
            anchor,
        }
    }

    /// Whether `hay` mentions the `from` host at all (case-insensitively). False when `hay` can
    /// not need rewriting.
    pub fn may_match(&self, hay: &[u8]) -> bool {
        !self.identity && self.find_host(hay, 0).is_some()
    }

    /// Appends the edits (in `base` coordinates) that rewrite every URL of `from` in `hay`.
    pub fn url_edits(&self, hay: &[u8], base: usize, edits: &mut Vec<Edit>) {
        if self.identity {
            return;
        }
        let mut from = 0;
        while let Some(h) = self.find_host(hay, from) {
            match self.match_at(hay, h, base, edits) {
                Some(end) => from = end,
                None => from = h + 1,
            }
        }
    }

    /// Case-insensitive search for the host from `from` on.
    fn find_host(&self, hay: &[u8], from: usize) -> Option<usize> {
        let n = self.host.len();
        let a = self.anchor;
        let lo = self.host[a];
        let up = lo.to_ascii_uppercase();
        let mut i = from + a;
        while i + (n - a) <= hay.len() {
            let window = &hay[i..hay.len() - (n - a - 1)];
            let off = if lo == up {
                window.iter().position(|&b| b == lo)?
            } else {
                window.iter().position(|&b| b == lo || b == up)?
            };
            i += off;
            let start = i - a;
            if hay[start..start + n].eq_ignore_ascii_case(&self.host) {
                return Some(start);
            }
            i += 1;
        }
        None
    }

    /// Checks the occurrence of the host at `h`; when it is a URL of the `from` site, pushes its
    /// edits and returns where the match ends.
    fn match_at(&self, hay: &[u8], h: usize, base: usize, edits: &mut Vec<Edit>) -> Option<usize> {
        // After the host: the port, then no more host characters.
        let mut end = h + self.host.len();
        match &self.port {
            Some(port) => {
                if hay.get(end) != Some(&b':') || !hay[end + 1..].starts_with(port) {
                    return None;
                }
                end += 1 + port.len();
                if hay.get(end).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            None => {
                if hay.get(end) == Some(&b':') && hay.get(end + 1).is_some_and(u8::is_ascii_digit) {
                    // Same host, another port: another site.
                    return None;
                }
                if continues_host(hay, end) {
                    return None;
                }
            }
        }

        // Before the host: `www.`, then `//` (maybe escaped) and maybe a scheme.
        let mut start = h;
        if h >= 4 && hay[h - 4..h].eq_ignore_ascii_case(b"www.") {
            start = h - 4;
        }
        let mut scheme = None;
        let style = match slashes_before(hay, start) {
            Some((slash_start, style)) => {
                let colon = match style {
                    Slash::Escaped(_) if slash_start >= 1 && hay[slash_start - 1] == b':' => {
                        Some(slash_start - 1)
                    }
                    Slash::Percent(_)
                        if slash_start >= 3
                            && hay[slash_start - 3..slash_start].eq_ignore_ascii_case(b"%3a") =>
                    {
                        Some(slash_start - 3)
                    }
                    _ => None,
                };
                if let Some(colon) = colon {
                    let before = &hay[..colon];
                    let len = if ends_with_ci(before, b"https") {
                        5
                    } else if ends_with_ci(before, b"http") {
                        4
                    } else {
                        // ftp://, ws://, …: not a link to the site.
                        return None;
                    };
                    scheme = Some((colon - len, colon));
                } else if slash_start >= 1 && hay[slash_start - 1] == b':' {
                    return None;
                }
                Some(style)
            }
            None => {
                if !self.bare_hosts || (start > 0 && blocks_bare_host(hay[start - 1])) {
                    return None;
                }
                None
            }
        };

        // The site's path, written with the same slashes, ending at a segment boundary.
        let style = if self.path.is_empty() {
            style
                .or_else(|| Slash::detect(hay, end))
                .unwrap_or(Slash::Escaped(0))
        } else {
            let style = style.or_else(|| Slash::detect(hay, end))?;
            for &b in &self.path {
                if b == b'/' {
                    end += style.matches(hay, end)?;
                } else if hay.get(end) == Some(&b) {
                    end += 1;
                } else {
                    return None;
                }
            }
            if continues_path(hay, end) {
                return None;
            }
            style
        };

        if let Some((s, e)) = scheme {
            push_edit(hay, base, s, e, self.to_scheme.clone(), edits);
        }
        let mut replacement = self.to_authority.clone();
        for &b in &self.to_path {
            if b == b'/' {
                style.write(&mut replacement);
            } else {
                replacement.push(b);
            }
        }
        push_edit(hay, base, start, end, replacement, edits);
        Some(end)
    }
}

/// Pushes an edit unless it would not change anything.
fn push_edit(
    hay: &[u8],
    base: usize,
    start: usize,
    end: usize,
    replacement: Vec<u8>,
    edits: &mut Vec<Edit>,
) {
    if hay[start..end] != replacement[..] {
        edits.push(Edit {
            start: base + start,
            end: base + end,
            replacement,
        });
    }
}

/// The two slashes (`//`, `\/\/`, `%2F%2F`, …) ending right before `at`: where they start and
/// their style.
fn slashes_before(hay: &[u8], at: usize) -> Option<(usize, Slash)> {
    if at >= 6 && hay[at - 6..at].eq_ignore_ascii_case(b"%2f%2f") {
        return Some((at - 6, Slash::Percent(hay[at - 1] == b'F')));
    }
    if at < 2 || hay[at - 1] != b'/' {
        return None;
    }
    let second = at - 1;
    let k = hay[..second]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    let first = second.checked_sub(k + 1)?;
    if hay[first] != b'/' || first < k || !hay[first - k..first].iter().all(|&b| b == b'\\') {
        return None;
    }
    Some((first - k, Slash::Escaped(k)))
}

fn ends_with_ci(hay: &[u8], suffix: &[u8]) -> bool {
    hay.len() >= suffix.len() && hay[hay.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Whether the host name goes on at `at` (so the match was only a prefix of a longer host, like
/// `shop.example.community` or `shop.example.com.evil.org`).
fn continues_host(hay: &[u8], at: usize) -> bool {
    match hay.get(at) {
        Some(&b) if is_host_byte(b) => true,
        Some(b'.') => hay.get(at + 1).is_some_and(|&b| is_host_byte(b)),
        _ => false,
    }
}

/// Whether the path segment goes on at `at` (`/blog` must not match `/blogger`).
fn continues_path(hay: &[u8], at: usize) -> bool {
    match hay.get(at) {
        Some(&b) if is_host_byte(b) || b == b'~' => true,
        Some(b'.') => hay.get(at + 1).is_some_and(|&b| is_host_byte(b)),
        _ => false,
    }
}

/// Bytes that, right before a bare host, mean it is not a link to the site: part of a longer
/// host or of a path, an e-mail address, an escape.
fn blocks_bare_host(b: u8) -> bool {
    is_host_byte(b) || matches!(b, b'.' | b'@' | b'/' | b'\\' | b'%' | b':')
}

/// The index of the byte of `host` least likely to occur in ordinary text, to search for first.
fn rarest_byte(host: &[u8]) -> usize {
    // Rough English letter frequency order, most common first.
    const COMMON: &[u8] = b"etaoinsrhldcumfpgwybvkxjqz";
    let rank = |b: u8| -> usize {
        let l = b.to_ascii_lowercase();
        match COMMON.iter().position(|&c| c == l) {
            Some(p) => p + 10,
            None if l.is_ascii_digit() => 40,
            None if l == b'.' => 30,
            None => 50,
        }
    };
    (0..host.len())
        .max_by_key(|&i| (rank(host[i]), i))
        .unwrap_or(0)
}
