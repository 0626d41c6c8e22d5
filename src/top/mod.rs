//! `trove top`: a live view of running nodes, from their `/metrics`.
//!
//! Every second it scrapes each node (in parallel, one plain thread per node, each scrape
//! bounded by `METRICS_SCRAPE_MS_MAX`), turns the difference between two scrapes into rates
//! and interval p99s ([`view`]), and shows one row per shard with the shard in trouble on top:
//! a terminal UI (`ratatui`) by default, or one plain-text table with `--once` for scripts.
//! Runs on the CLI's thread; it only reads what nodes serve.

pub mod view;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;

use crate::constants::TOP_NODES_MAX;
use crate::metrics::scrape::{NodeScrape, fetch};
use view::{ShardRow, node_rows, sort_by_trouble};

/// Watch running nodes: events/s, stage p99s, credit use, waits and stalls per shard.
///
/// Exit codes: 0 done; 1 a node could not be scraped (`--once`) or the terminal failed;
/// 2 a bad flag.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// A node's metrics address (its --metrics-listen); repeat for several nodes
    #[arg(
        long = "node",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9700"
    )]
    pub nodes: Vec<SocketAddr>,
    /// Scrape twice, two seconds apart, print one plain-text table and exit
    #[arg(long)]
    pub once: bool,
}

/// Time between two refreshes of the live view.
const REFRESH: Duration = Duration::from_secs(1);
/// Rates and p99s are over the last this many seconds: shards hand over a snapshot about once
/// a second, so a window of two holds at least one new snapshot of each.
const WINDOW: Duration = Duration::from_secs(2);

pub fn run(args: &TopArgs) -> i32 {
    if args.nodes.len() > TOP_NODES_MAX {
        eprintln!(
            "trove top: {} nodes given; it watches at most {TOP_NODES_MAX} at once",
            args.nodes.len()
        );
        return 2;
    }
    if args.once {
        return once(&args.nodes);
    }
    if !std::io::stdout().is_terminal() {
        eprintln!("trove top: the live view needs a terminal; use --once for scripts");
        return 2;
    }
    match live(&args.nodes) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("trove top: the terminal failed: {error}");
            1
        }
    }
}

/// One scrape of every node, in parallel.
fn scrape_all(nodes: &[SocketAddr]) -> Vec<Result<NodeScrape, String>> {
    std::thread::scope(|scope| {
        let scrapes: Vec<_> = nodes
            .iter()
            .map(|&node| scope.spawn(move || fetch(node).and_then(|text| NodeScrape::parse(&text))))
            .collect();
        scrapes
            .into_iter()
            .map(|scrape| {
                scrape
                    .join()
                    .unwrap_or_else(|_| Err("the scrape panicked".into()))
            })
            .collect()
    })
}

/// The rows of every node that answered both scrapes, trouble first, and an error line for
/// each node that did not.
fn rows_between(
    nodes: &[SocketAddr],
    before: &[Result<NodeScrape, String>],
    now: &[Result<NodeScrape, String>],
    seconds: f64,
) -> (Vec<ShardRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for ((node, before), now) in nodes.iter().zip(before).zip(now) {
        match (before, now) {
            (Ok(before), Ok(now)) => {
                rows.extend(node_rows(&node.to_string(), before, now, seconds))
            }
            (_, Err(error)) | (Err(error), _) => errors.push(format!("{node}: {error}")),
        }
    }
    sort_by_trouble(&mut rows);
    (rows, errors)
}

fn once(nodes: &[SocketAddr]) -> i32 {
    let first = scrape_all(nodes);
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let second = scrape_all(nodes);
    let (rows, errors) = rows_between(nodes, &first, &second, started.elapsed().as_secs_f64());
    let mut stdout = std::io::stdout();
    let _ = write!(stdout, "{}", view::plain_table(&rows));
    for error in &errors {
        eprintln!("trove top: {error}");
    }
    if errors.is_empty() { 0 } else { 1 }
}

fn live(nodes: &[SocketAddr]) -> std::io::Result<()> {
    let mut terminal = ratatui::init();
    let result = live_loop(&mut terminal, nodes);
    ratatui::restore();
    result
}

fn live_loop(terminal: &mut ratatui::DefaultTerminal, nodes: &[SocketAddr]) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    // The scrapes of the last `WINDOW`, oldest first.
    let mut history = std::collections::VecDeque::from([(Instant::now(), scrape_all(nodes))]);
    let mut rows = Vec::new();
    let mut errors = vec![format!("scraping {} node(s)…", nodes.len())];
    loop {
        terminal.draw(|frame| draw(frame, &rows, &errors))?;
        let next = history.back().expect("never empty").0 + REFRESH;
        while Instant::now() < next {
            if event::poll(next.saturating_duration_since(Instant::now()))?
                && let Event::Key(key) = event::read()?
            {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                    return Ok(());
                }
            }
        }
        history.push_back((Instant::now(), scrape_all(nodes)));
        while history.len() > 2 && history[1].0.elapsed() >= WINDOW {
            history.pop_front();
        }
        let (oldest_at, oldest) = history.front().expect("never empty");
        let (newest_at, newest) = history.back().expect("never empty");
        let seconds = (*newest_at - *oldest_at).as_secs_f64();
        (rows, errors) = rows_between(nodes, oldest, newest, seconds);
    }
}

fn draw(frame: &mut ratatui::Frame, rows: &[ShardRow], errors: &[String]) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Color, Modifier, Style};
    use ratatui::widgets::{Block, Paragraph, Row, Table};

    let [title, table_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(errors.len().min(5) as u16 + 1),
    ])
    .areas(frame.area());
    let total: f64 = rows.iter().map(|row| row.events_per_s).sum();
    frame.render_widget(
        Paragraph::new(format!(
            "trove top — {} shard(s), {} events/s in all; trouble first; q quits",
            rows.len(),
            view::short_rate(total)
        ))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        title,
    );
    let header = Row::new([
        "NODE",
        "SHARD",
        "EVENTS/S",
        "FWD/S",
        "DISPATCH p99",
        "MESH p99",
        "CREDIT",
        "WAITS/S",
        "BUSY/S",
        "CONNS",
        "STALL",
        "UTIL",
        "STALLS/S",
    ])
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let lines = rows.iter().map(|row| {
        let style = if row.stalled() || row.credit_use >= 0.95 || row.stalls_per_s > 0.0 {
            Style::default().fg(Color::Red)
        } else if row.credit_use >= 0.5 || row.credit_waits_per_s + row.busy_per_s > 0.0 {
            Style::default().fg(Color::Yellow)
        } else {
            Style::default()
        };
        Row::new([
            row.node.clone(),
            row.shard.to_string(),
            view::short_rate(row.events_per_s),
            view::short_rate(row.forwarded_per_s),
            view::short_duration(row.frame_dispatch_p99_s),
            view::short_duration(row.mesh_round_trip_p99_s),
            view::credit_bar(row.credit_use, 10),
            view::short_rate(row.credit_waits_per_s),
            view::short_rate(row.busy_per_s),
            format!("{}", row.connections_open),
            if row.stalled() {
                format!("{:.0}s", row.snapshot_age_s)
            } else {
                "no".into()
            },
            view::short_percent(row.utilisation),
            view::short_rate(row.stalls_per_s),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(22),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(17),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(8),
    ];
    frame.render_widget(
        Table::new(lines, widths)
            .header(header)
            .block(Block::bordered().title("shards")),
        table_area,
    );
    frame.render_widget(
        Paragraph::new(errors.join("\n")).style(Style::default().fg(Color::Red)),
        footer,
    );
}
