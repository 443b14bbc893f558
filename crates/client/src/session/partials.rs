//! Payloads whose chunks are still arriving. Each chunk is sealed beside the vault (one
//! file per chunk, in a folder per payload); the vault keeps only which chunks are in
//! ([`PartialPayload`]). Whoever holds a mailbox's keys (a member, an ex-member for the
//! days its old mailbox is read, anyone with a drop box's address) can send chunks of
//! payloads it never finishes, so what is held is bounded three ways: per mailbox
//! (the `bound` the caller gives), in all ([`PARTIAL_BYTES`], [`MAX_PARTIALS`]), and the
//! payloads dropped to make room are taken from the mailbox that holds the most.

use backchannel_core::envelope::{Chunk, Reassembled};

use super::Blobs;
use super::Session;
use crate::state::{random_folder, PartialPayload};

/// The most bytes of half-assembled payloads a home keeps, sealed beside the vault.
pub const PARTIAL_BYTES: u64 = 64 * 1024 * 1024;

/// The most half-assembled payloads a home keeps (each costs the vault its chunk map).
pub const MAX_PARTIALS: usize = 256;

/// The most half-assembled payloads one mailbox keeps.
pub const MAILBOX_PARTIALS: usize = backchannel_core::envelope::MAX_PARTIALS;

/// What became of a chunk.
pub(crate) enum Assembled {
    /// The payload's last chunk: here it is.
    Whole(Reassembled),
    /// Kept; more chunks must come.
    Waiting,
    /// The payload is larger than the mailbox takes.
    TooLarge,
    /// The chunk contradicts the payload's earlier chunks, or the payload read back is damaged.
    Malformed,
}

impl Session {
    /// Adds a chunk that arrived in `mailbox`, which takes payloads of at most `bound` bytes
    /// and holds at most that many bytes of unfinished ones.
    pub(crate) fn assemble(&mut self, mailbox: [u8; 32], chunk: Chunk, bound: usize) -> Assembled {
        if chunk.total_len as usize > bound {
            return Assembled::TooLarge;
        }
        if chunk.count == 1 {
            return Assembled::Whole(Reassembled {
                kind: chunk.kind,
                message_id: chunk.message_id,
                payload: chunk.data,
            });
        }
        let id = chunk.message_id;
        let at = self.partial_index(mailbox, id);
        if let Some(p) = at.and_then(|i| self.state.inbox.partials.get(i)) {
            if p.kind != chunk.kind || p.count != chunk.count || p.total_len != chunk.total_len {
                return Assembled::Malformed;
            }
            if has(&p.have, chunk.index) {
                return Assembled::Waiting;
            }
        }
        self.make_room(mailbox, id, chunk.data.len() as u64, bound as u64, at.is_none());
        let i = match self.partial_index(mailbox, id) {
            Some(i) => i,
            None => {
                self.state.inbox.partials.push(PartialPayload {
                    mailbox,
                    message_id: id,
                    kind: chunk.kind,
                    count: chunk.count,
                    total_len: chunk.total_len,
                    folder: random_folder(),
                    have: vec![0; usize::from(chunk.count).div_ceil(8)],
                    bytes: 0,
                });
                self.state.inbox.partials.len() - 1
            }
        };
        let Some(p) = self.state.inbox.partials.get_mut(i) else {
            return Assembled::Malformed;
        };
        // Kept in memory until the next save seals it (most payloads complete within the
        // batch that brought their first chunk, and are never written).
        let data_len = chunk.data.len();
        self.unsealed
            .entry(p.folder.clone())
            .or_default()
            .insert(chunk.index, chunk.data);
        if let Some(b) = p.have.get_mut(usize::from(chunk.index / 8)) {
            *b |= 1 << (chunk.index % 8);
        }
        p.bytes = p.bytes.saturating_add(data_len as u32);
        // Each chunk's length is fixed by its index (`decode_chunk`) and a chunk is counted
        // once: the payload is whole when its bytes are all in.
        if p.bytes != p.total_len {
            return Assembled::Waiting;
        }
        let p = self.state.inbox.partials.swap_remove(i);
        let mut held = self.unsealed.remove(&p.folder).unwrap_or_default();
        let mut payload = Vec::with_capacity(p.total_len as usize);
        for c in 0..p.count {
            let chunk = match held.remove(&c) {
                Some(d) => Ok(zeroize::Zeroizing::new(d)),
                None => self.blobs.read(&p.folder, &c.to_string()),
            };
            match chunk {
                Ok(d) => payload.extend_from_slice(&d),
                Err(_) => {
                    self.blobs.remove(&p.folder);
                    return Assembled::Malformed;
                }
            }
        }
        self.blobs.remove(&p.folder);
        if payload.len() != p.total_len as usize {
            return Assembled::Malformed;
        }
        Assembled::Whole(Reassembled {
            kind: p.kind,
            message_id: p.message_id,
            payload,
        })
    }

    fn partial_index(&self, mailbox: [u8; 32], id: [u8; 16]) -> Option<usize> {
        self.state
            .inbox
            .partials
            .iter()
            .position(|p| p.mailbox == mailbox && p.message_id == id)
    }

    /// Drops other unfinished payloads until `adding` more bytes (and, if `new`, one more
    /// payload) fit in `mailbox`'s bounds (`bound` bytes, [`MAILBOX_PARTIALS`] payloads) and
    /// in the home's. Past the mailbox's bounds, one of its own goes; past the home's bytes,
    /// one of the mailbox that holds the most bytes; past the home's count, one of the
    /// mailbox that holds the most payloads. So a flood through one mailbox (a drop box
    /// anyone may write to) evicts its own, never a payload arriving in another. Within a
    /// mailbox the smallest id goes first (ids are the sender's choice: a sender can only
    /// choose among its own mailbox's payloads).
    fn make_room(&mut self, mailbox: [u8; 32], keep: [u8; 16], adding: u64, bound: u64, new: bool) {
        let others = |p: &PartialPayload| p.message_id != keep || p.mailbox != mailbox;
        loop {
            let partials = &self.state.inbox.partials;
            let held = |m: [u8; 32]| -> u64 {
                partials
                    .iter()
                    .filter(|p| p.mailbox == m)
                    .map(|p| u64::from(p.bytes))
                    .sum()
            };
            let count = |m: [u8; 32]| partials.iter().filter(|p| p.mailbox == m).count();
            let total: u64 = partials.iter().map(|p| u64::from(p.bytes)).sum();
            let largest = |by: &dyn Fn([u8; 32]) -> u64| {
                partials
                    .iter()
                    .filter(|p| others(p))
                    .map(|p| p.mailbox)
                    .max_by_key(|m| by(*m))
            };
            let from = if held(mailbox) + adding > bound || (new && count(mailbox) >= MAILBOX_PARTIALS) {
                Some(mailbox)
            } else if total + adding > PARTIAL_BYTES {
                largest(&held)
            } else if new && partials.len() >= MAX_PARTIALS {
                largest(&|m| count(m) as u64)
            } else {
                return;
            };
            let victim = partials
                .iter()
                .enumerate()
                .filter(|(_, p)| Some(p.mailbox) == from && others(p))
                .min_by_key(|(_, p)| p.message_id)
                .map(|(i, _)| i);
            let Some(i) = victim else {
                return;
            };
            let p = self.state.inbox.partials.swap_remove(i);
            self.unsealed.remove(&p.folder);
            self.blobs.remove(&p.folder);
        }
    }

    /// Seals the chunks kept in memory beside the vault: before a save, which then counts
    /// them. A payload whose chunk cannot be written (a full disk) is given up, with a
    /// warning, so that the save, and the rest of the batch, still go through.
    pub(crate) fn seal_chunks(&mut self) {
        while let Some((folder, chunks)) = self.unsealed.pop_first() {
            let failed = chunks
                .iter()
                .find_map(|(index, data)| self.blobs.write(&folder, &index.to_string(), data).err());
            if let Some(e) = failed {
                self.state.inbox.partials.retain(|p| p.folder != folder);
                self.blobs.remove(&folder);
                self.tell(
                    None,
                    format!("discarded part of a message that is still arriving: it could not be stored ({e})"),
                );
            }
        }
    }

    /// Forgets the unfinished payloads of a mailbox no longer read.
    pub(crate) fn forget_partials(&mut self, mailbox: [u8; 32]) {
        let (blobs, unsealed) = (&mut self.blobs, &mut self.unsealed);
        self.state.inbox.partials.retain(|p| {
            let gone = p.mailbox == mailbox;
            if gone {
                unsealed.remove(&p.folder);
                blobs.remove(&p.folder);
            }
            !gone
        });
    }

    /// Bytes of unfinished payloads held, in all.
    pub fn partial_bytes(&self) -> u64 {
        self.state.inbox.partials.iter().map(|p| u64::from(p.bytes)).sum()
    }
}

fn has(have: &[u8], index: u16) -> bool {
    have.get(usize::from(index / 8))
        .is_some_and(|b| b & (1 << (index % 8)) != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use backchannel_core::envelope::{PayloadKind, CHUNK_DATA, MAX_PAYLOAD};
    use backchannel_core::relay_address::RelayAddress;

    use super::*;
    use crate::sim::SimBlobs;
    use crate::state::State;

    fn session(blobs: &SimBlobs) -> Session {
        let relay = RelayAddress {
            pin: [1; 32],
            host: "relay.invalid".into(),
            port: 1,
        };
        let state = State::new("bea".into(), [3; 32], relay, Vec::new(), None);
        Session::new(state, Box::new(blobs.clone()), 0).unwrap()
    }

    /// The chunks of a payload of `len` bytes, each byte `id`.
    fn chunks(id: u8, len: usize) -> Vec<Chunk> {
        let count = len.div_ceil(CHUNK_DATA);
        (0..count)
            .map(|i| Chunk {
                kind: PayloadKind::Letter,
                message_id: [id; 16],
                index: i as u16,
                count: count as u16,
                total_len: len as u32,
                data: vec![id; (len - i * CHUNK_DATA).min(CHUNK_DATA)],
            })
            .collect()
    }

    fn whole(a: Assembled) -> Vec<u8> {
        match a {
            Assembled::Whole(w) => w.payload,
            _ => panic!("not whole"),
        }
    }

    /// Unfinished payloads in many mailboxes (drop boxes, invites: 16 MiB each) stay
    /// within the home's bound, in bytes sealed and in payloads noted in the vault, and
    /// the room is taken from the mailbox holding the most: a small payload arriving
    /// slowly in another mailbox survives the flood and completes.
    #[test]
    fn unfinished_payloads_stay_within_the_homes_bounds_and_the_largest_holder_gives_way() {
        let blobs = SimBlobs::default();
        let mut s = session(&blobs);
        let honest = chunks(200, 3 * CHUNK_DATA);
        for c in &honest[..2] {
            assert!(matches!(
                s.assemble([9; 32], c.clone(), MAX_PAYLOAD),
                Assembled::Waiting
            ));
        }
        for mailbox in 0..8u8 {
            let flood = chunks(mailbox, MAX_PAYLOAD);
            for c in &flood[..flood.len() - 1] {
                assert!(matches!(
                    s.assemble([mailbox; 32], c.clone(), MAX_PAYLOAD),
                    Assembled::Waiting
                ));
            }
            // The driver saves after each batch, and then what was dropped is deleted.
            s.blobs.settle();
            assert!(s.partial_bytes() <= PARTIAL_BYTES);
            assert!(blobs.bytes() <= PARTIAL_BYTES);
        }
        let got = whole(s.assemble([9; 32], honest[2].clone(), MAX_PAYLOAD));
        assert_eq!(got, vec![200; 3 * CHUNK_DATA]);

        // In number: a stranger sends the tiny last chunk of 300 payloads to one drop box
        // (a few bytes each, so that mailbox never holds the most bytes), while an honest
        // payload of 300 KiB arrives in a channel mailbox: the flood evicts its own.
        let honest = chunks(201, 75 * CHUNK_DATA);
        for c in &honest[..74] {
            s.assemble([8; 32], c.clone(), 4 << 20);
        }
        for n in 0..300u16 {
            let mut c = chunks(0, CHUNK_DATA + 1).pop().unwrap();
            c.message_id[..2].copy_from_slice(&n.to_be_bytes());
            assert!(matches!(s.assemble([6; 32], c, MAX_PAYLOAD), Assembled::Waiting));
            assert!(s.state.inbox.partials.len() <= MAX_PARTIALS);
            assert!(s.state.inbox.partials.iter().filter(|p| p.mailbox == [6; 32]).count() <= MAILBOX_PARTIALS);
        }
        let got = whole(s.assemble([8; 32], honest[74].clone(), 4 << 20));
        assert_eq!(got, vec![201; 75 * CHUNK_DATA]);
        // And many mailboxes with one payload each stay within the home's count.
        for mailbox in 0..300u16 {
            let mut id = [0; 32];
            id[..2].copy_from_slice(&mailbox.to_be_bytes());
            id[31] = 1;
            let c = chunks(7, 2 * CHUNK_DATA);
            assert!(matches!(s.assemble(id, c[0].clone(), MAX_PAYLOAD), Assembled::Waiting));
            assert!(s.state.inbox.partials.len() <= MAX_PARTIALS);
        }
        s.blobs.settle();
        assert!(blobs.bytes() <= PARTIAL_BYTES);
    }

    /// Chunks are sealed beside the vault when it is saved, not as they arrive: a payload
    /// that completes between two saves is never written.
    #[test]
    fn chunks_are_sealed_by_the_save_that_counts_them() {
        let blobs = SimBlobs::default();
        let mut s = session(&blobs);
        let c = chunks(9, 4 * CHUNK_DATA);
        for c in &c[..3] {
            s.assemble([1; 32], c.clone(), MAX_PAYLOAD);
        }
        assert_eq!(blobs.bytes(), 0);
        let saved = s.encode().unwrap();
        assert!(blobs.bytes() >= 3 * CHUNK_DATA as u64);
        let mut again = Session::decode(&saved, Box::new(blobs.clone()), 0).unwrap();
        assert_eq!(
            whole(again.assemble([1; 32], c[3].clone(), MAX_PAYLOAD)),
            vec![9; 4 * CHUNK_DATA]
        );
        // A payload whole within one batch touches no file.
        let blobs = SimBlobs::default();
        let mut s = session(&blobs);
        for c in &c[..3] {
            s.assemble([1; 32], c.clone(), MAX_PAYLOAD);
        }
        assert_eq!(
            whole(s.assemble([1; 32], c[3].clone(), MAX_PAYLOAD)),
            vec![9; 4 * CHUNK_DATA]
        );
        s.encode().unwrap();
        assert_eq!(blobs.bytes(), 0);
    }

    /// A payload's chunks are deleted only after the vault that forgets them is saved: a
    /// crash between its last chunk and that save, then the relay delivering that chunk
    /// again (it was not acknowledged), completes it again.
    #[test]
    fn a_crash_after_the_last_chunk_before_the_save_loses_nothing() {
        let blobs = SimBlobs::default();
        let mut s = session(&blobs);
        let c = chunks(42, 3 * CHUNK_DATA);
        for c in &c[..2] {
            s.assemble([1; 32], c.clone(), MAX_PAYLOAD);
        }
        let saved = s.encode().unwrap();
        s.blobs.settle();
        assert_eq!(
            whole(s.assemble([1; 32], c[2].clone(), MAX_PAYLOAD)),
            vec![42; 3 * CHUNK_DATA]
        );
        // The crash: the process restarts from the saved state.
        let mut s = Session::decode(&saved, Box::new(blobs.clone()), 0).unwrap();
        assert_eq!(
            whole(s.assemble([1; 32], c[2].clone(), MAX_PAYLOAD)),
            vec![42; 3 * CHUNK_DATA]
        );
        s.blobs.settle();
        assert_eq!(blobs.bytes(), 0);
    }

    #[test]
    fn a_mailbox_holds_at_most_its_bound_and_refuses_larger_payloads() {
        let blobs = SimBlobs::default();
        let mut s = session(&blobs);
        let bound = 64 * CHUNK_DATA;
        assert!(matches!(
            s.assemble([1; 32], chunks(1, bound + 1)[0].clone(), bound),
            Assembled::TooLarge
        ));
        for id in 0..10u8 {
            let c = chunks(id, bound);
            for c in &c[..c.len() - 1] {
                s.assemble([1; 32], c.clone(), bound);
            }
            assert!(s.partial_bytes() <= bound as u64);
        }
        // A chunk again is not counted twice; one that contradicts its payload is refused.
        let c = chunks(50, 4 * CHUNK_DATA);
        s.assemble([2; 32], c[0].clone(), bound);
        let before = s.partial_bytes();
        assert!(matches!(s.assemble([2; 32], c[0].clone(), bound), Assembled::Waiting));
        assert_eq!(s.partial_bytes(), before);
        let mut odd = c[1].clone();
        odd.total_len += 1;
        assert!(matches!(s.assemble([2; 32], odd, bound), Assembled::Malformed));
        for c in &c[1..3] {
            s.assemble([2; 32], c.clone(), bound);
        }
        assert_eq!(
            whole(s.assemble([2; 32], c[3].clone(), bound)),
            vec![50; 4 * CHUNK_DATA]
        );
        // A mailbox no longer read takes its chunks with it (deleted after the next save).
        s.encode().unwrap();
        s.forget_partials([1; 32]);
        assert_eq!(s.partial_bytes(), 0);
        assert!(blobs.bytes() > 0);
        s.blobs.settle();
        assert_eq!(blobs.bytes(), 0);
    }
}
