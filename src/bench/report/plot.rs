//! SVG plots, drawn with plotters' SVG backend alone (no bitmap backend, no system font
//! library: text is left to the SVG viewer).
//!
//! - Latency by percentile: the x axis is `1/(1-percentile)` on a log scale, labelled as
//!   percentiles (90%, 99%, 99.9%, …), as HdrHistogram's plotter draws it; corrected and
//!   uncorrected latency of trove, and of the peer when one ran, in µs.
//! - A sweep: corrected and uncorrected p99 against achieved throughput, with the objective.

use std::io;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::{HGRM_TICKS_PER_HALF_DISTANCE, Report, Sweep};

const PLOT_SIZE: (u32, u32) = (960, 600);
/// One colour per series, in drawing order.
const SERIES_COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

/// A named line of (x, y) points.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// The latency-by-percentile plot of a report, as SVG text.
pub fn latency_by_percentile(report: &Report) -> io::Result<String> {
    let mut series = Vec::new();
    for record in std::iter::once(&report.main).chain(report.peer.as_ref()) {
        for (kind, histogram) in [
            ("corrected", &record.corrected_ns),
            ("uncorrected", &record.uncorrected_ns),
        ] {
            series.push(Series {
                label: format!("{} {kind}", record.target),
                points: percentile_points(histogram),
            });
        }
    }
    let x_max = max_of(&series, |(x, _)| x).max(10.0);
    let y_max = max_of(&series, |(_, y)| y).max(1.0) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency by percentile", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("Percentile")
            .y_desc("Latency (us)")
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()
            .map_err(plot_error)?;
        draw_lines(&mut chart, &series)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The sweep plot: p99 against achieved throughput, with the objective as a dashed level.
pub fn sweep_p99_vs_throughput(sweep: &Sweep) -> io::Result<String> {
    let p99_points = |pick: fn(&super::RunRecord) -> &Histogram<u64>| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = sweep
            .steps
            .iter()
            .map(|step| {
                let p99_ns = pick(&step.record).value_at_quantile(0.99) as f64;
                (step.record.achieved_rate_per_s(), p99_ns / 1_000.0)
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let series = [
        Series {
            label: "corrected p99".to_string(),
            points: p99_points(|record| &record.corrected_ns),
        },
        Series {
            label: "uncorrected p99".to_string(),
            points: p99_points(|record| &record.uncorrected_ns),
        },
    ];
    let x_max = max_of(&series, |(x, _)| x).max(1.0) * 1.05;
    let y_max = max_of(&series, |(_, y)| y).max(sweep.slo_p99_us).max(1.0) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("p99 latency against throughput", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("Achieved throughput (events/s)")
            .y_desc("p99 latency (us)")
            .draw()
            .map_err(plot_error)?;
        let objective = [(0.0, sweep.slo_p99_us), (x_max, sweep.slo_p99_us)];
        chart
            .draw_series(DashedLineSeries::new(objective, 8, 6, BLACK.into()))
            .map_err(plot_error)?
            .label(format!("objective {} us", sweep.slo_p99_us))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        for (index, line) in series.iter().enumerate() {
            let color = SERIES_COLORS[index % SERIES_COLORS.len()];
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|point| Circle::new(*point, 3, color.filled())),
                )
                .map_err(plot_error)?;
        }
        draw_lines(&mut chart, &series)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// (1/(1-q), µs) at each percentile tick below 100% of a histogram of ns.
fn percentile_points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    histogram
        .iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE)
        .filter(|step| step.quantile_iterated_to() < 1.0)
        .map(|step| {
            let x = 1.0 / (1.0 - step.quantile_iterated_to());
            (x, step.value_iterated_to() as f64 / 1_000.0)
        })
        .collect()
}

/// "99.9%" for x = 1000: the percentile whose distance to 100% is 1/x.
fn percentile_label(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().round() as usize).saturating_sub(2);
    format!("{percentile:.decimals$}%")
}

fn max_of(series: &[Series], pick: impl Fn(&(f64, f64)) -> &f64) -> f64 {
    series
        .iter()
        .flat_map(|line| line.points.iter().map(&pick))
        .fold(0.0, |max, value| max.max(*value))
}

fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
) -> io::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (index, line) in series.iter().enumerate() {
        let color = SERIES_COLORS[index % SERIES_COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

fn plot_error(error: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("drawing a plot failed: {error:?}"))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{report_with_everything, simple_report};
    use super::*;

    /// Parses the SVG and returns the texts of its `<text>` elements.
    fn well_formed_svg_texts(svg: &str) -> Vec<String> {
        let document = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
        assert_eq!(document.root_element().tag_name().name(), "svg");
        document
            .descendants()
            .filter(|node| node.has_tag_name("text"))
            .filter_map(|node| node.text().map(|text| text.trim().to_string()))
            .collect()
    }

    #[test]
    fn the_latency_plot_is_well_formed_and_labels_every_series() {
        let texts =
            well_formed_svg_texts(&latency_by_percentile(&report_with_everything()).unwrap());
        for label in [
            "trove corrected",
            "trove uncorrected",
            "redis corrected",
            "99%",
        ] {
            assert!(
                texts.iter().any(|text| text == label),
                "{label} not in {texts:?}"
            );
        }
        let alone = well_formed_svg_texts(&latency_by_percentile(&simple_report()).unwrap());
        assert!(!alone.iter().any(|text| text.starts_with("redis")));
    }

    #[test]
    fn the_sweep_plot_is_well_formed_and_shows_the_objective() {
        let report = report_with_everything();
        let svg = sweep_p99_vs_throughput(report.sweep.as_ref().unwrap()).unwrap();
        let texts = well_formed_svg_texts(&svg);
        assert!(
            texts.iter().any(|text| text == "objective 1000 us"),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|text| text == "corrected p99"),
            "{texts:?}"
        );
        let circles = roxmltree::Document::parse(&svg)
            .unwrap()
            .descendants()
            .filter(|node| node.has_tag_name("circle"))
            .count();
        assert_eq!(circles, 2 * report.sweep.unwrap().steps.len());
    }

    #[test]
    fn percentile_labels_read_as_percentiles() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1_000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn an_empty_run_still_plots() {
        let mut report = simple_report();
        report.main.corrected_ns.reset();
        report.main.uncorrected_ns.reset();
        well_formed_svg_texts(&latency_by_percentile(&report).unwrap());
    }
}
