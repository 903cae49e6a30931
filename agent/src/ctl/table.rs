//! Plain-text tables and key/value lists for clonepoolctl's human output.

/// Renders rows under a header, columns padded to their widest cell (the last column is not
/// padded).
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(|c| c.as_str()).collect()));
        out.push('\n');
    }
    out
}

/// Renders `key: value` lines with aligned values.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k}:{} {v}\n", " ".repeat(width - k.len())))
        .collect()
}

/// `-` for a missing value.
pub fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(
            &["POD", "STATE"],
            &[
                vec!["cp-1".into(), "WARM".into()],
                vec!["cp-long-name".into(), "READY".into()],
            ],
        );
        assert_eq!(
            t,
            "POD           STATE\ncp-1          WARM\ncp-long-name  READY\n"
        );
    }

    #[test]
    fn key_values_line_up() {
        assert_eq!(
            key_values(&[("node", "a".into()), ("warm_target", "2".into())]),
            "node:        a\nwarm_target: 2\n"
        );
    }
}
