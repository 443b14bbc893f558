//! The relay's counts for a monitoring system (`relay --metrics ADDR`): Prometheus text on
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (its store answers), over
//! plain HTTP on an address the operator gives, loopback unless `--metrics-public`.
//!
//! What is exported is what the relay already counts and logs ([`Metrics`], the store's
//! totals) and the store's write times: numbers only, whose one label is a histogram
//! bucket's bound, so never an id, an address or a key. The HTTP side
//! is the least a scraper needs, and bounded: one request per connection, its head at most
//! [`MAX_REQUEST`] bytes, answered within [`DEADLINE`], at most [`MAX_SCRAPERS`] at once.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::server::{Metrics, WRITE_BUCKETS};
use crate::store::{Backend, MailboxStore, Stats};

/// Most bytes of a request's head read.
const MAX_REQUEST: usize = 2048;
/// A scrape is read and answered within this, or the connection is closed.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long the store gets to answer for `/metrics` and `/readyz`.
const STORE_DEADLINE: Duration = Duration::from_secs(2);
/// Scrapes served at once; more are closed unanswered.
const MAX_SCRAPERS: usize = 8;

/// Serves scrapes on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<Backend>) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let (metrics, store) = (metrics.clone(), store.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(tcp, &metrics, &store)).await;
            drop(permit);
        });
    }
}

/// Reads one request's head and answers it.
async fn answer(mut tcp: TcpStream, metrics: &Metrics, store: &Backend) -> std::io::Result<()> {
    let mut head = vec![0u8; MAX_REQUEST];
    let mut n = 0;
    while n < head.len() && !head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let Some(rest) = head.get_mut(n..) else { break };
        match tcp.read(rest).await? {
            0 => break,
            read => n += read,
        }
    }
    let line = head[..n].split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (status, body) = match (words.next(), words.next()) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", render(metrics, stats(store).await.as_ref())),
        (Some(b"GET"), Some(b"/healthz")) => ("200 OK", "ok\n".to_string()),
        (Some(b"GET"), Some(b"/readyz")) => match tokio::time::timeout(STORE_DEADLINE, store.ready()).await {
            Ok(Ok(())) => ("200 OK", "ready\n".to_string()),
            _ => (
                "503 Service Unavailable",
                "the store does not take writes (no quorum, or it does not answer)\n".to_string(),
            ),
        },
        (Some(b"GET"), _) => ("404 Not Found", "/metrics, /healthz or /readyz\n".to_string()),
        _ => ("405 Method Not Allowed", "GET only\n".to_string()),
    };
    let content_type = if body.starts_with('#') {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await
}

/// The store's totals, if it answers in time.
async fn stats(store: &Backend) -> Option<Stats> {
    tokio::time::timeout(STORE_DEADLINE, store.stats()).await.ok()?.ok()
}

/// The Prometheus text of the counts.
pub(crate) fn render(metrics: &Metrics, stats: Option<&Stats>) -> String {
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP backchannel_{name} {help}\n# TYPE backchannel_{name} {kind}\nbackchannel_{name} {value}\n"
        );
    };
    let open = u64::try_from(metrics.connections.load(Ordering::Relaxed)).unwrap_or(u64::MAX);
    one("connections", "gauge", "Open connections.", open);
    if let Some(s) = stats {
        one("mailboxes", "gauge", "Mailboxes in the store.", s.mailboxes);
        one("envelopes_stored", "gauge", "Envelopes in the store.", s.envelopes);
    }
    one(
        "store_up",
        "gauge",
        "1 if the store answered this scrape.",
        u64::from(stats.is_some()),
    );
    for (name, help, counter) in metrics.counters() {
        one(
            &format!("{name}_total"),
            "counter",
            help,
            counter.load(Ordering::Relaxed),
        );
    }
    // The write times, as a Prometheus histogram: the one label is a bucket's bound.
    let h = &metrics.write_times;
    out.push_str("# HELP backchannel_store_write_seconds How long the store took for each write.\n");
    out.push_str("# TYPE backchannel_store_write_seconds histogram\n");
    let mut cumulative = 0u64;
    for (bound, bucket) in WRITE_BUCKETS.iter().zip(&h.buckets) {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "backchannel_store_write_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    if let Some(above) = h.buckets.last() {
        cumulative += above.load(Ordering::Relaxed);
    }
    let _ = writeln!(
        out,
        "backchannel_store_write_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "backchannel_store_write_seconds_sum {sum}");
    let _ = writeln!(out, "backchannel_store_write_seconds_count {cumulative}");
    out
}
