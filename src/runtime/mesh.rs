//! The cross-shard mesh: one bounded glommio channel per ordered pair of shards, carrying
//! [`MeshBatch`]es (built and read by each shard's `ShardCore`).
//!
//! [`build_mesh`] runs on the thread that starts the shards and makes every channel;
//! [`connect_mesh`] runs on each shard's executor and connects that shard's ends. Batches are
//! the one value of the shard protocol that changes cores; the channel is how they do it.

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use crate::constants::MESH_CHANNEL_BATCHES_MAX;
use crate::core::ids::ShardId;
use crate::core::shard::MeshBatch;
use crate::runtime::stall::spawn_timed;

/// The connected channels of one shard to and from every other shard.
pub struct ShardMesh {
    pub senders: Vec<(ShardId, ConnectedSender<MeshBatch>)>,
    pub receivers: Vec<(ShardId, ConnectedReceiver<MeshBatch>)>,
}

/// One shard's channel ends before they are connected (they cross threads to get there).
pub struct MeshEnds {
    pub senders: Vec<(ShardId, SharedSender<MeshBatch>)>,
    pub receivers: Vec<(ShardId, SharedReceiver<MeshBatch>)>,
}

/// Every channel of a full mesh of `shards` shards, as each shard's ends, in shard order.
pub fn build_mesh(shards: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..shards)
        .map(|_| MeshEnds {
            senders: Vec::new(),
            receivers: Vec::new(),
        })
        .collect();
    for from in 0..shards {
        for to in (0..shards).filter(|&to| to != from) {
            let (sender, receiver) = shared_channel::new_bounded(MESH_CHANNEL_BATCHES_MAX);
            ends[from].senders.push((ShardId(to as u16), sender));
            ends[to].receivers.push((ShardId(from as u16), receiver));
        }
    }
    ends
}

/// Connects this shard's channel ends. Every end waits for its peer, so all connect at once.
pub async fn connect_mesh(ends: MeshEnds) -> ShardMesh {
    let senders: Vec<_> = ends
        .senders
        .into_iter()
        .map(|(peer, end)| spawn_timed(async move { (peer, end.connect().await) }))
        .collect();
    let receivers: Vec<_> = ends
        .receivers
        .into_iter()
        .map(|(peer, end)| spawn_timed(async move { (peer, end.connect().await) }))
        .collect();
    let mut mesh = ShardMesh {
        senders: Vec::new(),
        receivers: Vec::new(),
    };
    for task in senders {
        mesh.senders.push(task.await);
    }
    for task in receivers {
        mesh.receivers.push(task.await);
    }
    mesh
}
