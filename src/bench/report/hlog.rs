//! The `.hlog` interval log: HdrHistogram's V2 histogram log (format version 1.3), one
//! compressed histogram of corrected latency (ns) per one-second interval of the measured
//! phase, as `HistogramLogProcessor`, HdrHistogram's plotters and the hdrhistogram crate's
//! `IntervalLogIterator` read it.
//!
//! Header: a `Logged with` comment, the format version, `StartTime` and `BaseTime` (both the
//! start of the measured phase, so interval timestamps are seconds from it), the max value
//! divisor (interval maxima are printed in ms) and the column legend.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

use super::RunRecord;
use super::summary::GIT_REVISION;

/// Interval maxima are written in ms (the histograms hold ns), as HdrHistogram's Java writer
/// does by default.
pub const MAX_VALUE_DIVISOR: f64 = 1_000_000.0;

/// Writes the interval log of `record`'s corrected latency.
pub fn write_interval_log(record: &RunRecord, out: &mut impl Write) -> io::Result<()> {
    let start = UNIX_EPOCH + Duration::from_millis(record.started_unix_ms);
    let mut text = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment(&format!(
            "[Logged with trove {} ({GIT_REVISION}), target {}, corrected latency in ns]",
            env!("CARGO_PKG_VERSION"),
            record.target
        ))
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(MAX_VALUE_DIVISOR)
        .begin_log_with(&mut text, &mut serializer)?;
    for interval in &record.intervals {
        writer
            .write_histogram(
                &interval.corrected_ns,
                Duration::from_secs_f64(interval.start_offset_s.max(0.0)),
                Duration::from_secs_f64(interval.duration_s.max(0.0)),
                None,
            )
            .map_err(io::Error::other)?;
    }
    drop(writer);
    // The crate's writer has no legend line; it belongs after the `#` header lines.
    let header_end = header_length(&text);
    out.write_all(&text[..header_end])?;
    out.write_all(LEGEND)?;
    out.write_all(&text[header_end..])
}

/// The column legend HdrHistogram's Java writer puts after the header.
const LEGEND: &[u8] =
    b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// Bytes of the leading `#` lines of a log.
fn header_length(log: &[u8]) -> usize {
    let mut length = 0;
    for line in log.split_inclusive(|byte| *byte == b'\n') {
        if !line.starts_with(b"#") {
            break;
        }
        length += line.len();
    }
    length
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::run_record;
    use super::*;
    use hdrhistogram::Histogram;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn the_crate_s_log_reader_reads_every_interval_back() {
        let record = run_record("trove", 2_000.0, 40_000, 5);
        let mut bytes = Vec::new();
        write_interval_log(&record, &mut bytes).unwrap();

        let mut start_time = None;
        let mut base_time = None;
        let mut read = Vec::new();
        for entry in IntervalLogIterator::new(&bytes) {
            match entry.expect("every line parses") {
                LogEntry::StartTime(time) => start_time = Some(time),
                LogEntry::BaseTime(time) => base_time = Some(time),
                LogEntry::Interval(interval) => {
                    let compressed = base64_decode(interval.encoded_histogram());
                    let histogram: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut compressed.as_slice())
                        .expect("the histogram decodes");
                    read.push((interval.start_timestamp(), interval.duration(), histogram));
                }
            }
        }
        let start = Duration::from_millis(record.started_unix_ms);
        assert_eq!(start_time, Some(start));
        assert_eq!(base_time, Some(start));
        assert_eq!(read.len(), record.intervals.len());
        for ((offset, length, histogram), sample) in read.iter().zip(&record.intervals) {
            assert_eq!(offset.as_secs_f64(), sample.start_offset_s);
            assert_eq!(length.as_secs_f64(), sample.duration_s);
            assert_eq!(histogram, &sample.corrected_ns);
        }
    }

    #[test]
    fn the_header_has_the_version_and_legend_lines() {
        let mut bytes = Vec::new();
        write_interval_log(&run_record("redis", 1_000.0, 40_000, 1), &mut bytes).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("#[Logged with trove"), "{}", lines[0]);
        assert_eq!(lines[1], "#[Histogram log format version 1.3]");
        assert!(lines[2].starts_with("#[StartTime: 1790000000.000"));
        assert!(lines[5].starts_with("\"StartTimestamp\""), "{}", lines[5]);
        assert!(lines[6].starts_with("0.000,1.000,"), "{}", lines[6]);
    }

    /// Standard base64 (RFC 4648 with padding), enough to read the log back in a test.
    fn base64_decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut buffer, mut bits) = (0u32, 0);
        for byte in text.bytes().filter(|b| *b != b'=') {
            let index = ALPHABET.iter().position(|c| *c == byte).expect("base64") as u32;
            buffer = ((buffer << 6) | index) & 0xff_ffff;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buffer >> bits) as u8);
            }
        }
        out
    }
}
