//! What a sync pass does, and in which order. The session decides the order; the
//! driver performs each step (`Engine::sync`).

/// One step of a sync pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    /// With cover traffic, reconnect any paced link that dropped (the stream must not pause).
    KeepLinks,
    /// Send what the outbox holds.
    Flush,
    /// Claim again the commits staged before a crash, and send them.
    ResumeCommits,
    /// Fetch and read what waits in our mailboxes (saved before each acknowledgement).
    Fetch,
    /// Disappearing messages and expired channels.
    Lifetimes,
    /// Add the joiners whose requests an invite honours.
    Admit,
    /// Commit the proposals waiting (a member's leave).
    CommitProposals,
    /// Seal the messages written earlier, in the newest epoch now known (never to a
    /// member whose removal was waiting at the relay), and send them.
    SealUnsent,
    /// Drop invites used up or expired.
    ExpireInvites,
    /// Delete retired mailboxes whose grace is over, once a fetch came back empty.
    ExpireRetired,
    /// Rotate mailboxes older than a week.
    Rotate,
    /// Delete at their relays the mailboxes queued for deletion.
    DeleteDoomed,
}

/// The steps of a sync pass, in order.
pub const SYNC_STEPS: [SyncStep; 12] = [
    SyncStep::KeepLinks,
    SyncStep::Flush,
    SyncStep::ResumeCommits,
    SyncStep::Fetch,
    SyncStep::Lifetimes,
    SyncStep::Admit,
    SyncStep::CommitProposals,
    SyncStep::SealUnsent,
    SyncStep::ExpireInvites,
    SyncStep::ExpireRetired,
    SyncStep::Rotate,
    SyncStep::DeleteDoomed,
];

#[cfg(test)]
mod tests {
    use super::{SyncStep, SYNC_STEPS};

    fn at(step: SyncStep) -> usize {
        SYNC_STEPS.iter().position(|s| *s == step).unwrap_or(usize::MAX)
    }

    /// The order is what makes a sync safe; these are the reasons, step by step.
    #[test]
    fn the_steps_come_in_the_order_that_keeps_a_channel_consistent() {
        // A commit staged before a crash goes out before anything new is read on top of it.
        assert!(at(SyncStep::ResumeCommits) < at(SyncStep::Fetch));
        // Unsent messages are sealed only after what arrived (and the commits it caused)
        // has moved the channel to its newest epoch.
        assert!(at(SyncStep::Fetch) < at(SyncStep::SealUnsent));
        assert!(at(SyncStep::CommitProposals) < at(SyncStep::SealUnsent));
        // Joiners are admitted after their requests were fetched.
        assert!(at(SyncStep::Fetch) < at(SyncStep::Admit));
        // Mailboxes go last, after anything that may still queue one.
        assert_eq!(SYNC_STEPS.last(), Some(&SyncStep::DeleteDoomed));
        // Each step once.
        for s in SYNC_STEPS {
            assert_eq!(SYNC_STEPS.iter().filter(|t| **t == s).count(), 1, "{s:?}");
        }
    }
}
