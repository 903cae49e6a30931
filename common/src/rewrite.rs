//! The serialized-safe URL rewriter: moves a WordPress database from one site URL to another
//! (source → clone, clone → production) without breaking PHP serialized data, JSON or SQL escaping.
//!
//! Pure: it only reads from a [`BufRead`] and writes to a [`Write`]; no files, no network.
//!
//! ```
//! use clonepool_common::rewrite::{RewriteOptions, UrlRewriter};
//!
//! let rw = UrlRewriter::new(
//!     "https://shop.example.com",
//!     "http://clone1.localhost:8080",
//!     RewriteOptions::default(),
//! )
//! .unwrap();
//! let value = br#"a:1:{s:4:"home";s:24:"https://shop.example.com";}"#;
//! assert_eq!(
//!     &rw.rewrite_value(value)[..],
//!     br#"a:1:{s:4:"home";s:28:"http://clone1.localhost:8080";}"#
//! );
//!
//! let dump = b"INSERT INTO `wp_options` VALUES (1,'siteurl','https://shop.example.com','yes');\n";
//! let mut out = Vec::new();
//! let stats = rw.rewrite_sql_stream(&dump[..], &mut out).unwrap();
//! assert_eq!(
//!     out,
//!     b"INSERT INTO `wp_options` VALUES (1,'siteurl','http://clone1.localhost:8080','yes');\n"
//! );
//! assert_eq!(stats.values_changed, 1);
//! ```
//!
//! See `docs/rewriter.md` for what is rewritten, what is left alone and why.

mod php;
mod sql;
mod url;

use std::borrow::Cow;
use std::io::{BufRead, Write};

pub use url::SiteUrl;

/// Why a rewriter could not be built or a dump could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("the {which} URL {url:?} is not usable: {reason}")]
    InvalidUrl {
        which: &'static str,
        url: String,
        reason: &'static str,
    },
    #[error(
        "the skip rule ({table_suffix:?}, {column:?}) needs a non-empty table suffix and column"
    )]
    InvalidSkipRule {
        table_suffix: String,
        column: String,
    },
    #[error(
        "an INSERT into `{table}` has no column list and no CREATE TABLE for it came earlier in the \
         dump, so its `{column}` column cannot be left untouched; dump with column names \
         (mysqldump --complete-insert) or include the table definitions"
    )]
    UnknownColumns { table: String, column: String },
    #[error("reading or writing the dump failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How a [`UrlRewriter`] treats a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteOptions {
    /// Columns whose values are copied untouched, as `(table suffix, column)`: `("posts", "guid")`
    /// matches the `guid` column of `wp_posts`, `wp_2_posts`, `blog_posts`, …
    pub skip_columns: Vec<(String, String)>,
    /// When set, a skip rule's table must be exactly `{prefix}{suffix}` or, for multisite,
    /// `{prefix}{blog id}_{suffix}`. When unset, any table name ending in the suffix matches.
    pub table_prefix: Option<String>,
    /// Also rewrite a bare host (`shop.example.com` with no scheme or `//` in front), e.g. the
    /// `domain` column of multisite tables. On by default.
    pub rewrite_bare_hosts: bool,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            skip_columns: Vec::new(),
            table_prefix: None,
            rewrite_bare_hosts: true,
        }
    }
}

impl RewriteOptions {
    /// The options for a restore (clone → production): `guid` of `<prefix>posts` stays as it is,
    /// because WordPress uses it as a permanent, never-changing post identifier (feed readers).
    pub fn for_restore() -> Self {
        Self {
            skip_columns: vec![("posts".to_string(), "guid".to_string())],
            ..Self::default()
        }
    }
}

/// What one rewrite did. Counters add up over a whole dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// SQL statements seen (terminated by `;`, plus a last unterminated one).
    pub statements: u64,
    /// String values seen (SQL string literals, or calls of `rewrite_value_with_stats`).
    pub values: u64,
    /// Values whose bytes changed.
    pub values_changed: u64,
    /// Values holding PHP serialized data whose `s:N:` / `C:N:` lengths were recomputed.
    pub serialized_relengthed: u64,
    /// Values (or serialized strings nested in them) that mention the source host and start like
    /// PHP serialized data but do not parse: they are left byte-identical.
    pub unparseable_left_alone: u64,
    /// Values in skipped columns (e.g. `wp_posts.guid` on restore), copied untouched.
    pub skipped_column_values: u64,
    /// Bytes read from the input dump.
    pub bytes_in: u64,
    /// Bytes written to the output dump.
    pub bytes_out: u64,
}

/// One replacement inside a value: bytes `start..end` become `replacement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edit {
    pub start: usize,
    pub end: usize,
    pub replacement: Vec<u8>,
}

impl Edit {
    /// How much longer (or shorter, when negative) the value gets.
    fn delta(&self) -> isize {
        self.replacement.len() as isize - (self.end - self.start) as isize
    }
}

/// Counters kept while rewriting one value.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub serialized_relengthed: u64,
    pub unparseable: u64,
}

impl Counters {
    fn add(&mut self, other: Counters) {
        self.serialized_relengthed += other.serialized_relengthed;
        self.unparseable += other.unparseable;
    }
}

/// Rewrites every URL of one site (`from`) into the matching URL of another site (`to`).
#[derive(Debug, Clone)]
pub struct UrlRewriter {
    matcher: url::Matcher,
    options: RewriteOptions,
}

impl UrlRewriter {
    /// `from` and `to` are site URLs such as `https://shop.example.com`,
    /// `http://clone1.localhost:8080` or `https://example.com/blog` (scheme `http` or `https`,
    /// host, optional port and path; no query, fragment or user info).
    ///
    /// When both name the same site (same scheme, host, port and path), the rewriter changes
    /// nothing at all.
    pub fn new(from: &str, to: &str, options: RewriteOptions) -> Result<Self, RewriteError> {
        let from = SiteUrl::parse("from", from)?;
        let to = SiteUrl::parse("to", to)?;
        for (table_suffix, column) in &options.skip_columns {
            if table_suffix.is_empty() || column.is_empty() {
                return Err(RewriteError::InvalidSkipRule {
                    table_suffix: table_suffix.clone(),
                    column: column.clone(),
                });
            }
        }
        Ok(Self {
            matcher: url::Matcher::new(&from, &to, options.rewrite_bare_hosts),
            options,
        })
    }

    /// The options this rewriter was built with.
    pub fn options(&self) -> &RewriteOptions {
        &self.options
    }

    /// Rewrites one value (an option, a meta value, a column): PHP serialized data is parsed and
    /// re-serialized with recomputed lengths, anything else gets plain URL replacement, and data
    /// that starts like serialized data but does not parse is returned unchanged.
    pub fn rewrite_value<'a>(&self, value: &'a [u8]) -> Cow<'a, [u8]> {
        let mut stats = Stats::default();
        self.rewrite_value_with_stats(value, &mut stats)
    }

    /// [`rewrite_value`](Self::rewrite_value), counting what it did into `stats`.
    pub fn rewrite_value_with_stats<'a>(
        &self,
        value: &'a [u8],
        stats: &mut Stats,
    ) -> Cow<'a, [u8]> {
        let mut edits = Vec::new();
        let mut counters = Counters::default();
        php::value_edits(&self.matcher, value, 0, 0, &mut edits, &mut counters);
        stats.values += 1;
        stats.serialized_relengthed += counters.serialized_relengthed;
        stats.unparseable_left_alone += counters.unparseable;
        if edits.is_empty() {
            return Cow::Borrowed(value);
        }
        stats.values_changed += 1;
        Cow::Owned(apply_edits(value, &edits))
    }

    /// Rewrites a MySQL/MariaDB SQL dump from `input` into `output`, one string literal at a
    /// time: only the current literal (and a statement's head) is held in memory, so very long
    /// extended INSERT lines are fine. Bytes outside string literals are copied unchanged.
    ///
    /// `output` is written through an internal buffer and flushed before returning.
    pub fn rewrite_sql_stream<R: BufRead, W: Write>(
        &self,
        input: R,
        output: W,
    ) -> Result<Stats, RewriteError> {
        sql::rewrite_stream(self, input, output)
    }

    /// [`rewrite_sql_stream`](Self::rewrite_sql_stream) over an in-memory dump.
    pub fn rewrite_sql(&self, dump: &[u8]) -> Result<(Vec<u8>, Stats), RewriteError> {
        let mut out = Vec::with_capacity(dump.len() + dump.len() / 16);
        let stats = self.rewrite_sql_stream(dump, &mut out)?;
        Ok((out, stats))
    }
}

/// Applies sorted, non-overlapping edits to `value`.
pub(crate) fn apply_edits(value: &[u8], edits: &[Edit]) -> Vec<u8> {
    let grow: isize = edits.iter().map(Edit::delta).sum();
    let mut out = Vec::with_capacity((value.len() as isize + grow.max(0)) as usize);
    let mut at = 0;
    for edit in edits {
        out.extend_from_slice(&value[at..edit.start]);
        out.extend_from_slice(&edit.replacement);
        at = edit.end;
    }
    out.extend_from_slice(&value[at..]);
    out
}
