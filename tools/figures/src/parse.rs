//! Reading what the benchmark programs print: the markdown tables of
//! `alloc_bench` and `firsttouch`, the `records/s` lines of `ebizzy`, and
//! the CSV of the kvserver RSS sampler. The programs print for people; this
//! module finds values by column name and heading, never by position, so a
//! new column does not silently shift a figure.

use std::collections::BTreeMap;

/// One markdown table: its header cells and its rows, cells trimmed.
#[derive(Debug, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The row whose first cell is `key`.
    pub fn row(&self, key: &str) -> Option<&[String]> {
        self.rows
            .iter()
            .find(|r| r.first().is_some_and(|c| c == key))
            .map(Vec::as_slice)
    }

    /// The number in row `key`, column `name` (`None` for "—", blanks and
    /// anything else that is not a number).
    pub fn number(&self, key: &str, name: &str) -> Option<f64> {
        let col = self.column(name)?;
        number(self.row(key)?.get(col)?)
    }
}

/// A cell as a number: thousands separators and a trailing `×` allowed.
pub fn number(cell: &str) -> Option<f64> {
    cell.trim()
        .trim_end_matches('×')
        .replace(',', "")
        .parse()
        .ok()
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

/// Every table in `text`, keyed by the `### ` heading above it (the first
/// table under each heading; tables before any heading are under "").
pub fn tables_by_heading(text: &str) -> BTreeMap<String, Table> {
    let mut out = BTreeMap::new();
    let mut heading = String::new();
    let mut current: Option<Table> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("### ") {
            heading = h.to_owned();
            continue;
        }
        if t.starts_with('|') {
            match current.as_mut() {
                None => {
                    // A header line is followed by the |---| line.
                    if lines.peek().is_some_and(|n| n.trim().starts_with("|---")) {
                        lines.next();
                        current = Some(Table {
                            header: cells(t),
                            rows: Vec::new(),
                        });
                    }
                }
                Some(table) => table.rows.push(cells(t)),
            }
        } else if let Some(table) = current.take() {
            out.entry(heading.clone()).or_insert(table);
        }
    }
    if let Some(table) = current {
        out.entry(heading).or_insert(table);
    }
    out
}

/// The table under the first heading that starts with `prefix`.
pub fn table_under<'a>(tables: &'a BTreeMap<String, Table>, prefix: &str) -> Option<&'a Table> {
    tables
        .iter()
        .find(|(h, _)| h.starts_with(prefix))
        .map(|(_, t)| t)
}

/// ebizzy's rate for the phase whose line starts with `phase` ("BASE",
/// "SPF", "native"): the number before ` records/s`.
pub fn ebizzy_rate(text: &str, phase: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(phase))?;
    let (before, _) = line.split_once(" records/s")?;
    number(before.rsplit(' ').next()?)
}

/// One row of firsttouch's `--compact` output: backend, subject, threads,
/// median ns per page, min and max.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstTouchRow {
    pub backend: String,
    pub subject: String,
    pub threads: usize,
    pub median_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
}

/// The rows of `firsttouch --backends …` (the backend table). Rows of a
/// backend the machine refused are skipped.
pub fn first_touch_rows(text: &str) -> Vec<FirstTouchRow> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        let c = cells(line);
        if c.len() < 5 {
            continue;
        }
        let (Some(threads), Some(median)) = (c[2].parse().ok(), number(&c[3])) else {
            continue;
        };
        let Some((min, max)) = c[4].split_once('–') else {
            continue;
        };
        let (Some(min), Some(max)) = (number(min), number(max)) else {
            continue;
        };
        out.push(FirstTouchRow {
            backend: c[0].clone(),
            subject: c[1].clone(),
            threads,
            median_ns: median,
            min_ns: min,
            max_ns: max,
        });
    }
    out
}

/// One sample of the kvserver RSS sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct RssSample {
    pub allocator: String,
    pub connections: u32,
    pub t_ms: f64,
    pub rss_kib: f64,
}

/// The CSV `allocator,connections,t_ms,rss_kib` (with that header line).
pub fn rss_samples(text: &str) -> Result<Vec<RssSample>, String> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().trim();
    if header != "allocator,connections,t_ms,rss_kib" {
        return Err(format!(
            "unexpected header {header:?}, want allocator,connections,t_ms,rss_kib"
        ));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.trim().split(',').collect();
        let parsed = (f.len() == 4)
            .then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten();
        let Some((connections, t_ms, rss_kib)) = parsed else {
            return Err(format!("line {}: cannot read {line:?}", i + 2));
        };
        out.push(RssSample {
            allocator: f[0].to_owned(),
            connections,
            t_ms,
            rss_kib,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOC: &str = "\
alloc_bench: 2 CPUs

### Allocator workloads (median of 1 runs; lower is better)

| workload | unit | spf | jemalloc | spf / jemalloc |
|---|---|---|---|---|
| 16 B pair | ns | 3.5 | 4.1 | 0.85× |
| big | µs | 1,753.5 | — | |

### Peak resident memory, MiB (one child process per allocator and workload)

| workload | spf | jemalloc |
|---|---|---|
| idle | 3.0 | 3.1 |
";

    #[test]
    fn tables_are_found_by_heading_and_read_by_column_name() {
        let t = tables_by_heading(ALLOC);
        let time = table_under(&t, "Allocator workloads").unwrap();
        assert_eq!(time.number("16 B pair", "jemalloc"), Some(4.1));
        assert_eq!(time.number("big", "spf"), Some(1753.5));
        assert_eq!(time.number("big", "jemalloc"), None);
        assert_eq!(time.number("16 B pair", "spf / jemalloc"), Some(0.85));
        let rss = table_under(&t, "Peak resident").unwrap();
        assert_eq!(rss.number("idle", "jemalloc"), Some(3.1));
        assert!(table_under(&t, "First touch").is_none());
    }

    #[test]
    fn ebizzy_lines() {
        let out = "ebizzy: commit backend uffd\nBASE (classic): 22098 records/s\nreal 1.00 s\n\
                   SPF (speculative): 23505 records/s\nnative mmap: 20,001 records/s\n";
        assert_eq!(ebizzy_rate(out, "BASE"), Some(22098.0));
        assert_eq!(ebizzy_rate(out, "SPF"), Some(23505.0));
        assert_eq!(ebizzy_rate(out, "native"), Some(20001.0));
        assert_eq!(ebizzy_rate(out, "other"), None);
    }

    #[test]
    fn first_touch_compact_rows() {
        let out = "| backend | subject | threads | ns | min–max | faults | vs native |\n\
                   |---|---|---|---|---|---|---|\n\
                   | uffd | spf 64 KiB | 2 | 580 | 560–610 | 4096 | 0.81× |\n\
                   | guard | refused here: no | | | | | |\n";
        let rows = first_touch_rows(out);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].subject, "spf 64 KiB");
        assert_eq!((rows[0].min_ns, rows[0].max_ns), (560.0, 610.0));
    }

    #[test]
    fn rss_csv() {
        let ok = "allocator,connections,t_ms,rss_kib\nspf,8,100,2048\n\njemalloc,8,200,4096\n";
        let s = rss_samples(ok).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].rss_kib, 4096.0);
        assert!(rss_samples("a,b\n").is_err());
        assert!(rss_samples("allocator,connections,t_ms,rss_kib\nspf,x,1,2\n").is_err());
    }
}
