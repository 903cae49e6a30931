//! What `UrlRewriter::rewrite_value` does to single values: URL variants, PHP serialized data,
//! JSON, and data it must leave alone.

use clonepool_common::rewrite::{RewriteError, RewriteOptions, Stats, UrlRewriter};
use std::borrow::Cow;

fn site(from: &str, to: &str) -> UrlRewriter {
    UrlRewriter::new(from, to, RewriteOptions::default()).unwrap()
}

fn shop() -> UrlRewriter {
    site("https://shop.example.com", "http://clone1.localhost:8080")
}

fn rewrite(rw: &UrlRewriter, v: &str) -> String {
    String::from_utf8(rw.rewrite_value(v.as_bytes()).into_owned()).unwrap()
}

/// `s:N:"…";` with N the byte length of `s`.
fn s(v: &str) -> String {
    format!("s:{}:\"{}\";", v.len(), v)
}

#[test]
fn https_urls_are_rewritten_to_the_target_scheme_and_host() {
    assert_eq!(
        rewrite(&shop(), "https://shop.example.com/wp-content/a.png"),
        "http://clone1.localhost:8080/wp-content/a.png"
    );
}

#[test]
fn http_scheme_less_and_www_variants_are_all_rewritten() {
    let rw = shop();
    assert_eq!(
        rewrite(&rw, "http://shop.example.com/"),
        "http://clone1.localhost:8080/"
    );
    assert_eq!(
        rewrite(&rw, "https://www.shop.example.com"),
        "http://clone1.localhost:8080"
    );
    assert_eq!(
        rewrite(&rw, "http://www.shop.example.com/x"),
        "http://clone1.localhost:8080/x"
    );
    assert_eq!(
        rewrite(&rw, "<script src=\"//shop.example.com/a.js\"></script>"),
        "<script src=\"//clone1.localhost:8080/a.js\"></script>"
    );
    assert_eq!(
        rewrite(&rw, "//www.shop.example.com"),
        "//clone1.localhost:8080"
    );
}

#[test]
fn a_www_source_url_also_rewrites_the_host_without_www() {
    let rw = site("https://www.example.org", "https://staging.example.net");
    assert_eq!(
        rewrite(&rw, "https://example.org/a"),
        "https://staging.example.net/a"
    );
    assert_eq!(
        rewrite(&rw, "https://www.example.org/a"),
        "https://staging.example.net/a"
    );
}

#[test]
fn json_escaped_urls_keep_their_escaped_slashes() {
    let rw = site("https://shop.example.com", "http://localhost:8080/clone1");
    assert_eq!(
        rewrite(
            &rw,
            r#"{"logo":"https:\/\/shop.example.com\/logo.png","s":"\/\/shop.example.com"}"#
        ),
        r#"{"logo":"http:\/\/localhost:8080\/clone1\/logo.png","s":"\/\/localhost:8080\/clone1"}"#
    );
}

#[test]
fn json_in_json_slashes_are_kept_at_their_escaping_depth() {
    let rw = site("https://shop.example.com", "http://localhost:8080/clone1");
    assert_eq!(
        rewrite(
            &rw,
            r#"{"inner":"{\"u\":\"https:\\\/\\\/shop.example.com\\\/x\"}"}"#
        ),
        r#"{"inner":"{\"u\":\"http:\\\/\\\/localhost:8080\\\/clone1\\\/x\"}"}"#
    );
}

#[test]
fn percent_encoded_urls_keep_their_encoding() {
    assert_eq!(
        rewrite(
            &shop(),
            "/login?redirect_to=https%3A%2F%2Fshop.example.com%2Fwp-admin%2F"
        ),
        "/login?redirect_to=http%3A%2F%2Fclone1.localhost:8080%2Fwp-admin%2F"
    );
    let rw = site("https://example.com/blog", "http://localhost/c1");
    assert_eq!(
        rewrite(&rw, "u=https%3a%2f%2fexample.com%2fblog%2fpost"),
        "u=http%3a%2f%2flocalhost%2fc1%2fpost"
    );
}

#[test]
fn bare_hosts_are_rewritten_but_not_in_email_addresses() {
    let rw = shop();
    assert_eq!(rewrite(&rw, "shop.example.com"), "clone1.localhost:8080");
    assert_eq!(
        rewrite(&rw, "Visit shop.example.com/sale today"),
        "Visit clone1.localhost:8080/sale today"
    );
    assert_eq!(
        rewrite(&rw, "Welcome to shop.example.com."),
        "Welcome to clone1.localhost:8080."
    );
    assert_eq!(
        rewrite(&rw, "mail admin@shop.example.com"),
        "mail admin@shop.example.com"
    );
}

#[test]
fn bare_hosts_are_kept_when_the_option_is_off() {
    let rw = UrlRewriter::new(
        "https://shop.example.com",
        "http://clone1.localhost:8080",
        RewriteOptions {
            rewrite_bare_hosts: false,
            ..RewriteOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        rewrite(&rw, "shop.example.com and https://shop.example.com"),
        "shop.example.com and http://clone1.localhost:8080"
    );
}

#[test]
fn hosts_that_only_start_or_end_with_the_source_host_are_left_alone() {
    let rw = shop();
    for v in [
        "https://shop.example.com.evil.org/x",
        "https://shop.example.community/",
        "https://shop.example.com-cdn.net/",
        "https://myshop.example.com/",
        "https://cdn.shop.example.com/a.png",
        "shop.example.com.evil.org",
    ] {
        assert_eq!(rewrite(&rw, v), v, "{v} must stay");
    }
}

#[test]
fn other_ports_and_other_schemes_are_left_alone() {
    let rw = shop();
    for v in [
        "https://shop.example.com:8443/",
        "ftp://shop.example.com/pub",
        "wss://shop.example.com/socket",
    ] {
        assert_eq!(rewrite(&rw, v), v, "{v} must stay");
    }
    let rw = site("http://localhost:8000", "http://clone2.localhost:8080");
    assert_eq!(
        rewrite(&rw, "http://localhost:8000/x"),
        "http://clone2.localhost:8080/x"
    );
    assert_eq!(
        rewrite(&rw, "http://localhost:80001/x"),
        "http://localhost:80001/x"
    );
    assert_eq!(rewrite(&rw, "http://localhost/x"), "http://localhost/x");
}

#[test]
fn a_source_url_with_a_path_only_matches_urls_under_that_path() {
    let rw = site("https://example.com/blog", "http://clone1.localhost:8080");
    assert_eq!(
        rewrite(&rw, "https://example.com/blog"),
        "http://clone1.localhost:8080"
    );
    assert_eq!(
        rewrite(&rw, "https://example.com/blog/2024/hello/"),
        "http://clone1.localhost:8080/2024/hello/"
    );
    assert_eq!(
        rewrite(&rw, r"https:\/\/example.com\/blog\/x"),
        r"http:\/\/clone1.localhost:8080\/x"
    );
    assert_eq!(
        rewrite(&rw, "https://example.com/blogger"),
        "https://example.com/blogger"
    );
    assert_eq!(
        rewrite(&rw, "https://example.com/shop"),
        "https://example.com/shop"
    );
    assert_eq!(rewrite(&rw, "https://example.com/"), "https://example.com/");
    assert_eq!(
        rewrite(&rw, "example.com/blog/x"),
        "clone1.localhost:8080/x"
    );
}

#[test]
fn a_target_url_with_a_path_gets_its_path_in_the_same_escaping() {
    let rw = site("https://shop.example.com", "http://localhost/clones/c1");
    assert_eq!(
        rewrite(&rw, "https://shop.example.com/a"),
        "http://localhost/clones/c1/a"
    );
    assert_eq!(
        rewrite(&rw, r"https:\/\/shop.example.com\/a"),
        r"http:\/\/localhost\/clones\/c1\/a"
    );
    assert_eq!(
        rewrite(&rw, "https%3A%2F%2Fshop.example.com%2Fa"),
        "http%3A%2F%2Flocalhost%2Fclones%2Fc1%2Fa"
    );
}

#[test]
fn host_matching_ignores_case_but_paths_do_not() {
    let rw = site("https://example.com/Blog", "http://clone1.localhost:8080");
    assert_eq!(
        rewrite(&rw, "HTTPS://EXAMPLE.COM/Blog/x"),
        "http://clone1.localhost:8080/x"
    );
    assert_eq!(
        rewrite(&rw, "https://example.com/blog/x"),
        "https://example.com/blog/x"
    );
}

#[test]
fn serialized_strings_get_their_byte_lengths_recomputed_for_multibyte_text() {
    let before = s("Grüße aus https://shop.example.com/köln 🎉");
    let after = s("Grüße aus http://clone1.localhost:8080/köln 🎉");
    assert_eq!(rewrite(&shop(), &before), after);
    let text = "Grüße aus http://clone1.localhost:8080/köln 🎉";
    assert_eq!((text.len(), text.chars().count()), (51, 45));
    assert!(
        after.starts_with("s:51:"),
        "byte length, not characters: {after}"
    );
}

#[test]
fn nested_arrays_and_objects_with_private_and_protected_properties_are_rewritten() {
    let obj = |url: &str| {
        format!(
            "O:6:\"Widget\":3:{{{}{}{}{}{}a:1:{{i:0;a:1:{{s:4:\"link\";{}}}}}}}",
            s("\0Widget\0url"),
            s(url),
            s("\0*\0title"),
            s("Shop"),
            s("items"),
            s(&format!("{url}/cart")),
        )
    };
    let before = format!(
        "a:2:{{s:6:\"widget\";{}i:7;b:1;}}",
        obj("https://shop.example.com")
    );
    let after = format!(
        "a:2:{{s:6:\"widget\";{}i:7;b:1;}}",
        obj("http://clone1.localhost:8080")
    );
    assert_eq!(rewrite(&shop(), &before), after);
}

#[test]
fn double_serialized_values_are_rewritten_at_both_levels() {
    let inner_before = format!("a:1:{{s:3:\"url\";{}}}", s("https://shop.example.com/x"));
    let inner_after = format!(
        "a:1:{{s:3:\"url\";{}}}",
        s("http://clone1.localhost:8080/x")
    );
    let before = s(&inner_before);
    let after = s(&inner_after);
    let mut stats = Stats::default();
    let got = shop().rewrite_value_with_stats(before.as_bytes(), &mut stats);
    assert_eq!(String::from_utf8(got.into_owned()).unwrap(), after);
    assert_eq!(stats.serialized_relengthed, 1);
    assert_eq!(stats.values_changed, 1);
}

#[test]
fn custom_serialized_objects_get_their_payload_length_recomputed() {
    let payload = |u: &str| format!("a:1:{{i:0;{}}}", s(u));
    let c = |u: &str| {
        let p = payload(u);
        format!("C:11:\"ArrayObject\":{}:{{{}}}", p.len(), p)
    };
    assert_eq!(
        rewrite(&shop(), &c("https://shop.example.com")),
        c("http://clone1.localhost:8080")
    );
    // The SPL layout ArrayObject used before PHP 7.4: markers between the values.
    let spl = |u: &str| {
        let p = format!("x:i:0;a:1:{{i:0;{}}};m:a:0:{{}}", s(u));
        format!("C:11:\"ArrayObject\":{}:{{{}}}", p.len(), p)
    };
    assert_eq!(
        rewrite(&shop(), &spl("https://shop.example.com")),
        spl("http://clone1.localhost:8080")
    );
    // A payload that is not serialized data at all gets plain replacement.
    let plain = |u: &str| format!("C:3:\"Foo\":{}:{{{}}}", u.len(), u);
    assert_eq!(
        rewrite(&shop(), &plain("https://shop.example.com")),
        plain("http://clone1.localhost:8080")
    );
}

#[test]
fn array_keys_and_property_names_are_not_rewritten() {
    let v = format!(
        "a:1:{{{}{}}}",
        s("https://shop.example.com"),
        s("https://shop.example.com")
    );
    let want = format!(
        "a:1:{{{}{}}}",
        s("https://shop.example.com"),
        s("http://clone1.localhost:8080")
    );
    assert_eq!(rewrite(&shop(), &v), want);
}

#[test]
fn booleans_integers_doubles_nulls_references_and_enums_pass_through() {
    let tail = "i:-5;d:0.5;d:-INF;d:1.0E+25;N;b:0;r:1;R:2;E:7:\"Foo:Bar\";";
    let v = format!(
        "a:10:{{i:0;{}{}}}",
        s("https://shop.example.com"),
        numbered(tail)
    );
    let want = format!(
        "a:10:{{i:0;{}{}}}",
        s("http://clone1.localhost:8080"),
        numbered(tail)
    );
    assert_eq!(rewrite(&shop(), &v), want);
}

/// Gives each `;`-terminated value of `values` an integer key 1, 2, …
fn numbered(values: &str) -> String {
    values
        .split_inclusive(';')
        .enumerate()
        .map(|(i, v)| format!("i:{};{v}", i + 1))
        .collect()
}

#[test]
fn json_inside_a_serialized_string_is_rewritten() {
    let before = s(r#"{"u":"https:\/\/shop.example.com\/x"}"#);
    let after = s(r#"{"u":"http:\/\/clone1.localhost:8080\/x"}"#);
    assert_eq!(rewrite(&shop(), &before), after);
}

#[test]
fn broken_serialized_data_is_left_byte_identical_and_counted() {
    let rw = shop();
    for v in [
        // Wrong length (a naive search-replace already happened).
        "a:1:{s:3:\"url\";s:20:\"https://shop.example.com\";}",
        // Truncated.
        "a:2:{s:3:\"url\";s:24:\"https://shop.example.com\";",
        // Count says 2, one element.
        "a:2:{s:3:\"url\";s:24:\"https://shop.example.com\";}",
        // Escaped binary strings are not handled.
        "S:24:\"https://shop.example.com\";",
    ] {
        let mut stats = Stats::default();
        let got = rw.rewrite_value_with_stats(v.as_bytes(), &mut stats);
        assert!(matches!(got, Cow::Borrowed(_)), "{v} must stay");
        assert_eq!(stats.unparseable_left_alone, 1, "{v}");
        assert_eq!(stats.values_changed, 0);
    }
}

#[test]
fn a_broken_serialized_string_nested_in_good_data_is_left_alone_while_the_rest_is_rewritten() {
    let broken = "s:99:\"https://shop.example.com\";";
    let v = format!(
        "a:2:{{i:0;{}i:1;{}}}",
        s(broken),
        s("https://shop.example.com")
    );
    let want = format!(
        "a:2:{{i:0;{}i:1;{}}}",
        s(broken),
        s("http://clone1.localhost:8080")
    );
    let mut stats = Stats::default();
    let got = shop().rewrite_value_with_stats(v.as_bytes(), &mut stats);
    assert_eq!(String::from_utf8(got.into_owned()).unwrap(), want);
    assert_eq!(stats.unparseable_left_alone, 1);
}

#[test]
fn serialized_data_with_trailing_garbage_is_left_alone() {
    let v = format!("a:1:{{i:0;{}}}junk", s("https://shop.example.com"));
    assert_eq!(rewrite(&shop(), &v), v);
}

#[test]
fn whitespace_around_serialized_data_is_kept() {
    let v = format!("\n  {}  \n", s("https://shop.example.com"));
    let want = format!("\n  {}  \n", s("http://clone1.localhost:8080"));
    assert_eq!(rewrite(&shop(), &v), want);
}

#[test]
fn text_that_merely_starts_with_a_letter_and_colon_gets_plain_replacement() {
    assert_eq!(
        rewrite(&shop(), "a: see https://shop.example.com"),
        "a: see http://clone1.localhost:8080"
    );
}

#[test]
fn values_without_the_source_host_are_returned_borrowed() {
    let v = b"a:1:{s:3:\"url\";s:19:\"https://example.com\";}";
    assert!(matches!(shop().rewrite_value(v), Cow::Borrowed(_)));
}

#[test]
fn rewriting_to_the_same_site_changes_nothing() {
    let rw = site("https://shop.example.com/", "HTTPS://Shop.Example.com");
    for v in [
        "http://www.shop.example.com/x",
        "shop.example.com",
        "s:1:\"x\";",
    ] {
        assert!(
            matches!(rw.rewrite_value(v.as_bytes()), Cow::Borrowed(_)),
            "{v}"
        );
    }
}

#[test]
fn invalid_site_urls_are_refused_with_a_reason() {
    for (from, why) in [
        ("shop.example.com", "http:// or https://"),
        ("ftp://shop.example.com", "http:// or https://"),
        ("https://", "no host"),
        ("https://shop.example.com/?p=1", "query"),
        ("https://user@shop.example.com", "user info"),
        ("https://shop.example.com:http", "port"),
        ("https://[::1]:8080", "host"),
        ("https://shop example.com", "whitespace"),
    ] {
        let err = UrlRewriter::new(
            from,
            "http://clone1.localhost:8080",
            RewriteOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            RewriteError::InvalidUrl { which: "from", .. }
        ));
        assert!(err.to_string().contains(why), "{from}: {err}");
    }
}

#[test]
fn empty_skip_rules_are_refused() {
    let err = UrlRewriter::new(
        "https://a.example",
        "https://b.example",
        RewriteOptions {
            skip_columns: vec![("posts".into(), String::new())],
            ..RewriteOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, RewriteError::InvalidSkipRule { .. }));
}

#[test]
fn deeply_nested_data_is_left_alone_instead_of_overflowing_the_stack() {
    let depth = 5000;
    let mut v = "a:1:{i:0;".repeat(depth);
    v.push_str(&s("https://shop.example.com"));
    v.push_str(&"}".repeat(depth));
    let mut stats = Stats::default();
    let got = shop().rewrite_value_with_stats(v.as_bytes(), &mut stats);
    assert!(matches!(got, Cow::Borrowed(_)));
    assert_eq!(stats.unparseable_left_alone, 1);

    // Serialized strings nested in serialized strings, deeper than the limit.
    let mut v = "https://shop.example.com".to_string();
    for _ in 0..300 {
        v = s(&v);
    }
    let got = shop().rewrite_value(v.as_bytes());
    assert_eq!(got.len(), v.len(), "left alone past the depth limit");
}

#[test]
fn moderately_nested_data_is_rewritten() {
    let depth = 60;
    let wrap = |inner: String| {
        format!(
            "{}{}{}",
            "a:1:{i:0;".repeat(depth),
            inner,
            "}".repeat(depth)
        )
    };
    assert_eq!(
        rewrite(&shop(), &wrap(s("https://shop.example.com"))),
        wrap(s("http://clone1.localhost:8080"))
    );
}
