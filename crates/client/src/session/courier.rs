//! Courier bundles: what is waiting for a channel's other members, carried on a
//! file when no relay can be reached or trusted, and delivered on import as if a
//! relay had delivered it. Both directions work without the network.

use std::collections::HashMap;

use backchannel_core::courier::{open_bundle, seal_bundle, Bundle, BundleEntry};
use backchannel_core::envelope::Envelope;
use backchannel_core::mailbox::MailboxAddress;
use rand_core::OsRng;

use super::{random_id, Role, Session, Via};
use crate::ClientError;

/// Bundle ids remembered, to say so when a bundle is imported again.
const IMPORTED_BUNDLES: usize = 1024;

/// What an import delivered.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// The bundle had been imported here before (its messages were not shown again).
    pub again: bool,
    /// Envelopes addressed to this member.
    pub for_us: usize,
    /// New messages and events, per channel.
    pub new: Vec<(String, usize)>,
}

impl Session {
    /// Seals everything waiting to go to `name`'s other members into one bundle. The
    /// messages stay queued for the relay too: each member is shown each message once,
    /// however many ways it arrives. Returns the bundle and how many envelopes it holds.
    pub fn courier_export(&mut self, name: &str) -> Result<(Vec<u8>, usize), ClientError> {
        self.active(name)?;
        // Messages written while no relay answered are encrypted now, in the newest
        // epoch this member knows.
        self.seal_unsent()?;
        let group = self.load_group(name)?;
        let recipients: Vec<MailboxAddress> = self.others(&group);
        if recipients.is_empty() {
            return Err(ClientError::Usage(format!(
                "\"{name}\" has no other members to carry messages to"
            )));
        }
        let mut entries = Vec::new();
        for item in &self.state.outbox.sealed {
            if !recipients.contains(&item.to) {
                continue;
            }
            let to = item.to.send.digest();
            for e in &item.envelopes {
                if let Ok(envelope) = Envelope::from_bytes(e) {
                    entries.push(BundleEntry { to, envelope });
                }
            }
        }
        if entries.is_empty() {
            return Err(ClientError::Usage(format!(
                "nothing is waiting to be sent in \"{name}\": everything has reached the relay; no bundle was written"
            )));
        }
        let bundle = Bundle {
            id: random_id(),
            created_at: self.now_s(),
            entries,
        };
        let n = bundle.entries.len();
        let file = seal_bundle(&bundle, &recipients, &mut OsRng).map_err(ClientError::protocol)?;
        Ok((file, n))
    }

    /// Delivers the envelopes of a bundle that are addressed to this member's channels.
    /// A bundle that was modified is refused as a whole, before anything is delivered.
    pub fn courier_import(&mut self, file: &[u8]) -> Result<ImportReport, ClientError> {
        let boxes: Vec<_> = self
            .mailboxes()
            .into_iter()
            .filter(|(_, r)| matches!(r, Role::Channel(_)))
            .collect();
        let addresses: Vec<MailboxAddress> = boxes.iter().map(|(k, _)| k.address.clone()).collect();
        let (bundle, _) = open_bundle(file, &addresses).map_err(ClientError::Courier)?;
        let mut report = ImportReport {
            again: self.state.courier.imported.contains(&bundle.id),
            ..ImportReport::default()
        };
        let by_digest: HashMap<[u8; 32], usize> = boxes
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.address.send.digest(), i))
            .collect();
        let before: HashMap<String, u64> = self
            .state
            .channels
            .iter()
            .map(|(n, c)| (n.clone(), c.history.end()))
            .collect();
        for entry in &bundle.entries {
            let Some(&i) = by_digest.get(&entry.to) else {
                continue;
            };
            report.for_us += 1;
            let (keys, role) = boxes[i].clone();
            self.receive(&keys, &role, &entry.envelope, Via::Courier);
        }
        self.retry_deferred();
        // Counted before lifetimes apply: a message that disappears at once still arrived.
        for (n, c) in &self.state.channels {
            let was = before.get(n).copied().unwrap_or(0);
            if c.history.end() > was {
                report.new.push((n.clone(), (c.history.end() - was) as usize));
            }
        }
        self.apply_lifecycle();
        if !report.again {
            if self.state.courier.imported.len() >= IMPORTED_BUNDLES {
                self.state.courier.imported.pop_front();
            }
            self.state.courier.imported.push_back(bundle.id);
        }
        self.save();
        Ok(report)
    }
}
