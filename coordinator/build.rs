//! Embeds the clonepool migrator plugin (images/wordpress/migrator/clonepool-migrator) so the
//! coordinator can install it on a site that lacks it: writes a list of `(path, include_bytes!)`
//! pairs to `$OUT_DIR/migrator_files.rs`.

use std::path::{Path, PathBuf};

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, root, out);
        } else if path.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("inside the plugin directory")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, path));
        }
    }
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let plugin = manifest_dir.join("../images/wordpress/migrator/clonepool-migrator");
    let plugin = plugin
        .canonicalize()
        .unwrap_or_else(|e| panic!("the migrator plugin at {}: {e}", plugin.display()));
    println!("cargo:rerun-if-changed={}", plugin.display());
    let mut files = Vec::new();
    walk(&plugin, &plugin, &mut files);
    let mut code = String::from("&[\n");
    for (rel, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        code.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?}) as &[u8]),\n",
            path.display().to_string()
        ));
    }
    code.push_str("]\n");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("migrator_files.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
