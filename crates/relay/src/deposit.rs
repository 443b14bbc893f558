//! Commits deposited on a connection for the claim that carries them (protocol 4;
//! docs/protocol.md, "Claims"). A commit is larger than a frame, so it comes in parts
//! ([`Request::Deposit`](backchannel_core::frame::Request::Deposit)) before the
//! [`Request::ClaimCommit`](backchannel_core::frame::Request::ClaimCommit) that names its
//! digest; the relay keeps the parts in memory for that connection only, and the store
//! writes the commit with the grant. A deposit that is not claimed within
//! [`DEPOSIT_LAPSE`] lapses, and a claim without its whole deposit is refused: a claim is
//! never granted without its commit.
//!
//! Memory: at most one deposit per connection ([`MAX_COMMIT_PARTS`] ×
//! [`COMMIT_PART`] bytes), at most [`DEPOSIT_PER_ADDRESS`] for the connections of one
//! address (an IPv4 address or an IPv6 /64), and at most [`DEPOSIT_BUDGET`] bytes for all
//! connections together; past either a deposit is refused `RelayFull` until others are
//! claimed or dropped. So one party needs 16 addresses to hold the whole budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backchannel_core::frame::{commit_digest, ErrorCode, COMMIT_PART, DEPOSIT_LAPSE, MAX_COMMIT_PARTS};

/// Bytes of deposits the relay keeps for all its connections together.
pub const DEPOSIT_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes of deposits the relay keeps for the connections of one address.
pub const DEPOSIT_PER_ADDRESS: usize = 4 * 1024 * 1024;

/// The bytes of deposits in memory, relay-wide against [`DEPOSIT_BUDGET`] and per address
/// against [`DEPOSIT_PER_ADDRESS`].
#[derive(Debug, Clone, Default)]
pub struct DepositBudget {
    used: Arc<AtomicUsize>,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl DepositBudget {
    /// Takes `n` bytes for `address`, if both bounds allow.
    fn take(&self, address: Option<IpAddr>, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > DEPOSIT_BUDGET {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        if let Some(a) = address {
            let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let mine = map.entry(a).or_insert(0);
            if mine.saturating_add(n) > DEPOSIT_PER_ADDRESS {
                if *mine == 0 {
                    map.remove(&a);
                }
                self.used.fetch_sub(n, Ordering::Relaxed);
                return false;
            }
            *mine += n;
        }
        true
    }

    /// Gives back `n` bytes of `address`.
    fn give(&self, address: Option<IpAddr>, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
        if let Some(a) = address {
            let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mine) = map.get_mut(&a) {
                *mine = mine.saturating_sub(n);
                if *mine == 0 {
                    map.remove(&a);
                }
            }
        }
    }
}

/// One connection's deposit, if it is making one.
#[derive(Debug, Default)]
pub struct DepositSlot {
    current: Option<Deposit>,
    /// The connection's address (its key in the per-address bound); `None` counts only
    /// against the relay-wide budget.
    address: Option<IpAddr>,
}

#[derive(Debug)]
struct Deposit {
    total: u16,
    parts: u16,
    bytes: Vec<u8>,
    started: Instant,
    budget: DepositBudget,
    address: Option<IpAddr>,
}

impl Drop for Deposit {
    fn drop(&mut self) {
        self.budget.give(self.address, self.bytes.len());
    }
}

impl DepositSlot {
    /// The slot of a connection from `address` (as the relay's per-address limits key it).
    pub fn for_address(address: IpAddr) -> Self {
        Self {
            current: None,
            address: Some(address),
        }
    }

    /// Takes part `part` of `total`: part 0 starts a new deposit (the one before is
    /// dropped), any other must follow the last in order, within [`DEPOSIT_LAPSE`] of the
    /// first. A part out of order ends the deposit (`NoDeposit`); one past the relay's
    /// budget too (`RelayFull`).
    pub fn push(
        &mut self,
        budget: &DepositBudget,
        part: u16,
        total: u16,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), ErrorCode> {
        if total == 0 || total > MAX_COMMIT_PARTS || part >= total || bytes.is_empty() || bytes.len() > COMMIT_PART {
            self.current = None;
            return Err(ErrorCode::Malformed);
        }
        if part == 0 {
            self.current = Some(Deposit {
                total,
                parts: 0,
                bytes: Vec::new(),
                started: now,
                budget: budget.clone(),
                address: self.address,
            });
        }
        let Some(d) = self
            .current
            .as_mut()
            .filter(|d| d.total == total && d.parts == part && !lapsed(d.started, now))
        else {
            self.current = None;
            return Err(ErrorCode::NoDeposit);
        };
        if !budget.take(self.address, bytes.len()) {
            self.current = None;
            return Err(ErrorCode::RelayFull);
        }
        d.bytes.extend_from_slice(bytes);
        d.parts += 1;
        Ok(())
    }

    /// The whole deposit whose digest is `digest`, taken for its claim; anything else
    /// (none, incomplete, lapsed, another commit) is `NoDeposit`, and ends the deposit.
    pub fn take(&mut self, digest: &[u8; 32], now: Instant) -> Result<Arc<[u8]>, ErrorCode> {
        match self.current.take() {
            Some(d) if d.parts == d.total && !lapsed(d.started, now) && commit_digest(&d.bytes) == *digest => {
                Ok(Arc::from(&d.bytes[..]))
            }
            _ => Err(ErrorCode::NoDeposit),
        }
    }
}

fn lapsed(started: Instant, now: Instant) -> bool {
    now.saturating_duration_since(started) > DEPOSIT_LAPSE
}

/// Part `part` of a held commit, as a fetch answers it: `(total, bytes)`, or `None` past
/// the last part.
pub fn commit_part(commit: &[u8], part: u16) -> Option<(u16, Vec<u8>)> {
    let total = commit.len().div_ceil(COMMIT_PART).max(1);
    let total = u16::try_from(total).ok().filter(|t| *t <= MAX_COMMIT_PARTS)?;
    let start = usize::from(part).checked_mul(COMMIT_PART)?;
    let bytes = commit.get(start..commit.len().min(start + COMMIT_PART))?;
    (!bytes.is_empty()).then(|| (total, bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    /// A deposit in order is taken whole by the claim that names its digest; out of order,
    /// lapsed, or named by another digest, it is not; the budget is given back.
    #[test]
    fn a_deposit_is_taken_whole_in_order_and_within_its_lapse() {
        let budget = DepositBudget::default();
        let commit: Vec<u8> = (0..COMMIT_PART * 2 + 5).map(|i| i as u8).collect();
        let parts: Vec<&[u8]> = commit.chunks(COMMIT_PART).collect();
        let t0 = Instant::now();
        let mut slot = DepositSlot::default();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(slot.push(&budget, i as u16, 3, p, t0), Ok(()));
        }
        assert_eq!(budget.used.load(Ordering::Relaxed), commit.len());
        assert_eq!(slot.take(&[0; 32], t0), Err(ErrorCode::NoDeposit), "another digest");
        assert_eq!(budget.used.load(Ordering::Relaxed), 0, "the refused deposit is dropped");
        for (i, p) in parts.iter().enumerate() {
            slot.push(&budget, i as u16, 3, p, t0).unwrap();
        }
        assert_eq!(&*slot.take(&commit_digest(&commit), t0).unwrap(), &commit[..]);
        assert_eq!(
            slot.take(&commit_digest(&commit), t0),
            Err(ErrorCode::NoDeposit),
            "taken once"
        );
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);

        // Out of order, incomplete, lapsed.
        assert_eq!(slot.push(&budget, 1, 3, parts[1], t0), Err(ErrorCode::NoDeposit));
        slot.push(&budget, 0, 3, parts[0], t0).unwrap();
        assert_eq!(slot.push(&budget, 2, 3, parts[2], t0), Err(ErrorCode::NoDeposit));
        slot.push(&budget, 0, 3, parts[0], t0).unwrap();
        slot.push(&budget, 1, 3, parts[1], t0).unwrap();
        assert_eq!(slot.take(&commit_digest(&commit), t0), Err(ErrorCode::NoDeposit));
        for (i, p) in parts.iter().enumerate() {
            slot.push(&budget, i as u16, 3, p, t0).unwrap();
        }
        let late = t0 + DEPOSIT_LAPSE + Duration::from_secs(1);
        assert_eq!(slot.take(&commit_digest(&commit), late), Err(ErrorCode::NoDeposit));
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// Makes full deposits on slots from `slot` until a part is refused (which must be
    /// `RelayFull`, and come within `bound` bytes); returns the slots that hold deposits.
    fn fill_until_refused(budget: &DepositBudget, bound: usize, slot: impl Fn() -> DepositSlot) -> Vec<DepositSlot> {
        let part = vec![1u8; COMMIT_PART];
        let t0 = Instant::now();
        let mut slots = Vec::new();
        for _ in 0..=bound / (COMMIT_PART * MAX_COMMIT_PARTS as usize) {
            let mut s = slot();
            for i in 0..MAX_COMMIT_PARTS {
                if let Err(e) = s.push(budget, i, MAX_COMMIT_PARTS, &part, t0) {
                    assert_eq!(e, ErrorCode::RelayFull);
                    assert!(budget.used.load(Ordering::Relaxed) <= bound);
                    return slots;
                }
            }
            slots.push(s);
        }
        unreachable!("no part was refused within {bound} bytes")
    }

    /// Past the relay-wide budget a part is refused and its deposit dropped.
    #[test]
    fn deposits_stay_within_the_relays_budget() {
        let budget = DepositBudget::default();
        let slots = fill_until_refused(&budget, DEPOSIT_BUDGET, DepositSlot::default);
        drop(slots);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// One address holds at most its share of deposits: past it a part is refused, while
    /// another address still deposits; the share comes back when the deposits go.
    #[test]
    fn one_address_holds_at_most_its_share() {
        let budget = DepositBudget::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let slots = fill_until_refused(&budget, DEPOSIT_PER_ADDRESS, || DepositSlot::for_address(a));
        let mut other = DepositSlot::for_address(b);
        assert_eq!(other.push(&budget, 0, 1, &[1u8; 16], Instant::now()), Ok(()));
        drop(slots);
        drop(other);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
        assert!(budget.per_address.lock().unwrap().is_empty());
    }

    #[test]
    fn a_held_commit_is_answered_in_parts() {
        let commit = vec![9u8; COMMIT_PART + 1];
        assert_eq!(
            commit_part(&commit, 0).map(|(t, b)| (t, b.len())),
            Some((2, COMMIT_PART))
        );
        assert_eq!(commit_part(&commit, 1).map(|(t, b)| (t, b.len())), Some((2, 1)));
        assert_eq!(commit_part(&commit, 2), None);
        assert_eq!(commit_part(&commit, u16::MAX), None);
        assert_eq!(commit_part(&[], 0), None);
    }
}
