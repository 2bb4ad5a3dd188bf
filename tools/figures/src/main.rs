//! Draws the pictures of `docs/BENCHMARKS.md` from the raw output that
//! `scripts/figures.sh` saved, and prints the same figures as markdown
//! tables (median and min–max across runs). With `criterion`, it prints
//! the criterion suite's last results (`cargo bench --bench alloc`) as
//! tables of medians with spf's ratio to jemalloc instead.
//!
//! ```text
//! spf-figures RAW_DIR OUT_DIR
//! spf-figures criterion [CRITERION_DIR]   # default target/criterion
//! ```
//!
//! `RAW_DIR` holds what the benchmark programs printed, one file per run:
//! `ebizzy-<backend>-t<threads>-r<run>.txt`, `firsttouch.txt`,
//! `alloc_bench-r<run>.txt`, `kvserver-rss.csv`, and `machine.txt` (one
//! line naming the machine, quoted in every caption). A missing source
//! skips its picture with a note on stderr; a source that is present but
//! unreadable is an error. Pictures go to `OUT_DIR` as SVG; the tables to
//! standard output.

mod criterion;
mod draw;
mod parse;
mod spread;

use draw::{Result, Series};
use plotters::prelude::*;
use spread::Spread;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const BACKENDS: [&str; 3] = ["uffd", "guard", "mprotect"];
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(127, 127, 127);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const BROWN: RGBColor = RGBColor(140, 86, 75);

fn backend_color(b: &str) -> RGBColor {
    match b {
        "uffd" => BLUE,
        "guard" => PURPLE,
        _ => BROWN,
    }
}

fn allocator_color(a: &str) -> RGBColor {
    match a {
        "spf" => BLUE,
        "jemalloc" => ORANGE,
        "mimalloc" => GREEN,
        _ => GREY,
    }
}

struct Out {
    dir: PathBuf,
    machine: String,
    drawn: Vec<String>,
}

impl Out {
    fn svg(&mut self, name: &str) -> PathBuf {
        self.drawn.push(name.to_owned());
        self.dir.join(name)
    }
}

/// Files in `raw` whose names start with `prefix`, sorted.
fn runs(raw: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// ebizzy `-mTR`: records/s against threads, BASE / SPF / native, one
/// panel per commit backend.
fn ebizzy(raw: &Path, out: &mut Out) -> Result<()> {
    // (backend, phase, threads) → records/s of every run
    let mut samples: BTreeMap<(String, &str, usize), Vec<f64>> = BTreeMap::new();
    for path in runs(raw, "ebizzy-")? {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('-').collect();
        let [_, backend, t, _] = parts[..] else {
            return Err(format!("{}: not ebizzy-BACKEND-tN-rN.txt", path.display()).into());
        };
        let threads: usize = t.trim_start_matches('t').parse()?;
        let text = fs::read_to_string(&path)?;
        for phase in ["BASE", "SPF", "native"] {
            let Some(rate) = parse::ebizzy_rate(&text, phase) else {
                continue; // a refused backend prints no rates
            };
            samples
                .entry((backend.to_owned(), phase, threads))
                .or_default()
                .push(rate);
        }
    }
    if samples.is_empty() {
        eprintln!(
            "figures: no ebizzy runs in {}; ebizzy.svg not drawn",
            raw.display()
        );
        return Ok(());
    }
    let mut threads: Vec<usize> = samples.keys().map(|k| k.2).collect();
    threads.sort();
    threads.dedup();
    let backends: Vec<&str> = BACKENDS
        .into_iter()
        .filter(|b| samples.keys().any(|k| k.0 == *b))
        .collect();
    println!("### ebizzy -mTR: records/s, higher is better (median, min–max)\n");
    println!("| backend | threads | BASE | SPF | native | SPF / native |");
    println!("|---|---|---|---|---|---|");
    let path = out.svg("ebizzy.svg");
    let (root, body) = draw::picture(
        &path,
        (330 * backends.len() as u32, 380),
        &format!(
            "ebizzy -mTR, records/s (higher is better) — {}",
            out.machine
        ),
    )?;
    let panels = body.split_evenly((1, backends.len()));
    let y_max = samples.values().flatten().copied().fold(0.0, f64::max) * 1.15;
    for (panel, backend) in panels.iter().zip(&backends) {
        let spread = |phase: &str, t: usize| {
            samples
                .get(&(backend.to_string(), phase, t))
                .and_then(|v| Spread::of(v))
        };
        let series: Vec<Series<(usize, Spread)>> = [
            ("BASE (classic)", "BASE", GREY),
            ("SPF", "SPF", BLUE),
            ("native mmap", "native", ORANGE),
        ]
        .into_iter()
        .map(|(label, phase, color)| Series {
            name: label.to_owned(),
            color,
            points: threads
                .iter()
                .filter_map(|&t| spread(phase, t).map(|s| (t, s)))
                .collect(),
        })
        .collect();
        for &t in &threads {
            let cell = |p| spread(p, t).map_or("—".into(), |s| s.cell(0));
            let ratio = match (spread("SPF", t), spread("native", t)) {
                (Some(a), Some(b)) => format!("{:.2}", a.median / b.median),
                _ => "—".into(),
            };
            println!(
                "| {backend} | {t} | {} | {} | {} | {ratio} |",
                cell("BASE"),
                cell("SPF"),
                cell("native")
            );
        }
        draw::lines_over_threads(
            panel,
            &format!("backend {backend}"),
            "records/s",
            y_max,
            &threads,
            &series,
        )?;
    }
    root.present()?;
    println!();
    Ok(())
}

/// First touch: GiB/s per granule and backend, native as the reference, one
/// panel per thread count.
fn first_touch(raw: &Path, out: &mut Out) -> Result<()> {
    let file = raw.join("firsttouch.txt");
    if !file.exists() {
        eprintln!("figures: no {}; firsttouch.svg not drawn", file.display());
        return Ok(());
    }
    let rows = parse::first_touch_rows(&fs::read_to_string(&file)?);
    if rows.is_empty() {
        return Err(format!("{}: no rows", file.display()).into());
    }
    let gib_per_s = |ns: f64| 4096.0 / ns * 1e9 / (1u64 << 30) as f64;
    let spread = |r: &parse::FirstTouchRow| {
        Spread::given(r.median_ns, r.min_ns, r.max_ns, 0).map_decreasing(gib_per_s)
    };
    let mut threads: Vec<usize> = rows.iter().map(|r| r.threads).collect();
    threads.sort();
    threads.dedup();
    let granules = ["4 KiB", "64 KiB", "2 MiB"];
    println!("### First touch: GiB/s, higher is better (median, min–max of the runs)\n");
    println!("| threads | granule | {} | native |", BACKENDS.join(" | "));
    println!("|---|---|---|---|---|---|");
    let path = out.svg("firsttouch.svg");
    let (root, body) = draw::picture(
        &path,
        (360 * threads.len() as u32, 380),
        &format!(
            "First touch of a fresh 256 MiB region, GiB/s (higher is better) — {}",
            out.machine
        ),
    )?;
    let panels = body.split_evenly((1, threads.len()));
    for (panel, &t) in panels.iter().zip(&threads) {
        let find = |backend: &str, subject: &str| {
            rows.iter()
                .find(|r| r.backend == backend && r.subject == subject && r.threads == t)
                .map(spread)
        };
        // native measured beside each backend: the median of their medians.
        let natives: Vec<f64> = BACKENDS
            .iter()
            .filter_map(|b| find(b, "native"))
            .map(|s| s.median)
            .collect();
        let native = Spread::of(&natives);
        let series: Vec<Series<Option<Spread>>> = BACKENDS
            .iter()
            .map(|b| Series {
                name: (*b).to_owned(),
                color: backend_color(b),
                points: granules
                    .iter()
                    .map(|g| find(b, &format!("spf {g}")))
                    .collect(),
            })
            .collect();
        for (i, g) in granules.iter().enumerate() {
            let cells: Vec<String> = series
                .iter()
                .map(|s| s.points[i].map_or("—".into(), |v| v.cell(2)))
                .collect();
            println!(
                "| {t} | {g} | {} | {} |",
                cells.join(" | "),
                native.map_or("—".into(), |n| n.cell(2))
            );
        }
        let groups: Vec<String> = granules.iter().map(|g| format!("granule {g}")).collect();
        draw::grouped_bars(
            panel,
            &format!("{t} thread{}", if t == 1 { "" } else { "s" }),
            "GiB/s",
            &groups,
            &series,
            native.map(|n| ("native demand paging", n)),
        )?;
    }
    root.present()?;
    println!();
    Ok(())
}

/// The allocator workloads: spf's time (or peak RSS) as a ratio to
/// jemalloc's and mimalloc's, per run, then median and range of the ratios.
fn allocators(raw: &Path, out: &mut Out) -> Result<()> {
    let files = runs(raw, "alloc_bench-")?;
    if files.is_empty() {
        eprintln!(
            "figures: no alloc_bench runs in {}; alloc-*.svg not drawn",
            raw.display()
        );
        return Ok(());
    }
    let texts: Vec<String> = files
        .iter()
        .map(fs::read_to_string)
        .collect::<std::io::Result<_>>()?;
    let tables: Vec<_> = texts.iter().map(|t| parse::tables_by_heading(t)).collect();
    for (heading, svg, what, unit) in [
        ("Allocator workloads", "alloc-time.svg", "time", "time"),
        ("Peak resident memory", "alloc-rss.svg", "peak RSS", "MiB"),
    ] {
        let per_run: Vec<&parse::Table> = tables
            .iter()
            .zip(&files)
            .map(|(t, f)| {
                parse::table_under(t, heading)
                    .ok_or_else(|| format!("{}: no table under {heading:?}", f.display()))
            })
            .collect::<std::result::Result<_, _>>()?;
        let labels: Vec<String> = per_run[0]
            .rows
            .iter()
            .filter_map(|r| r.first().cloned())
            .filter(|l| l != "idle")
            .collect();
        // The pictures name a workload without its parenthesised details.
        let short = |l: &str| match l.split_once(" (") {
            Some((head, tail)) => format!("{head}{}", tail.split_once(')').map_or("", |t| t.1)),
            None => l.to_owned(),
        };
        let ratio = |label: &str, other: &str| {
            let v: Vec<f64> = per_run
                .iter()
                .filter_map(|t| Some(t.number(label, "spf")? / t.number(label, other)?))
                .collect();
            Spread::of(&v)
        };
        let series: Vec<Series<Option<Spread>>> = ["jemalloc", "mimalloc"]
            .into_iter()
            .map(|other| Series {
                name: format!("spf / {other}"),
                color: allocator_color(other),
                points: labels.iter().map(|l| ratio(l, other)).collect(),
            })
            .collect();
        println!(
            "### Allocators: spf's {what} as a ratio, below 1× is better \
             (median, min–max of {} runs)\n",
            files.len()
        );
        println!("| workload | spf / jemalloc | spf / mimalloc |");
        println!("|---|---|---|");
        for (i, l) in labels.iter().enumerate() {
            let c =
                |s: &Series<Option<Spread>>| s.points[i].map_or("—".into(), |v| v.ratio_cell());
            println!("| {l} | {} | {} |", c(&series[0]), c(&series[1]));
        }
        println!();
        let path = out.svg(svg);
        let height = 90 + 26 * labels.len() as u32;
        let (root, body) = draw::picture(
            &path,
            (820, height),
            &format!(
                "spf's {what} ÷ the other allocator's, log scale (below 1× is better; {} runs) — {}",
                files.len(),
                out.machine
            ),
        )?;
        let shown: Vec<String> = labels.iter().map(|l| short(l)).collect();
        draw::ratio_bars(
            &body,
            "",
            &format!("spf {unit} ÷ other {unit}"),
            &shown,
            &series,
        )?;
        root.present()?;
    }
    Ok(())
}

/// Resident memory of the kvserver over time under the same load, one
/// panel per connection count.
fn kvserver_rss(raw: &Path, out: &mut Out) -> Result<()> {
    let file = raw.join("kvserver-rss.csv");
    if !file.exists() {
        eprintln!("figures: no {}; kvserver-rss.svg not drawn", file.display());
        return Ok(());
    }
    let samples = parse::rss_samples(&fs::read_to_string(&file)?)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut conns: Vec<u32> = samples.iter().map(|s| s.connections).collect();
    conns.sort();
    conns.dedup();
    let mut allocators: Vec<String> = Vec::new();
    for s in &samples {
        if !allocators.contains(&s.allocator) {
            allocators.push(s.allocator.clone());
        }
    }
    println!("### kvserver: peak RSS under the load, MiB, lower is better\n");
    println!("| connections | {} |", allocators.join(" | "));
    println!("|---|{}", "---|".repeat(allocators.len()));
    let path = out.svg("kvserver-rss.svg");
    let (root, body) = draw::picture(
        &path,
        (400 * conns.len() as u32, 380),
        &format!(
            "kvserver resident memory under memaslap, MiB (lower is better) — {}",
            out.machine
        ),
    )?;
    let panels = body.split_evenly((1, conns.len()));
    for (panel, &c) in panels.iter().zip(&conns) {
        let series: Vec<Series<(f64, f64)>> = allocators
            .iter()
            .map(|a| Series {
                name: a.clone(),
                color: allocator_color(a),
                points: samples
                    .iter()
                    .filter(|s| s.connections == c && &s.allocator == a)
                    .map(|s| (s.t_ms / 1000.0, s.rss_kib / 1024.0))
                    .collect(),
            })
            .collect();
        let peaks: Vec<String> = series
            .iter()
            .map(|s| format!("{:.0}", s.points.iter().map(|p| p.1).fold(0.0, f64::max)))
            .collect();
        println!("| {c} | {} |", peaks.join(" | "));
        draw::time_series(
            panel,
            &format!("{c} connections"),
            "seconds",
            "RSS, MiB",
            &series,
        )?;
    }
    root.present()?;
    println!();
    Ok(())
}

/// The groups of `benches/alloc.rs`, in its order.
const CRITERION_GROUPS: [&str; 9] = [
    "small pair",
    "batch 10k mixed",
    "cross-thread exchange",
    "larson-like",
    "hand-off 10k Strings",
    "larson lock-free",
    "large alloc+touch+free",
    "realloc growth to 64 MiB",
    "first touch 256 MiB",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "criterion") {
        let dir = args.get(1).map_or("target/criterion", String::as_str);
        match criterion::read_all(Path::new(dir)) {
            Ok(all) if !all.is_empty() => print!("{}", criterion::tables(&all, &CRITERION_GROUPS)),
            Ok(_) => {
                eprintln!("figures: no criterion results under {dir} (run `cargo bench --bench alloc` first)");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("figures: cannot read {dir}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let [raw, dir] = &args[..] else {
        eprintln!("usage: spf-figures RAW_DIR OUT_DIR | spf-figures criterion [CRITERION_DIR]");
        std::process::exit(2);
    };
    let raw = Path::new(raw);
    let machine = fs::read_to_string(raw.join("machine.txt"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "machine unknown".to_owned());
    if let Err(e) = fs::create_dir_all(dir) {
        eprintln!("figures: cannot create {dir}: {e}");
        std::process::exit(1);
    }
    let mut out = Out {
        dir: PathBuf::from(dir),
        machine,
        drawn: Vec::new(),
    };
    type Step = fn(&Path, &mut Out) -> Result<()>;
    let steps: [(&str, Step); 4] = [
        ("ebizzy", ebizzy),
        ("first touch", first_touch),
        ("allocators", allocators),
        ("kvserver RSS", kvserver_rss),
    ];
    let mut failed = false;
    for (name, step) in steps {
        if let Err(e) = step(raw, &mut out) {
            eprintln!("figures: {name}: {e}");
            failed = true;
        }
    }
    eprintln!("figures: drew {} in {dir}", out.drawn.join(", "));
    if failed {
        std::process::exit(1);
    }
}
