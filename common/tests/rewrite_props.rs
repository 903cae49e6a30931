//! Property tests of the rewriter: identity, pass-through of unrelated bytes, serialized data
//! that still parses to the expected structure, and SQL dumps that survive a round trip.

mod rewrite_support;

use clonepool_common::rewrite::{RewriteError, RewriteOptions, UrlRewriter};
use proptest::prelude::*;
use rewrite_support::*;
use std::io::BufReader;

/// Bytes that look a lot like SQL dumps, PHP serialized data, JSON and URLs, with stray bytes.
fn soup(with_host: bool) -> impl Strategy<Value = Vec<u8>> {
    let mut words: Vec<&'static str> = vec![
        "'",
        "\"",
        "\\",
        "`",
        "''",
        "\\'",
        "\\\\",
        "--",
        "-- ",
        "#",
        "/*",
        "*/",
        "/*!40101 ",
        "\n",
        ";",
        "(",
        ")",
        ",",
        "=",
        ".",
        " ",
        "X",
        "x'",
        "INSERT INTO `wp_posts` ",
        "INSERT INTO wp_options ",
        "(`ID`,`guid`) ",
        "VALUES ",
        "UPDATE wp_posts SET guid=",
        "CREATE TABLE `wp_posts` (`ID` int, `guid` text",
        "s:5:\"",
        "s:24:\"",
        "a:1:{",
        "a:2:{i:0;",
        "O:8:\"stdClass\":1:{",
        "C:3:\"Foo\":",
        "}",
        "\";",
        "N;",
        "https://",
        "http://",
        "//",
        "https:\\/\\/",
        "\\/",
        "%3A%2F%2F",
        "%2F",
        "www.",
        "shop.",
        "example.",
        "com",
        "shop.example.co",
        "example.com",
        "hop.example.com",
        "shop-example.com",
        "clone1.localhost:8080",
        "é",
        "日本",
        "🎉",
        "\0",
        "\u{1a}",
        "\r",
    ];
    if with_host {
        words.extend([
            "shop.example.com",
            "https://shop.example.com",
            "SHOP.EXAMPLE.COM",
            "https:\\/\\/www.shop.example.com\\/x",
        ]);
    }
    let token = prop_oneof![
        4 => prop::sample::select(words).prop_map(|w| w.as_bytes().to_vec()),
        1 => any::<u8>().prop_map(|b| vec![b]),
        1 => "[ -~]{0,6}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(token, 0..80).prop_map(|t| t.concat())
}

/// Rewrites `input` as an SQL dump through a small read buffer; `None` when the rewriter refuses
/// it for want of column names (allowed when skipping columns).
fn sql(rw: &UrlRewriter, input: &[u8], cap: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match rw.rewrite_sql_stream(BufReader::with_capacity(cap, input), &mut out) {
        Ok(_) => Some(out),
        Err(RewriteError::UnknownColumns { .. }) => None,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// One cell of a generated INSERT: what it is, and what it should become.
#[derive(Debug, Clone)]
enum Cell {
    Int(i64),
    Null,
    Str {
        orig: Vec<u8>,
        want: Vec<u8>,
        doubled: bool,
    },
}

impl Cell {
    fn write(&self, want: bool, out: &mut Vec<u8>) {
        match self {
            Cell::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Cell::Null => out.extend_from_slice(b"NULL"),
            Cell::Str {
                orig,
                want: w,
                doubled,
            } => out.extend(sql_literal(if want { w } else { orig }, *doubled)),
        }
    }
}

fn str_cell() -> impl Strategy<Value = Cell> {
    let value = prop_oneof![
        string_pair(ROUND_TRIP_CASES),
        php_pair(ROUND_TRIP_CASES).prop_map(|(a, b)| (serialize(&a), serialize(&b))),
    ];
    (value, any::<bool>()).prop_map(|((orig, want), doubled)| Cell::Str {
        orig,
        want,
        doubled,
    })
}

fn cell() -> impl Strategy<Value = Cell> {
    prop_oneof![
        1 => any::<i64>().prop_map(Cell::Int),
        1 => Just(Cell::Null),
        4 => str_cell(),
    ]
}

#[derive(Debug, Clone)]
enum Stmt {
    Comment(usize),
    Options(Vec<Vec<Cell>>),
    /// Rows of `wp_posts (ID, guid, post_content)`.
    Posts(Vec<(Cell, Cell)>),
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        (0..ROUND_TRIP_CASES.len()).prop_map(Stmt::Comment),
        prop::collection::vec(prop::collection::vec(cell(), 1..5), 1..4).prop_map(Stmt::Options),
        prop::collection::vec((str_cell(), str_cell()), 1..4).prop_map(Stmt::Posts),
    ]
}

/// The dump as generated (`want == false`) or as it should look after rewriting.
fn dump(stmts: &[Stmt], want: bool, guid_kept: bool) -> Vec<u8> {
    let mut out = b"/*M!999999\\- enable the sandbox mode */ \n".to_vec();
    for s in stmts {
        match s {
            Stmt::Comment(i) => {
                out.extend_from_slice(format!("-- {}\n", ROUND_TRIP_CASES[*i].0).as_bytes())
            }
            Stmt::Options(rows) => {
                out.extend_from_slice(b"INSERT INTO `wp_options` VALUES ");
                for (r, row) in rows.iter().enumerate() {
                    out.extend_from_slice(if r == 0 { b"(" } else { b",(" });
                    for (c, cell) in row.iter().enumerate() {
                        if c > 0 {
                            out.push(b',');
                        }
                        cell.write(want, &mut out);
                    }
                    out.push(b')');
                }
                out.extend_from_slice(b";\n");
            }
            Stmt::Posts(rows) => {
                out.extend_from_slice(
                    b"INSERT INTO `wp_posts` (`ID`, `guid`, `post_content`) VALUES\n",
                );
                for (r, (guid, content)) in rows.iter().enumerate() {
                    out.extend_from_slice(
                        format!("{}({r},", if r == 0 { "" } else { ",\n" }).as_bytes(),
                    );
                    guid.write(want && !guid_kept, &mut out);
                    out.push(b',');
                    content.write(want, &mut out);
                    out.push(b')');
                }
                out.extend_from_slice(b";\n");
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rewriting_with_from_equal_to_to_is_the_identity(input in soup(true), cap in 1usize..64) {
        for to in [FROM, "HTTPS://Shop.Example.com/"] {
            let rw = UrlRewriter::new(FROM, to, RewriteOptions::default()).unwrap();
            prop_assert_eq!(&rw.rewrite_value(&input)[..], &input[..]);
            prop_assert_eq!(sql(&rw, &input, cap).unwrap(), input.clone());
        }
    }

    #[test]
    fn generated_dumps_rewritten_from_a_site_to_itself_stay_identical(
        stmts in prop::collection::vec(stmt(), 0..6),
    ) {
        let rw = UrlRewriter::new(FROM, FROM, RewriteOptions::for_restore()).unwrap();
        let original = dump(&stmts, false, false);
        prop_assert_eq!(sql(&rw, &original, 8192).unwrap(), original);
    }

    #[test]
    fn bytes_without_the_source_host_pass_through_unchanged(input in soup(false), cap in 1usize..64) {
        // Not even spelled with needless MySQL escapes (`sho\p` is stored as `shop`).
        let unescaped: Vec<u8> = input.iter().copied().filter(|&b| b != b'\\').collect();
        prop_assume!(!contains_ci(&unescaped, "shop.example.com"));
        let rw = UrlRewriter::new(FROM, TO, RewriteOptions::default()).unwrap();
        prop_assert_eq!(&rw.rewrite_value(&input)[..], &input[..]);
        prop_assert_eq!(sql(&rw, &input, cap).unwrap(), input.clone());
        let restore = UrlRewriter::new(FROM, TO, RewriteOptions::for_restore()).unwrap();
        if let Some(out) = sql(&restore, &input, cap) {
            prop_assert_eq!(out, input);
        }
    }

    #[test]
    fn arbitrary_bytes_never_make_the_rewriter_panic(
        input in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let rw = UrlRewriter::new(FROM, TO, RewriteOptions::for_restore()).unwrap();
        let _ = rw.rewrite_value(&input);
        let _ = sql(&rw, &input, 7);
    }

    #[test]
    fn rewritten_php_values_parse_back_to_the_expected_structure(pair in php_pair(URL_CASES)) {
        let (orig, want) = pair;
        let rw = UrlRewriter::new(FROM, TO, RewriteOptions::default()).unwrap();
        let bytes = serialize(&orig);
        let out = rw.rewrite_value(&bytes);
        let parsed = parse(&out).map_err(|e| {
            TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out)))
        })?;
        prop_assert_eq!(parsed, flatten(&want));
        prop_assert_eq!(&out[..], &serialize(&want)[..]);
    }

    #[test]
    fn a_dump_rewritten_there_and_back_is_the_original(
        stmts in prop::collection::vec(stmt(), 0..6),
        restore in any::<bool>(),
        cap in prop_oneof![1usize..16, Just(8192usize)],
        to in prop_oneof![Just(TO), Just("http://localhost:8080/clones/c1")],
    ) {
        let original = dump(&stmts, false, false);
        prop_assume!(!contains_ci(&original, "localhost"));
        let options = if restore { RewriteOptions::for_restore() } else { RewriteOptions::default() };
        let there = UrlRewriter::new(FROM, to, options.clone()).unwrap();
        let back = UrlRewriter::new(to, FROM, options).unwrap();
        let rewritten = sql(&there, &original, cap).unwrap();
        if to == TO {
            let expected = dump(&stmts, true, restore);
            prop_assert_eq!(String::from_utf8_lossy(&rewritten), String::from_utf8_lossy(&expected));
        }
        prop_assert_eq!(sql(&back, &rewritten, cap).unwrap(), original);
    }
}
