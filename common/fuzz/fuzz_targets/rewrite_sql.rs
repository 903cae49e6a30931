//! Fuzzes the URL rewriter over SQL dumps and single values: it never panics, and input that does
//! not mention the source host comes out byte for byte as it went in.
//!
//! Run: `cd common/fuzz && cargo +nightly fuzz run rewrite_sql -- -dict=rewrite_sql.dict`.
#![no_main]

use clonepool_common::rewrite::{RewriteError, RewriteOptions, UrlRewriter};
use libfuzzer_sys::fuzz_target;
use std::io::BufReader;

const FROM: &str = "https://shop.example.com";
const FROM_HOST: &[u8] = b"shop.example.com";

fuzz_target!(|data: &[u8]| {
    // The first byte picks the options, the target and the read buffer size (chunk boundaries
    // matter).
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let options = if control & 1 == 1 {
        RewriteOptions::for_restore()
    } else {
        RewriteOptions::default()
    };
    let to = if control & 2 == 2 {
        "http://clone1.localhost:8080"
    } else {
        "http://localhost/clones/c1"
    };
    let capacity = 1 + usize::from(control >> 2);
    let rw = UrlRewriter::new(FROM, to, options).expect("valid URLs");

    let mut out = Vec::new();
    let result = rw.rewrite_sql_stream(BufReader::with_capacity(capacity, input), &mut out);
    let value = rw.rewrite_value(input);

    // A literal can spell the host with needless escapes (`sho\p.example.com` is stored as
    // `shop.example.com`, and rightly rewritten); dropping every backslash finds those too.
    let unescaped: Vec<u8> = input.iter().copied().filter(|&b| b != b'\\').collect();
    if !mentions_host(&unescaped) {
        match result {
            Ok(_) => assert_eq!(out, input, "SQL without the host must pass unchanged"),
            // Allowed when skipping columns of a table whose columns are not known.
            Err(RewriteError::UnknownColumns { .. }) => assert!(control & 1 == 1),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    if !mentions_host(input) {
        assert_eq!(
            &value[..],
            input,
            "a value without the host must pass unchanged"
        );
    }
});

fn mentions_host(bytes: &[u8]) -> bool {
    bytes
        .windows(FROM_HOST.len())
        .any(|w| w.eq_ignore_ascii_case(FROM_HOST))
}
