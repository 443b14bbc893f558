//! The backchannel client engine: the encrypted local store, the outbox and
//! inbox, relay connections, and every user-facing operation.
//!
//! The engine drives the sans-I/O core: it feeds it bytes from relays and
//! the clock, persists its state in the home directory's vault, and sends
//! what it returns.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod connection;
pub mod engine;
pub mod home;
pub mod letter;
pub mod session;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod sim;
pub mod socks;
pub mod state;
pub mod transport;

use std::path::PathBuf;

pub use connection::{Breakage, ConnectError, RelayConnection};

/// The core's types and limits that the client's API speaks in, so that its users
/// need no other crate.
pub mod core_types {
    pub use backchannel_core::channel::Suite;
    pub use backchannel_core::courier::MAX_FILE_SIZE as MAX_BUNDLE_SIZE;
    pub use backchannel_core::message::is_format_char;
    pub use backchannel_core::relay_address::{RelayAddress, RelayAddressError};
    pub use backchannel_core::vault::KdfParams;
}
pub use engine::Engine;

/// A client operation failed. Every message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No identity in the home directory.
    #[error("no identity in {0}; run `backchannel init --name NAME --relay ADDRESS` first")]
    NotInitialized(PathBuf),
    /// `init` on an existing home.
    #[error("{0} already holds an identity; use another --home to create a second one")]
    AlreadyInitialized(PathBuf),
    /// Another process holds the home.
    #[error("another backchannel process (a daemon, or a command still running) is using {0}; wait for it, or stop the daemon")]
    Busy(PathBuf),
    /// The passphrase does not open the store.
    #[error("the passphrase is wrong (or the local store was modified); try again with the right passphrase")]
    WrongPassphrase,
    /// The local store was written by a newer release.
    #[error("the local store was written by a newer backchannel (format {found}; this one reads up to {known}); upgrade backchannel — nothing was changed")]
    NewerStore {
        /// The version found.
        found: u32,
        /// The newest version this release reads.
        known: u32,
    },
    /// The local store is damaged.
    #[error("the local store is damaged ({0}); restore it from a backup — nothing was changed")]
    Corrupt(#[source] Damage),
    /// A file operation failed.
    #[error("{context} failed: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or folder the user named cannot be used.
    #[error("cannot {doing} {}: {source}", path.display())]
    Path {
        /// What was being done ("read", "save a file in").
        doing: &'static str,
        /// The path the user gave.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No channel with that name.
    #[error("there is no channel called \"{0}\"; `backchannel channels` lists yours")]
    UnknownChannel(String),
    /// The channel exists already.
    #[error("you already have a channel called \"{0}\"; choose another name")]
    ChannelExists(String),
    /// The channel is no longer usable.
    #[error("the channel \"{0}\" is {1}; nothing can be sent to it")]
    ChannelInactive(String, &'static str),
    /// No member matches.
    #[error("no member of \"{0}\" is called \"{1}\"; `backchannel members {0}` lists them")]
    UnknownMember(String, String),
    /// Several members match.
    #[error("several members of \"{0}\" match \"{1}\"; use the fingerprint shown by `backchannel members {0}`")]
    AmbiguousMember(String, String),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// The channel's roles do not allow this member to do that.
    #[error("only an admin of \"{channel}\" may {what}; `backchannel members {channel}` shows the admins")]
    NotAllowed {
        /// The channel.
        channel: String,
        /// What was refused ("remove members").
        what: String,
    },
    /// The invite cannot be used.
    #[error(transparent)]
    Invite(#[from] InviteProblem),
    /// A relay problem.
    #[error(transparent)]
    Relay(#[from] ConnectError),
    /// The message was stored and will be sent later; holds why it was not sent now.
    #[error("the message is queued, not delivered: {0}; the next backchannel command will send it")]
    Queued(#[source] Holdup),
    /// A file transfer stopped before every part was sent; holds how far and why.
    #[error(
        "the file is not completely sent ({percent}% sent so far: {why}); run the same `backchannel send --file` \
         command again to resume"
    )]
    Paused {
        /// How much of the file the relay holds, in percent.
        percent: u64,
        /// Why the transfer stopped.
        #[source]
        why: Holdup,
    },
    /// A courier bundle could not be used; the error says why and what to do.
    #[error(transparent)]
    Courier(backchannel_core::courier::CourierError),
    /// The channel's sequencer refused this device's claim as a wrong capability: the
    /// relay gives that one answer for a claim key that does not open the lock (this
    /// device applied a change the sequencer never granted: a split channel) and for a
    /// sequencer that is gone (the channel was closed), so the message names both.
    #[error(
        "the relay refused this device's change to \"{0}\": either the channel was closed, or this \
         device's copy of it has split from the other members' (it applied a change the relay never \
         granted); run `backchannel sync`, then compare `backchannel verify {0}` with the others"
    )]
    Split(String),
    /// Another member kept committing first.
    #[error("other members kept changing \"{0}\" at the same moment; try again")]
    Contended(String),
    /// The commit that won the channel's epoch, held at its sequencer, is one this device
    /// refuses (a member's garbage, or a change against the channel's rules): the channel's
    /// membership and keys cannot change until its recoverer (named, when there is one)
    /// moves it to a new sequencer (docs/protocol.md, "Moving past a refused commit").
    #[error(
        "\"{0}\" cannot change for now: the change that won its current state at the relay is one \
         this device refuses (see `backchannel read {0}`); messages still go; {recoverer}",
        recoverer = refused_winner_recoverer(.0, .1)
    )]
    RefusedWinner(String, String),
    /// An admin's removal kept losing its epoch to other members' changes, so it was sent
    /// as a proposal instead: the next change by anyone must carry it.
    #[error(
        "other members kept changing \"{0}\" at the same moment, so your removal of {1} was sent \
         as a proposal: the next change by any member removes {1}, and a change that leaves it out \
         is refused by everyone; `backchannel sync` commits it when you can"
    )]
    RemovalWaiting(String, String),
    /// An MLS or format error, with its cause.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Why something waits to be sent (the cause of a [`ClientError::Queued`] or
/// [`ClientError::Paused`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Holdup {
    /// A relay refused or could not be reached.
    #[error(transparent)]
    Relay(ConnectError),
    /// No relay was tried or none answered, without a more precise reason.
    #[error("the relay could not be reached")]
    Unreachable,
    /// MLS allows nothing to be sent while a proposal waits for its commit.
    #[error("a change to the channel is waiting to be committed")]
    ProposalsWaiting,
    /// A message from a later epoch showed that this device missed a change to the channel.
    #[error("this device is behind in the channel: a change to it has not arrived yet")]
    Behind,
    /// The sync before sending failed.
    #[error(transparent)]
    Sync(Box<ClientError>),
}

/// What is damaged in the local store (the cause of a [`ClientError::Corrupt`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// The state does not decode.
    #[error("the local store could not be decoded")]
    Undecodable,
    /// The state could not be encoded.
    #[error("the state could not be encoded: {0}")]
    Unencodable(#[source] postcard::Error),
    /// A layout older than any this release converts.
    #[error(
        "it was written by an early backchannel with store version {0}, and this one reads versions \
         {oldest} to {newest}",
        oldest = state::OLDEST_STATE_VERSION,
        newest = state::STATE_VERSION
    )]
    TooOld(u32),
    /// The vault itself is not readable.
    #[error(transparent)]
    Vault(backchannel_core::vault::VaultError),
    /// A sealed file beside the vault (a received file's part, a history segment, a
    /// waiting message) was changed on disk.
    #[error("a sealed file beside the local store (in its files/ folder) was modified on disk")]
    SealedPart,
    /// The state is older than the generation last saved (its witness), or a file
    /// beside it is newer than it: one of them was rolled back or replaced alone.
    #[error(
        "the local store is older than what was last saved here, or than a file beside it: one of \
         its files was rolled back or replaced"
    )]
    RolledBack,
    /// A received file changed on disk after it arrived.
    #[error("{0} changed on disk after it arrived")]
    FileChanged(String),
}

/// Why an invite cannot be used (the cause of a [`ClientError::Invite`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InviteProblem {
    /// The text is not an invite.
    #[error(transparent)]
    Unreadable(#[from] backchannel_core::invite::InviteError),
    /// Past its expiry.
    #[error("this invite has expired; ask the inviter for a new one")]
    Expired,
    /// A ciphersuite this release does not have.
    #[error("this invite uses a ciphersuite this version does not support; upgrade backchannel")]
    UnknownSuite,
    /// Its mailbox is gone.
    #[error("this invite has been used up or withdrawn; ask the inviter for a new one")]
    UsedUp,
    /// Its mailbox is full.
    #[error("the invite's mailbox is full; try again later")]
    MailboxFull,
    /// A typed code that is not one.
    #[error(transparent)]
    BadCode(#[from] backchannel_core::code::CodeError),
    /// The relay does not hold what a short invite line names.
    #[error("the invite's relay does not hold this invite: it has expired or was withdrawn (or the relay was downgraded); ask for a new one")]
    NotAtRelay,
    /// The relay does not know nameplates.
    #[error("the relay runs an older backchannel that has no invite codes; use an invite line (`backchannel invite CHANNEL`) or upgrade the relay")]
    CodesUnsupported,
    /// No joiner came within the wait.
    #[error("nobody used the code within {0} s; it is withdrawn (make a new one)")]
    CodeUnused(u64),
    /// The inviter saw a message that did not prove the code.
    #[error("someone tried a wrong code: this code is used up and nobody was admitted. If it was not your joiner mistyping it, someone (or the relay) guessed; make a new code and read it only to the person you mean")]
    WrongCodeTried,
    /// The nameplate is not at the relay.
    #[error("no such invite code at that relay: it was used already, has expired (codes last 10 minutes), or was never made there (is --relay the inviter's relay?); ask for a new code")]
    CodeUnknown,
    /// The inviter refused the code.
    #[error("the inviter refused the code: it was mistyped, or someone tried it before you; ask for a new code")]
    CodeRefused,
    /// No answer from the inviter.
    #[error("the inviter did not answer within 2 minutes (is their `backchannel invite --code` still waiting?); ask for a new code")]
    CodeUnanswered,
    /// The other side's mailbox for the exchange is gone.
    #[error("the other side ended the exchange (its code expired or was used); ask for a new code")]
    CodeGone,
}

/// An MLS or byte-format error from the core, kept whole as the cause of a
/// [`ClientError::Protocol`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The MLS channel refused an operation.
    #[error(transparent)]
    Channel(#[from] backchannel_core::channel::ChannelError),
    /// An envelope could not be sealed or opened.
    #[error(transparent)]
    Envelope(#[from] backchannel_core::envelope::EnvelopeError),
    /// A courier bundle could not be sealed.
    #[error(transparent)]
    Courier(#[from] backchannel_core::courier::CourierError),
    /// A drop-box letter or reply could not be sealed or opened.
    #[error(transparent)]
    Drop(#[from] backchannel_core::drop::DropError),
    /// A name that cannot be used.
    #[error(transparent)]
    Name(#[from] backchannel_core::identity::BadName),
    /// Bytes that do not decode.
    #[error(transparent)]
    Decode(#[from] backchannel_core::codec::DecodeError),
    /// An exchange by invite code failed.
    #[error(transparent)]
    Code(#[from] backchannel_core::code::ExchangeError),
    /// The proof of work a drop box demands was interrupted.
    #[error("the proof of work was interrupted")]
    WorkInterrupted,
    /// A reply was refused for what it is, not for its bytes.
    #[error("{0}")]
    Refused(&'static str),
}

impl ClientError {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        ClientError::Io { context, source }
    }

    /// A user-named path that cannot be used for `doing`.
    pub(crate) fn path<'a>(
        doing: &'static str,
        path: &'a std::path::Path,
    ) -> impl Fn(std::io::Error) -> Self + Copy + 'a {
        move |source| ClientError::Path {
            doing,
            path: path.to_path_buf(),
            source,
        }
    }

    /// An MLS or format error from the core, kept as the cause.
    pub(crate) fn protocol(e: impl Into<ProtocolError>) -> Self {
        ClientError::Protocol(e.into())
    }
}

/// The end of [`ClientError::RefusedWinner`]'s message: who moves the channel on.
fn refused_winner_recoverer(channel: &str, recoverer: &str) -> String {
    if recoverer.is_empty() {
        return "no admin is left to move it to a new sequencer: make a new channel and move there".into();
    }
    format!(
        "{recoverer}, its first admin, moves it to a new sequencer with their next change to it \
         (`backchannel update {channel}` is one); if nothing changes, make a new channel and move there"
    )
}
