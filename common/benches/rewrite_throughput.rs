//! Throughput of the URL rewriter over a synthetic ~50 MB WordPress dump (serialized options,
//! posts with HTML, JSON post meta). Run: `cargo bench -p clonepool-common --bench rewrite_throughput`.

use clonepool_common::rewrite::{RewriteOptions, UrlRewriter};
use std::io::BufReader;
use std::time::Instant;

const FROM: &str = "https://shop.example.com";
const TO: &str = "http://clone1.localhost:8080";

fn s(v: &str) -> String {
    format!("s:{}:\"{}\";", v.len(), v)
}

fn sql_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\'', "\\'")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn synthetic_dump(target_len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(target_len + 1_000_000);
    out.push_str("/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump\n");
    out.push_str(
        "CREATE TABLE `wp_posts` (\n  `ID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,\n  `post_content` longtext NOT NULL,\n  \
         `post_title` text NOT NULL,\n  `guid` varchar(255) NOT NULL DEFAULT '',\n  PRIMARY KEY (`ID`)\n) ENGINE=InnoDB;\n",
    );
    let mut id = 0u64;
    while out.len() < target_len {
        // Options: serialized widgets and theme mods, ~100 rows per statement.
        out.push_str("INSERT INTO `wp_options` VALUES ");
        for r in 0..100 {
            id += 1;
            let widget = format!(
                "a:2:{{i:2;a:3:{{{}{}{}{}{}b:1;}}{}i:1;}}",
                s("title"),
                s("Über uns"),
                s("text"),
                s(&format!("<a href=\"{FROM}/sale/{id}\">Sale</a> <img src=\"{FROM}/wp-content/uploads/ü{id}.png\">")),
                s("filter"),
                s("_multiwidget"),
            );
            let value = if r % 3 == 0 {
                widget
            } else {
                format!("plain option value number {id} without links")
            };
            if r > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "({id},'option_{id}','{}','yes')",
                sql_escape(&value)
            ));
        }
        out.push_str(";\n");
        // Posts: HTML with links, one long extended INSERT.
        out.push_str("INSERT INTO `wp_posts` VALUES ");
        for r in 0..50 {
            id += 1;
            let content = format!(
                "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit — “{id}”.</p>\n\
                 <p><a href=\"{FROM}/product/{id}/\">Product</a> and <img src=\"{FROM}/wp-content/uploads/2024/05/p{id}.jpg\" \
                 srcset=\"{FROM}/wp-content/uploads/2024/05/p{id}-300x200.jpg 300w\"></p>\n{}",
                "Sed ut perspiciatis unde omnis iste natus error sit voluptatem accusantium. ".repeat(8)
            );
            if r > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "({id},'{}','Post {id}','{FROM}/?p={id}')",
                sql_escape(&content)
            ));
        }
        out.push_str(";\n");
        // Post meta: JSON (Elementor-style) and serialized attachment metadata.
        out.push_str("INSERT INTO `wp_postmeta` VALUES ");
        for r in 0..50 {
            id += 1;
            let json = format!(
                "[{{\"id\":\"{id}\",\"settings\":{{\"link\":{{\"url\":\"{}\"}}}}}}]",
                format!("{FROM}/page/{id}").replace('/', "\\/")
            );
            let meta = format!(
                "a:3:{{{}i:1024;{}{}{}a:1:{{{}{}}}}}",
                s("width"),
                s("file"),
                s(&format!("2024/05/p{id}.jpg")),
                s("sizes"),
                s("url"),
                s(&format!(
                    "{FROM}/wp-content/uploads/2024/05/p{id}-150x150.jpg"
                )),
            );
            if r > 0 {
                out.push(',');
            }
            let v = if r % 2 == 0 { json } else { meta };
            out.push_str(&format!("({id},{},'_meta','{}')", id / 2, sql_escape(&v)));
        }
        out.push_str(";\n");
    }
    out.into_bytes()
}

fn measure(name: &str, rw: &UrlRewriter, dump: &[u8]) {
    let mut best = f64::MAX;
    let mut stats = None;
    for _ in 0..3 {
        let start = Instant::now();
        let st = rw
            .rewrite_sql_stream(BufReader::with_capacity(1 << 16, dump), std::io::sink())
            .expect("rewrite");
        best = best.min(start.elapsed().as_secs_f64());
        stats = Some(st);
    }
    let stats = stats.unwrap();
    let mb = dump.len() as f64 / 1e6;
    println!(
        "{name}: {mb:.1} MB in {best:.3} s = {:.0} MB/s ({} statements, {} values, {} changed, {} re-lengthed)",
        mb / best,
        stats.statements,
        stats.values,
        stats.values_changed,
        stats.serialized_relengthed
    );
}

fn main() {
    let dump = synthetic_dump(50_000_000);
    let rewrite = UrlRewriter::new(FROM, TO, RewriteOptions::default()).unwrap();
    let restore = UrlRewriter::new(FROM, TO, RewriteOptions::for_restore()).unwrap();
    let unrelated = UrlRewriter::new(
        "https://unrelated.example.org",
        TO,
        RewriteOptions::default(),
    )
    .unwrap();

    let (out, _) = rewrite.rewrite_sql(&dump).unwrap();
    assert!(
        !out.windows(FROM.len()).any(|w| w == FROM.as_bytes()),
        "every URL rewritten"
    );

    measure("source -> clone", &rewrite, &dump);
    measure("source -> clone, guid kept", &restore, &dump);
    measure("host not in dump (scan only)", &unrelated, &dump);
}
