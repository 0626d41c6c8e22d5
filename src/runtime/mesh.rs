//! What travels between shards: batches of archives, moved, never re-serialized.
//!
//! Every ordered pair of shards has one bounded glommio channel. A [`MeshBatch`] carries the
//! events one shard forwards to the owner of their partition and the replies to events the
//! receiver forwarded earlier; each archive's bytes are copied once into the batch and read in
//! place at the other end, where they were validated before (when they entered the process).
//! A batch is built on its source shard and handed, whole, to its destination shard: the only
//! values that change cores on the data path, and they say so by being `Send`.

use std::time::Instant;

use rkyv::util::AlignedVec;

use crate::core::codec::{EncodeError, RecordSerializer, align_up, archive_aligned};
use crate::core::credit::Credit;
use crate::runtime::shard::SinkId;

/// Where one archive sits in a batch, and what it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchEntry {
    offset: u32,
    len: u32,
    /// The connection, on the source shard of the event, that awaits the reply.
    pub sink: SinkId,
    /// Credit the event holds on its source shard, released when its reply is written.
    pub credit: Credit,
    /// When the source shard forwarded the event (a reply carries its event's time back), for
    /// the mesh round-trip histogram. Monotonic time is the same clock on every core.
    pub forwarded_at: Instant,
}

/// Archives packed back to back, each starting 16-byte aligned.
#[derive(Default)]
pub struct ArchiveBatch {
    bytes: AlignedVec,
    entries: Vec<BatchEntry>,
}

impl ArchiveBatch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copies a validated archive into the batch.
    pub fn push_archive(
        &mut self,
        archive: &[u8],
        sink: SinkId,
        credit: Credit,
        forwarded_at: Instant,
    ) {
        let offset = align_up(self.bytes.len());
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(archive);
        self.entries.push(BatchEntry {
            offset: offset as u32,
            len: archive.len() as u32,
            sink,
            credit,
            forwarded_at,
        });
    }

    /// Archives a value straight into the batch.
    pub fn push_value<T>(
        &mut self,
        value: &T,
        sink: SinkId,
        credit: Credit,
        forwarded_at: Instant,
    ) -> Result<(), EncodeError>
    where
        T: for<'b, 'a> rkyv::Serialize<RecordSerializer<'b, 'a>>,
    {
        let (offset, len) = archive_aligned(&mut self.bytes, value)?;
        self.entries.push(BatchEntry {
            offset: offset as u32,
            len: len as u32,
            sink,
            credit,
            forwarded_at,
        });
        Ok(())
    }

    /// Each archive's bytes with its entry, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &BatchEntry)> {
        self.entries.iter().map(|entry| {
            let start = entry.offset as usize;
            (&self.bytes[start..start + entry.len as usize], entry)
        })
    }
}

/// One message on a cross-shard channel.
pub struct MeshBatch {
    /// Events for the receiving shard to apply.
    pub events: ArchiveBatch,
    /// Replies to events the receiving shard forwarded to the sender.
    pub replies: ArchiveBatch,
    /// The sender's connections are done: it forwards no more events (shutdown).
    pub no_more_events: bool,
    /// When the batch was opened: the forwarding time of the events in it, read once per
    /// batch rather than once per event.
    pub opened_at: Instant,
}

impl Default for MeshBatch {
    fn default() -> MeshBatch {
        MeshBatch::new()
    }
}

impl MeshBatch {
    /// An empty batch, opened now.
    pub fn new() -> MeshBatch {
        MeshBatch {
            events: ArchiveBatch::default(),
            replies: ArchiveBatch::default(),
            no_more_events: false,
            opened_at: Instant::now(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.replies.is_empty() && !self.no_more_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::codec::access_record;
    use crate::core::message::{ArchivedReply, Outcome, Reply};

    #[test]
    fn archives_stay_aligned_and_keep_their_entries() {
        let mut batch = ArchiveBatch::default();
        let sink = SinkId::new(3, 7);
        let now = Instant::now();
        batch.push_archive(&[1, 2, 3], sink, Credit::new(1, 3), now);
        let reply = Reply {
            client_seq: 5,
            client_ts: 6,
            outcome: Outcome::Busy,
        };
        batch
            .push_value(&reply, sink, Credit::new(1, 40), now)
            .unwrap();
        let items: Vec<_> = batch.iter().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0, &[1, 2, 3]);
        assert_eq!(items[1].1.credit, Credit::new(1, 40));
        assert_eq!(items[1].1.forwarded_at, now);
        for (bytes, entry) in &items {
            assert_eq!(bytes.as_ptr() as usize % 16, 0);
            assert_eq!(entry.sink, sink);
        }
        let archived = access_record::<ArchivedReply>(1, items[1].0).unwrap();
        assert_eq!(archived.client_seq, 5);
    }
}
