//! The task of one outgoing link of a shard: opened lazily, when the core first forwards an
//! event to that shard of another node, it connects through the network layer's connector,
//! runs the connection until it fails or the shard stops, and after a failure waits a
//! bounded, doubling back-off before the core may open it again. A failure is reported in
//! one line on the node's output (shard, peer, reason), once while the reason stays the same. Lives on its shard's
//! executor; every decision (what to send, what a failure answers) is the core's.
//!
//! Waits: the task waits on its link's queue, woken only when the core lists the link; the
//! connection's loops race their I/O only against the connection's one-shot latch
//! (`LinkSignals::broken`), never against the queue. The back-off is the one timer, and it
//! runs only after a failure.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use crate::constants::{LINK_RETRY_MS_MAX, LINK_RETRY_MS_MIN};
use crate::core::shard::{LinkDest, LinkPoll};
use crate::runtime::shard::{LinkSignals, Shard};
use crate::runtime::wait::Latch;

/// How a connection of a link ended.
pub enum LinkEnd {
    /// The shard stopped and the link closed cleanly: the task ends.
    Closed,
    /// It failed; `connected` says whether the handshake had completed (a link that was up
    /// starts over from the shortest back-off; one that could not connect waits longer each
    /// time).
    Failed { connected: bool, reason: String },
}

/// Connects the link to `dest`, runs it, and says how it ended: the network layer's part
/// (`net::link`, holding the node's link credentials), installed on each shard with
/// [`Shard::set_link_connector`].
pub type LinkConnector =
    Rc<dyn Fn(Rc<Shard>, LinkDest, Rc<LinkSignals>) -> Pin<Box<dyn Future<Output = LinkEnd>>>>;

/// Runs the outgoing link to `dest` until the shard stops.
pub async fn run_outgoing(shard: Rc<Shard>, dest: LinkDest, signals: Rc<LinkSignals>) {
    let mut backoff = Duration::from_millis(LINK_RETRY_MS_MIN);
    // Said once while a link keeps failing for the same reason: a retry is not news.
    let mut last_reason: Option<String> = None;
    loop {
        let connect = signals
            .queue
            .until(|| match shard.poll_link(dest, &mut Vec::new()) {
                Some(LinkPoll::Connect) => Some(true),
                Some(LinkPoll::Close) => Some(false),
                _ => None,
            })
            .await;
        if !connect {
            return;
        }
        let Some(connector) = shard.link_connector() else {
            // A shard without sockets (a test's): nothing can carry the events.
            shard.link_failed(dest);
            return;
        };
        *signals.broken.borrow_mut() = Rc::new(Latch::new());
        match connector(shard.clone(), dest, signals.clone()).await {
            LinkEnd::Closed => return,
            LinkEnd::Failed { connected, reason } => {
                shard.link_failed(dest);
                if connected || last_reason.as_ref() != Some(&reason) {
                    report_failure(&shard, dest, &reason);
                }
                last_reason = Some(reason);
                if connected {
                    backoff = Duration::from_millis(LINK_RETRY_MS_MIN);
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(LINK_RETRY_MS_MAX));
                shard.link_retry(dest);
            }
        }
    }
}

/// One line on the node's output for a link that failed: which shard, which peer, why.
fn report_failure(shard: &Shard, dest: LinkDest, reason: &str) {
    // The node runs on if its output is closed.
    let _ = writeln!(
        std::io::stdout(),
        "trove node: shard {}: the link to node {} shard {} failed: {reason} (retried after a back-off of up to {LINK_RETRY_MS_MAX} ms; said again when the reason changes)",
        shard.id().0,
        dest.node.0,
        dest.shard.0,
    );
}
