//! The pristine-pod fingerprint: what a clean pod looks like (databases, users, tables and row
//! counts, wp-content files and hashes, /tmp, sessions, crontabs, stray processes …), taken as
//! sections of lines, hashed per section, and compared after every reset.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Lines that start a section in the collector scripts' output: `@@<name>`.
pub const SECTION_MARK: &str = "@@";

/// Sections with at most this many lines keep their lines, so a mismatch can say what differs.
const KEEP_LINES: usize = 256;

/// One section of a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// sha256 over the section's sorted lines.
    pub hash: String,
    pub lines: usize,
    /// The sorted lines themselves, for small sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<String>>,
}

/// The fingerprint of a pod: named sections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub sections: BTreeMap<String, Section>,
}

/// What differs between a pristine fingerprint and a pod's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub sections: Vec<SectionDiff>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionDiff {
    pub name: String,
    /// Lines present now but not in the pristine pod (when both sides kept their lines).
    pub added: Vec<String>,
    /// Lines of the pristine pod missing now.
    pub removed: Vec<String>,
    pub pristine_lines: Option<usize>,
    pub current_lines: Option<usize>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for d in &self.sections {
            let mut s = format!(
                "{} ({} lines, pristine {})",
                d.name,
                d.current_lines.map_or("no".into(), |n| n.to_string()),
                d.pristine_lines.map_or("none".into(), |n| n.to_string()),
            );
            let sample = |lines: &[String]| {
                let mut t: Vec<String> = lines.iter().take(3).cloned().collect();
                if lines.len() > 3 {
                    t.push(format!("… {} more", lines.len() - 3));
                }
                t.join("; ")
            };
            if !d.added.is_empty() {
                s.push_str(&format!(" +[{}]", sample(&d.added)));
            }
            if !d.removed.is_empty() {
                s.push_str(&format!(" -[{}]", sample(&d.removed)));
            }
            parts.push(s);
        }
        let mut text = format!("fingerprint differs in {}", parts.join(", "));
        if text.len() > 900 {
            let mut cut = 900;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        f.write_str(&text)
    }
}

impl Fingerprint {
    /// Builds a fingerprint from collector scripts' outputs. Lines before the first section mark
    /// are ignored, empty lines dropped; a section printed in several pieces (or by several
    /// scripts) is joined; each section's lines are sorted.
    pub fn from_outputs(outputs: &[&str]) -> Self {
        let mut collected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for output in outputs {
            let mut current: Option<&mut Vec<String>> = None;
            for line in output.lines() {
                if let Some(name) = line.strip_prefix(SECTION_MARK) {
                    current = Some(collected.entry(name.trim().to_string()).or_default());
                } else if let Some(lines) = current.as_mut() {
                    if !line.trim().is_empty() {
                        lines.push(line.trim_end().to_string());
                    }
                }
            }
        }
        Fingerprint {
            sections: collected
                .into_iter()
                .map(|(name, lines)| (name, Section::from_lines(lines)))
                .collect(),
        }
    }

    /// One hash over every section.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (name, s) in &self.sections {
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(s.hash.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Compares `self` (the pristine pod) with `current`; `None` when they match.
    pub fn compare(&self, current: &Fingerprint) -> Option<Mismatch> {
        let mut diffs = Vec::new();
        let names: std::collections::BTreeSet<&String> = self
            .sections
            .keys()
            .chain(current.sections.keys())
            .collect();
        for name in names {
            let (p, c) = (self.sections.get(name), current.sections.get(name));
            if p.map(|s| &s.hash) == c.map(|s| &s.hash) {
                continue;
            }
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            if let (Some(pl), Some(cl)) = (
                p.and_then(|s| s.content.as_ref()),
                c.and_then(|s| s.content.as_ref()),
            ) {
                added = cl.iter().filter(|l| !pl.contains(l)).cloned().collect();
                removed = pl.iter().filter(|l| !cl.contains(l)).cloned().collect();
            } else if p.is_none() {
                if let Some(cl) = c.and_then(|s| s.content.as_ref()) {
                    added = cl.clone();
                }
            }
            diffs.push(SectionDiff {
                name: name.clone(),
                added,
                removed,
                pristine_lines: p.map(|s| s.lines),
                current_lines: c.map(|s| s.lines),
            });
        }
        (!diffs.is_empty()).then_some(Mismatch { sections: diffs })
    }
}

impl Section {
    fn from_lines(mut lines: Vec<String>) -> Self {
        lines.sort();
        let mut h = Sha256::new();
        for l in &lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        Section {
            hash: hex::encode(h.finalize()),
            lines: lines.len(),
            content: (lines.len() <= KEEP_LINES).then_some(lines),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_order_independent_and_mismatches_name_what_differs() {
        let pristine = Fingerprint::from_outputs(&["@@databases\nmysql\nwordpress\n@@tmp\n"]);
        let same = Fingerprint::from_outputs(&["noise\n@@tmp\n@@databases\nwordpress\nmysql\n"]);
        assert_eq!(pristine.compare(&same), None);
        assert_eq!(pristine.digest(), same.digest());

        let dirty = Fingerprint::from_outputs(&[
            "@@databases\nmysql\nwordpress\ncanary_db\n@@tmp\nf 0 /tmp/canary\n",
        ]);
        let m = pristine.compare(&dirty).expect("a mismatch");
        assert_eq!(m.sections.len(), 2);
        let text = m.to_string();
        assert!(text.contains("databases"), "{text}");
        assert!(text.contains("+[canary_db]"), "{text}");
        assert!(text.contains("/tmp/canary"), "{text}");
    }

    #[test]
    fn a_missing_section_is_a_mismatch() {
        let pristine = Fingerprint::from_outputs(&["@@a\nx\n@@b\ny\n"]);
        let partial = Fingerprint::from_outputs(&["@@a\nx\n"]);
        let m = pristine.compare(&partial).unwrap();
        assert_eq!(m.sections[0].name, "b");
    }

    #[test]
    fn large_sections_keep_only_their_hash_and_round_trip_as_json() {
        let many: String = (0..500).map(|i| format!("f 1 ./file{i}\n")).collect();
        let fp = Fingerprint::from_outputs(&[&format!("@@wp-content\n{many}")]);
        let s = &fp.sections["wp-content"];
        assert_eq!(s.lines, 500);
        assert!(s.content.is_none());
        let back = Fingerprint::from_json(&fp.to_json()).unwrap();
        assert_eq!(back, fp);
    }

    #[test]
    fn a_section_printed_in_pieces_is_joined() {
        let a = Fingerprint::from_outputs(&["@@objects\nx\n@@other\n@@objects\ny\n"]);
        let b = Fingerprint::from_outputs(&["@@objects\ny\nx\n@@other\n"]);
        assert_eq!(a.compare(&b), None);
    }
}
