//! The four kinds of chart the benchmark page uses, each drawn on a
//! plotters drawing area: lines over thread counts with min–max whiskers,
//! grouped bars with whiskers and a reference line, horizontal ratio bars
//! on a log scale, and time series. Every chart states its unit and which
//! way is better in its axis label or title.

use crate::spread::Spread;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

pub type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One named line or bar series.
pub struct Series<T> {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<T>,
}

const FONT: &str = "sans-serif";

/// A chart's backend pixel as a position inside `area` (charts report
/// positions on the whole picture; an area draws relative to its corner).
fn within(area: &Area, (x, y): (i32, i32)) -> (i32, i32) {
    let (bx, by) = area.get_base_pixel();
    (x - bx, y - by)
}

type Chart<'c, 'a> = ChartContext<'c, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A picture at `path`: white, with `title` on a strip along the top.
/// Returns the whole picture (to `present`) and the area below the title.
pub fn picture<'a>(path: &'a Path, size: (u32, u32), title: &str) -> Result<(Area<'a>, Area<'a>)> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(26);
    top.draw(&Text::new(title.to_owned(), (8, 6), (FONT, 14)))?;
    Ok((root, body))
}

/// A min–max whisker from `ends[0]` to `ends[1]`, with a cap at each end
/// reaching `cap` either side (a vertical whisker has a horizontal cap).
fn whisker(
    chart: &mut Chart,
    ends: [(f64, f64); 2],
    cap: (f64, f64),
    color: RGBColor,
) -> Result<()> {
    let style = color.stroke_width(1);
    let segment = |a: (f64, f64), b: (f64, f64)| PathElement::new(vec![a, b], style);
    let caps = ends.map(|(x, y)| segment((x - cap.0, y - cap.1), (x + cap.0, y + cap.1)));
    chart.draw_series(std::iter::once(segment(ends[0], ends[1])).chain(caps))?;
    Ok(())
}

/// The legend of every labelled series, at `at`.
fn legend<'a>(chart: &mut Chart<'a, 'a>, at: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

/// Bars of `series` in slots: group `i`, series `j` gets a slot of width
/// 0.8 / series inside [i, i + 1) on the category axis; each bar runs from
/// 0 to `value(median)` on the value axis, with a whisker from
/// `value(min)` to `value(max)`. `horizontal` puts the value axis along x.
fn bars(
    chart: &mut Chart,
    series: &[Series<Option<Spread>>],
    horizontal: bool,
    value: impl Fn(f64) -> f64,
) -> Result<()> {
    let at = |category: f64, v: f64| {
        if horizontal {
            (v, category)
        } else {
            (category, v)
        }
    };
    let width = 0.8 / series.len().max(1) as f64;
    for (j, s) in series.iter().enumerate() {
        let color = s.color;
        let mut labelled = false;
        for (i, v) in s.points.iter().enumerate() {
            let Some(v) = v else { continue };
            let start = i as f64 + 0.1 + j as f64 * width;
            let bar = chart.draw_series(std::iter::once(Rectangle::new(
                [at(start, 0.0), at(start + width * 0.9, value(v.median))],
                color.filled(),
            )))?;
            if !labelled {
                bar.label(s.name.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
                labelled = true;
            }
            let middle = start + width * 0.45;
            let cap = at(width * 0.2, 0.0);
            whisker(
                chart,
                [at(middle, value(v.min)), at(middle, value(v.max))],
                cap,
                BLACK,
            )?;
        }
    }
    Ok(())
}

/// Lines over thread counts (x on a log2 scale, one tick per count), each
/// point the median with a min–max whisker, on a value axis from 0 to
/// `y_max` (shared by panels that should be compared by eye). `y_desc`
/// names the unit.
pub fn lines_over_threads(
    area: &Area,
    title: &str,
    y_desc: &str,
    y_max: f64,
    threads: &[usize],
    series: &[Series<(usize, Spread)>],
) -> Result<()> {
    let x = |t: usize| (t as f64).log2();
    let x_end = x(*threads.last().unwrap_or(&1)).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(58)
        .build_cartesian_2d(-0.3..x_end + 0.3, 0.0..y_max.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .label_style((FONT, 12))
        .draw()?;
    for &t in threads {
        let (px, py) = within(area, chart.backend_coord(&(x(t), 0.0)));
        area.draw(&Text::new(
            t.to_string(),
            (px, py + 6),
            TextStyle::from((FONT, 12)).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    let (px, py) = within(area, chart.backend_coord(&(x_end / 2.0, 0.0)));
    area.draw(&Text::new(
        "threads",
        (px, py + 20),
        TextStyle::from((FONT, 12)).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|&(t, v)| (x(t), v.median)),
                color.stroke_width(2),
            ))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            s.points
                .iter()
                .map(|&(t, v)| Circle::new((x(t), v.median), 3, color.filled())),
        )?;
        for &(t, v) in &s.points {
            whisker(
                &mut chart,
                [(x(t), v.min), (x(t), v.max)],
                (0.05, 0.0),
                color,
            )?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

/// Grouped vertical bars: one group per entry of `groups`, one bar per
/// series (`None`: no bar, e.g. a backend the machine refused), whiskers
/// min–max, and an optional dashed reference line across the chart.
pub fn grouped_bars(
    area: &Area,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Series<Option<Spread>>],
    reference: Option<(&str, Spread)>,
) -> Result<()> {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().flatten().map(|p| p.max))
        .chain(reference.map(|r| r.1.max))
        .fold(0.0, f64::max)
        * 1.15;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..n, 0.0..y_max.max(0.1))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .label_style((FONT, 12))
        .draw()?;
    for (i, g) in groups.iter().enumerate() {
        let (px, py) = within(area, chart.backend_coord(&(i as f64 + 0.5, 0.0)));
        area.draw(&Text::new(
            g.clone(),
            (px, py + 6),
            TextStyle::from((FONT, 12)).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    bars(&mut chart, series, false, |v| v)?;
    if let Some((name, r)) = reference {
        let style = BLACK.stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, r.median), (n, r.median)],
                6,
                4,
                style,
            ))?
            .label(name.to_owned())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// Horizontal bars of ratios on a log scale, one row per label, one bar per
/// series within a row, whiskers min–max, and a line at 1×.
pub fn ratio_bars(
    area: &Area,
    title: &str,
    x_desc: &str,
    labels: &[String],
    series: &[Series<Option<Spread>>],
) -> Result<()> {
    let values = || series.iter().flat_map(|s| s.points.iter().flatten());
    let lo = values().map(|v| v.min).fold(1.0, f64::min) / 1.5;
    let hi = values().map(|v| v.max).fold(1.0, f64::max) * 1.5;
    let (lo, hi) = (lo.log10(), hi.log10());
    let n = labels.len() as f64;
    let label_px = 210;
    let (left, right) = area.split_horizontally(label_px);
    let mut chart = ChartBuilder::on(&right)
        .caption(title, (FONT, 17))
        .margin(8)
        .x_label_area_size(40)
        .build_cartesian_2d(lo..hi, n..0.0)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(x_desc)
        .x_label_formatter(&|v| {
            let r = 10f64.powf(*v);
            if r >= 1.0 {
                format!("{r:.1}×")
            } else {
                format!("{r:.2}×")
            }
        })
        .label_style((FONT, 11))
        .draw()?;
    for (i, l) in labels.iter().enumerate() {
        let (_, py) = within(&left, chart.backend_coord(&(lo, i as f64 + 0.5)));
        left.draw(&Text::new(
            l.clone(),
            (label_px - 4, py),
            TextStyle::from((FONT, 12)).pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
    }
    bars(&mut chart, series, true, f64::log10)?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 0.0), (0.0, n)],
        BLACK.stroke_width(1),
    )))?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// Lines of (x, y) samples over time.
pub fn time_series(
    area: &Area,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<(f64, f64)>],
) -> Result<()> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let x_max = pts().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let y_max = pts().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 12))
        .draw()?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}
