//! The command line as clap parses it, and the typed commands it becomes.
//!
//! [`Command::forwardable`] is the one place that says where a command runs: a
//! command on an open engine ([`EngineCommand`]) runs in the home's daemon when one
//! is running, else here; the others ([`LocalCommand`]) always run here. Engine
//! commands are what the daemon's socket carries (`ipc.rs`), so their arguments are
//! serde types as well as clap ones.
//!
//! Argument structs carry no doc comment of their own (`//` comments instead): clap
//! would take one as the subcommand's help text in place of the variant's.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use backchannel_client::socks::ProxyAddr;
use backchannel_relay::Limits;
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Where `read` and `drop read` save received files, by default.
const SAVE_TO: &str = "backchannel-files";

/// A private line between two organizations over infrastructure neither trusts.
#[derive(Parser, Debug)]
#[command(name = "backchannel", version, about)]
pub struct Args {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

// The options every command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Home directory (default: $BACKCHANNEL_HOME, then the platform's data directory).
    #[arg(long, global = true, env = "BACKCHANNEL_HOME")]
    pub home: Option<PathBuf>,
    /// Read the passphrase from this file (otherwise $BACKCHANNEL_PASSPHRASE, or a prompt).
    #[arg(long, global = true)]
    pub passphrase_file: Option<PathBuf>,
    /// Reach relays through this SOCKS5 proxy, e.g. socks5h://127.0.0.1:9050 for Tor (given
    /// to `init`, it is remembered for every later command).
    #[arg(long, global = true, env = "BACKCHANNEL_PROXY")]
    pub proxy: Option<ProxyAddr>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a relay.
    Relay(Box<RelayArgs>),
    /// Create this device's identity.
    Init(InitArgs),
    /// Channel management.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Make an invite to a channel.
    Invite(InviteArgs),
    /// Join a channel with an invite.
    Join(JoinArgs),
    /// List who waits for your approval to join a channel (`invite --approve`).
    Pending(ChannelArg),
    /// Admit someone who waits to join: by the name they chose, or the start of their
    /// fingerprint (which `pending` shows).
    Admit(WhoArgs),
    /// Refuse someone who waits to join (they are not told).
    Refuse(WhoArgs),
    /// Fetch and process everything waiting at the relays.
    Sync(SyncArgs),
    /// Send a message, or a file.
    Send(SendArgs),
    /// Show messages. Files that have arrived completely are saved into --save-to.
    Read(ReadArgs),
    /// Print messages as they arrive.
    Watch(WatchArgs),
    /// List your channels.
    Channels(ChannelsArgs),
    /// List a channel's members.
    Members(MembersArgs),
    /// Show the safety number with a member; --confirm marks them verified.
    Verify(VerifyArgs),
    /// Remove a member (admins only, in a channel with roles).
    Remove(MemberArgs),
    /// Make a member an admin of a channel; --revoke makes them a member again.
    Admin(AdminArgs),
    /// Leave a channel.
    Leave(ChannelArg),
    /// Close a channel for everyone.
    Close(ChannelArg),
    /// Carry messages by hand: export what waits for a channel's other members to a
    /// sealed file, or import such a file.
    Courier {
        #[command(subcommand)]
        command: CourierCommand,
    },
    /// Anonymous drop boxes: an address anyone can leave a sealed letter at.
    Drop {
        #[command(subcommand)]
        command: DropCommand,
    },
    /// Refresh your keys in a channel (post-compromise security).
    Update(ChannelArg),
    /// Run a complete local demonstration.
    Demo,
    /// Measure the relay: throughput and latency under load, or the cost of idle connections.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Hold this home's relay connections; other commands hand their work to it.
    Daemon(DaemonArgs),
    /// A full-screen terminal UI: channels, the conversation, an input line. It uses the
    /// home's daemon when one runs, else holds the home itself (with its cover setting);
    /// other commands for the home keep working while it is open.
    Ui(UiArgs),
    /// Show or change this home's settings: `config get [KEY]`, `config set KEY VALUE`.
    /// The settings: forward (on, off), proxy (socks5h://HOST:PORT, none), cover (a rate
    /// like 4/s that the daemon uses when started without --cover, or off), relays (your
    /// relay's addresses, tried in order; all with its PIN).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script: `backchannel completions bash > /etc/bash_completion.d/backchannel`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page of backchannel, or of one command (`man send`, `man drop send`),
    /// in roff: `backchannel man | man -l -`.
    Man {
        /// The command, and its subcommand if it has them.
        command: Vec<String>,
    },
    /// Test hooks (not for normal use).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

/// Where a command runs (see [`Command::forwardable`]).
#[derive(Debug)]
pub enum Route {
    /// On an open engine: in the home's daemon if one runs, else here.
    Forwardable(EngineCommand),
    /// Always here.
    Local(LocalCommand),
}

impl Command {
    /// Which commands a daemon may run for its home: every command that works on
    /// an open engine. The others run in this process: they need no home (`relay`,
    /// `bench`, `demo`, a source's `drop send` and `drop check`), create it (`init`),
    /// or are the daemon.
    pub fn forwardable(self) -> Route {
        use EngineCommand as E;
        use LocalCommand as L;
        match self {
            Command::Relay(a) => Route::Local(L::Relay(a)),
            Command::Init(a) => Route::Local(L::Init(a)),
            Command::Demo => Route::Local(L::Demo),
            Command::Bench { what } => Route::Local(L::Bench(what)),
            Command::Daemon(a) => Route::Local(L::Daemon(a)),
            Command::Ui(a) => Route::Local(L::Ui(a)),
            Command::Completions { shell } => Route::Local(L::Completions(shell)),
            Command::Man { command } => Route::Local(L::Man(command)),
            Command::Drop {
                command: DropCommand::Send(a),
            } => Route::Local(L::DropSend(a)),
            Command::Drop {
                command: DropCommand::Check(a),
            } => Route::Local(L::DropCheck(a)),
            Command::Drop {
                command: DropCommand::Create(a),
            } => Route::Forwardable(E::Drop(DropBoxCommand::Create(a))),
            Command::Drop {
                command: DropCommand::Address(a),
            } => Route::Forwardable(E::Drop(DropBoxCommand::Address(a))),
            Command::Drop {
                command: DropCommand::Read(a),
            } => Route::Forwardable(E::Drop(DropBoxCommand::Read(a))),
            Command::Drop {
                command: DropCommand::Reply(a),
            } => Route::Forwardable(E::Drop(DropBoxCommand::Reply(a))),
            Command::Channel { command } => Route::Forwardable(E::Channel(command)),
            Command::Invite(a) => Route::Forwardable(E::Invite(a)),
            Command::Join(a) => Route::Forwardable(E::Join(a)),
            Command::Pending(a) => Route::Forwardable(E::Pending(a)),
            Command::Admit(a) => Route::Forwardable(E::Admit(a)),
            Command::Refuse(a) => Route::Forwardable(E::Refuse(a)),
            Command::Sync(a) => Route::Forwardable(E::Sync(a)),
            Command::Send(a) => Route::Forwardable(E::Send(a)),
            Command::Read(a) => Route::Forwardable(E::Read(a)),
            Command::Watch(a) => Route::Forwardable(E::Watch(a)),
            Command::Channels(a) => Route::Forwardable(E::Channels(a)),
            Command::Members(a) => Route::Forwardable(E::Members(a)),
            Command::Verify(a) => Route::Forwardable(E::Verify(a)),
            Command::Remove(a) => Route::Forwardable(E::Remove(a)),
            Command::Admin(a) => Route::Forwardable(E::Admin(a)),
            Command::Leave(a) => Route::Forwardable(E::Leave(a)),
            Command::Close(a) => Route::Forwardable(E::Close(a)),
            Command::Courier { command } => Route::Forwardable(E::Courier(command)),
            Command::Update(a) => Route::Forwardable(E::Update(a)),
            Command::Debug { command } => Route::Forwardable(E::Debug(command)),
            Command::Config { command } => Route::Forwardable(E::Config(command)),
        }
    }
}

/// A command that runs in this process whether or not a daemon runs.
#[derive(Debug)]
pub enum LocalCommand {
    /// `relay`.
    Relay(Box<RelayArgs>),
    /// `init`.
    Init(InitArgs),
    /// `demo`.
    Demo,
    /// `bench relay`, `bench connections`.
    Bench(BenchCommand),
    /// `daemon`.
    Daemon(DaemonArgs),
    /// `ui`.
    Ui(UiArgs),
    /// `drop send`.
    DropSend(LetterArgs),
    /// `drop check`.
    DropCheck(CheckArgs),
    /// `completions`.
    Completions(clap_complete::Shell),
    /// `man`.
    Man(Vec<String>),
}

/// A command on an open engine: what the daemon's socket carries.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum EngineCommand {
    /// `channel new`.
    Channel(ChannelCommand),
    /// `invite`.
    Invite(InviteArgs),
    /// `join`.
    Join(JoinArgs),
    /// `sync`.
    Sync(SyncArgs),
    /// `send`.
    Send(SendArgs),
    /// `read`.
    Read(ReadArgs),
    /// `watch`: syncs and prints until interrupted.
    Watch(WatchArgs),
    /// One round of `watch` without its sync: prints what is unread (a daemon syncs
    /// on its own).
    WatchOnce(WatchArgs),
    /// `channels`.
    Channels(ChannelsArgs),
    /// `members`.
    Members(MembersArgs),
    /// `verify`.
    Verify(VerifyArgs),
    /// `remove`.
    Remove(MemberArgs),
    /// `admin`.
    Admin(AdminArgs),
    /// `pending`.
    Pending(ChannelArg),
    /// `admit`.
    Admit(WhoArgs),
    /// `refuse`.
    Refuse(WhoArgs),
    /// `leave`.
    Leave(ChannelArg),
    /// `close`.
    Close(ChannelArg),
    /// `courier export`, `courier import`.
    Courier(CourierCommand),
    /// The owner's side of drop boxes.
    Drop(DropBoxCommand),
    /// `update`.
    Update(ChannelArg),
    /// `debug`.
    Debug(DebugCommand),
    /// `config get`, `config set`.
    Config(ConfigCommand),
}

/// `config`.
#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
pub enum ConfigCommand {
    /// Print every setting (`KEY = VALUE`), or one setting's value.
    Get {
        /// forward, proxy, cover or relays.
        key: Option<String>,
    },
    /// Change a setting.
    Set {
        /// forward, proxy, cover or relays.
        key: String,
        /// The new value: forward on|off, proxy socks5h://HOST:PORT|none, cover RATE|off,
        /// relays "bc://PIN@HOST:PORT bc://PIN@HOST2:PORT" (one argument).
        value: String,
    },
}

impl EngineCommand {
    /// What one request to a daemon asks for: a command that runs until
    /// interrupted (`watch`) becomes one round of it, which the caller repeats.
    pub fn one_round(self) -> Self {
        match self {
            EngineCommand::Watch(a) => EngineCommand::WatchOnce(a),
            other => other,
        }
    }

    /// Whether the command runs until interrupted.
    pub fn is_endless(&self) -> bool {
        matches!(self, EngineCommand::Watch(_))
    }
}

// `relay`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    /// What to do instead of running a relay.
    #[command(subcommand)]
    pub action: Option<RelayAction>,
    /// Read settings from this TOML file: each key is a flag's name (`max-connections = 512`,
    /// `nats = ["nats://…"]`); a flag given on the command line wins over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the settings the relay would run with, as a config file, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Directory for the relay's key and store.
    #[arg(long, default_value = "backchannel-relay")]
    pub data: PathBuf,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Host name to print in the relay address (default: the listen IP).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Serve the relay's counts for a monitoring system on this address (e.g.
    /// 127.0.0.1:9464): Prometheus text on /metrics, /healthz and /readyz. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Allow --metrics on an address that is not loopback.
    #[arg(long, requires = "metrics")]
    pub metrics_public: bool,
    /// Most concurrent connections.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Most concurrent connections from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = Limits::default().max_connections_per_address)]
    pub max_connections_per_address: usize,
    /// Most mailboxes one connection may create or open.
    #[arg(long, default_value_t = Limits::default().max_mailboxes_per_connection)]
    pub max_mailboxes_per_connection: usize,
    /// Most envelopes one mailbox holds.
    #[arg(long, default_value_t = Limits::default().max_envelopes_per_mailbox)]
    pub max_envelopes_per_mailbox: u32,
    /// Most envelopes the relay holds in all mailboxes together (each takes about 4.2 kB of disk).
    #[arg(long, default_value_t = Limits::default().max_stored_envelopes)]
    pub max_stored_envelopes: u64,
    /// Requests per second one connection may make on average (0: no limit).
    #[arg(long, default_value_t = Limits::default().max_requests_per_second)]
    pub max_requests_per_second: u32,
    /// Requests one connection may make at once, beyond the average rate.
    #[arg(long, default_value_t = Limits::default().request_burst)]
    pub request_burst: u32,
    /// Time a client gets for the TLS and WebSocket handshakes together.
    #[arg(long, default_value_t = Span(Limits::default().handshake_timeout), value_parser = parse_span)]
    pub handshake_timeout: Span,
    /// A connection that sends no complete request (or takes no response) for this long is closed.
    #[arg(long, default_value_t = Span(Limits::default().idle_timeout), value_parser = parse_span)]
    pub idle_timeout: Span,
    /// How long an unacknowledged envelope is kept (e.g. 14d, 12h, 90s).
    #[arg(long, default_value_t = Span(Limits::default().envelope_ttl), value_parser = parse_span)]
    pub envelope_ttl: Span,
    /// How often expired envelopes are swept.
    #[arg(long, default_value_t = Span(Limits::default().sweep_interval), value_parser = parse_span)]
    pub sweep_interval: Span,
    /// How often the relay logs its counts.
    #[arg(long, default_value_t = Span(Limits::default().stats_interval), value_parser = parse_span)]
    pub stats_interval: Span,
    /// On SIGTERM, time the requests in flight get to finish before the relay exits anyway.
    #[arg(long, default_value_t = Span(Limits::default().shutdown_grace), value_parser = parse_span)]
    pub shutdown_grace: Span,
    /// A paced connection's (cover traffic's) answers leave no sooner than this after their
    /// request (e.g. 25ms): above the store's usual fsync time, so that an observer cannot
    /// tell the requests apart by their answer time. The counts' `answers_late` says how
    /// often the store was slower.
    #[arg(long, default_value_t = Span(Limits::default().answer_floor), value_parser = parse_span)]
    pub answer_floor: Span,
    /// Requests per second that one other relay may forward here on average, all its
    /// connections together (0: no limit): each forwarding relay has its own budget,
    /// larger than a connection's.
    #[arg(long, default_value_t = Limits::default().forwarder_rate)]
    pub forwarder_rate: u32,
    /// Requests one forwarding relay may make at once (its budget's burst).
    #[arg(long, default_value_t = Limits::default().forwarder_burst)]
    pub forwarder_burst: u32,
    /// A mailbox unused this long (not opened by its recipient, not claimed at) is deleted
    /// with everything in it; a send to it is then refused as to no mailbox. Clients rely
    /// on at least 90 days (the default); shorter is for tests.
    #[arg(long, default_value_t = Span(Limits::default().idle_mailbox_lifetime), value_parser = parse_span)]
    pub idle_mailbox_lifetime: Span,
    /// How long an invite code's nameplate (the number before its words) is kept for the
    /// joiner to take, e.g. 10m (the default) or 1h; untaken by then, it is gone, and the
    /// code with it.
    #[arg(long, default_value_t = Span(Limits::default().nameplate_lifetime), value_parser = parse_span)]
    pub nameplate_lifetime: Span,
    /// The longest a bundle (what a short address names: a drop box's keys, an invite's
    /// body) is kept, e.g. 90d (the default); its owner publishes it again to keep it longer.
    #[arg(long, default_value_t = Span(Limits::default().bundle_lifetime), value_parser = parse_span)]
    pub bundle_lifetime: Span,
    /// Mailboxes one address (an IPv4 address, or an IPv6 /64) may create per minute on
    /// average, all its connections together (0: no limit); past it, `RateLimited`.
    #[arg(long, default_value_t = Limits::default().address_create_rate)]
    pub address_create_rate: u32,
    /// Mailboxes one address may create at once (its budget's burst).
    #[arg(long, default_value_t = Limits::default().address_create_burst)]
    pub address_create_burst: u32,
    /// Envelopes one address may store per second on average (its sends, and the requests
    /// it forwards through this relay), all its connections together (0: no limit); past
    /// it, `RateLimited`. With the connection and envelope limits, this is what keeps one
    /// party on a few addresses from filling the relay for everyone.
    #[arg(long, default_value_t = Limits::default().address_store_rate)]
    pub address_store_rate: u32,
    /// Envelopes one address may store at once (its budget's burst: a 100 MiB file is
    /// about 26,000).
    #[arg(long, default_value_t = Limits::default().address_store_burst)]
    pub address_store_burst: u32,
    /// Forward your users' requests to relays at loopback and private addresses too (for a
    /// test network; by default a user cannot make the relay connect into its own network).
    #[arg(long)]
    pub forward_private: bool,
    /// How log lines are written to stderr: text, or json (one object per line, for log
    /// collectors). Either way they hold counts and fixed words only.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `relay --log-format`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// `relay rotate-key`.
#[derive(Subcommand, Debug)]
pub enum RelayAction {
    /// Ask the relay running on a data directory to make new TLS and forward keys, signed by
    /// its identity key: its PIN, and so every client's address, invite and drop address,
    /// stays the same. The old forward key still opens what was sealed to it for 10 minutes.
    RotateKey {
        /// The running relay's data directory.
        #[arg(long, default_value = "backchannel-relay")]
        data: PathBuf,
        /// With --store nats, every relay of the cluster rotates (each has keys of its own).
        #[command(flatten)]
        storage: StorageArgs,
    },
}

// `init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Your display name, shown to the members of your channels.
    #[arg(long)]
    pub name: String,
    /// The relay address printed by `backchannel relay`. Give it once per address
    /// when the relay has several (relays sharing a cluster): they are tried in order.
    #[arg(long, required = true)]
    pub relay: Vec<String>,
    /// Send to members whose mailboxes live on other relays directly, rather than through
    /// your own relay (which then no longer hides your address from their relays, nor
    /// their relays from the network you sit in). Forwarding is the default.
    #[arg(long)]
    pub no_forward: bool,
}

// `invite`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct InviteArgs {
    pub channel: String,
    /// How many people may join with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// How long it stays valid (e.g. 24h, 7d, 30m).
    #[arg(long, default_value = "24h", value_parser = parse_span)]
    pub expires: Span,
    /// Also draw it as a QR code (on stderr).
    #[arg(long)]
    pub qr: bool,
    /// Print a code to read aloud (`7-orbit-velvet-harbor`) instead of an invite line,
    /// and wait for the one person who joins with it: single use, and it expires with the
    /// relay's nameplates (10 minutes by default) or at `--wait`.
    #[arg(long, conflicts_with_all = ["qr", "uses"])]
    pub code: bool,
    /// With `--code`: how many seconds to wait for the joiner (and for its admission).
    #[arg(long, requires = "code", default_value_t = 600)]
    pub wait: u64,
    /// Whoever joins with it waits until you admit them (`pending`, `admit`, `refuse`).
    #[arg(long)]
    pub approve: bool,
}

// `join`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct JoinArgs {
    /// An invite line (`bc-invite:…`), or a code read aloud (`7-orbit-velvet-harbor`;
    /// any case, spaces for dashes, and the first four letters of each word will do).
    pub invite: String,
    /// With a code: the inviter's relay, when it is not your own (an address you hold,
    /// `bc-relay:…`). The exchange still goes through your own relay.
    #[arg(long)]
    pub relay: Option<String>,
    /// Local name for the channel.
    #[arg(long)]
    pub name: Option<String>,
    /// Wait this many seconds to be admitted (default: 0 with an invite line; 60 with a
    /// code, as the inviter is waiting to admit you).
    #[arg(long)]
    pub wait: Option<u64>,
}

// `sync`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct SyncArgs {
    /// Wait up to this many seconds for something to arrive.
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
}

// `send`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct SendArgs {
    pub channel: String,
    /// The text (or use --file).
    pub text: Option<String>,
    /// Send a file (any size up to 4 GiB). An interrupted transfer resumes when the
    /// same command runs again.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

// `read`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct ReadArgs {
    pub channel: String,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// All messages, not only unread ones.
    #[arg(long)]
    pub all: bool,
    /// Where received files are saved.
    #[arg(long, value_name = "DIR", default_value = SAVE_TO)]
    pub save_to: PathBuf,
}

// `watch`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct WatchArgs {
    pub channel: Option<String>,
    #[arg(long)]
    pub json: bool,
}

// `channels`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct ChannelsArgs {
    #[arg(long)]
    pub json: bool,
}

// `members`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct MembersArgs {
    pub channel: String,
    #[arg(long)]
    pub json: bool,
}

// `verify`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct VerifyArgs {
    pub channel: String,
    /// Without a member: the channel code, which every member compares.
    pub member: Option<String>,
    #[arg(long, requires = "member")]
    pub confirm: bool,
}

// `remove`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct MemberArgs {
    pub channel: String,
    pub member: String,
}

// `admin`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct AdminArgs {
    pub channel: String,
    pub member: String,
    /// Make them a member again (not an admin).
    #[arg(long)]
    pub revoke: bool,
}

// `admit`, `refuse`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct WhoArgs {
    pub channel: String,
    /// The name they chose, or the start of their fingerprint (needed when the name is
    /// also someone else's).
    pub who: String,
}

// `leave`, `close`, `update`, `debug mailbox`, `pending`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct ChannelArg {
    pub channel: String,
}

// `ui`.
#[derive(clap::Args, Debug)]
pub struct UiArgs {
    /// The channel to show first (otherwise the one with the newest message).
    pub channel: Option<String>,
}

// `daemon`.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Constant-rate cover traffic: one frame per tick, e.g. 4/s or 30/m.
    #[arg(long, value_parser = parse_rate)]
    pub cover: Option<Duration>,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
pub enum ChannelCommand {
    /// Create a channel.
    New(ChannelNewArgs),
}

// `channel new`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct ChannelNewArgs {
    pub channel: String,
    /// Use the classical ciphersuite instead of the post-quantum hybrid.
    #[arg(long)]
    pub classical: bool,
    /// Every member's client deletes each message this long after it was sent (e.g. 1h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub disappear: Option<Span>,
    /// The channel closes on its own this long after now (e.g. 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub expires: Option<Span>,
    /// Members who are not admins may invite too (by default only admins invite).
    #[arg(long)]
    pub members_invite: bool,
    /// Everyone an invite brings waits until the inviter admits them (`pending`, `admit`,
    /// `refuse`), whoever invites. Every member needs a release that knows this setting.
    #[arg(long)]
    pub approve: bool,
}

#[derive(Subcommand, Debug)]
pub enum DropCommand {
    /// Create a drop box at your relay and print its public address (starts "bc-drop:").
    Create(DropCreateArgs),
    /// Print a drop box's public address again.
    Address(DropNameArg),
    /// Leave an anonymous letter at a drop box address (needs no `init`). Prints a
    /// receipt (starts "bc-receipt:") that reads the owner's reply.
    Send(LetterArgs),
    /// Read the owner's replies to a letter, with the receipt `drop send` printed. Each
    /// reply is shown once, then deleted from the relay.
    Check(CheckArgs),
    /// Show the letters in one of your drop boxes.
    Read(DropReadArgs),
    /// Answer a letter (its source reads the answer with its receipt).
    Reply(DropReplyArgs),
}

/// The owner's side of drop boxes: the `drop` commands on an open engine.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum DropBoxCommand {
    /// `drop create`.
    Create(DropCreateArgs),
    /// `drop address`.
    Address(DropNameArg),
    /// `drop read`.
    Read(DropReadArgs),
    /// `drop reply`.
    Reply(DropReplyArgs),
}

// `drop create`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct DropCreateArgs {
    pub name: String,
    /// Proof of work the relay demands per envelope, in bits (default 20: about a
    /// million hashes, a tenth of a second of one CPU core, per 4 KiB; each further
    /// bit doubles it).
    #[arg(long, value_name = "BITS")]
    pub pow_bits: Option<u8>,
}

// `drop address`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct DropNameArg {
    pub name: String,
    /// The whole address (some 3,000 characters), which needs nothing from the relay,
    /// rather than the short one (at most 120 characters) whose keys the relay keeps.
    #[arg(long)]
    pub long: bool,
}

// `drop send`.
#[derive(clap::Args, Debug)]
pub struct LetterArgs {
    pub address: String,
    /// The text (optional with --file).
    pub text: Option<String>,
    /// Attach a file (at most 8 MiB).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Connect without --proxy: the drop box's relay then sees this computer's address.
    #[arg(long)]
    pub direct: bool,
}

// `drop check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The receipt; without it, it is read from standard input (so it stays out of
    /// the shell's history and the process list).
    pub receipt: Option<String>,
    /// Connect without --proxy: the drop box's relay then sees this computer's address.
    #[arg(long)]
    pub direct: bool,
}

// `drop read`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct DropReadArgs {
    pub name: String,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// All letters, not only unread ones.
    #[arg(long)]
    pub all: bool,
    /// Where attached files are saved.
    #[arg(long, value_name = "DIR", default_value = SAVE_TO)]
    pub save_to: PathBuf,
}

// `drop reply`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct DropReplyArgs {
    pub name: String,
    pub id: String,
    pub text: String,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
pub enum CourierCommand {
    /// Write what is waiting for the channel's other members (including messages queued
    /// while no relay answered) into one sealed file. They stay queued for the relay too.
    Export(ExportArgs),
    /// Deliver a bundle's messages for your channels. A modified bundle is refused whole.
    Import(ImportArgs),
}

// `courier export`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct ExportArgs {
    pub channel: String,
    /// The file to write (it must not exist yet).
    #[arg(long)]
    pub to: PathBuf,
}

// `courier import`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone)]
pub struct ImportArgs {
    pub file: PathBuf,
}

#[derive(Subcommand, Serialize, Deserialize, Debug, Clone)]
pub enum DebugCommand {
    /// Print this member's own receiving mailbox for a channel, as JSON (secrets included).
    Mailbox(ChannelArg),
    /// Print a channel's sequencer, its epoch and the epoch's claim key, as JSON (secrets
    /// included).
    Sequencer(ChannelArg),
}

/// Where a relay keeps its mailboxes (for `relay` and `bench relay`).
#[derive(clap::Args, Debug)]
pub struct StorageArgs {
    /// Storage backend: `embedded` (a file in --data) or `nats` (a JetStream cluster
    /// shared by several relays; see the README's deployment section).
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// With --store nats: a server of the cluster, as nats://HOST:PORT. Give several
    /// (the relay fails over between them).
    #[arg(long = "nats", value_name = "URL")]
    pub nats: Vec<String>,
    /// With --store nats: replicas of each stream (default: 3, or the cluster's size if smaller).
    #[arg(long, value_name = "N")]
    pub nats_replicas: Option<usize>,
    /// With --store nats: most bytes of the cluster's record stream (mailboxes, claims and
    /// the commits they hold; default 1 GiB). Past it, new mailboxes and claims are
    /// refused with "relay full".
    #[arg(long, value_name = "BYTES")]
    pub nats_meta_bytes: Option<u64>,
    /// With --store nats: how long a request waits for the cluster to answer again (while
    /// it elects a new leader after losing a node) before it fails with "storage
    /// unavailable" (default 20s).
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub nats_patience: Option<Span>,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Start relays on loopback and drive them: N clients on TLS WebSocket connections send
    /// M envelopes into each other's mailboxes, each received and acknowledged. Reports
    /// beside a baseline of the storage engine alone, measured in the same run.
    Relay(BenchRelayArgs),
    /// Hold N idle connections, each with a mailbox and a waiting long-poll, to one relay,
    /// and report the relay's memory per connection.
    Connections(BenchConnectionsArgs),
    /// Start a home relay and a destination relay on loopback and send envelopes one at a
    /// time into a mailbox on the destination, directly and forwarded through the home relay
    /// in turn: each way's latency and each relay's CPU per envelope.
    Forward(BenchForwardArgs),
}

// `bench forward`.
#[derive(clap::Args, Debug)]
pub struct BenchForwardArgs {
    /// Envelopes each way (4096 bytes each).
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

// `bench relay`.
#[derive(clap::Args, Debug)]
pub struct BenchRelayArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Relay processes; clients are spread over them (with --store nats).
    #[arg(long, default_value_t = 1)]
    pub relays: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Envelopes in total (4096 bytes each).
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Sends each client keeps in flight (without --rate).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Send at this total rate (envelopes per second) instead of as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Before the run, make this many more mailboxes, each holding one envelope, left
    /// unread: what a store full of other people's mailboxes costs.
    #[arg(long, default_value_t = 0)]
    pub idle_mailboxes: usize,
    /// Through the run, hold this many more connections, each with a mailbox of its own
    /// and a long-poll waiting on it: what a relay full of waiting daemons costs.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

// `bench connections`.
#[derive(clap::Args, Debug)]
pub struct BenchConnectionsArgs {
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Nats,
}

/// A duration on the command line, written as a person would (`30s`, `10m`, `24h`,
/// `7d`). It shows (in `--help`, for a default taken from a library) in whole days
/// where it is whole days, else in seconds: `14d`, `120s`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DAY: u64 = 86_400;
        if self.0.subsec_nanos() != 0 {
            return write!(f, "{}ms", self.0.as_millis());
        }
        match self.0.as_secs() {
            s if s >= DAY && s.is_multiple_of(DAY) => write!(f, "{}d", s / DAY),
            s => write!(f, "{s}s"),
        }
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = num
            .parse()
            .map_err(|_| format!("\"{s}\" is not a duration like 25ms, 30s, 10m, 24h or 7d"))?;
        if unit == "ms" {
            return Ok(Span(Duration::from_millis(n)));
        }
        let unit = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("\"{s}\" is not a duration like 25ms, 30s, 10m, 24h or 7d")),
        };
        let secs = n
            .checked_mul(unit)
            .ok_or_else(|| format!("\"{s}\" is longer than any duration backchannel can keep"))?;
        Ok(Span(Duration::from_secs(secs)))
    }
}

/// clap's parser for a [`Span`].
fn parse_span(s: &str) -> Result<Span, String> {
    s.parse()
}

/// Parses a cover rate like `4/s` or `30/m` into the period between ticks.
pub fn parse_rate(s: &str) -> Result<Duration, String> {
    let bad = || format!("\"{s}\" is not a rate like 4/s or 30/m");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    // The receive link ticks twice per send tick and waits for each answer, which a relay
    // sends no sooner than its answer floor (25 ms by default): at 20/s the receive link
    // ticks every 25 ms, the most a relay of the default floor keeps up with.
    if n == 0 || per / n < Duration::from_millis(50) {
        return Err(format!("\"{s}\": the cover rate must be between 1/h and 20/s"));
    }
    Ok(per / n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_back_as_they_are_shown() {
        for text in ["30s", "120s", "14d", "90s", "0s", "25ms", "1500ms"] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.to_string(), text);
        }
        assert_eq!("2".parse::<Span>().unwrap(), Span(Duration::from_secs(2)));
        assert_eq!("10m".parse::<Span>().unwrap().to_string(), "600s");
        assert!("1w".parse::<Span>().is_err());
        assert!("99999999999999999999d".parse::<Span>().is_err());
    }

    #[test]
    fn the_relay_defaults_are_the_libraries() {
        let args = Args::try_parse_from(["backchannel", "relay"]).unwrap();
        let Command::Relay(relay) = args.command else {
            panic!("not the relay command");
        };
        let limits = Limits::default();
        assert_eq!(relay.max_connections, limits.max_connections);
        assert_eq!(relay.envelope_ttl.0, limits.envelope_ttl);
        assert_eq!(relay.shutdown_grace.0, limits.shutdown_grace);
        assert_eq!(relay.answer_floor.0, limits.answer_floor);
        // Shown in --help as they always were.
        let mut cli = <Args as clap::CommandFactory>::command();
        let help = cli
            .find_subcommand_mut("relay")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        for shown in [
            "[default: 1024]",
            "[default: 10s]",
            "[default: 120s]",
            "[default: 25ms]",
            "[default: 14d]",
            "[default: 60s]",
        ] {
            assert!(help.contains(shown), "{shown} in {help}");
        }
    }
}
