//! Why a command failed, and [`report`]: the one place that turns an error into the
//! sentence the user reads. `main` prints it once, after `error: ` on stderr; a daemon
//! sends it back to the command that asked, whose `main` prints it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;

use backchannel_client::core_types::RelayAddressError;
use backchannel_client::socks::ProxyAddr;
use backchannel_client::ClientError;
use backchannel_relay::RelayError;

/// A command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The async runtime could not start.
    #[error("could not start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The client engine refused or failed (its messages say what to do).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An `init --relay` address does not parse.
    #[error(transparent)]
    RelayAddress(#[from] RelayAddressError),
    /// The relay could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// No home directory given and no platform default.
    #[error("no home directory: pass --home DIR or set BACKCHANNEL_HOME")]
    NoHome,
    /// No passphrase source.
    #[error("a passphrase is needed: set BACKCHANNEL_PASSPHRASE, pass --passphrase-file FILE, or run in a terminal")]
    NoPassphrase,
    /// The two passphrases typed at `init` differ.
    #[error("the passphrases differ; run the command again")]
    PassphrasesDiffer,
    /// An empty passphrase was typed.
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    /// `drop send` or `drop check` without a proxy, and without `--direct`.
    #[error(
        "`drop {0}` would connect to the drop box's relay from this computer's own address; give \
         --proxy socks5h://127.0.0.1:9050 (Tor), or --direct to connect without a proxy"
    )]
    NeedsProxy(&'static str),
    /// `man` was asked for a command there is none of.
    #[error("there is no command `{0}`; `backchannel --help` lists them")]
    NoSuchCommand(String),
    /// `send` got both a text and a file, or neither.
    #[error("give the message text or --file PATH, not both")]
    TextOrFile,
    /// A file to be written exists already.
    #[error("{} already exists; choose another file name", .0.display())]
    FileExists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file given as a courier bundle is larger than any bundle.
    #[error("{} is larger than any backchannel bundle; it is not one", .0.display())]
    NotABundle(PathBuf),
    /// Standard input could not be read.
    #[error("cannot read the receipt from standard input: {0}")]
    ReadReceipt(#[source] std::io::Error),
    /// `--store nats` without a server.
    #[error("--store nats needs at least one --nats nats://HOST:PORT")]
    NatsWithoutServers,
    /// NATS options without `--store nats`.
    #[error("--nats, --nats-replicas and --nats-meta-bytes need --store nats")]
    NatsOptionsWithoutNats,
    /// `bench relay` options that need NATS without `--store nats`.
    #[error("--nats, --nats-replicas, --nats-meta-bytes and --relays above 1 need --store nats")]
    BenchOptionsWithoutNats,
    /// The relay's listening address is taken or not ours.
    #[error("could not listen on {addr} ({source}); choose another --listen address")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A relay config file could not be read, or holds an unknown key or a bad value.
    #[error("in the config file {}: {why}", .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `--metrics` on an address other than loopback, without `--metrics-public`.
    #[error("--metrics {0} is reachable from other machines; use a loopback address such as 127.0.0.1:9464, or add --metrics-public")]
    MetricsNotLoopback(SocketAddr),
    /// The daemon's socket could not be made.
    #[error("could not create the daemon's socket {} ({source})", .path.display())]
    DaemonSocket {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon went away while `watch` was asking it.
    #[error("the daemon stopped; run the command again")]
    DaemonStopped,
    /// The daemon went away with a command: it may have run it.
    #[error("the daemon stopped while running the command; check with `backchannel read` before trying again")]
    DaemonLost,
    /// Another operation on a file, socket or terminal failed.
    #[error("{context} failed: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `bench` failed.
    #[error(transparent)]
    Bench(Box<dyn std::error::Error + Send + Sync>),
    /// `demo` failed.
    #[error(transparent)]
    Demo(Box<dyn std::error::Error>),
    /// The daemon could not read a request (a command of another version).
    #[error("the daemon could not read the request; are the command and the daemon the same version?")]
    DaemonUnreadable,
    /// A command asked for a proxy the daemon does not use.
    #[error(
        "the daemon for this home reaches relays {}, not through the proxy you gave; stop it and start it with that --proxy",
        how(.0)
    )]
    DaemonProxy(Option<ProxyAddr>),
    /// A command the daemon ran failed: the sentence it reported, which crossed the
    /// socket as text (see `ipc::Reply`).
    #[error("{0}")]
    InDaemon(String),
}

impl CliError {
    /// An OS error, with what was being done.
    pub fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| CliError::Io { context, source }
    }
}

/// How a daemon reaches relays: through its proxy, or directly.
fn how(proxy: &Option<ProxyAddr>) -> String {
    proxy
        .as_ref()
        .map_or("directly".to_string(), |p| format!("through {p}"))
}

/// The sentence that tells the user what went wrong and what to do.
pub fn report(err: &CliError) -> String {
    err.to_string()
}
