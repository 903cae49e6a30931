//! Checks rewritten PHP serialized values with PHP's own `unserialize()` (php-cli): every value
//! must unserialize, and to exactly what the expected rewritten value unserializes to.

mod rewrite_support;

use clonepool_common::rewrite::{RewriteOptions, UrlRewriter};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use rewrite_support::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Unserializes each `id \t base64(rewritten) \t base64(expected)` line, checks nested serialized
/// strings too, and prints one `FAIL` line per problem, then `CHECKED n`.
const CHECKER: &str = r#"
error_reporting(0);
#[AllowDynamicProperties] class Widget {}
class Legacy implements Serializable {
    public $data;
    public function serialize(): ?string { return serialize($this->data); }
    public function unserialize(string $s): void {
        $this->data = unserialize($s);
        if ($this->data === false && $s !== 'b:0;') { throw new Exception('bad Legacy payload'); }
    }
    public function __serialize(): array { return ['data' => $this->data]; }
    public function __unserialize(array $a): void { $this->data = $a['data']; }
}
function load(string $s, &$ok) {
    try { $v = unserialize($s); } catch (Throwable $e) { $ok = false; return null; }
    $ok = ($v !== false || $s === 'b:0;');
    return $v;
}
// Strings inside that are themselves serialized data must unserialize as well.
function deep(string $id, $v, int &$bad) {
    if (is_array($v) || is_object($v)) {
        foreach ((array)$v as $x) { deep($id, $x, $bad); }
        if ($v instanceof Legacy) { deep($id, $v->data, $bad); }
    } elseif (is_string($v) && preg_match('/^(?:[aOCsidb]:[0-9-]|N;)/', $v)) {
        $inner = load($v, $ok);
        if (!$ok) { echo "FAIL $id: nested serialized string does not unserialize\n"; $bad++; return; }
        deep($id, $inner, $bad);
    }
}
$n = 0; $bad = 0;
while (($line = fgets(STDIN)) !== false) {
    [$id, $a, $b] = explode("\t", rtrim($line, "\n"));
    $n++;
    $got = load(base64_decode($a), $ok);
    if (!$ok) { echo "FAIL $id: rewritten value does not unserialize\n"; $bad++; continue; }
    $want = load(base64_decode($b), $ok);
    if (!$ok) { echo "FAIL $id: expected value does not unserialize (test bug)\n"; $bad++; continue; }
    if (var_export($got, true) !== var_export($want, true)) {
        echo "FAIL $id: unserializes to\n", var_export($got, true), "\ninstead of\n", var_export($want, true), "\n";
        $bad++;
        continue;
    }
    deep($id, $got, $bad);
}
echo "CHECKED $n\n";
"#;

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn s(v: &str) -> Php {
    Php::Str(v.as_bytes().to_vec())
}

fn k(v: &str) -> Key {
    Key::Str(v.as_bytes().to_vec())
}

/// Values shaped like real WordPress options, for `from` URL `u`.
fn wordpress_values(u: &str) -> Vec<Php> {
    let widget_text = Php::Array(vec![
        (
            Key::Int(2),
            Php::Array(vec![
                (k("title"), s("Über uns — 日本")),
                (
                    k("text"),
                    s(&format!(
                        "<a href=\"{u}/sale/\">Sale</a> <img src=\"{u}/wp-content/uploads/ü.png\">"
                    )),
                ),
                (k("filter"), Php::Bool(true)),
                (k("visual"), Php::Bool(true)),
            ]),
        ),
        (k("_multiwidget"), Php::Int(1)),
    ]);
    let theme_mods = Php::Array(vec![
        (Key::Int(0), Php::Bool(false)),
        (
            k("nav_menu_locations"),
            Php::Array(vec![(k("primary"), Php::Int(2))]),
        ),
        (
            k("header_image"),
            s(&format!("{u}/wp-content/uploads/header.jpg")),
        ),
        (
            k("header_image_data"),
            Php::Object {
                class: "stdClass".into(),
                props: vec![
                    (
                        Prop::Public("url".into()),
                        s(&format!("{u}/wp-content/uploads/header.jpg")),
                    ),
                    (Prop::Public("width".into()), Php::Int(1200)),
                ],
            },
        ),
    ]);
    let widget_object = Php::Object {
        class: "Widget".into(),
        props: vec![
            (Prop::Private("url".into()), s(u)),
            (Prop::Protected("title".into()), s("Ünïcödé 🎉")),
            (
                Prop::Public("items".into()),
                Php::Array(vec![
                    (Key::Int(0), s(&format!("{u}/a"))),
                    (Key::Int(1), Php::Null),
                ]),
            ),
        ],
    };
    let double = Php::Serialized(Box::new(Php::Array(vec![
        (k("home"), s(u)),
        (k("nested"), Php::Serialized(Box::new(s(&format!("{u}/ö"))))),
    ])));
    let json = s(&format!(
        "{{\"logo\":\"{}\",\"n\":\"日本\"}}",
        format!("{u}/logo.png").replace('/', "\\/")
    ));
    let legacy = Php::Custom(Box::new(Php::Array(vec![(k("link"), s(u))])));
    vec![widget_text, theme_mods, widget_object, double, json, legacy]
}

#[test]
fn every_rewritten_value_unserializes_in_php_to_the_expected_value() {
    let php_version = Command::new("php").arg("-v").output();
    let php_ok = matches!(&php_version, Ok(o) if o.status.success());
    assert!(
        php_ok,
        "php-cli is needed to check rewritten values with PHP's own unserialize(); install it with \
         scripts/ensure-packages (apt-get install -y php-cli). Got: {php_version:?}"
    );

    let rw = UrlRewriter::new(FROM, TO, RewriteOptions::default()).unwrap();
    let mut corpus: Vec<(Php, Php)> = wordpress_values(FROM)
        .into_iter()
        .zip(wordpress_values(TO))
        .collect();
    let mut runner = TestRunner::deterministic();
    let strategy = php_pair(URL_CASES);
    // Mostly values with something to rewrite; some without.
    let mut drawn = 0;
    while corpus.len() < 500 {
        let (orig, want) = strategy.new_tree(&mut runner).unwrap().current();
        drawn += 1;
        if orig != want || drawn % 10 == 0 {
            corpus.push((orig, want));
        }
    }

    let mut input = String::new();
    let mut changed = 0;
    for (i, (orig, want)) in corpus.iter().enumerate() {
        let before = serialize(orig);
        let expected = serialize(want);
        let after = rw.rewrite_value(&before);
        if expected != before {
            assert_ne!(
                &after[..],
                &before[..],
                "case {i}: URLs inside were not rewritten"
            );
            changed += 1;
        }
        input.push_str(&format!("{i}\t{}\t{}\n", base64(&after), base64(&expected)));
    }
    assert!(
        changed > 300,
        "only {changed} of {} cases hold a URL to rewrite",
        corpus.len()
    );

    let mut child = Command::new("php")
        .args(["-d", "display_errors=stderr", "-r", CHECKER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start php");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("run php");
    writer.join().unwrap().expect("feed php");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "php failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{stdout}",
        failures.len()
    );
    assert!(
        stdout.contains(&format!("CHECKED {}\n", corpus.len())),
        "PHP did not check every value: {stdout}"
    );
}
