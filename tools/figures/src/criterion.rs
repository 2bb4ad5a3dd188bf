//! The criterion suite's results as markdown tables: one table per group,
//! one row per input (size, threads), one column per subject, and spf's
//! time as a ratio to jemalloc's.
//!
//! Criterion keeps each benchmark's last run in
//! `target/criterion/<group>/<subject>/<input>/new/`: `benchmark.json`
//! names it and gives its throughput, `estimates.json` holds the
//! estimates in nanoseconds per iteration. Only the `median` estimate is
//! read. The files are criterion's own fixed format, so two string fields
//! and one number are picked out of them by key rather than with a JSON
//! library.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What criterion measured for one benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub group: String,
    pub subject: String,
    /// The input (`value_str`), empty for a benchmark without one.
    pub input: String,
    /// Median time of one iteration, in nanoseconds.
    pub median_ns: f64,
    /// Elements or bytes one iteration handles, if the group said.
    pub per_iter: Option<(Unit, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    Elements,
    Bytes,
}

/// The text of a `"key":"value"` string field.
fn string_field(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = json[at..].find('"')?;
    Some(json[at..at + len].to_owned())
}

/// The number that follows `"key":` at or after `from`.
fn number_after(json: &str, from: usize, key: &str) -> Option<f64> {
    let at = from + json[from..].find(&format!("\"{key}\":"))? + key.len() + 3;
    let end = json[at..].find([',', '}']).map_or(json.len(), |e| at + e);
    json[at..end].trim().parse().ok()
}

/// One benchmark from the text of its `benchmark.json` and
/// `estimates.json`.
pub fn parse(benchmark: &str, estimates: &str) -> Option<Estimate> {
    let median_at = estimates.find("\"median\":")?;
    let per_iter = if let Some(at) = benchmark.find("\"Elements\":") {
        number_after(benchmark, at, "Elements").map(|n| (Unit::Elements, n))
    } else if let Some(at) = benchmark.find("\"Bytes\":") {
        number_after(benchmark, at, "Bytes").map(|n| (Unit::Bytes, n))
    } else {
        None
    };
    Some(Estimate {
        group: string_field(benchmark, "group_id")?,
        subject: string_field(benchmark, "function_id")?,
        input: string_field(benchmark, "value_str").unwrap_or_default(),
        median_ns: number_after(estimates, median_at, "point_estimate")?,
        per_iter,
    })
}

/// Every benchmark under a criterion directory.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<Estimate>> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "new") {
                let b = fs::read_to_string(path.join("benchmark.json"));
                let e = fs::read_to_string(path.join("estimates.json"));
                if let (Ok(b), Ok(e)) = (b, e) {
                    found.extend(parse(&b, &e));
                }
            } else if path
                .file_name()
                .is_some_and(|n| n != "report" && n != "base")
            {
                stack.push(path);
            }
        }
    }
    Ok(found)
}

/// A median as the table shows it: time per element for element
/// throughput; GiB/s for byte throughput in the groups that measure a
/// rate (`RATE_GROUPS`: there every byte is touched); else time per
/// iteration.
fn cell(e: &Estimate) -> String {
    match e.per_iter {
        Some((Unit::Elements, n)) if n > 0.0 => time(e.median_ns / n),
        Some((Unit::Bytes, n)) if n > 0.0 && RATE_GROUPS.contains(&e.group.as_str()) => {
            format!("{:.2} GiB/s", n / e.median_ns * 1e9 / (1u64 << 30) as f64)
        }
        _ => time(e.median_ns),
    }
}

/// Groups whose byte throughput is a rate worth showing (the first-touch
/// group writes every page of its region; the large-block group touches
/// one byte per page, so its time per block says more).
const RATE_GROUPS: [&str; 1] = ["first touch 256 MiB"];

/// A time ratio with two decimals, or two significant digits below 0.1.
fn ratio(r: f64) -> String {
    let decimals = if r >= 0.1 || r <= 0.0 {
        2
    } else {
        (1.0 - r.log10().floor()) as usize
    };
    format!("{r:.decimals$}×")
}

fn time(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

/// Sorts inputs as numbers where they are numbers.
fn input_key(s: &str) -> (u64, String) {
    (s.parse().unwrap_or(u64::MAX), s.to_owned())
}

/// Markdown tables of every group, in the order of `groups` first (the
/// suite's order), then any other group by name.
pub fn tables(all: &[Estimate], groups: &[&str]) -> String {
    let mut by_group: BTreeMap<&str, Vec<&Estimate>> = BTreeMap::new();
    for e in all {
        by_group.entry(&e.group).or_default().push(e);
    }
    let mut order: Vec<&str> = groups
        .iter()
        .copied()
        .filter(|g| by_group.contains_key(g))
        .collect();
    order.extend(by_group.keys().filter(|g| !groups.contains(g)));
    let mut out = String::new();
    for g in order {
        let rows = &by_group[g];
        let mut subjects: Vec<&str> = Vec::new();
        for e in rows {
            if !subjects.contains(&e.subject.as_str()) {
                subjects.push(&e.subject);
            }
        }
        subjects.sort_by_key(|s| SUBJECT_ORDER.iter().position(|o| o == s));
        let mut inputs: Vec<&str> = rows.iter().map(|e| e.input.as_str()).collect();
        inputs.sort_by_key(|s| input_key(s));
        inputs.dedup();
        let find = |input: &str, subject: &str| {
            rows.iter()
                .find(|e| e.input == input && e.subject == subject)
                .copied()
        };
        let has_ratio = subjects.contains(&"spf") && subjects.contains(&"jemalloc");
        if !has_ratio {
            // Variants of spf itself (the first-touch group): one row per
            // variant, one column per input, reads better than a row of
            // twenty columns.
            subjects.sort();
            out += &format!("#### {g}\n\n| variant |");
            for input in &inputs {
                out += &format!(" {input} |");
            }
            out += "\n|---|";
            out += &"---|".repeat(inputs.len());
            out += "\n";
            for s in &subjects {
                out += &format!("| {s} |");
                for input in &inputs {
                    out += &format!(" {} |", find(input, s).map_or("—".to_owned(), cell));
                }
                out += "\n";
            }
            out += "\n";
            continue;
        }
        out += &format!("#### {g}\n\n| input |");
        for s in &subjects {
            out += &format!(" {s} |");
        }
        out += " spf / jemalloc |\n|---|";
        out += &"---|".repeat(subjects.len() + 1);
        out += "\n";
        for input in inputs {
            out += &format!("| {} |", if input.is_empty() { "—" } else { input });
            for s in &subjects {
                out += &format!(" {} |", find(input, s).map_or("—".to_owned(), cell));
            }
            let r = match (find(input, "spf"), find(input, "jemalloc")) {
                (Some(a), Some(b)) if b.median_ns > 0.0 => ratio(a.median_ns / b.median_ns),
                _ => "—".to_owned(),
            };
            out += &format!(" {r} |");
            out += "\n";
        }
        out += "\n";
    }
    out
}

/// Subjects in the order the tables show them; others follow.
const SUBJECT_ORDER: [&str; 6] = [
    "spf",
    "spf touch",
    "spf touch classic",
    "jemalloc",
    "mimalloc",
    "system",
];

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: &str = r#"{"group_id":"larson lock-free","function_id":"spf","value_str":"8","throughput":{"Elements":400000},"full_id":"larson lock-free/spf/8"}"#;
    const EST: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0,"standard_error":0.1},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":4.0,"upper_bound":6.0},"point_estimate":20000000.0,"standard_error":0.2}}"#;

    #[test]
    fn reads_the_median_not_the_mean() {
        let e = parse(BENCH, EST).unwrap();
        assert_eq!(e.group, "larson lock-free");
        assert_eq!(e.subject, "spf");
        assert_eq!(e.input, "8");
        assert_eq!(e.median_ns, 20_000_000.0);
        assert_eq!(e.per_iter, Some((Unit::Elements, 400_000.0)));
        assert_eq!(cell(&e), "50.0 ns");
    }

    #[test]
    fn a_table_has_a_ratio_to_jemalloc() {
        let spf = parse(BENCH, EST).unwrap();
        let jem = Estimate {
            subject: "jemalloc".into(),
            median_ns: 10_000_000.0,
            ..spf.clone()
        };
        let t = tables(&[jem, spf], &["larson lock-free"]);
        assert!(
            t.contains("| input | spf | jemalloc | spf / jemalloc |"),
            "{t}"
        );
        assert!(t.contains("| 8 | 50.0 ns | 25.0 ns | 2.00× |"), "{t}");
    }

    #[test]
    fn byte_throughput_shows_gib_per_second() {
        let b = r#"{"group_id":"first touch 256 MiB","function_id":"native","value_str":"1","throughput":{"Bytes":1073741824}}"#;
        let e = parse(b, EST).unwrap();
        assert_eq!(cell(&e), "50.00 GiB/s");
        let other = Estimate {
            group: "large alloc+touch+free".into(),
            ..e
        };
        assert_eq!(cell(&other), "20.0 ms");
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(ratio(0.0123), "0.012×");
        assert_eq!(ratio(0.85), "0.85×");
    }
}
