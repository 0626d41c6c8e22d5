//! The SVG plot of a set of runs: throughput against nodes, and network messages per event
//! against nodes, one line per strategy, both on logarithmic axes (linear scaling is then a
//! line of slope one, drawn dashed for reference).
//!
//! Drawn with plotters' SVG backend only: text is laid out by plotters' own estimate, with no
//! font library, so the picture is the same on every host.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::sim::config::Strategy;
use crate::sim::report::SimReport;

const WIDTH_PX: u32 = 1200;
const HEIGHT_PX: u32 = 500;

fn colour(strategy: Strategy) -> RGBColor {
    match strategy {
        Strategy::Broadcast => RGBColor(214, 39, 40),
        Strategy::Router => RGBColor(255, 127, 14),
        Strategy::Forward => RGBColor(31, 119, 180),
        Strategy::ShardAware => RGBColor(44, 160, 44),
    }
}

/// The SVG document of `report`.
pub fn svg(report: &SimReport) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(WIDTH_PX / 2);
        let throughput = |run: &crate::sim::report::RunReport| run.throughput_eps;
        let messages = |run: &crate::sim::report::RunReport| run.messages_per_event;
        panel(&left, report, "Throughput (events/s)", throughput, true)?;
        panel(
            &right,
            report,
            "Network messages per event",
            messages,
            false,
        )?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One chart: `value` of every run against its node count, one line per strategy.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    report: &SimReport,
    title: &str,
    value: impl Fn(&crate::sim::report::RunReport) -> f64,
    linear_reference: bool,
) -> Result<(), String> {
    let points = |strategy: Strategy| -> Vec<(f64, f64)> {
        report
            .runs
            .iter()
            .filter(|run| run.strategy == strategy && value(run) > 0.0)
            .map(|run| (run.nodes as f64, value(run)))
            .collect()
    };
    let all: Vec<(f64, f64)> = Strategy::ALL.into_iter().flat_map(points).collect();
    let nodes_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_min = if y_min.is_finite() { y_min } else { 1.0 };
    let y_max = all.iter().map(|p| p.1).fold(y_min, f64::max);
    let reference = linear_reference
        .then(|| {
            let one_node = report.runs.iter().find(|run| run.nodes == 1)?;
            Some(value(one_node))
        })
        .flatten();
    let y_max = reference.map_or(y_max, |base| y_max.max(base * nodes_max));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0.8f64..nodes_max * 1.25).log_scale(),
            // plotters labels a log axis from the first power of ten in its range on.
            (10f64.powf(y_min.log10().floor())..y_max * 1.5).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .light_line_style(WHITE)
        .y_labels(16)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for strategy in Strategy::ALL {
        let line = points(strategy);
        if line.is_empty() {
            continue;
        }
        let style = colour(strategy).stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.clone(), style))
            .map_err(|e| e.to_string())?
            .label(strategy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(PointSeries::of_element(
                line,
                4,
                style.filled(),
                &|c, s, st| Circle::new(c, s, st),
            ))
            .map_err(|e| e.to_string())?;
    }
    if let Some(base) = reference {
        let ideal = [(1.0, base), (nodes_max, base * nodes_max)];
        chart
            .draw_series(DashedLineSeries::new(ideal, 6, 4, BLACK.stroke_width(1)))
            .map_err(|e| e.to_string())?
            .label("linear")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
