//! `trove top`: a live view of running nodes, from their `/metrics`.
//!
//! The nodes are named (`--node`, repeated) or read from a cluster's etcd (`--cluster`): every
//! node registered under `/trove/NAME/nodes/` with the address of its `/metrics`, read again
//! at each refresh, so nodes that join or leave come and go. Every second it scrapes each node (in parallel, one plain thread per node, each scrape
//! bounded by `METRICS_SCRAPE_MS_MAX`), turns the difference between two scrapes into rates
//! and interval p99s ([`view`]), and shows one row per shard with the shard in trouble on top:
//! a terminal UI (`ratatui`) by default, or one plain-text table with `--once` for scripts.
//! Runs on the CLI's thread; it only reads what nodes serve.

pub mod view;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cluster::coordinator::{ClusterView, Request, Response};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::flags::ClusterFlags;
use crate::cluster::keys::ClusterKeys;
use crate::constants::{METRICS_SCRAPE_MS_MAX, TOP_NODES_MAX};
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
        default_value = "127.0.0.1:9700",
        conflicts_with = "cluster"
    )]
    pub nodes: Vec<SocketAddr>,
    // Watch every node of a cluster (`--cluster`, `--cluster-name`), as registered in its
    // etcd under /trove/NAME/nodes/.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// Scrape twice, two seconds apart, print one plain-text table and exit
    #[arg(long)]
    pub once: bool,
}

/// Time between two refreshes of the live view.
const REFRESH: Duration = Duration::from_secs(1);
/// Rates and p99s are over the last this many seconds: shards hand over a snapshot about once
/// a second, so a window of two holds at least one new snapshot of each.
const WINDOW: Duration = Duration::from_secs(2);

/// Which nodes to watch: named ones, or a cluster's, read from etcd at each refresh.
enum Targets {
    Nodes(Vec<SocketAddr>),
    Cluster { etcd: EtcdClient, keys: ClusterKeys },
}

/// One node's scrape, by its metrics address.
type Scrapes = Vec<(SocketAddr, Result<NodeScrape, String>)>;

impl Targets {
    fn from_args(args: &TopArgs) -> Result<Targets, String> {
        let Some((endpoints, keys)) = args.cluster.parse()? else {
            if args.nodes.len() > TOP_NODES_MAX {
                return Err(format!(
                    "{} nodes given; it watches at most {TOP_NODES_MAX} at once",
                    args.nodes.len()
                ));
            }
            return Ok(Targets::Nodes(args.nodes.clone()));
        };
        let timeout = Duration::from_millis(METRICS_SCRAPE_MS_MAX);
        Ok(Targets::Cluster {
            etcd: EtcdClient::new(endpoints, timeout),
            keys,
        })
    }

    /// The metrics addresses to scrape now, and a line for each node that cannot be.
    fn resolve(&mut self) -> Result<(Vec<SocketAddr>, Vec<String>), String> {
        let (etcd, keys) = match self {
            Targets::Nodes(nodes) => return Ok((nodes.clone(), Vec::new())),
            Targets::Cluster { etcd, keys } => (etcd, keys),
        };
        let request = Request::RangePrefix {
            prefix: keys.prefix().to_owned(),
        };
        let Response::Range { revision, kvs } = etcd
            .execute(&request)
            .map_err(|error| format!("cannot read the cluster's nodes from etcd: {error}"))?
        else {
            return Err("etcd answered a range with something else".into());
        };
        let view = ClusterView::from_range(keys, revision, &kvs);
        if view.nodes.is_empty() {
            return Err(format!(
                "no node is registered under {}nodes/ in etcd {}; is the cluster name right (--cluster-name)?",
                keys.prefix(),
                etcd.endpoint()
            ));
        }
        let mut addrs = Vec::new();
        let mut notes = Vec::new();
        for (node, entry) in &view.nodes {
            let Some(metrics) = &entry.info.metrics else {
                notes.push(format!(
                    "{node} registers no /metrics address (it runs with --metrics-listen off, or an older trove)"
                ));
                continue;
            };
            match std::net::ToSocketAddrs::to_socket_addrs(metrics.as_str())
                .ok()
                .and_then(|mut addrs| addrs.next())
            {
                Some(addr) if addrs.len() < TOP_NODES_MAX => addrs.push(addr),
                Some(_) => notes.push(format!(
                    "{node} is not watched: top watches at most {TOP_NODES_MAX} nodes"
                )),
                None => notes.push(format!(
                    "{node} registers /metrics at `{metrics}`, which does not resolve"
                )),
            }
        }
        Ok((addrs, notes))
    }
}

pub fn run(args: &TopArgs) -> i32 {
    let mut targets = match Targets::from_args(args) {
        Ok(targets) => targets,
        Err(message) => {
            eprintln!("trove top: {message}");
            return 2;
        }
    };
    if args.once {
        return once(&mut targets);
    }
    if !std::io::stdout().is_terminal() {
        eprintln!("trove top: the live view needs a terminal; use --once for scripts");
        return 2;
    }
    match live(&mut targets) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("trove top: the terminal failed: {error}");
            1
        }
    }
}

/// One scrape of every node, in parallel.
fn scrape_all(nodes: &[SocketAddr]) -> Scrapes {
    std::thread::scope(|scope| {
        let scrapes: Vec<_> = nodes
            .iter()
            .map(|&node| {
                let scrape =
                    scope.spawn(move || fetch(node).and_then(|text| NodeScrape::parse(&text)));
                (node, scrape)
            })
            .collect();
        scrapes
            .into_iter()
            .map(|(node, scrape)| {
                let scrape = scrape
                    .join()
                    .unwrap_or_else(|_| Err("the scrape panicked".into()));
                (node, scrape)
            })
            .collect()
    })
}

/// The rows of every node that answered the later scrape, trouble first (a node missing from
/// the earlier one shows no rates yet), and an error line for each node that did not answer.
fn rows_between(before: &Scrapes, now: &Scrapes, seconds: f64) -> (Vec<ShardRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let none = NodeScrape::default();
    for (node, now) in now {
        let before = before
            .iter()
            .find(|(addr, _)| addr == node)
            .and_then(|(_, scrape)| scrape.as_ref().ok())
            .unwrap_or(&none);
        match now {
            Ok(now) => rows.extend(node_rows(&node.to_string(), before, now, seconds)),
            Err(error) => errors.push(format!("{node}: {error}")),
        }
    }
    sort_by_trouble(&mut rows);
    (rows, errors)
}

fn once(targets: &mut Targets) -> i32 {
    let (nodes, notes) = match targets.resolve() {
        Ok(resolved) => resolved,
        Err(message) => {
            eprintln!("trove top: {message}");
            return 1;
        }
    };
    let first = scrape_all(&nodes);
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let second = scrape_all(&nodes);
    let (rows, errors) = rows_between(&first, &second, started.elapsed().as_secs_f64());
    let mut stdout = std::io::stdout();
    let _ = write!(stdout, "{}", view::plain_table(&rows));
    for line in notes.iter().chain(&errors) {
        eprintln!("trove top: {line}");
    }
    if errors.is_empty() && notes.is_empty() {
        0
    } else {
        1
    }
}

fn live(targets: &mut Targets) -> std::io::Result<()> {
    let mut terminal = ratatui::init();
    let result = live_loop(&mut terminal, targets);
    ratatui::restore();
    result
}

/// The nodes to scrape now and the lines to show about the others; the last known nodes when
/// the cluster cannot be read.
fn resolve_or_keep(targets: &mut Targets, last: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<String>) {
    targets
        .resolve()
        .unwrap_or_else(|error| (last.to_vec(), vec![error]))
}

fn live_loop(
    terminal: &mut ratatui::DefaultTerminal,
    targets: &mut Targets,
) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let (mut nodes, mut notes) = resolve_or_keep(targets, &[]);
    // The scrapes of the last `WINDOW`, oldest first.
    let mut history = std::collections::VecDeque::from([(Instant::now(), scrape_all(&nodes))]);
    let mut rows = Vec::new();
    let mut errors = notes.clone();
    errors.push(format!("scraping {} node(s)…", nodes.len()));
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
        (nodes, notes) = resolve_or_keep(targets, &nodes);
        history.push_back((Instant::now(), scrape_all(&nodes)));
        while history.len() > 2 && history[1].0.elapsed() >= WINDOW {
            history.pop_front();
        }
        let (oldest_at, oldest) = history.front().expect("never empty");
        let (newest_at, newest) = history.back().expect("never empty");
        let seconds = (*newest_at - *oldest_at).as_secs_f64();
        (rows, errors) = rows_between(oldest, newest, seconds);
        errors.splice(0..0, notes.iter().cloned());
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
        "FULLEST",
        "STALL",
        "UTIL",
        "STALLS/S",
    ])
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let lines = rows.iter().map(|row| {
        let style = if row.stalled() || row.credit_use >= 0.95 || row.stalls_per_s > 0.0 {
            Style::default().fg(Color::Red)
        } else if row.credit_use >= 0.5
            || row.credit_waits_per_s + row.busy_per_s > 0.0
            || row.fullest_connection_use >= 1.0
        {
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
            view::short_percent(row.fullest_connection_use),
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
        Constraint::Length(7),
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
