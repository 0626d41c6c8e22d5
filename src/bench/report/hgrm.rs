//! The `.hgrm` percentile distribution: the text HdrHistogram's `outputPercentileDistribution`
//! prints and its plotters (HdrHistogram's `plotFiles.html`, hdr-plot) read. The Rust crate has
//! no writer, so this is one.
//!
//! Layout: a header line and a blank line; one row per percentile tick (`Value`,
//! `Percentile`, `TotalCount`, `1/(1-Percentile)`; the last row, at percentile 1, has no
//! fourth column); then the `#[Mean …]`, `#[Max …]` and `#[Buckets …]` footer. Values are
//! divided by an output value unit scaling ratio (1000 turns ns into µs) and printed with as
//! many decimals as the histogram has significant figures.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Writes `histogram` as a percentile distribution with `ticks_per_half_distance` rows per
/// halving of the distance to 100%, values divided by `value_unit_scaling_ratio`.
pub fn write_percentile_distribution(
    histogram: &Histogram<u64>,
    ticks_per_half_distance: u32,
    value_unit_scaling_ratio: f64,
    out: &mut impl Write,
) -> io::Result<()> {
    let decimals = usize::from(histogram.sigfig());
    let scaled = |value: f64| value / value_unit_scaling_ratio;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    if !histogram.is_empty() {
        let mut total_count = 0u64;
        for step in histogram.iter_quantiles(ticks_per_half_distance.max(1)) {
            total_count += step.count_since_last_iteration();
            let value = scaled(step.value_iterated_to() as f64);
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(
                    out,
                    "{value:>12.decimals$} {quantile:>2.12} {total_count:>10} {:>14.2}",
                    1.0 / (1.0 - quantile)
                )?;
            } else {
                writeln!(
                    out,
                    "{value:>12.decimals$} {quantile:>2.12} {total_count:>10}"
                )?;
            }
        }
    }
    let (mean, stdev) = if histogram.is_empty() {
        (0.0, 0.0)
    } else {
        (histogram.mean(), histogram.stdev())
    };
    writeln!(
        out,
        "#[Mean    = {:>12.decimals$}, StdDeviation   = {:>12.decimals$}]",
        scaled(mean),
        scaled(stdev)
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.decimals$}, Total count    = {:>12}]",
        scaled(histogram.max() as f64),
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    )
}

/// Sub-buckets per bucket for a precision: the smallest power of two that holds
/// 2 × 10^sigfig distinct values (HdrHistogram's own rule; 2048 for 3 figures).
pub fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::latency_histogram;
    use super::*;

    /// One percentile row read back from a `.hgrm` file.
    #[derive(Debug)]
    struct Row {
        value: f64,
        quantile: f64,
        total_count: u64,
    }

    /// The rows and the footer's figures (mean, stdev, max, total count, buckets, sub-buckets).
    struct Parsed {
        rows: Vec<Row>,
        footer: Vec<f64>,
    }

    fn parse(text: &str) -> Parsed {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let mut rows = Vec::new();
        let mut footer = Vec::new();
        for line in lines {
            if let Some(inner) = line.strip_prefix("#[").and_then(|l| l.strip_suffix(']')) {
                for part in inner.split(',') {
                    let (_, number) = part.split_once('=').expect("name = value");
                    footer.push(number.trim().parse().unwrap());
                }
                continue;
            }
            let columns: Vec<&str> = line.split_whitespace().collect();
            assert!(columns.len() == 3 || columns.len() == 4, "{line}");
            rows.push(Row {
                value: columns[0].parse().unwrap(),
                quantile: columns[1].parse().unwrap(),
                total_count: columns[2].parse().unwrap(),
            });
        }
        Parsed { rows, footer }
    }

    /// The value at `quantile` read off the rows: the first row that reaches it.
    fn value_at(rows: &[Row], quantile: f64) -> f64 {
        rows.iter()
            .find(|row| row.quantile >= quantile)
            .unwrap()
            .value
    }

    fn written(histogram: &Histogram<u64>) -> String {
        let mut bytes = Vec::new();
        write_percentile_distribution(histogram, 5, 1_000.0, &mut bytes).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_file_read_back_gives_the_histogram_s_percentiles() {
        // Dense and uniform, so a tick just past a percentile is within 0.1% of it.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for value in 1..=200_000u64 {
            histogram.record(value * 10).unwrap();
        }
        let parsed = parse(&written(&histogram));
        for quantile in [0.5, 0.9, 0.99, 0.999] {
            let expected = histogram.value_at_quantile(quantile) as f64 / 1_000.0;
            let read = value_at(&parsed.rows, quantile);
            assert!(
                (read - expected).abs() <= expected * 0.002,
                "p{quantile}: read {read}, histogram {expected}"
            );
        }
        let last = parsed.rows.last().unwrap();
        assert_eq!(last.quantile, 1.0);
        assert_eq!(last.total_count, histogram.len());
        assert_eq!(last.value, histogram.max() as f64 / 1_000.0);
    }

    #[test]
    fn every_row_matches_the_histogram_at_its_own_percentile() {
        let histogram = latency_histogram(20_000, 40_000, 30, 3);
        let parsed = parse(&written(&histogram));
        assert!(parsed.rows.len() > 20, "{} rows", parsed.rows.len());
        let mut previous = (0.0, 0.0, 0);
        for row in &parsed.rows {
            assert!(row.value >= previous.0 && row.quantile >= previous.1);
            assert!(row.total_count >= previous.2);
            // The row's count of values at or below it is the histogram's own.
            let ns = (row.value * 1_000.0).round() as u64;
            assert_eq!(row.total_count, histogram.count_between(0, ns), "{row:?}");
            previous = (row.value, row.quantile, row.total_count);
        }
    }

    #[test]
    fn the_footer_carries_mean_stdev_max_count_and_bucket_geometry() {
        let histogram = latency_histogram(5_000, 40_000, 10, 9);
        let parsed = parse(&written(&histogram));
        let [mean, stdev, max, count, buckets, sub_buckets] = parsed.footer[..] else {
            panic!("footer {:?}", parsed.footer);
        };
        assert!((mean - histogram.mean() / 1_000.0).abs() < 0.001);
        assert!((stdev - histogram.stdev() / 1_000.0).abs() < 0.001);
        assert_eq!(max, histogram.max() as f64 / 1_000.0);
        assert_eq!(count as u64, histogram.len());
        assert_eq!(buckets as u8, histogram.buckets());
        assert_eq!(sub_buckets, 2048.0);
    }

    #[test]
    fn an_empty_histogram_writes_header_and_footer_only() {
        let parsed = parse(&written(&Histogram::<u64>::new(3).unwrap()));
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.footer[3], 0.0);
    }

    #[test]
    fn sub_bucket_counts_follow_hdrhistogram() {
        assert_eq!(sub_bucket_count(1), 32);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(3), 2048);
    }
}
