//! `clonepoolctl sql-rewrite` as a user runs it: a dump on stdin, the rewritten dump on stdout.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn sql_rewrite(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clonepoolctl"))
        .arg("sql-rewrite")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("clonepoolctl starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sql_rewrite_rewrites_urls_and_fixes_serialized_lengths() {
    let dump = b"INSERT INTO `wp_options` VALUES (1,'widget_text','a:1:{s:3:\"url\";s:28:\"https://shop.example.com/a/b\";}','yes');\n";
    let output = sql_rewrite(
        &[
            "--from",
            "https://shop.example.com",
            "--to",
            "http://c.localhost:8080",
        ],
        dump,
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout,
        "INSERT INTO `wp_options` VALUES (1,'widget_text','a:1:{s:3:\"url\";s:27:\"http://c.localhost:8080/a/b\";}','yes');\n"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("1 serialized values re-lengthed"),
        "{stderr}"
    );
}

#[test]
fn sql_rewrite_reports_stats_as_json_on_stderr() {
    let output = sql_rewrite(
        &[
            "--json",
            "--from",
            "https://a.example",
            "--to",
            "https://b.example",
        ],
        b"SELECT 'https://a.example/';\n",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"SELECT 'https://b.example/';\n");
    let stats: serde_json::Value = serde_json::from_slice(&output.stderr).unwrap();
    assert_eq!(stats["values_changed"], 1);
}

#[test]
fn sql_rewrite_refuses_a_url_that_is_not_one() {
    let output = sql_rewrite(&["--from", "not a url", "--to", "http://c.localhost"], b"");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("clonepoolctl: "), "{stderr}");
    assert!(stderr.contains("not a url"), "{stderr}");
}
