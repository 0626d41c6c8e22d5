//! What a person sees while a benchmark runs: a progress bar with the live rate and p99 on a
//! terminal, nothing but the final table otherwise (or with `--quiet`). Lives on the
//! coordinating thread.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::bench::generator::Latencies;

/// The progress display of one `trove bench` invocation.
pub struct Progress {
    live: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A live display only when stdout is a terminal and `quiet` is not set.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            live: !quiet && std::io::stdout().is_terminal(),
            bar: None,
        }
    }

    /// A display that shows nothing.
    pub fn silent() -> Progress {
        Progress {
            live: false,
            bar: None,
        }
    }

    /// A line about what the benchmark is doing now (setting up, calibrating…).
    pub fn note(&self, text: &str) {
        if !self.live {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Starts a bar for a measured phase of `seconds` (after `warmup_s` of warm-up).
    pub fn start_phase(&mut self, label: &str, warmup_s: f64, seconds: f64) {
        if !self.live {
            return;
        }
        let bar = ProgressBar::new(seconds.ceil() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} s  {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        bar.set_message(format!("warming up for {warmup_s:.1} s"));
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }

    /// One second of the measured phase is over.
    pub fn interval(&self, second: u32, latencies: &Latencies, replies: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(u64::from(second) + 1);
            let p99_us = latencies.corrected_ns.value_at_quantile(0.99) as f64 / 1_000.0;
            bar.set_message(format!("{replies} events/s, p99 {p99_us:.0} µs"));
        }
    }

    /// The measured phase is over.
    pub fn finish_phase(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
