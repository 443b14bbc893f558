//! Argument parsing and output formatting.

use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use backchannel_client::engine::{FileProgress, FileView, Lifetime, MessageView, Warning};
use backchannel_client::socks::ProxyAddr;
use backchannel_client::state::EventKind;
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
    /// Send a message, or a file.
    Send {
        channel: String,
        /// The text (or use --file).
        text: Option<String>,
        /// Send a file (any size up to 4 GiB). An interrupted transfer resumes when the
        /// same command runs again.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Show messages. Files that have arrived completely are saved into --save-to.
    Read {
        channel: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// All messages, not only unread ones.
        #[arg(long)]
        all: bool,
        /// Where received files are saved.
        #[arg(long, value_name = "DIR", default_value = "backchannel-files")]
        save_to: PathBuf,
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
        /// Every member's client deletes each message this long after it was sent (e.g. 1h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        disappear: Option<Duration>,
        /// The channel closes on its own this long after now (e.g. 30d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<Duration>,
    },
}

#[derive(Subcommand, Debug)]
enum DropCommand {
    /// Create a drop box at your relay and print its public address (starts "bc-drop:").
    Create {
        name: String,
        /// Proof of work the relay demands per envelope, in bits (default 20: about a
        /// million hashes, a tenth of a second of one CPU core, per 4 KiB; each further
        /// bit doubles it).
        #[arg(long, value_name = "BITS")]
        pow_bits: Option<u8>,
    },
    /// Print a drop box's public address again.
    Address { name: String },
    /// Leave an anonymous letter at a drop box address (needs no `init`). Prints a
    /// receipt (starts "bc-receipt:") that reads the owner's reply.
    Send {
        address: String,
        /// The text (optional with --file).
        text: Option<String>,
        /// Attach a file (at most 8 MiB).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Read the owner's replies to a letter, with the receipt `drop send` printed. Each
    /// reply is shown once, then deleted from the relay.
    Check {
        /// The receipt; without it, it is read from standard input (so it stays out of
        /// the shell's history and the process list).
        receipt: Option<String>,
    },
    /// Show the letters in one of your drop boxes.
    Read {
        name: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// All letters, not only unread ones.
        #[arg(long)]
        all: bool,
        /// Where attached files are saved.
        #[arg(long, value_name = "DIR", default_value = "backchannel-files")]
        save_to: PathBuf,
    },
    /// Answer a letter (its source reads the answer with its receipt).
    Reply { name: String, id: String, text: String },
}

#[derive(Subcommand, Debug)]
enum CourierCommand {
    /// Write what is waiting for the channel's other members (including messages queued
    /// while no relay answered) into one sealed file. They stay queued for the relay too.
    Export {
        channel: String,
        /// The file to write (it must not exist yet).
        #[arg(long)]
        to: PathBuf,
    },
    /// Deliver a bundle's messages for your channels. A modified bundle is refused whole.
    Import { file: PathBuf },
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
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("\"{s}\" is not a duration like 30s, 10m, 24h or 7d")),
    };
    let secs = n
        .checked_mul(unit)
        .ok_or_else(|| format!("\"{s}\" is longer than any duration backchannel can keep"))?;
    Ok(Duration::from_secs(secs))
}

/// Parses a cover rate like `4/s` or `30/m` into the period between ticks.
/// The progress bar of `send --file`: drawn on a terminal only.
struct FileBar(Option<indicatif::ProgressBar>);

impl FileBar {
    fn new(terminal: bool) -> Self {
        if !terminal {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(Some(bar))
    }

    fn update(&self, p: FileProgress) {
        let Some(bar) = &self.0 else {
            return;
        };
        match p {
            FileProgress::Start { total, done } => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(if done > 0 { "resuming" } else { "sending" });
            }
            FileProgress::Sent(n) => {
                bar.set_position(n);
                bar.set_message("sending");
            }
            FileProgress::Waiting => bar.set_message("waiting for the recipient to fetch"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// `drop send`: no home, no identity; only the address, the text and the network.
async fn drop_send(
    args: &Args,
    address: &str,
    text: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    use backchannel_core::drop::{DropAddress, LetterFile, MAX_LETTER_FILE};
    let to = DropAddress::from_text(address.trim()).map_err(|e| ClientError::Usage(e.to_string()))?;
    let file = match file {
        None => None,
        Some(path) => {
            let cannot = |e: std::io::Error| ClientError::Usage(format!("cannot read {}: {e}", path.display()));
            let len = std::fs::metadata(path).map_err(cannot)?.len();
            if len > MAX_LETTER_FILE as u64 {
                return Err(Box::new(ClientError::Usage(format!(
                    "{} is too large for a letter (at most {} MiB)",
                    path.display(),
                    MAX_LETTER_FILE >> 20
                ))));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            Some(LetterFile {
                name,
                data: std::fs::read(path).map_err(cannot)?,
            })
        }
    };
    if text.is_none() && file.is_none() {
        return Err(Box::new(ClientError::Usage(
            "give the letter's text, or --file PATH".into(),
        )));
    }
    let terminal = std::io::stderr().is_terminal();
    let bits = to.pow_bits;
    let receipt = backchannel_client::letter::send_letter(
        &to,
        text.unwrap_or_default().to_string(),
        file,
        proxy_arg(args),
        |i, n| {
            if terminal && i < n {
                eprint!(
                    "\rsealing; proof of work ({bits} bits) for envelope {} of {n}...",
                    i + 1
                );
            } else if terminal {
                eprintln!();
            }
        },
    )
    .await?;
    println!("{}", receipt.to_text());
    eprintln!(
        "letter delivered. Keep the receipt above secret: it is the only way to read a reply \
         (`backchannel drop check RECEIPT`), and whoever holds it can read the reply too."
    );
    Ok(())
}

/// `drop check`: shows the replies to a letter with its receipt, and deletes them
/// from the relay.
async fn drop_check(args: &Args, receipt: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    let text = match receipt {
        Some(r) => r.to_string(),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("receipt (bc-receipt:...):");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| ClientError::Usage(format!("cannot read the receipt from standard input: {e}")))?;
            line
        }
    };
    let receipt =
        backchannel_core::drop::Receipt::from_text(text.trim()).map_err(|e| ClientError::Usage(e.to_string()))?;
    let mut stdout = std::io::stdout();
    let shown = backchannel_client::letter::check_replies(&receipt, proxy_arg(args), |reply| {
        // On the screen (or in the pipe) before the relay deletes it.
        writeln!(stdout, "{}", escape_controls(reply))?;
        stdout.flush()
    })
    .await?;
    if shown == 0 {
        eprintln!("no new reply; replies already shown are deleted from the relay");
    }
    Ok(())
}

/// Writes a file that must not exist yet, readable only by its owner, durably.
fn write_new_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), ClientError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ClientError::Usage(format!("{} already exists; choose another file name", path.display()))
        } else {
            ClientError::Usage(format!("cannot write {}: {e}", path.display()))
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ClientError::Usage(format!("cannot write {}: {e}", path.display())))
}

/// Reads a courier bundle, refusing one larger than any bundle can be.
fn read_bundle(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    let cannot = |e: std::io::Error| ClientError::Usage(format!("cannot read {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > backchannel_core::courier::MAX_FILE_SIZE as u64 {
        return Err(ClientError::Courier(format!(
            "{} is larger than any backchannel bundle; it is not one",
            path.display()
        )));
    }
    std::fs::read(path).map_err(cannot)
}

/// A duration as a person would write it: the largest whole unit.
fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= n && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

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

    /// Whether progress can be drawn: stderr is a terminal (never for a daemon's caller).
    pub(crate) fn is_terminal(&self) -> bool {
        self.buffer.is_none() && std::io::stderr().is_terminal()
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
        // Warnings name members and channels, names that come from the network.
        let text = escape_controls(&w.text);
        match &w.channel {
            Some(c) => out.eline(format!("warning: [{}] {text}", escape_controls(c))),
            None => out.eline(format!("warning: {text}")),
        }
    }
}

fn print_message(out: &Out, m: &MessageView, json: bool) {
    let msg = &m.message;
    if json {
        let line = match &msg.event {
            None => {
                let mut line = serde_json::json!({
                    "id": msg.id,
                    "channel": m.channel,
                    "from": msg.from,
                    "from_fingerprint": m.from_fingerprint.to_string(),
                    "verified": m.verified,
                    "sent_at": msg.sent_at,
                    "text": msg.text,
                });
                if let Some(f) = &m.file {
                    line["file"] = serde_json::json!({
                        "name": f.name, "size": f.size, "sha256": f.sha256, "status": f.status,
                        "parts_received": f.parts.0, "parts": f.parts.1, "saved_to": f.saved_to,
                    });
                }
                line
            }
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
                out.line(format!(
                    "[{h:02}:{mi:02}:{s:02}] {}{mark}: {}",
                    escape_controls(&msg.from),
                    escape_controls(&msg.text)
                ));
                match &m.file {
                    Some(FileView { saved_to: Some(p), .. }) => {
                        out.line(format!("           saved to {p} (SHA-256 checked)"))
                    }
                    Some(f) if f.status == "receiving" => out.line(format!(
                        "           arriving: {} of {} parts so far",
                        f.parts.0, f.parts.1
                    )),
                    Some(f) if f.status == "damaged" => {
                        out.line("           arrived damaged and was discarded; ask for it again")
                    }
                    _ => {}
                }
            }
            Some(EventKind::Rejected) => out.line(format!("[{h:02}:{mi:02}:{s:02}] !! {}", escape_controls(&msg.text))),
            Some(_) => out.line(format!("[{h:02}:{mi:02}:{s:02}] * {}", escape_controls(&msg.text))),
        }
    }
}

/// Text from the network as it may reach a terminal: control characters (escape
/// sequences) and invisible formatting characters (bidirectional overrides) are shown
/// as `\u{..}` escapes, and every line after the first is indented, so that no
/// message can redraw the screen or pass a line of its own off as another message.
fn escape_controls(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            '\t' => out.push(c),
            c if c.is_control() || backchannel_core::message::is_format_char(c) => {
                // Writing into a String cannot fail.
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
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
        Command::Drop {
            command: DropCommand::Send { address, text, file },
        } => return drop_send(&args, address, text.as_deref(), file.as_deref()).await,
        Command::Drop {
            command: DropCommand::Check { receipt },
        } => return drop_check(&args, receipt.as_deref()).await,
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
        Command::Relay { .. }
            | Command::Demo
            | Command::Bench { .. }
            | Command::Init { .. }
            | Command::Daemon { .. }
            | Command::Drop {
                command: DropCommand::Send { .. } | DropCommand::Check { .. }
            }
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
            command:
                ChannelCommand::New {
                    channel,
                    classical,
                    disappear,
                    expires,
                },
        } => {
            let suite = if *classical {
                Suite::Classical
            } else {
                Suite::PostQuantum
            };
            let lifetime = Lifetime {
                disappear: *disappear,
                expires: *expires,
            };
            engine.channel_new(channel, suite, lifetime).await?;
            out.line(format!("channel {channel} created"));
            if let Some(d) = disappear {
                out.line(format!(
                    "messages disappear from every member's device {} after they are sent",
                    show_duration(*d)
                ));
            }
            if let Some(d) = expires {
                out.line(format!("the channel closes on its own in {}", show_duration(*d)));
            }
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
        Command::Send { channel, text, file } => match (text, file) {
            (Some(t), None) => {
                engine.send(channel, t).await?;
                out.line("sent");
            }
            (None, Some(f)) => {
                let path = cwd.join(f);
                let bar = FileBar::new(out.is_terminal());
                let mut report = |p: FileProgress| {
                    if let FileProgress::Start { total, done } = p {
                        if done > 0 {
                            out.eline(format!(
                                "resuming an interrupted transfer: {done} of {total} bytes were already sent"
                            ));
                        }
                    }
                    bar.update(p);
                };
                let result = engine.send_file(channel, &path, &mut report).await;
                bar.finish();
                result?;
                out.line(format!("sent {}", path.display()));
            }
            _ => {
                return Err(Box::new(ClientError::Usage(
                    "give the message text or --file PATH, not both".into(),
                )))
            }
        },
        Command::Read {
            channel,
            json,
            all,
            save_to,
        } => {
            if let Err(e) = engine.refresh().await {
                out.eline(format!("warning: could not sync ({e}); showing what is stored"));
            }
            // Every file that has arrived completely is saved, also one whose message
            // was shown by an earlier `read` while its parts were still arriving.
            let dir = cwd.join(save_to);
            let mut saved = Vec::new();
            for id in engine.unsaved_files(channel) {
                match engine.save_received_file(channel, &id, &dir) {
                    Ok(_) => saved.push(id),
                    Err(e) => out.eline(format!("warning: {e}")),
                }
            }
            let shown = engine.read(channel, *all)?;
            for m in &shown {
                print_message(out, m, *json);
            }
            for id in saved.iter().filter(|id| !shown.iter().any(|m| &&m.message.id == id)) {
                let Some(f) = engine.file_view(channel, id) else {
                    continue;
                };
                let path = f.saved_to.clone().unwrap_or_default();
                if *json {
                    out.line(serde_json::json!({
                        "event": "file_saved", "id": id, "channel": channel,
                        "file": {"name": f.name, "size": f.size, "sha256": f.sha256, "saved_to": path},
                    }));
                } else {
                    out.line(format!("saved {} to {path} (SHA-256 checked)", f.name));
                }
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
                        serde_json::json!({"name": c.name, "status": c.status.word(), "members": c.members, "unread": c.unread,
                            "disappear_after_s": c.disappear_after, "expires_at": c.expires_at})
                    ));
                } else {
                    let mut lifetime = String::new();
                    if c.disappear_after > 0 {
                        lifetime.push_str(&format!("\tmessages disappear after {}s", c.disappear_after));
                    }
                    if c.expires_at > 0 {
                        lifetime.push_str(&format!("\tcloses at {} (Unix time)", c.expires_at));
                    }
                    out.line(format!(
                        "{}\t{}\t{} members\t{} unread{lifetime}",
                        escape_controls(&c.name),
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
                    out.line(format!("{}{you}\t{}\t{v}", escape_controls(&m.name), m.fingerprint));
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
        Command::Courier {
            command: CourierCommand::Export { channel, to },
        } => {
            let (bundle, n) = engine.courier_export(channel)?;
            let path = cwd.join(to);
            write_new_file(&path, &bundle)?;
            out.line(format!(
                "wrote {}: {n} envelope(s) for the other members of {channel}, {} bytes; \
                 they stay queued for the relay too, and each member sees each message once",
                path.display(),
                bundle.len()
            ));
        }
        Command::Courier {
            command: CourierCommand::Import { file },
        } => {
            let path = cwd.join(file);
            let bundle = read_bundle(&path)?;
            let report = engine.courier_import(&bundle).await?;
            if report.again {
                out.line("this bundle was imported here before; nothing in it is shown twice");
            }
            if report.for_us == 0 {
                out.line("the bundle holds nothing for you (it was made for other members)");
            }
            for (channel, n) in &report.new {
                out.line(format!("{n} new in {channel}; `backchannel read {channel}` shows them"));
            }
            if report.for_us > 0 && report.new.is_empty() && !report.again {
                out.line("nothing new: every message in it had already arrived");
            }
        }
        Command::Drop {
            command: DropCommand::Create { name, pow_bits },
        } => {
            let address = engine.drop_create(name, *pow_bits).await?;
            out.line(&address);
            out.eline(format!(
                "drop box {name} created: publish this address; anyone can leave a sealed letter with \
                 `backchannel drop send ADDRESS TEXT`, and `backchannel drop read {name}` shows them"
            ));
        }
        Command::Drop {
            command: DropCommand::Address { name },
        } => out.line(engine.drop_address(name)?),
        Command::Drop {
            command:
                DropCommand::Read {
                    name,
                    json,
                    all,
                    save_to,
                },
        } => {
            if let Err(e) = engine.refresh().await {
                out.eline(format!("warning: could not sync ({e}); showing what is stored"));
            }
            for l in engine.drop_read(name, *all, &cwd.join(save_to))? {
                if *json {
                    out.line(serde_json::json!({
                        "id": l.id, "drop": l.drop, "received_at": l.received_at,
                        "text": l.text, "file": l.file, "can_reply": l.can_reply,
                    }));
                } else {
                    let reply = if l.can_reply { "" } else { " (no reply possible)" };
                    out.line(format!(
                        "[{}] letter {}{reply}: {}",
                        l.received_at,
                        l.id,
                        escape_controls(&l.text)
                    ));
                    if let Some(f) = &l.file {
                        out.line(format!("  attached file saved as {f}"));
                    }
                }
            }
        }
        Command::Drop {
            command: DropCommand::Reply { name, id, text },
        } => {
            // Offline, the reply is queued like any message (drop_reply says so).
            if let Err(e) = engine.refresh().await {
                out.eline(format!("warning: could not sync ({e})"));
            }
            engine.drop_reply(name, id, text).await?;
            out.line("reply sent; its source reads it with its receipt");
        }
        Command::Drop {
            command: DropCommand::Send { .. } | DropCommand::Check { .. },
        } => {}
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

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn text_from_the_network_cannot_drive_the_terminal() {
        // An escape sequence that would clear the screen, a right-to-left override,
        // and a line break that would pass off a line as another message.
        let hostile = "ok\u{1b}[2J\u{202e}gnp.exe\n[09:00:00] bob: planted";
        let shown = escape_controls(hostile);
        assert_eq!(shown, "ok\\u{001b}[2J\\u{202e}gnp.exe\n    [09:00:00] bob: planted");
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'));
        assert_eq!(
            escape_controls("plain text, ünïcode, \tand a tab"),
            "plain text, ünïcode, \tand a tab"
        );
    }
}
