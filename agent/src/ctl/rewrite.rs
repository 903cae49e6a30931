//! clonepoolctl's `sql-rewrite`: the serialized-safe URL rewriter over an SQL dump, standard input
//! to standard output, with what it changed reported on standard error.

use super::CtlError;
use clap::Args;
use clonepool_common::rewrite::{RewriteOptions, UrlRewriter};
use std::io::Write;

/// Rewrite a site's URLs in an SQL dump (stdin → stdout), keeping PHP serialized lengths right.
#[derive(Debug, Clone, Args)]
pub struct SqlRewriteArgs {
    /// The site URL found in the dump, e.g. https://shop.example.com
    #[arg(long)]
    pub from: String,
    /// The site URL to put in its place, e.g. http://shop.localhost:8080
    #[arg(long)]
    pub to: String,
    /// A restore (clone → production): leave the posts table's `guid` column untouched.
    #[arg(long)]
    pub restore: bool,
    /// The dump's table prefix (default: any table name ending in the rule's suffix matches).
    #[arg(long)]
    pub table_prefix: Option<String>,
}

pub fn run(args: &SqlRewriteArgs, json: bool, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut options = if args.restore {
        RewriteOptions::for_restore()
    } else {
        RewriteOptions::default()
    };
    options.table_prefix = args.table_prefix.clone();
    let rewriter = UrlRewriter::new(&args.from, &args.to, options)?;
    let stats = rewriter.rewrite_sql_stream(std::io::stdin().lock(), &mut *out)?;
    out.flush()?;
    let summary = if json {
        serde_json::to_string(&stats)?
    } else {
        format!(
            "sql-rewrite: {} statements, {} of {} values changed, {} serialized values re-lengthed, {} unparseable values left alone, {} skipped-column values",
            stats.statements,
            stats.values_changed,
            stats.values,
            stats.serialized_relengthed,
            stats.unparseable_left_alone,
            stats.skipped_column_values
        )
    };
    eprintln!("{summary}");
    Ok(())
}
