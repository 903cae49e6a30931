//! Streaming over a MySQL/MariaDB dump: finds the string literals, rewrites each one through the
//! value rewriter, re-escapes only the bytes that changed and copies every other byte unchanged.
//! Follows INSERT / REPLACE / UPDATE / CREATE TABLE heads just far enough to leave skipped
//! columns (e.g. `wp_posts.guid`) alone.

use std::collections::HashMap;
use std::io::{self, BufRead, BufWriter, Write};

use super::{php, Counters, Edit, RewriteError, Stats, UrlRewriter};

/// Longest bare word kept for keyword recognition (longer ones are cut; no keyword is that long).
const MAX_WORD: usize = 64;
/// Longest `identifier` kept (MySQL allows 64 characters; 4 bytes each at most).
const MAX_IDENT: usize = 256;
/// Most tokens kept while reading a statement's head; past that the statement is not followed.
const MAX_HEAD_TOKENS: usize = 4096;

pub(crate) fn rewrite_stream<R: BufRead, W: Write>(
    rw: &UrlRewriter,
    mut input: R,
    output: W,
) -> Result<Stats, RewriteError> {
    let mut s = Streamer::new(rw, output);
    loop {
        let chunk = match input.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        s.feed(chunk)?;
        input.consume(n);
    }
    s.finish()
}

/// Where the lexer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Normal,
    /// In a bare word (keyword, unquoted name, number).
    Word,
    /// In a `quoted identifier`.
    Backtick,
    /// Saw a backtick in a quoted identifier: its end, or the first of a doubled one.
    BacktickEnd,
    /// In a '…' or "…" string literal.
    Str,
    /// Saw a backslash in a string literal.
    StrEscape,
    /// Saw the quote character in a string literal: its end, or the first of a doubled one.
    StrQuote,
    /// In a `#` or `-- ` comment, up to the end of the line.
    LineComment,
    /// In a `/* … */` comment (including `/*!40101 … */` ones: copied as they are).
    BlockComment,
    /// Saw `*` in a block comment.
    BlockCommentStar,
    /// Saw `-`: maybe a comment.
    Dash,
    /// Saw `--`: a comment when whitespace follows.
    DashDash,
    /// Saw `/`: maybe a comment.
    Slash,
}

impl Lex {
    fn in_literal(self) -> bool {
        matches!(self, Lex::Str | Lex::StrEscape | Lex::StrQuote)
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

struct Streamer<'r, W: Write> {
    rw: &'r UrlRewriter,
    out: BufWriter<W>,
    lex: Lex,
    /// The current literal's quote character.
    quote: u8,
    /// The current literal is hexadecimal or bit data (`X'…'`, `B'…'`): never rewritten.
    opaque: bool,
    /// The current literal writes its quote character doubled (`''`) rather than `\'`.
    doubled: bool,
    /// The current literal's bytes between the quotes, as written.
    raw: Vec<u8>,
    /// … and decoded.
    val: Vec<u8>,
    word: Vec<u8>,
    ident: Vec<u8>,
    /// The word just before was `X`/`B`: a quote now starts hexadecimal/bit data.
    after_hex_prefix: bool,
    /// The current statement has anything besides whitespace and comments.
    has_content: bool,
    stmt: Statement,
    stats: Stats,
    edits: Vec<Edit>,
    encoded: Vec<u8>,
}

fn write_out<W: Write>(out: &mut BufWriter<W>, stats: &mut Stats, bytes: &[u8]) -> io::Result<()> {
    stats.bytes_out += bytes.len() as u64;
    out.write_all(bytes)
}

impl<'r, W: Write> Streamer<'r, W> {
    fn new(rw: &'r UrlRewriter, output: W) -> Self {
        Self {
            rw,
            out: BufWriter::with_capacity(1 << 16, output),
            lex: Lex::Normal,
            quote: b'\'',
            opaque: false,
            doubled: false,
            raw: Vec::new(),
            val: Vec::new(),
            word: Vec::new(),
            ident: Vec::new(),
            after_hex_prefix: false,
            has_content: false,
            stmt: Statement::new(&rw.options),
            stats: Stats::default(),
            edits: Vec::new(),
            encoded: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), RewriteError> {
        self.stats.bytes_in += chunk.len() as u64;
        let mut i = 0;
        // Start of the bytes not yet written (meaningful outside literals).
        let mut copy_from = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.lex {
                Lex::Str => {
                    let rest = &chunk[i..];
                    let run = rest
                        .iter()
                        .position(|&c| c == self.quote || c == b'\\')
                        .unwrap_or(rest.len());
                    self.raw.extend_from_slice(&rest[..run]);
                    self.val.extend_from_slice(&rest[..run]);
                    i += run;
                    if i < chunk.len() {
                        self.lex = if chunk[i] == b'\\' {
                            Lex::StrEscape
                        } else {
                            Lex::StrQuote
                        };
                        i += 1;
                    }
                }
                Lex::StrEscape => {
                    self.raw.extend_from_slice(&[b'\\', b]);
                    match b {
                        b'0' => self.val.push(0),
                        b'b' => self.val.push(8),
                        b'n' => self.val.push(b'\n'),
                        b'r' => self.val.push(b'\r'),
                        b't' => self.val.push(b'\t'),
                        b'Z' => self.val.push(0x1a),
                        // MySQL keeps the backslash of \% and \_ (they are LIKE escapes).
                        b'%' | b'_' => self.val.extend_from_slice(&[b'\\', b]),
                        _ => self.val.push(b),
                    }
                    self.lex = Lex::Str;
                    i += 1;
                }
                Lex::StrQuote => {
                    if b == self.quote {
                        self.raw.extend_from_slice(&[b, b]);
                        self.val.push(b);
                        self.doubled = true;
                        self.lex = Lex::Str;
                        i += 1;
                    } else {
                        self.end_literal()?;
                        self.lex = Lex::Normal;
                        copy_from = i;
                    }
                }
                Lex::Normal => {
                    let hex = std::mem::take(&mut self.after_hex_prefix);
                    match b {
                        b'\'' | b'"' => {
                            write_out(&mut self.out, &mut self.stats, &chunk[copy_from..i])?;
                            self.quote = b;
                            self.opaque = hex;
                            self.doubled = false;
                            self.raw.clear();
                            self.val.clear();
                            self.has_content = true;
                            self.lex = Lex::Str;
                        }
                        b'`' => {
                            self.ident.clear();
                            self.lex = Lex::Backtick;
                        }
                        b'#' => self.lex = Lex::LineComment,
                        b'-' => self.lex = Lex::Dash,
                        b'/' => self.lex = Lex::Slash,
                        b';' => {
                            self.stats.statements += 1;
                            self.has_content = false;
                            self.stmt.end();
                        }
                        b'(' | b')' | b',' | b'=' | b'.' => self.token(Tok::Punct(b))?,
                        _ if is_word_byte(b) => {
                            self.word.clear();
                            self.word.push(b);
                            self.lex = Lex::Word;
                        }
                        _ if b.is_ascii_whitespace() => {}
                        _ => self.has_content = true,
                    }
                    i += 1;
                }
                Lex::Word => {
                    if is_word_byte(b) {
                        if self.word.len() < MAX_WORD {
                            self.word.push(b);
                        }
                        i += 1;
                    } else {
                        self.end_word()?;
                        self.lex = Lex::Normal;
                    }
                }
                Lex::Backtick => {
                    if b == b'`' {
                        self.lex = Lex::BacktickEnd;
                    } else if self.ident.len() < MAX_IDENT {
                        self.ident.push(b);
                    }
                    i += 1;
                }
                Lex::BacktickEnd => {
                    if b == b'`' {
                        if self.ident.len() < MAX_IDENT {
                            self.ident.push(b);
                        }
                        self.lex = Lex::Backtick;
                        i += 1;
                    } else {
                        self.end_ident()?;
                        self.lex = Lex::Normal;
                    }
                }
                Lex::LineComment => match chunk[i..].iter().position(|&c| c == b'\n') {
                    Some(p) => {
                        i += p + 1;
                        self.lex = Lex::Normal;
                    }
                    None => i = chunk.len(),
                },
                Lex::BlockComment => match chunk[i..].iter().position(|&c| c == b'*') {
                    Some(p) => {
                        i += p + 1;
                        self.lex = Lex::BlockCommentStar;
                    }
                    None => i = chunk.len(),
                },
                Lex::BlockCommentStar => {
                    self.lex = match b {
                        b'/' => Lex::Normal,
                        b'*' => Lex::BlockCommentStar,
                        _ => Lex::BlockComment,
                    };
                    i += 1;
                }
                Lex::Dash => {
                    if b == b'-' {
                        self.lex = Lex::DashDash;
                        i += 1;
                    } else {
                        self.has_content = true;
                        self.lex = Lex::Normal;
                    }
                }
                Lex::DashDash => {
                    // `--` starts a comment only when whitespace or a control character follows.
                    if b == b'\n' {
                        self.lex = Lex::Normal;
                        i += 1;
                    } else if b <= b' ' {
                        self.lex = Lex::LineComment;
                        i += 1;
                    } else {
                        self.has_content = true;
                        self.lex = Lex::Normal;
                    }
                }
                Lex::Slash => {
                    if b == b'*' {
                        self.lex = Lex::BlockComment;
                        i += 1;
                    } else {
                        self.has_content = true;
                        self.lex = Lex::Normal;
                    }
                }
            }
        }
        if !self.lex.in_literal() {
            write_out(&mut self.out, &mut self.stats, &chunk[copy_from..])?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Stats, RewriteError> {
        match self.lex {
            Lex::Word => self.end_word()?,
            Lex::BacktickEnd => self.end_ident()?,
            Lex::StrQuote => self.end_literal()?,
            Lex::Str | Lex::StrEscape => {
                // An unterminated literal: not SQL we understand, so copied as it came.
                let mut rest = vec![self.quote];
                rest.extend_from_slice(&self.raw);
                if self.lex == Lex::StrEscape {
                    rest.push(b'\\');
                }
                write_out(&mut self.out, &mut self.stats, &rest)?;
            }
            Lex::Dash | Lex::Slash => self.has_content = true,
            _ => {}
        }
        if self.has_content {
            self.stats.statements += 1;
        }
        self.out.flush()?;
        Ok(self.stats)
    }

    fn token(&mut self, tok: Tok) -> Result<(), RewriteError> {
        self.has_content = true;
        self.stmt.token(tok)
    }

    fn end_word(&mut self) -> Result<(), RewriteError> {
        self.after_hex_prefix = matches!(&self.word[..], b"x" | b"X" | b"b" | b"B");
        let word = std::mem::take(&mut self.word);
        let result = self.token(Tok::Word(word));
        if let Some(Tok::Word(w)) = self.stmt.returned.take() {
            self.word = w;
        }
        result
    }

    fn end_ident(&mut self) -> Result<(), RewriteError> {
        let ident = std::mem::take(&mut self.ident);
        let result = self.token(Tok::Ident(ident));
        if let Some(Tok::Ident(w)) = self.stmt.returned.take() {
            self.ident = w;
        }
        result
    }

    /// Writes the literal just closed: as it came, or with its URLs rewritten.
    fn end_literal(&mut self) -> Result<(), RewriteError> {
        let skipped = self.stmt.literal_is_skipped();
        self.stmt.literal();
        let q = [self.quote];
        if self.opaque {
            for part in [&q[..], &self.raw, &q] {
                write_out(&mut self.out, &mut self.stats, part)?;
            }
            return Ok(());
        }
        self.stats.values += 1;
        if skipped {
            self.stats.skipped_column_values += 1;
        } else {
            self.edits.clear();
            let mut counters = Counters::default();
            php::value_edits(
                &self.rw.matcher,
                &self.val,
                0,
                0,
                &mut self.edits,
                &mut counters,
            );
            self.stats.serialized_relengthed += counters.serialized_relengthed;
            self.stats.unparseable_left_alone += counters.unparseable;
            if !self.edits.is_empty() {
                self.encoded.clear();
                reencode(
                    &self.raw,
                    self.quote,
                    self.doubled,
                    &self.edits,
                    &mut self.encoded,
                );
                self.stats.values_changed += 1;
                return Ok(write_out(&mut self.out, &mut self.stats, &self.encoded)?);
            }
        }
        for part in [&q[..], &self.raw, &q] {
            write_out(&mut self.out, &mut self.stats, part)?;
        }
        Ok(())
    }
}

/// Writes the literal `raw` (bytes between the quotes, as written) with `edits` (in decoded
/// coordinates) applied: unchanged stretches are copied as written, replacements are escaped the
/// way MySQL's `mysql_real_escape_string` does (quotes doubled when the literal doubles them).
fn reencode(raw: &[u8], quote: u8, doubled: bool, edits: &[Edit], out: &mut Vec<u8>) {
    out.push(quote);
    let mut walk = Walker {
        raw,
        quote,
        ri: 0,
        di: 0,
    };
    for edit in edits {
        walk.advance(edit.start, Some(out));
        for &b in &edit.replacement {
            match b {
                0 => out.extend_from_slice(b"\\0"),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                0x1a => out.extend_from_slice(b"\\Z"),
                _ if b == quote && doubled => out.extend_from_slice(&[b, b]),
                _ if b == quote => out.extend_from_slice(&[b'\\', b]),
                _ => out.push(b),
            }
        }
        walk.advance(edit.end, None);
    }
    walk.advance(usize::MAX, Some(out));
    out.push(quote);
}

/// Walks a literal's written bytes and its decoded bytes side by side.
struct Walker<'a> {
    raw: &'a [u8],
    quote: u8,
    ri: usize,
    di: usize,
}

impl Walker<'_> {
    /// Moves to decoded position `target`, copying the written bytes passed over into `out`.
    fn advance(&mut self, target: usize, mut out: Option<&mut Vec<u8>>) {
        while self.di < target && self.ri < self.raw.len() {
            let raw = &self.raw[self.ri..];
            let (written, decoded) = match raw {
                [b'\\', b'%' | b'_', ..] => (2, 2),
                [b'\\', _, ..] => (2, 1),
                [q, r, ..] if *q == self.quote && r == q => (2, 1),
                _ => (1, 1),
            };
            if self.di + decoded <= target {
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(&raw[..written]);
                }
                self.ri += written;
                self.di += decoded;
            } else {
                // An edit boundary splits `\%` (decoded as `\` `%`): the backslash alone has to
                // be written escaped; the `%` that stays is then an ordinary byte.
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(b"\\\\");
                }
                self.ri += 1;
                self.di += 1;
            }
        }
    }
}

/// A token outside literals and comments, as the statement follower sees it.
#[derive(Debug)]
enum Tok {
    Word(Vec<u8>),
    Ident(Vec<u8>),
    Punct(u8),
}

/// Follows statements far enough to know which column each literal belongs to, for the tables
/// with skipped columns.
struct Statement {
    /// `(table suffix, lowercase column)`.
    rules: Vec<(String, String)>,
    prefix: Option<String>,
    /// Columns of tables with skipped columns, from CREATE TABLE statements seen so far.
    known: HashMap<String, Vec<String>>,
    phase: Phase,
    head: Vec<Tok>,
    /// Parenthesis depth in the head.
    depth: u32,
    /// A token handed back for its buffer to be reused.
    returned: Option<Tok>,
}

enum Phase {
    /// Reading the statement's head (`INSERT INTO t (…) VALUES`).
    Head,
    /// Nothing to follow until the next statement.
    Other,
    /// In the VALUES of an INSERT into a table with skipped columns.
    Values {
        table_rules: Vec<String>,
        skip: Vec<usize>,
        depth: u32,
        col: usize,
    },
    /// In `SET col = …, …` (UPDATE, INSERT … SET, ON DUPLICATE KEY UPDATE) for such a table.
    Assign {
        skip: Vec<String>,
        last: Option<String>,
        current: Option<String>,
        depth: u32,
    },
    /// In the column definitions of CREATE TABLE for such a table.
    Create {
        table: String,
        depth: u32,
        cols: Vec<String>,
        expect_name: bool,
    },
}

fn upper_is(w: &[u8], keyword: &str) -> bool {
    w.eq_ignore_ascii_case(keyword.as_bytes())
}

fn name_of(w: &[u8]) -> String {
    String::from_utf8_lossy(w).to_lowercase()
}

impl Statement {
    fn new(options: &super::RewriteOptions) -> Self {
        let rules: Vec<(String, String)> = options
            .skip_columns
            .iter()
            .map(|(t, c)| (t.clone(), c.to_lowercase()))
            .collect();
        Self {
            phase: if rules.is_empty() {
                Phase::Other
            } else {
                Phase::Head
            },
            rules,
            prefix: options.table_prefix.clone(),
            known: HashMap::new(),
            head: Vec::new(),
            depth: 0,
            returned: None,
        }
    }

    fn end(&mut self) {
        if !self.rules.is_empty() {
            self.phase = Phase::Head;
            self.head.clear();
            self.depth = 0;
        }
    }

    /// The skipped columns of `table`.
    fn rule_columns(&self, table: &str) -> Vec<String> {
        self.rules
            .iter()
            .filter(|(suffix, _)| table_matches(table, suffix, self.prefix.as_deref()))
            .map(|(_, col)| col.clone())
            .collect()
    }

    fn literal_is_skipped(&self) -> bool {
        match &self.phase {
            Phase::Values {
                skip, depth, col, ..
            } => *depth >= 1 && skip.contains(col),
            Phase::Assign { skip, current, .. } => {
                current.as_ref().is_some_and(|c| skip.contains(c))
            }
            _ => false,
        }
    }

    fn literal(&mut self) {
        if let Phase::Create {
            depth, expect_name, ..
        } = &mut self.phase
        {
            if *depth == 1 {
                *expect_name = false;
            }
        }
    }

    fn token(&mut self, tok: Tok) -> Result<(), RewriteError> {
        match &mut self.phase {
            Phase::Other => self.returned = Some(tok),
            Phase::Head => {
                if self.head.len() >= MAX_HEAD_TOKENS {
                    self.phase = Phase::Other;
                    return Ok(());
                }
                let opens_at_top = matches!(tok, Tok::Punct(b'(')) && self.depth == 0;
                match tok {
                    Tok::Punct(b'(') => self.depth += 1,
                    Tok::Punct(b')') => self.depth = self.depth.saturating_sub(1),
                    _ => {}
                }
                self.head.push(tok);
                self.classify(opens_at_top)?;
            }
            Phase::Values {
                table_rules,
                depth,
                col,
                ..
            } => match &tok {
                Tok::Punct(b'(') => {
                    *depth += 1;
                    if *depth == 1 {
                        *col = 0;
                    }
                }
                Tok::Punct(b')') => *depth = depth.saturating_sub(1),
                Tok::Punct(b',') if *depth == 1 => *col += 1,
                Tok::Word(w) if *depth == 0 && upper_is(w, "UPDATE") => {
                    self.phase = Phase::Assign {
                        skip: std::mem::take(table_rules),
                        last: None,
                        current: None,
                        depth: 0,
                    };
                }
                _ => {}
            },
            Phase::Assign {
                last,
                current,
                depth,
                ..
            } => match &tok {
                Tok::Word(w) if upper_is(w, "WHERE") => {
                    *current = None;
                    *last = None;
                }
                Tok::Word(w) | Tok::Ident(w) => *last = Some(name_of(w)),
                Tok::Punct(b'=') => *current = last.take(),
                Tok::Punct(b',') if *depth == 0 => *current = None,
                Tok::Punct(b'(') => *depth += 1,
                Tok::Punct(b')') => *depth = depth.saturating_sub(1),
                _ => {}
            },
            Phase::Create {
                table,
                depth,
                cols,
                expect_name,
            } => match &tok {
                Tok::Punct(b'(') => *depth += 1,
                Tok::Punct(b')') => {
                    *depth = depth.saturating_sub(1);
                    if *depth == 0 {
                        let table = std::mem::take(table);
                        let cols = std::mem::take(cols);
                        self.known.insert(table, cols);
                        self.phase = Phase::Other;
                    }
                }
                Tok::Punct(b',') if *depth == 1 => *expect_name = true,
                Tok::Word(w) | Tok::Ident(w) if *depth == 1 && *expect_name => {
                    let constraint = matches!(tok, Tok::Word(_))
                        && [
                            "PRIMARY",
                            "KEY",
                            "INDEX",
                            "UNIQUE",
                            "CONSTRAINT",
                            "FULLTEXT",
                            "SPATIAL",
                            "FOREIGN",
                            "CHECK",
                            "PERIOD",
                        ]
                        .iter()
                        .any(|k| upper_is(w, k));
                    if !constraint {
                        cols.push(name_of(w));
                    }
                    *expect_name = false;
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// Decides, once the head has grown by one token, whether it is complete and what follows.
    fn classify(&mut self, opened_at_top: bool) -> Result<(), RewriteError> {
        let first = match self.head.first() {
            Some(Tok::Word(w)) => w.to_ascii_uppercase(),
            _ => {
                self.phase = Phase::Other;
                return Ok(());
            }
        };
        let last_word = match self.head.last() {
            Some(Tok::Word(w)) if self.depth == 0 && self.head.len() > 1 => {
                Some(w.to_ascii_uppercase())
            }
            _ => None,
        };
        match &first[..] {
            b"INSERT" | b"REPLACE" => {
                if let Some(kw @ (b"VALUES" | b"VALUE" | b"SET" | b"SELECT")) = last_word.as_deref()
                {
                    self.begin_insert(kw)?;
                }
            }
            b"UPDATE" => {
                if last_word.as_deref() == Some(b"SET") {
                    let mut i = 1;
                    while matches!(self.head.get(i), Some(Tok::Word(w)) if upper_is(w, "LOW_PRIORITY") || upper_is(w, "IGNORE"))
                    {
                        i += 1;
                    }
                    let skip = match table_name(&self.head, i) {
                        Some((table, _)) => self.rule_columns(&table),
                        None => Vec::new(),
                    };
                    self.phase = if skip.is_empty() {
                        Phase::Other
                    } else {
                        Phase::Assign {
                            skip,
                            last: None,
                            current: None,
                            depth: 0,
                        }
                    };
                }
            }
            b"CREATE" => {
                let mut i = 1;
                if matches!(self.head.get(i), Some(Tok::Word(w)) if upper_is(w, "TEMPORARY")) {
                    i += 1;
                }
                match self.head.get(i) {
                    None => return Ok(()),
                    Some(Tok::Word(w)) if upper_is(w, "TABLE") => {}
                    Some(_) => {
                        self.phase = Phase::Other;
                        return Ok(());
                    }
                }
                if !opened_at_top {
                    return Ok(());
                }
                i += 1;
                while matches!(self.head.get(i), Some(Tok::Word(w)) if upper_is(w, "IF") || upper_is(w, "NOT") || upper_is(w, "EXISTS"))
                {
                    i += 1;
                }
                self.phase = match table_name(&self.head, i) {
                    Some((table, next)) if next + 1 == self.head.len() => {
                        if self.rule_columns(&table).is_empty() {
                            Phase::Other
                        } else {
                            Phase::Create {
                                table,
                                depth: 1,
                                cols: Vec::new(),
                                expect_name: true,
                            }
                        }
                    }
                    _ => Phase::Other,
                };
            }
            _ => self.phase = Phase::Other,
        }
        Ok(())
    }

    /// The head `INSERT … INTO t [(cols)] VALUES|SET|SELECT` is complete.
    fn begin_insert(&mut self, keyword: &[u8]) -> Result<(), RewriteError> {
        let head = &self.head;
        let mut i = 1;
        while matches!(head.get(i), Some(Tok::Word(w)) if ["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"].iter().any(|k| upper_is(w, k)))
        {
            i += 1;
        }
        let Some((table, mut next)) = table_name(head, i) else {
            self.phase = Phase::Other;
            return Ok(());
        };
        let rules = self.rule_columns(&table);
        if rules.is_empty() || keyword == b"SELECT" {
            self.phase = Phase::Other;
            return Ok(());
        }
        if keyword == b"SET" {
            self.phase = Phase::Assign {
                skip: rules,
                last: None,
                current: None,
                depth: 0,
            };
            return Ok(());
        }
        if matches!(head.get(next), Some(Tok::Word(w)) if upper_is(w, "PARTITION")) {
            next = skip_group(head, next + 1);
        }
        let listed = if matches!(head.get(next), Some(Tok::Punct(b'('))) {
            let mut cols = Vec::new();
            for tok in &head[next + 1..] {
                match tok {
                    Tok::Punct(b')') => break,
                    Tok::Word(w) | Tok::Ident(w) => cols.push(name_of(w)),
                    _ => {}
                }
            }
            Some(cols)
        } else {
            None
        };
        let cols = match listed.as_ref().or_else(|| self.known.get(&table)) {
            Some(cols) => cols,
            None => {
                return Err(RewriteError::UnknownColumns {
                    table,
                    column: rules[0].clone(),
                })
            }
        };
        let skip: Vec<usize> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| rules.contains(c))
            .map(|(i, _)| i)
            .collect();
        self.phase = if skip.is_empty() {
            Phase::Other
        } else {
            Phase::Values {
                table_rules: rules,
                skip,
                depth: 0,
                col: 0,
            }
        };
        Ok(())
    }
}

/// The (possibly `db`.`qualified`) table name starting at `head[i]`, and the index after it.
fn table_name(head: &[Tok], i: usize) -> Option<(String, usize)> {
    let name = |t: Option<&Tok>| match t {
        Some(Tok::Word(w)) | Some(Tok::Ident(w)) => Some(String::from_utf8_lossy(w).into_owned()),
        _ => None,
    };
    let first = name(head.get(i))?;
    if matches!(head.get(i + 1), Some(Tok::Punct(b'.'))) {
        if let Some(second) = name(head.get(i + 2)) {
            return Some((second, i + 3));
        }
    }
    Some((first, i + 1))
}

/// The index after the parenthesized group starting at `head[i]` (or `i` when there is none).
fn skip_group(head: &[Tok], i: usize) -> usize {
    if !matches!(head.get(i), Some(Tok::Punct(b'('))) {
        return i;
    }
    let mut depth = 0;
    for (j, tok) in head.iter().enumerate().skip(i) {
        match tok {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    head.len()
}

/// Whether a skip rule for `suffix` applies to `table`.
fn table_matches(table: &str, suffix: &str, prefix: Option<&str>) -> bool {
    match prefix {
        None => table.ends_with(suffix),
        Some(prefix) => match table.strip_prefix(prefix) {
            Some(rest) if rest == suffix => true,
            Some(rest) => rest
                .strip_suffix(suffix)
                .and_then(|mid| mid.strip_suffix('_'))
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())),
            None => false,
        },
    }
}
