//! Argument parsing and output formatting.

use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use backchannel_client::engine::{MessageView, Warning};
use backchannel_client::socks::ProxyAddr;
use backchannel_client::{ClientError, Engine};
use backchannel_core::channel::Suite;
use backchannel_core::relay_address::RelayAddress;
use backchannel_relay::nats::NatsConfig;

use crate::bench;
use backchannel_relay::store::Quota;
use backchannel_relay::{Limits, Relay};
use clap::{Parser, Subcommand, ValueEnum};

/// A private line between two organizations over infrastructure neither trusts.
#[derive(Parser, Debug)]
#[command(name = "backchannel", version, about)]
pub struct Args {
    /// Home directory (default: $BACKCHANNEL_HOME, then the platform's data directory).
    #[arg(long, global = true, env = "BACKCHANNEL_HOME")]
    home: Option<PathBuf>,
    /// Read the passphrase from this file (otherwise $BACKCHANNEL_PASSPHRASE, or a prompt).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Reach relays through this SOCKS5 proxy, e.g. socks5h://127.0.0.1:9050 for Tor (given
    /// to `init`, it is remembered for every later command).
    #[arg(long, global = true, env = "BACKCHANNEL_PROXY")]
    proxy: Option<ProxyAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a relay.
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Directory for the relay's key and store.
        #[arg(long, default_value = "backchannel-relay")]
        data: PathBuf,
        #[command(flatten)]
        storage: StorageArgs,
        /// Host name to print in the relay address (default: the listen IP).
        #[arg(long)]
        advertise: Option<String>,
        /// Most concurrent connections.
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Most concurrent connections from one IPv4 address or IPv6 /64.
        #[arg(long, default_value_t = 64)]
        max_connections_per_address: usize,
        /// Most mailboxes one connection may create or open.
        #[arg(long, default_value_t = 256)]
        max_mailboxes_per_connection: usize,
        /// Most envelopes one mailbox holds.
        #[arg(long, default_value_t = 10_000)]
        max_envelopes_per_mailbox: u32,
        /// Most envelopes the relay holds in all mailboxes together (each takes about 4.2 kB of disk).
        #[arg(long, default_value_t = 10_000_000)]
        max_stored_envelopes: u64,
        /// Requests per second one connection may make on average (0: no limit).
        #[arg(long, default_value_t = 200)]
        max_requests_per_second: u32,
        /// Requests one connection may make at once, beyond the average rate.
        #[arg(long, default_value_t = 1000)]
        request_burst: u32,
        /// Time a client gets for the TLS and WebSocket handshakes together.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        handshake_timeout: Duration,
        /// A connection that sends no complete request (or takes no response) for this long is closed.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        idle_timeout: Duration,
        /// How long an unacknowledged envelope is kept (e.g. 14d, 12h, 90s).
        #[arg(long, default_value = "14d", value_parser = parse_duration)]
        envelope_ttl: Duration,
        /// How often expired envelopes are swept.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        sweep_interval: Duration,
        /// How often the relay logs its counts.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        stats_interval: Duration,
        /// On SIGTERM, time the requests in flight get to finish before the relay exits anyway.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        shutdown_grace: Duration,
    },
    /// Create this device's identity.
    Init {
        /// Your display name, shown to the members of your channels.
        #[arg(long)]
        name: String,
        /// The relay address printed by `backchannel relay`. Give it once per address
        /// when the relay has several (relays sharing a cluster): they are tried in order.
        #[arg(long, required = true)]
        relay: Vec<String>,
    },
    /// Channel management.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Make an invite to a channel.
    Invite {
        channel: String,
        /// How many people may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid (e.g. 24h, 7d, 30m).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires: Duration,
        /// Also draw it as a QR code (on stderr).
        #[arg(long)]
        qr: bool,
    },
    /// Join a channel with an invite.
    Join {
        invite: String,
        /// Local name for the channel.
        #[arg(long)]
        name: Option<String>,
        /// Wait this many seconds to be admitted.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Fetch and process everything waiting at the relays.
    Sync {
        /// Wait up to this many seconds for something to arrive.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Send a message.
    Send {
        channel: String,
        /// The text (or use --file).
        text: Option<String>,
        /// Send the contents of a text file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Show messages.
    Read {
        channel: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// All messages, not only unread ones.
        #[arg(long)]
        all: bool,
    },
    /// Print messages as they arrive.
    Watch {
        channel: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List your channels.
    Channels {
        #[arg(long)]
        json: bool,
    },
    /// List a channel's members.
    Members {
        channel: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the safety number with a member; --confirm marks them verified.
    Verify {
        channel: String,
        member: String,
        #[arg(long)]
        confirm: bool,
    },
    /// Remove a member.
    Remove { channel: String, member: String },
    /// Leave a channel.
    Leave { channel: String },
    /// Close a channel for everyone.
    Close { channel: String },
    /// Refresh your keys in a channel (post-compromise security).
    Update { channel: String },
    /// Run a complete local demonstration.
    Demo,
    /// Measure the relay: throughput and latency under load, or the cost of idle connections.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Hold this home's relay connections; other commands hand their work to it.
    Daemon {
        /// Constant-rate cover traffic: one frame per tick, e.g. 4/s or 30/m.
        #[arg(long, value_parser = parse_rate)]
        cover: Option<Duration>,
    },
    /// Print unread messages without syncing (what `watch` asks a daemon for).
    #[command(hide = true)]
    WatchOnce {
        channel: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Test hooks (not for normal use).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ChannelCommand {
    /// Create a channel.
    New {
        channel: String,
        /// Use the classical ciphersuite instead of the post-quantum hybrid.
        #[arg(long)]
        classical: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DebugCommand {
    /// Print this member's own receiving mailbox for a channel, as JSON (secrets included).
    Mailbox { channel: String },
}

/// Where a relay keeps its mailboxes (for `relay` and `bench relay`).
#[derive(clap::Args, Debug)]
struct StorageArgs {
    /// Storage backend: `embedded` (a file in --data) or `nats` (a JetStream cluster
    /// shared by several relays; see the README's deployment section).
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    store: StoreKind,
    /// With --store nats: a server of the cluster, as nats://HOST:PORT. Give several
    /// (the relay fails over between them).
    #[arg(long = "nats", value_name = "URL")]
    nats: Vec<String>,
    /// With --store nats: replicas of each stream (default: 3, or the cluster's size if smaller).
    #[arg(long, value_name = "N")]
    nats_replicas: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Start relays on loopback and drive them: N clients on TLS WebSocket connections send
    /// M envelopes into each other's mailboxes, each received and acknowledged. Reports
    /// beside a baseline of the storage engine alone, measured in the same run.
    Relay {
        #[command(flatten)]
        storage: StorageArgs,
        /// Relay processes; clients are spread over them (with --store nats).
        #[arg(long, default_value_t = 1)]
        relays: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Envelopes in total (4096 bytes each).
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Sends each client keeps in flight (without --rate).
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Send at this total rate (envelopes per second) instead of as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Hold N idle connections, each with a mailbox and a waiting long-poll, to one relay,
    /// and report the relay's memory per connection.
    Connections {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Embedded,
    Nats,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration like 30s, 10m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("\"{s}\" is not a duration like 30s, 10m, 24h or 7d")),
    };
    Ok(Duration::from_secs(secs))
}

/// Parses a cover rate like `4/s` or `30/m` into the period between ticks.
fn parse_rate(s: &str) -> Result<Duration, String> {
    let bad = || format!("\"{s}\" is not a rate like 4/s or 30/m");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    // The receive and drain links tick twice per send tick; 50/s keeps each link
    // well under a relay's default of 200 requests per second per connection.
    if n == 0 || per / n < Duration::from_millis(20) {
        return Err(format!("\"{s}\": the cover rate must be between 1/h and 50/s"));
    }
    Ok(per / n)
}

pub(crate) fn home(args: &Args) -> Result<PathBuf, ClientError> {
    if let Some(h) = &args.home {
        return Ok(h.clone());
    }
    dirs::data_dir()
        .map(|d| d.join("backchannel"))
        .ok_or_else(|| ClientError::Usage("no home directory: pass --home DIR or set BACKCHANNEL_HOME".into()))
}

fn passphrase(args: &Args, confirm: bool) -> Result<Vec<u8>, ClientError> {
    if let Some(f) = &args.passphrase_file {
        let s = std::fs::read_to_string(f).map_err(|e| ClientError::Io {
            context: "reading the passphrase file",
            source: e,
        })?;
        return Ok(s.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
    }
    if let Ok(p) = std::env::var("BACKCHANNEL_PASSPHRASE") {
        return Ok(p.into_bytes());
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("passphrase: ").map_err(|e| ClientError::Io {
            context: "reading the passphrase",
            source: e,
        })?;
        if confirm {
            let again = rpassword::prompt_password("passphrase again: ").map_err(|e| ClientError::Io {
                context: "reading the passphrase",
                source: e,
            })?;
            if again != p {
                return Err(ClientError::Usage(
                    "the passphrases differ; run the command again".into(),
                ));
            }
        }
        if p.is_empty() {
            return Err(ClientError::Usage("the passphrase must not be empty".into()));
        }
        return Ok(p.into_bytes());
    }
    Err(ClientError::Usage(
        "a passphrase is needed: set BACKCHANNEL_PASSPHRASE, pass --passphrase-file FILE, or run in a terminal".into(),
    ))
}

/// Where a command's output goes: this process's stdout and stderr, or a
/// buffer that the daemon sends back to the command that asked for it.
#[derive(Debug, Default)]
pub(crate) struct Out {
    buffer: Option<std::sync::Mutex<Vec<(bool, String)>>>,
}

impl Out {
    /// Straight to stdout and stderr.
    pub(crate) fn local() -> Self {
        Self { buffer: None }
    }

    /// Into a buffer.
    pub(crate) fn buffered() -> Self {
        Self {
            buffer: Some(std::sync::Mutex::new(Vec::new())),
        }
    }

    /// The buffered lines: `(is_stderr, line)`.
    pub(crate) fn take(&self) -> Vec<(bool, String)> {
        match &self.buffer {
            Some(b) => b.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    fn push(&self, err: bool, line: String) {
        match &self.buffer {
            Some(b) => {
                if let Ok(mut v) = b.lock() {
                    v.push((err, line));
                }
            }
            None if err => eprintln!("{line}"),
            None => println!("{line}"),
        }
    }

    /// One line on stdout.
    pub(crate) fn line(&self, line: impl std::fmt::Display) {
        self.push(false, line.to_string());
    }

    /// One line on stderr.
    pub(crate) fn eline(&self, line: impl std::fmt::Display) {
        self.push(true, line.to_string());
    }

    fn flush(&self) {
        if self.buffer.is_none() {
            let _ = std::io::stdout().flush();
        }
    }
}

pub(crate) fn print_warnings(out: &Out, warnings: &[Warning]) {
    for w in warnings {
        match &w.channel {
            Some(c) => out.eline(format!("warning: [{c}] {}", w.text)),
            None => out.eline(format!("warning: {}", w.text)),
        }
    }
}

fn print_message(out: &Out, m: &MessageView, json: bool) {
    let msg = &m.message;
    if json {
        let line = match &msg.event {
            None => serde_json::json!({
                "id": msg.id,
                "channel": m.channel,
                "from": msg.from,
                "from_fingerprint": m.from_fingerprint.to_string(),
                "verified": m.verified,
                "sent_at": msg.sent_at,
                "text": msg.text,
            }),
            Some(kind) => serde_json::json!({
                "event": kind,
                "id": msg.id,
                "channel": m.channel,
                "sent_at": msg.sent_at,
                "text": msg.text,
            }),
        };
        out.line(line);
    } else {
        let secs = msg.sent_at / 1000;
        let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        match &msg.event {
            None => {
                let mark = if m.verified { "" } else { " (unverified)" };
                out.line(format!("[{h:02}:{mi:02}:{s:02}] {}{mark}: {}", msg.from, msg.text));
            }
            Some(kind) if kind == "rejected" => out.line(format!("[{h:02}:{mi:02}:{s:02}] !! {}", msg.text)),
            Some(_) => out.line(format!("[{h:02}:{mi:02}:{s:02}] * {}", msg.text)),
        }
    }
}

pub(crate) async fn open(args: &Args) -> Result<Engine, ClientError> {
    let dir = home(args)?;
    let pass = passphrase(args, false)?;
    let mut engine = Engine::open(&dir, &pass)?;
    if let Some(p) = &args.proxy {
        engine.set_proxy(p.clone());
    }
    Ok(engine)
}

/// Runs one command.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    match &args.command {
        Command::Relay { .. } => return run_relay(&args).await,
        Command::Demo => return crate::demo::run().await,
        Command::Bench { what } => return run_bench(what).await,
        Command::Init { name, relay } => {
            let relay = relay
                .iter()
                .map(|r| r.parse::<RelayAddress>())
                .collect::<Result<Vec<_>, _>>()?;
            let dir = home(&args)?;
            let pass = passphrase(&args, true)?;
            let fp = Engine::init(&dir, &pass, name, relay, args.proxy.clone()).await?;
            println!("identity created for {name}");
            println!("fingerprint: {fp}");
            if let Some(p) = &args.proxy {
                println!("every connection will go through {p}");
            }
            return Ok(());
        }
        Command::Daemon { cover } => return crate::daemon::serve(&args, *cover).await,
        _ => {}
    }
    // A running daemon for this home does the work on its connections.
    if let Some(code) = crate::daemon::forward(&args).await? {
        if code != 0 {
            return Err(Box::new(Forwarded(code)));
        }
        return Ok(());
    }
    let mut engine = open(&args).await?;
    let out = Out::local();
    let cwd = std::env::current_dir().unwrap_or_default();
    let result = run_engine(&args, &mut engine, &out, &cwd).await;
    print_warnings(&out, &engine.take_warnings());
    result
}

/// A forwarded command failed; the daemon already printed why.
#[derive(Debug)]
pub(crate) struct Forwarded(pub(crate) i32);

impl std::fmt::Display for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command failed in the daemon (exit {})", self.0)
    }
}

impl std::error::Error for Forwarded {}

/// Whether a command is one a daemon may run for its home.
pub(crate) fn forwardable(args: &Args) -> bool {
    !matches!(
        args.command,
        Command::Relay { .. } | Command::Demo | Command::Bench { .. } | Command::Init { .. } | Command::Daemon { .. }
    )
}

/// The proxy given on the command line or in the environment.
pub(crate) fn proxy_arg(args: &Args) -> Option<&ProxyAddr> {
    args.proxy.as_ref()
}

/// Whether this is `watch` (the forwarder turns it into repeated `watch-once`s).
pub(crate) fn watch_args(args: &Args) -> Option<(Option<String>, bool)> {
    match &args.command {
        Command::Watch { channel, json } => Some((channel.clone(), *json)),
        _ => None,
    }
}

/// Prints the unread messages of one channel, or of all.
fn print_unread(engine: &mut Engine, channel: Option<&str>, json: bool, out: &Out) -> Result<(), ClientError> {
    let names: Vec<String> = match channel {
        Some(c) => vec![c.to_string()],
        None => engine.channels().into_iter().map(|c| c.name).collect(),
    };
    for name in names {
        for m in engine.read(&name, false)? {
            print_message(out, &m, json);
        }
    }
    Ok(())
}

/// Runs one command on an open engine. Relative paths are taken from `cwd`.
pub(crate) async fn run_engine(
    args: &Args,
    engine: &mut Engine,
    out: &Out,
    cwd: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    match &args.command {
        Command::Channel {
            command: ChannelCommand::New { channel, classical },
        } => {
            let suite = if *classical {
                Suite::Classical
            } else {
                Suite::PostQuantum
            };
            engine.channel_new(channel, suite).await?;
            out.line(format!("channel {channel} created"));
        }
        Command::Invite {
            channel,
            uses,
            expires,
            qr,
        } => {
            let invite = engine.invite(channel, *uses, *expires).await?;
            out.line(&invite);
            if *qr {
                if let Ok(code) = qrcode::QrCode::new(invite.to_uppercase().as_bytes()) {
                    let art = code
                        .render::<char>()
                        .quiet_zone(true)
                        .module_dimensions(2, 1)
                        .dark_color('#')
                        .light_color(' ')
                        .build();
                    out.eline(art);
                }
            }
        }
        Command::Join { invite, name, wait } => {
            match engine.join(invite, name.clone(), Duration::from_secs(*wait)).await? {
                Some(ch) => out.line(format!("joined channel {ch}")),
                None => out.line(
                    "join request sent; you will be admitted when the inviter's backchannel next runs (then run `backchannel sync`)",
                ),
            }
        }
        Command::Sync { wait } => {
            let n = engine.sync(Duration::from_secs(*wait)).await?;
            out.line(format!("synced: {n} new"));
        }
        Command::Send { channel, text, file } => {
            let text = match (text, file) {
                (Some(t), None) => t.clone(),
                (None, Some(f)) => std::fs::read_to_string(cwd.join(f))?,
                _ => {
                    return Err(Box::new(ClientError::Usage(
                        "give the message text or --file PATH, not both".into(),
                    )))
                }
            };
            match engine.send(channel, &text).await {
                Ok(()) => out.line("sent"),
                Err(e) => return Err(Box::new(e)),
            }
        }
        Command::Read { channel, json, all } => {
            if let Err(e) = engine.refresh().await {
                out.eline(format!("warning: could not sync ({e}); showing what is stored"));
            }
            for m in engine.read(channel, *all)? {
                print_message(out, &m, *json);
            }
        }
        Command::Watch { channel, json } => loop {
            engine.sync(Duration::from_secs(20)).await?;
            print_unread(engine, channel.as_deref(), *json, out)?;
            print_warnings(out, &engine.take_warnings());
            out.flush();
        },
        Command::Channels { json } => {
            engine.refresh().await?;
            for c in engine.channels() {
                if *json {
                    out.line(format!(
                        "{}",
                        serde_json::json!({"name": c.name, "status": c.status.word(), "members": c.members, "unread": c.unread})
                    ));
                } else {
                    out.line(format!(
                        "{}\t{}\t{} members\t{} unread",
                        c.name,
                        c.status.word(),
                        c.members,
                        c.unread
                    ));
                }
            }
        }
        Command::Members { channel, json } => {
            engine.refresh().await?;
            for m in engine.members(channel)? {
                if *json {
                    out.line(format!(
                        "{}",
                        serde_json::json!({"name": m.name, "fingerprint": m.fingerprint.to_string(), "verified": m.verified, "you": m.you})
                    ));
                } else {
                    let you = if m.you { " (you)" } else { "" };
                    let v = if m.verified { "verified" } else { "unverified" };
                    out.line(format!("{}{you}\t{}\t{v}", m.name, m.fingerprint));
                }
            }
        }
        Command::Verify {
            channel,
            member,
            confirm,
        } => {
            engine.refresh().await?;
            let (number, m) = engine.verify(channel, member, *confirm)?;
            out.line(number);
            if *confirm {
                out.eline(format!("{} is now marked verified in {channel}", m.name));
            } else {
                out.eline(format!(
                    "compare this number with {} in person or by voice; if it matches, run `backchannel verify {channel} {member} --confirm`",
                    m.name
                ));
            }
        }
        Command::Remove { channel, member } => {
            let name = engine.remove(channel, member).await?;
            out.line(format!("removed {name} from {channel}"));
        }
        Command::Leave { channel } => {
            engine.leave(channel).await?;
            out.line(format!("left {channel}"));
        }
        Command::Close { channel } => {
            engine.close(channel).await?;
            out.line(format!("closed {channel}"));
        }
        Command::Update { channel } => {
            engine.update_keys(channel).await?;
            out.line(format!("keys and mailbox rotated in {channel}"));
        }
        Command::Debug {
            command: DebugCommand::Mailbox { channel },
        } => {
            let k = engine.debug_mailbox(channel)?;
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            out.line(format!(
                "{}",
                serde_json::json!({
                    "relay": k.address.relay.to_string(),
                    "mailbox": hex(&k.id().0),
                    "send": hex(&k.address.send.0),
                    "seal": hex(&k.address.seal.0),
                })
            ));
        }
        Command::WatchOnce { channel, json } => print_unread(engine, channel.as_deref(), *json, out)?,
        Command::Relay { .. }
        | Command::Demo
        | Command::Bench { .. }
        | Command::Init { .. }
        | Command::Daemon { .. } => {}
    }
    Ok(())
}

async fn run_bench(what: &BenchCommand) -> Result<(), Box<dyn std::error::Error>> {
    let (report, json) = match what {
        BenchCommand::Relay {
            storage:
                StorageArgs {
                    store,
                    nats,
                    nats_replicas,
                },
            relays,
            clients,
            messages,
            window,
            rate,
            json,
        } => {
            let store = match store {
                StoreKind::Embedded if nats.is_empty() && nats_replicas.is_none() && *relays == 1 => {
                    bench::Store::Embedded
                }
                StoreKind::Embedded => {
                    return Err("--nats, --nats-replicas and --relays above 1 need --store nats".into())
                }
                StoreKind::Nats if nats.is_empty() => {
                    return Err("--store nats needs at least one --nats nats://HOST:PORT".into())
                }
                StoreKind::Nats => bench::Store::Nats {
                    urls: nats.clone(),
                    replicas: *nats_replicas,
                },
            };
            let settings = bench::RelayBench {
                store,
                relays: *relays,
                clients: *clients,
                messages: *messages,
                window: *window,
                rate: *rate,
            };
            (bench::relay(&settings).await.map_err(|e| e.to_string())?, *json)
        }
        BenchCommand::Connections { count, json } => {
            (bench::connections(*count).await.map_err(|e| e.to_string())?, *json)
        }
    };
    if json {
        println!("{report}");
    } else if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            println!("{k}: {v}");
        }
    }
    Ok(())
}

async fn run_relay(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let Command::Relay {
        listen,
        data,
        storage: StorageArgs {
            store,
            nats,
            nats_replicas,
        },
        advertise,
        max_connections,
        max_connections_per_address,
        max_mailboxes_per_connection,
        max_envelopes_per_mailbox,
        max_stored_envelopes,
        max_requests_per_second,
        request_burst,
        handshake_timeout,
        idle_timeout,
        envelope_ttl,
        sweep_interval,
        stats_interval,
        shutdown_grace,
    } = &args.command
    else {
        return Ok(());
    };
    if *store == StoreKind::Nats && nats.is_empty() {
        return Err("--store nats needs at least one --nats nats://HOST:PORT".into());
    }
    if *store == StoreKind::Embedded && (!nats.is_empty() || nats_replicas.is_some()) {
        return Err("--nats and --nats-replicas need --store nats".into());
    }
    // RUST_LOG sets a level for backchannel's own crates only: dependencies
    // (rustls, tungstenite) are capped at `warn`, because at debug and trace
    // they log peer addresses and handshake details, which our logs must not hold.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "warn,backchannel_relay={level},backchannel={level}"
        )))
        .init();
    let limits = Limits {
        max_connections: *max_connections,
        max_connections_per_address: *max_connections_per_address,
        max_mailboxes_per_connection: *max_mailboxes_per_connection,
        max_envelopes_per_mailbox: *max_envelopes_per_mailbox,
        max_stored_envelopes: *max_stored_envelopes,
        max_requests_per_second: *max_requests_per_second,
        request_burst: *request_burst,
        handshake_timeout: *handshake_timeout,
        idle_timeout: *idle_timeout,
        envelope_ttl: *envelope_ttl,
        sweep_interval: *sweep_interval,
        stats_interval: *stats_interval,
        shutdown_grace: *shutdown_grace,
        ..Limits::default()
    };
    let relay = match store {
        StoreKind::Embedded => Relay::open(data.clone(), limits)?,
        StoreKind::Nats => {
            let config = NatsConfig {
                urls: nats.clone(),
                replicas: *nats_replicas,
                quota: Quota {
                    per_mailbox: limits.max_envelopes_per_mailbox,
                    total: limits.max_stored_envelopes,
                },
                ttl: limits.envelope_ttl,
            };
            Relay::open_nats(config, limits).await?
        }
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("could not listen on {listen} ({e}); choose another --listen address"))?;
    let local = listener.local_addr()?;
    let host = advertise.clone().unwrap_or_else(|| local.ip().to_string());
    let address = RelayAddress {
        pin: relay.pin().0,
        host,
        port: local.port(),
    };
    println!("relay address: {address}");
    std::io::stdout().flush()?;
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    relay.serve(listener, shutdown).await;
    Ok(())
}
