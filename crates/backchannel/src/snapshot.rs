//! What the terminal UI shows of a home, worked out where the engine is (the daemon, or the
//! UI's own serving of the home) and sent on the daemon's socket (`ipc::Look::Snapshot`):
//! the channel list with unread counts and marks, the chosen channel's conversation from the
//! position the UI has shown up to, the status line's facts, and the warnings of background
//! syncs. Plain data and one function over the engine: `daemon` and `ipc` use it without
//! knowing the UI, and `ui` draws it.

use std::collections::HashMap;
use std::ops::Range;

use backchannel_client::engine::{MessageView, Warning};
use backchannel_client::state::{ChannelStatus, EventKind};
use backchannel_client::Engine;
use serde::{Deserialize, Serialize};

/// A channel as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRow {
    /// Local name (from the user, or from the invite: escaped when drawn).
    pub name: String,
    /// Messages not read yet.
    pub unread: usize,
    /// Some member is not verified.
    pub unverified: bool,
    /// Closed, left or removed: nothing more will come.
    pub ended: bool,
    /// It closes on its own at a set time (`channel new --expires`).
    pub expiring: bool,
}

/// One entry of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A message.
    Message {
        /// `hh:mm`, the sender's clock.
        time: String,
        /// The sender's name (from the network).
        from: String,
        /// The sender is verified (never for one that is not).
        verified: bool,
        /// The text (from the network).
        text: String,
    },
    /// What a command typed in the UI answered (shown here only, never stored).
    Note(String),
    /// Something gone wrong that the user must see: a command that failed (a wrong code
    /// tried, a message held because the channel is behind), a background sync's warning.
    /// Shown here only, loudly.
    Alert(String),
    /// An event: a join, a removal, a key change, a refused or missing message.
    Event {
        /// `hh:mm`.
        time: String,
        /// What happened (from the network in part).
        text: String,
        /// Shown loudly: something was refused, is missing, or was exposed.
        loud: bool,
    },
}

/// What the UI asks for.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// The channel whose conversation to send; the most recent one (by its newest message)
    /// when `None` or not listed.
    pub channel: Option<String>,
    /// The positions in that channel's history that the UI shows: what follows
    /// `shown.end` is sent.
    pub shown: Range<u64>,
    /// Send the whole conversation, whatever is shown.
    pub whole: bool,
}

/// The answer.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// How many changes the engine has seen (`ipc::Look::Changes` waits for the next).
    pub generation: u64,
    /// Every channel, in the engine's order (by name).
    pub channels: Vec<ChannelRow>,
    /// The channel the conversation below is of.
    pub channel: Option<String>,
    /// Each of its members' fingerprint, and whether they are verified.
    pub verified: Vec<(String, bool)>,
    /// Its entries from `from` on (all of them when `whole`).
    pub entries: Vec<Entry>,
    /// Where `entries` start: the query's `shown.end`, or 0 when `whole`.
    pub from: u64,
    /// The positions its history holds now.
    pub span: Range<u64>,
    /// `entries` are the whole conversation: what was shown is replaced.
    pub whole: bool,
    /// Things waiting to go out.
    pub queued: usize,
    /// Cover traffic is on.
    pub cover: bool,
    /// The last background sync reached the relays (`None` before the first).
    pub reachable: Option<bool>,
    /// Background syncs' warnings since the last caller took them: (channel, text).
    pub warnings: Vec<(Option<String>, String)>,
}

/// What the engine's side keeps between snapshots: each channel's "unverified members" mark,
/// worked out again only after a change (it loads each channel's group).
#[derive(Debug, Default)]
pub struct Marks {
    generation: Option<u64>,
    unverified: HashMap<String, bool>,
}

/// The engine's facts that are not in the engine: they live with the process serving it.
#[derive(Debug)]
pub struct Facts {
    /// See [`Snapshot::generation`].
    pub generation: u64,
    /// See [`Snapshot::cover`].
    pub cover: bool,
    /// See [`Snapshot::reachable`].
    pub reachable: Option<bool>,
    /// See [`Snapshot::warnings`].
    pub warnings: Vec<Warning>,
}

/// Answers `query` from `engine`. The channel shown is marked read when it had unread
/// messages (the UI shows them all).
pub fn take(engine: &mut Engine, query: &Query, marks: &mut Marks, facts: Facts) -> Snapshot {
    let recheck = marks.generation != Some(facts.generation);
    marks.generation = Some(facts.generation);
    let channels = engine.channels();
    // The channel asked for, else the most recent one.
    let shown = channels
        .iter()
        .find(|c| Some(&c.name) == query.channel.as_ref())
        .or_else(|| channels.iter().max_by_key(|c| c.last_at));
    let channel = shown.map(|c| c.name.clone());
    let unread = shown.map_or(0, |c| c.unread);
    // Messages that disappear leave the history from anywhere in it (its positions move):
    // such a channel is sent whole each time, so that the screen keeps nothing the device
    // no longer does.
    let disappearing = shown.is_some_and(|c| c.disappear_after > 0);
    let rows: Vec<ChannelRow> = channels
        .iter()
        .map(|c| ChannelRow {
            unverified: match marks.unverified.get(&c.name) {
                Some(&u) if !recheck => u,
                _ => engine
                    .members(&c.name)
                    .is_ok_and(|m| m.iter().any(|m| !m.you && !m.verified)),
            },
            ended: c.status != ChannelStatus::Active,
            expiring: c.expires_at > 0,
            name: c.name.clone(),
            unread: c.unread,
        })
        .collect();
    marks.unverified = rows.iter().map(|r| (r.name.clone(), r.unverified)).collect();
    let mut snapshot = Snapshot {
        generation: facts.generation,
        channels: rows,
        channel: channel.clone(),
        queued: engine.queued(),
        cover: facts.cover,
        reachable: facts.reachable,
        warnings: facts.warnings.into_iter().map(|w| (w.channel, w.text)).collect(),
        ..Snapshot::default()
    };
    let Some(name) = channel else {
        return snapshot;
    };
    snapshot.verified = engine
        .members(&name)
        .map(|m| m.into_iter().map(|m| (m.fingerprint.to_string(), m.verified)).collect())
        .unwrap_or_default();
    let mut whole = query.whole || disappearing || query.channel.as_ref() != Some(&name);
    let mut read = engine.history_from(&name, if whole { 0 } else { query.shown.end });
    if let Ok((_, span)) = &read {
        if !whole && span.start > query.shown.start && query.shown.end > 0 {
            // The oldest entries went (the history's cap): sent again whole.
            whole = true;
            read = engine.history_from(&name, 0);
        }
    }
    if let Ok((views, span)) = read {
        snapshot.entries = views.iter().map(entry).collect();
        snapshot.from = if whole { 0 } else { query.shown.end };
        snapshot.span = span;
        snapshot.whole = whole;
    }
    if unread > 0 {
        let _ = engine.read(&name, false);
    }
    snapshot
}

/// A message or event as the conversation shows it.
fn entry(m: &MessageView) -> Entry {
    let msg = &m.message;
    let secs = msg.sent_at / 1000;
    let time = format!("{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60);
    match msg.event {
        None => Entry::Message {
            time,
            from: msg.from.clone(),
            verified: m.verified,
            text: msg.text.clone(),
        },
        Some(kind) => Entry::Event {
            time,
            text: msg.text.clone(),
            loud: matches!(kind, EventKind::Rejected | EventKind::Missing | EventKind::Exposed),
        },
    }
}
