//! What `UrlRewriter::rewrite_sql_stream` does to SQL dumps: literals, escaping, comments,
//! streaming, skipped columns and counters.

use clonepool_common::rewrite::{RewriteError, RewriteOptions, Stats, UrlRewriter};
use std::io::BufReader;

const FROM: &str = "https://shop.example.com";
const TO: &str = "http://clone1.localhost:8080";

fn shop(options: RewriteOptions) -> UrlRewriter {
    UrlRewriter::new(FROM, TO, options).unwrap()
}

fn run(rw: &UrlRewriter, dump: &str) -> (String, Stats) {
    let (out, stats) = rw.rewrite_sql(dump.as_bytes()).unwrap();
    (String::from_utf8(out).unwrap(), stats)
}

fn s(v: &str) -> String {
    format!("s:{}:\"{}\";", v.len(), v)
}

#[test]
fn string_literals_in_an_insert_are_rewritten_and_everything_else_is_copied() {
    let dump = "INSERT INTO `wp_options` (`option_id`, `option_name`, `option_value`, `autoload`) VALUES \
                (1,'siteurl','https://shop.example.com','yes'),(2,'home','https://shop.example.com','yes'),\
                (3,'blogname','Shop',  'yes');\n";
    let (out, stats) = run(&shop(RewriteOptions::default()), dump);
    assert_eq!(out, dump.replace(FROM, TO));
    assert_eq!(stats.statements, 1);
    assert_eq!(stats.values, 9);
    assert_eq!(stats.values_changed, 2);
}

#[test]
fn mysql_escapes_in_a_rewritten_literal_are_kept_as_written() {
    let dump =
        r#"INSERT INTO t VALUES ('It\'s \"here\":\nhttps://shop.example.com\r\n\tTab\0\Z \\ \x');"#;
    let want = r#"INSERT INTO t VALUES ('It\'s \"here\":\nhttp://clone1.localhost:8080\r\n\tTab\0\Z \\ \x');"#;
    assert_eq!(run(&shop(RewriteOptions::default()), dump).0, want);
}

#[test]
fn doubled_quotes_are_kept_doubled() {
    let dump = "INSERT INTO t VALUES ('it''s at https://shop.example.com, isn''t it');";
    let want = "INSERT INTO t VALUES ('it''s at http://clone1.localhost:8080, isn''t it');";
    assert_eq!(run(&shop(RewriteOptions::default()), dump).0, want);
}

#[test]
fn double_quoted_literals_are_rewritten_too() {
    let dump = r#"INSERT INTO t VALUES ("say ""hi"" at https://shop.example.com", "it's");"#;
    let want = r#"INSERT INTO t VALUES ("say ""hi"" at http://clone1.localhost:8080", "it's");"#;
    assert_eq!(run(&shop(RewriteOptions::default()), dump).0, want);
}

#[test]
fn backslash_percent_and_underscore_escapes_stay_as_written() {
    let dump = r"INSERT INTO t VALUES ('50\% off at https://shop.example.com/\_sale \%');";
    let want = r"INSERT INTO t VALUES ('50\% off at http://clone1.localhost:8080/\_sale \%');";
    assert_eq!(run(&shop(RewriteOptions::default()), dump).0, want);
}

#[test]
fn serialized_values_inside_sql_literals_get_lengths_counted_on_decoded_bytes() {
    // The value holds a quote and a newline: escaped in SQL, one byte each in PHP.
    let value = |u: &str| format!("a:1:{{s:4:\"text\";{}}}", s(&format!("it's\n{u}")));
    let sql = |v: String| {
        format!(
            "INSERT INTO `wp_options` VALUES (5,'widget_text','{}','yes');",
            v.replace('\\', "\\\\")
                .replace('\'', "\\'")
                .replace('\n', "\\n")
                .replace('"', "\\\"")
        )
    };
    let dump = sql(value(FROM));
    let (out, stats) = run(&shop(RewriteOptions::default()), &dump);
    assert_eq!(out, sql(value(TO)));
    assert!(
        out.contains(r#"s:33:\"it\'s\nhttp://clone1.localhost:8080\""#),
        "{out}"
    );
    assert_eq!(stats.serialized_relengthed, 1);
}

#[test]
fn json_escaped_urls_in_a_dump_are_rewritten_inside_mysql_escaping() {
    let dump = r#"INSERT INTO t VALUES ('{\"url\":\"https:\\/\\/shop.example.com\\/a\"}');"#;
    let want = r#"INSERT INTO t VALUES ('{\"url\":\"http:\\/\\/clone1.localhost:8080\\/a\"}');"#;
    assert_eq!(run(&shop(RewriteOptions::default()), dump).0, want);
}

#[test]
fn a_target_path_written_into_a_json_escaped_url_is_escaped_for_mysql() {
    let rw = UrlRewriter::new(FROM, "http://localhost/c1", RewriteOptions::default()).unwrap();
    let dump = r#"INSERT INTO t VALUES ('{\"u\":\"https:\\/\\/shop.example.com\\/a\"}');"#;
    let want = r#"INSERT INTO t VALUES ('{\"u\":\"http:\\/\\/localhost\\/c1\\/a\"}');"#;
    assert_eq!(run(&rw, dump).0, want);
}

#[test]
fn a_host_spelled_with_needless_escapes_is_rewritten_because_mysql_stores_it_plainly() {
    let dump = r"INSERT INTO t VALUES ('https://sho\p.example.com/\x');";
    let want = r"INSERT INTO t VALUES ('http://clone1.localhost:8080/\x');";
    assert_eq!(run(&shop(RewriteOptions::default()), dump).0, want);
}

#[test]
fn comments_identifiers_and_unquoted_text_that_mention_the_host_are_not_touched() {
    let dump = "-- Host: shop.example.com\n# https://shop.example.com\n\
                /* https://shop.example.com */ /*!40101 SET NAMES utf8mb4 */;\n\
                CREATE TABLE `shop.example.com` (`id` int);\n\
                INSERT INTO `shop.example.com` VALUES (1);\n";
    let (out, stats) = run(&shop(RewriteOptions::default()), dump);
    assert_eq!(out, dump);
    assert_eq!(stats.statements, 3);
}

#[test]
fn quotes_inside_comments_do_not_start_literals() {
    let dump =
        "-- it's https://shop.example.com\nINSERT INTO t VALUES ('https://shop.example.com');\n\
                /* don't */ INSERT INTO t VALUES ('https://shop.example.com');";
    let (out, stats) = run(&shop(RewriteOptions::default()), dump);
    assert_eq!(
        out,
        "-- it's https://shop.example.com\nINSERT INTO t VALUES ('http://clone1.localhost:8080');\n\
         /* don't */ INSERT INTO t VALUES ('http://clone1.localhost:8080');"
    );
    assert_eq!(stats.statements, 2);
    assert_eq!(stats.values_changed, 2);
}

#[test]
fn double_dash_without_a_space_is_not_a_comment() {
    let dump = "SELECT 1--1, 'https://shop.example.com';";
    let want = "SELECT 1--1, 'http://clone1.localhost:8080';";
    assert_eq!(run(&shop(RewriteOptions::default()), dump).0, want);
}

#[test]
fn hex_and_bit_literals_are_not_touched() {
    // A host that is also valid hex digits.
    let rw = UrlRewriter::new(
        "http://cafe.be",
        "http://other.be",
        RewriteOptions::default(),
    )
    .unwrap();
    let dump = "INSERT INTO t VALUES (X'cafe.be', x'cafe.be', B'cafe.be', 'cafe.be');";
    let want = "INSERT INTO t VALUES (X'cafe.be', x'cafe.be', B'cafe.be', 'other.be');";
    assert_eq!(run(&rw, dump).0, want);
}

#[test]
fn mariadb_sandbox_line_and_conditional_comments_pass_through() {
    let dump = "/*M!999999\\- enable the sandbox mode */ \n\
                /*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n\
                LOCK TABLES `wp_options` WRITE;\n\
                /*!40000 ALTER TABLE `wp_options` DISABLE KEYS */;\n\
                INSERT INTO `wp_options` VALUES (1,'home','https://shop.example.com','yes');\n\
                UNLOCK TABLES;\n";
    let (out, stats) = run(&shop(RewriteOptions::default()), dump);
    assert_eq!(
        out,
        dump.replace(
            "'https://shop.example.com'",
            "'http://clone1.localhost:8080'"
        )
    );
    assert_eq!(stats.statements, 5);
}

#[test]
fn an_unterminated_literal_at_the_end_is_copied_unchanged() {
    let rw = shop(RewriteOptions::default());
    for dump in [
        "INSERT INTO t VALUES ('https://shop.example.com",
        "INSERT INTO t VALUES ('https://shop.example.com\\",
    ] {
        assert_eq!(run(&rw, dump).0, dump);
    }
}

#[test]
fn chunk_boundaries_anywhere_give_the_same_output() {
    let value = format!(
        "a:2:{{i:0;{}i:1;{}}}",
        s("https://shop.example.com/ü"),
        s("x")
    );
    let dump = format!(
        "-- c\nINSERT INTO `wp_posts` (`ID`,`guid`,`post_content`) VALUES (1,'https://shop.example.com/?p=1','{}'),\
         (2,X'00','it''s https:\\\\/\\\\/shop.example.com \\% \\'');\n/* x */ UPDATE t SET a='//shop.example.com';",
        value.replace('"', "\\\"")
    );
    let rw = shop(RewriteOptions::for_restore());
    let (whole, stats) = rw.rewrite_sql(dump.as_bytes()).unwrap();
    assert_eq!(stats.skipped_column_values, 1);
    assert_eq!(stats.values_changed, 3);
    for cap in 1..=23 {
        let mut out = Vec::new();
        let s2 = rw
            .rewrite_sql_stream(BufReader::with_capacity(cap, dump.as_bytes()), &mut out)
            .unwrap();
        assert_eq!(out, whole, "buffer of {cap} bytes");
        assert_eq!(s2, stats);
    }
}

#[test]
fn a_very_long_extended_insert_is_streamed_through_small_buffers() {
    let tuple = format!(
        "(1,'option','{}','yes')",
        format!("a:1:{{s:3:\"url\";{}}}", s(FROM)).replace('"', "\\\"")
    );
    let line = format!(
        "INSERT INTO `wp_options` VALUES {};\n",
        vec![tuple; 20_000].join(",")
    );
    assert!(line.len() > 1_000_000);
    let rw = shop(RewriteOptions::default());
    let mut out = Vec::new();
    let stats = rw
        .rewrite_sql_stream(BufReader::with_capacity(4096, line.as_bytes()), &mut out)
        .unwrap();
    assert_eq!(stats.statements, 1);
    assert_eq!(stats.values_changed, 20_000);
    assert_eq!(stats.serialized_relengthed, 20_000);
    let want = line.replace(&s(FROM).replace('"', "\\\""), &s(TO).replace('"', "\\\""));
    assert_eq!(String::from_utf8(out).unwrap(), want);
    assert_eq!(stats.bytes_in, line.len() as u64);
    assert_eq!(stats.bytes_out, want.len() as u64);
}

#[test]
fn guid_column_is_left_alone_when_skipped_using_the_column_list() {
    let dump = "INSERT INTO `wp_posts` (`ID`, `post_content`, `guid`, `post_type`) VALUES \
                (1,'see https://shop.example.com/a','https://shop.example.com/?p=1','post'),\
                (2,CONCAT('a','https://shop.example.com'),'https://shop.example.com/?p=2','page');";
    let (out, stats) = run(&shop(RewriteOptions::for_restore()), dump);
    assert_eq!(
        out,
        "INSERT INTO `wp_posts` (`ID`, `post_content`, `guid`, `post_type`) VALUES \
         (1,'see http://clone1.localhost:8080/a','https://shop.example.com/?p=1','post'),\
         (2,CONCAT('a','http://clone1.localhost:8080'),'https://shop.example.com/?p=2','page');"
    );
    assert_eq!(stats.skipped_column_values, 2);
}

#[test]
fn guid_column_is_found_from_an_earlier_create_table_when_the_insert_has_no_column_list() {
    let dump = "CREATE TABLE `wp_posts` (\n  `ID` bigint(20) unsigned NOT NULL AUTO_INCREMENT,\n  \
                `post_content` longtext NOT NULL DEFAULT 'https://shop.example.com',\n  `guid` varchar(255) NOT NULL DEFAULT '',\n  \
                `post_type` varchar(20) NOT NULL DEFAULT 'post',\n  PRIMARY KEY (`ID`),\n  KEY `type_status_date` (`post_type`,`ID`)\n\
                ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n\
                INSERT INTO `wp_posts` VALUES (1,'https://shop.example.com/x','https://shop.example.com/?p=1','post');\n";
    let (out, stats) = run(&shop(RewriteOptions::for_restore()), dump);
    assert!(out.contains(
        "VALUES (1,'http://clone1.localhost:8080/x','https://shop.example.com/?p=1','post')"
    ));
    assert!(out.contains("DEFAULT 'http://clone1.localhost:8080'"));
    assert_eq!(stats.skipped_column_values, 1);
    assert_eq!(stats.statements, 2);
}

#[test]
fn an_insert_into_posts_without_known_columns_is_an_error_when_guid_is_skipped() {
    let dump = "INSERT INTO `wp_posts` VALUES (1,'https://shop.example.com/?p=1');";
    let err = shop(RewriteOptions::for_restore())
        .rewrite_sql(dump.as_bytes())
        .unwrap_err();
    assert!(
        matches!(&err, RewriteError::UnknownColumns { table, column } if table == "wp_posts" && column == "guid"),
        "{err}"
    );
    assert!(err.to_string().contains("--complete-insert"));
}

#[test]
fn guid_is_rewritten_when_no_column_is_skipped() {
    let dump = "INSERT INTO `wp_posts` (`ID`,`guid`) VALUES (1,'https://shop.example.com/?p=1');";
    let (out, _) = run(&shop(RewriteOptions::default()), dump);
    assert_eq!(out, dump.replace(FROM, TO));
}

#[test]
fn skip_rules_apply_to_multisite_tables_and_respect_the_table_prefix() {
    let dump = |table: &str| {
        format!(
            "INSERT INTO `db`.`{table}` (`ID`,`GUID`) VALUES (1,'https://shop.example.com/?p=1');"
        )
    };
    let prefixed = shop(RewriteOptions {
        table_prefix: Some("wp_".into()),
        ..RewriteOptions::for_restore()
    });
    for (table, kept) in [
        ("wp_posts", true),
        ("wp_3_posts", true),
        ("wp_x_posts", false),
        ("other_posts", false),
    ] {
        let (out, stats) = run(&prefixed, &dump(table));
        assert_eq!(out.contains(FROM), kept, "{table}");
        assert_eq!(stats.skipped_column_values, u64::from(kept), "{table}");
    }
    let any_prefix = shop(RewriteOptions::for_restore());
    assert!(run(&any_prefix, &dump("blog_posts")).0.contains(FROM));
    assert!(!run(&any_prefix, &dump("wp_postmeta")).0.contains(FROM));
}

#[test]
fn update_and_insert_set_statements_leave_the_skipped_column_alone() {
    let rw = shop(RewriteOptions::for_restore());
    let dump = "UPDATE `wp_posts` SET `guid` = 'https://shop.example.com/?p=1', post_content='https://shop.example.com' \
                WHERE ID = 1;\n\
                INSERT INTO wp_posts SET guid='https://shop.example.com/?p=2', post_title='https://shop.example.com';\n\
                INSERT INTO wp_posts (ID, guid) VALUES (3, 'https://shop.example.com/?p=3') \
                ON DUPLICATE KEY UPDATE guid='https://shop.example.com/?p=3';";
    let (out, stats) = run(&rw, dump);
    assert_eq!(stats.skipped_column_values, 4, "{out}");
    assert_eq!(stats.values_changed, 2, "{out}");
    assert_eq!(out.matches(TO).count(), 2);
}

#[test]
fn a_create_table_for_another_table_does_not_confuse_the_posts_columns() {
    let dump = "CREATE TABLE `wp_postmeta` (`meta_id` int, `guid` text);\n\
                CREATE TABLE `wp_posts` (`ID` int, `guid` text, `post_content` text);\n\
                INSERT INTO `wp_postmeta` VALUES (1,'https://shop.example.com');\n\
                INSERT INTO `wp_posts` VALUES (1,'https://shop.example.com/?p=1','https://shop.example.com');\n";
    let (out, stats) = run(&shop(RewriteOptions::for_restore()), dump);
    assert!(out.contains("`wp_postmeta` VALUES (1,'http://clone1.localhost:8080')"));
    assert!(
        out.contains("VALUES (1,'https://shop.example.com/?p=1','http://clone1.localhost:8080')")
    );
    assert_eq!(stats.skipped_column_values, 1);
}

#[test]
fn stats_count_statements_changed_values_relengthed_and_unparseable_values() {
    let good = format!("a:1:{{i:0;{}}}", s(FROM)).replace('"', "\\\"");
    let broken = "a:1:{i:0;s:3:\\\"https://shop.example.com\\\";}";
    let dump = format!(
        "INSERT INTO t VALUES ('{good}'),('{broken}'),('plain https://shop.example.com'),('nothing');\nDELETE FROM t;\n"
    );
    let (out, stats) = run(&shop(RewriteOptions::default()), &dump);
    assert!(out.contains(broken), "broken value kept byte for byte");
    assert_eq!(
        stats,
        Stats {
            statements: 2,
            values: 4,
            values_changed: 2,
            serialized_relengthed: 1,
            unparseable_left_alone: 1,
            skipped_column_values: 0,
            bytes_in: dump.len() as u64,
            bytes_out: out.len() as u64,
        }
    );
}

#[test]
fn the_streaming_api_writes_into_the_callers_writer() {
    struct Sink(Vec<u8>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            // Short writes: the rewriter must cope.
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Sink(Vec::new());
    let dump = b"INSERT INTO t VALUES ('https://shop.example.com');";
    shop(RewriteOptions::default())
        .rewrite_sql_stream(&dump[..], &mut sink)
        .unwrap();
    assert_eq!(
        sink.0,
        b"INSERT INTO t VALUES ('http://clone1.localhost:8080');"
    );
}

#[test]
fn write_errors_are_reported() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }
    let err = shop(RewriteOptions::default())
        .rewrite_sql_stream(&b"SELECT 1;"[..], Broken)
        .unwrap_err();
    assert!(matches!(err, RewriteError::Io(_)));
    assert!(err.to_string().contains("disk full"));
}
