//! Who waits for a delivery, by mailbox: a long-poll (`Fetch` with a wait) is woken by a
//! delivery into one of the mailboxes its connection has open, and by no other.
//!
//! Until this, every delivery went to every waiting long-poll through one broadcast
//! channel, and each woke, looked at the mailbox id and went back to sleep: with N idle
//! long-polls (a daemon holds one per mailbox it reads), every envelope cost N wake-ups,
//! and anyone could make the relay do that work N times per envelope they sent. Now a
//! delivery looks up its mailbox's waiters in a map and wakes those only.
//!
//! A long-poll registers before it first looks at the store, so a delivery that lands
//! between its look and its wait still wakes it ([`Notify::notify_one`] keeps the wake-up
//! for a wait that has not begun). Deliveries made by other relays of a cluster come as
//! the store's notices ([`Waiters::relay_notices`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use backchannel_core::mailbox::MailboxId;
use tokio::sync::{broadcast, Notify};

/// The long-polls waiting, by the mailboxes they wait on.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_mailbox: Mutex<HashMap<MailboxId, Vec<Arc<Notify>>>>,
}

/// A long-poll's place among the [`Waiters`] until dropped.
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    ids: Vec<MailboxId>,
    notify: Arc<Notify>,
}

impl Waiters {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<MailboxId, Vec<Arc<Notify>>>> {
        // A poisoned lock still guards a usable map: each change leaves it whole.
        self.by_mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a long-poll on `ids`, until the returned [`Waiting`] is dropped.
    pub(crate) fn wait_for(&self, ids: &[MailboxId]) -> Waiting<'_> {
        let notify = Arc::new(Notify::new());
        let mut map = self.map();
        for id in ids {
            map.entry(*id).or_default().push(notify.clone());
        }
        Waiting {
            waiters: self,
            ids: ids.to_vec(),
            notify,
        }
    }

    /// Wakes the long-polls waiting on `id`.
    pub(crate) fn wake(&self, id: &MailboxId) {
        if let Some(list) = self.map().get(id) {
            for n in list {
                n.notify_one();
            }
        }
    }

    /// Wakes every long-poll (notices were lost: each looks at its mailboxes again).
    fn wake_all(&self) {
        for n in self.map().values().flatten() {
            n.notify_one();
        }
    }

    /// How many registrations are held (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.map().values().map(Vec::len).sum()
    }

    /// Wakes, for each notice of a delivery made by another relay of the cluster, the
    /// long-polls waiting on its mailbox; runs until the notices' sender is gone.
    pub(crate) async fn relay_notices(self: Arc<Self>, mut notices: broadcast::Receiver<MailboxId>) {
        loop {
            match notices.recv().await {
                Ok(id) => self.wake(&id),
                Err(broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

impl Waiting<'_> {
    /// Until a delivery into one of the mailboxes waited on (at once if one came since the
    /// registration or the last wait).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map();
        for id in &self.ids {
            if let Some(list) = map.get_mut(id) {
                list.retain(|n| !Arc::ptr_eq(n, &self.notify));
                if list.is_empty() {
                    map.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn id(b: u8) -> MailboxId {
        MailboxId([b; 32])
    }

    async fn woken(w: &Waiting<'_>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), w.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_delivery_wakes_the_long_polls_of_its_mailbox_only_and_a_wake_before_the_wait_is_kept() {
        let waiters = Waiters::default();
        let on_a = waiters.wait_for(&[id(1)]);
        let on_b_and_c = waiters.wait_for(&[id(2), id(3)]);
        let also_on_a = waiters.wait_for(&[id(1)]);
        // Woken before it waits (between its look at the store and its wait): kept.
        waiters.wake(&id(1));
        assert!(woken(&on_a).await);
        assert!(woken(&also_on_a).await);
        assert!(!woken(&on_b_and_c).await, "a delivery into another mailbox woke it");
        waiters.wake(&id(3));
        assert!(woken(&on_b_and_c).await);
        assert!(!woken(&on_a).await);
        // A mailbox nobody waits on: nothing to wake, nothing kept.
        waiters.wake(&id(9));
        assert_eq!(waiters.held(), 4);
        drop((on_a, on_b_and_c, also_on_a));
        assert_eq!(waiters.held(), 0);
        assert!(waiters.map().is_empty());
    }

    #[tokio::test]
    async fn notices_from_other_relays_wake_their_mailboxes_and_lost_notices_wake_all() {
        let waiters = Arc::new(Waiters::default());
        let (tx, rx) = broadcast::channel(2);
        let on_a = waiters.wait_for(&[id(1)]);
        let on_b = waiters.wait_for(&[id(2)]);
        // More notices than the channel holds before the task reads them: lagged.
        for _ in 0..4 {
            tx.send(id(7)).unwrap();
        }
        let task = tokio::spawn(waiters.clone().relay_notices(rx));
        assert!(woken(&on_a).await && woken(&on_b).await, "lost notices woke nobody");
        tx.send(id(2)).unwrap();
        assert!(woken(&on_b).await);
        assert!(!woken(&on_a).await);
        drop(tx);
        task.await.unwrap();
    }
}
