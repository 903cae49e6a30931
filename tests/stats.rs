//! Summaries of measured samples (median, p95) and the `bench/results.json` file they go to.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// One measured figure: its samples summarised, with the budget it is held against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub count: usize,
    pub median: f64,
    pub p95: f64,
    /// Shown for figures whose budget is a p99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    pub min: f64,
    pub max: f64,
    pub budget: Option<String>,
    /// Whether the figure is within its budget (absent: no budget to judge by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// Which summary of a figure a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    Median,
    P95,
    P99,
}

/// A budget from DESIGN.md: `stat` below `limit` (in the figure's unit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub stat: Stat,
    pub limit: f64,
    /// How DESIGN.md states it.
    pub text: &'static str,
}

/// The value at quantile `q` (0..=1) of sorted samples, by the nearest-rank method.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of no samples");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Figure {
    pub fn from_samples(name: &str, unit: &str, samples: &[f64], budget: Option<&str>) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            name: name.to_string(),
            unit: unit.to_string(),
            count: sorted.len(),
            median: quantile(&sorted, 0.5),
            p95: quantile(&sorted, 0.95),
            p99: None,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            budget: budget.map(str::to_string),
            met: None,
        }
    }

    /// The figure of `samples` with its p99, judged against `budget`.
    pub fn judged(name: &str, unit: &str, samples: &[f64], budget: Budget) -> Self {
        let mut figure = Self::from_samples(name, unit, samples, Some(budget.text));
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        if budget.stat == Stat::P99 {
            figure.p99 = Some(quantile(&sorted, 0.99));
        }
        let value = match budget.stat {
            Stat::Median => figure.median,
            Stat::P95 => figure.p95,
            Stat::P99 => quantile(&sorted, 0.99),
        };
        figure.met = Some(value < budget.limit);
        figure
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<66} median {:>9.1} {u}  p95 {:>9.1} {u}  (n={})",
            self.name,
            self.median,
            self.p95,
            self.count,
            u = self.unit
        )?;
        if let Some(p99) = self.p99 {
            write!(f, "  p99 {p99:.1} {}", self.unit)?;
        }
        if let Some(budget) = &self.budget {
            write!(f, "  budget: {budget}")?;
        }
        match self.met {
            Some(true) => write!(f, " (met)"),
            Some(false) => write!(f, " (NOT met)"),
            None => Ok(()),
        }
    }
}

/// Where and how the latest full-system run (`clonepool-bench system`) was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// RFC 3339, UTC.
    pub date: String,
    pub command: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// 1-minute load average at the start and the end of the run.
    pub load_start: f64,
    pub load_end: f64,
    pub git_commit: String,
}

/// `bench/results.json`: the figures of the latest run of each section.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ResultsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_system_run: Option<RunInfo>,
    pub figures: Vec<Figure>,
}

impl ResultsFile {
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the figure of the same name, or adds it.
    pub fn merge(&mut self, figure: Figure) {
        match self.figures.iter_mut().find(|f| f.name == figure.name) {
            Some(existing) => *existing = figure,
            None => self.figures.push(figure),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p95_use_nearest_rank() {
        let samples: Vec<f64> = (1..=20).map(f64::from).rev().collect();
        let figure = Figure::from_samples("x", "ms", &samples, None);
        assert_eq!((figure.median, figure.p95), (10.0, 19.0));
        assert_eq!((figure.min, figure.max, figure.count), (1.0, 20.0, 20));
        let one = Figure::from_samples("y", "ms", &[7.0], None);
        assert_eq!((one.median, one.p95), (7.0, 7.0));
    }

    #[test]
    fn a_judged_figure_shows_its_p99_and_whether_it_meets_the_budget() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let budget = Budget {
            stat: Stat::P99,
            limit: 199.0,
            text: "p99 < 199",
        };
        let figure = Figure::judged("x", "ms", &samples, budget);
        assert_eq!((figure.p99, figure.met), (Some(198.0), Some(true)));
        let strict = Budget {
            limit: 150.0,
            ..budget
        };
        let figure = Figure::judged("x", "ms", &samples, strict);
        assert_eq!(figure.met, Some(false));
        assert!(figure.to_string().ends_with("budget: p99 < 199 (NOT met)"));
    }

    #[test]
    fn merging_replaces_a_figure_of_the_same_name() {
        let mut file = ResultsFile::default();
        file.merge(Figure::from_samples("a", "ms", &[1.0], None));
        file.merge(Figure::from_samples("b", "ms", &[2.0], None));
        file.merge(Figure::from_samples("a", "ms", &[3.0], None));
        let names: Vec<_> = file
            .figures
            .iter()
            .map(|f| (f.name.as_str(), f.median))
            .collect();
        assert_eq!(names, [("a", 3.0), ("b", 2.0)]);
    }
}
