//! The migrator plugin's pure PHP pieces (streaming tar writer and reader, SQL splitter and
//! statement classifier, archive name checks), checked on the host's php-cli without WordPress
//! or Docker: images/wordpress/migrator/tests/units.php, plus `php -l` over every plugin file.

use std::path::PathBuf;
use std::process::Command;

fn migrator_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/wordpress/migrator")
}

fn php_available() {
    let version = Command::new("php").arg("-v").output();
    assert!(
        matches!(&version, Ok(o) if o.status.success()),
        "php-cli is needed for the migrator's unit checks; install it with scripts/ensure-packages \
         (apt-get install -y php-cli). Got: {version:?}"
    );
}

#[test]
fn the_plugins_tar_sql_and_name_checks_pass_their_php_unit_checks() {
    php_available();
    let dir = migrator_dir();
    let out = Command::new("php")
        .arg(dir.join("tests/units.php"))
        .arg(dir.join("clonepool-migrator"))
        .output()
        .expect("run php");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok: "),
        "units.php failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_plugin_file_is_valid_php() {
    php_available();
    let mut files = Vec::new();
    let mut dirs = vec![migrator_dir()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read the migrator directory") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "php") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 12, "found only {} PHP files", files.len());
    for file in files {
        let out = Command::new("php").arg("-l").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "php -l {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
