//! The connection loop: TLS, WebSocket, one frame per binary message.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_core::frame::{
    decode_request, encode_response, ErrorCode, FrameError, Limits as WireLimits, Request, Response, FRAME_SIZE,
    MAX_FETCH, PROTOCOL_VERSION,
};
use backchannel_core::mailbox::{verify_open_proof, MailboxId};
use futures_util::{SinkExt, StreamExt};
use rand_core::{OsRng, RngCore};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::store::{MailboxStore, StoreError};
use crate::Limits;

/// Counters for the relay's log and for tests. Counts only.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections.
    pub connections: AtomicUsize,
    /// Connections refused at the limit.
    pub refused_connections: AtomicU64,
    /// Envelopes stored.
    pub envelopes_in: AtomicU64,
    /// Envelopes acknowledged.
    pub envelopes_acked: AtomicU64,
    /// Requests refused with a protocol error.
    pub protocol_errors: AtomicU64,
}

pub(crate) struct Shared {
    pub store: Arc<dyn MailboxStore>,
    pub limits: Limits,
    pub notify: broadcast::Sender<MailboxId>,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<Semaphore>,
    pub tls: TlsAcceptor,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ws_config() -> WebSocketConfig {
    // Small explicit buffers: tungstenite's defaults cost ~128 KiB per connection.
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(2 * FRAME_SIZE))
        .max_frame_size(Some(2 * FRAME_SIZE))
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let permit = shared.connections.clone().try_acquire_owned().ok();
            handle(tcp, shared, permit).await;
        });
    }
}

async fn handle(tcp: TcpStream, shared: Arc<Shared>, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
    let handshake = async {
        let tls = shared.tls.accept(tcp).await.ok()?;
        tokio_tungstenite::accept_async_with_config(tls, Some(ws_config()))
            .await
            .ok()
    };
    let Ok(Some(mut ws)) = tokio::time::timeout(shared.limits.handshake_timeout, handshake).await else {
        return;
    };
    if permit.is_none() {
        shared.metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
        let refuse = Response::Error {
            code: ErrorCode::TooManyConnections,
            detail: 0,
        };
        let _ = send_response(&mut ws, 0, &refuse).await;
        let _ = ws.close(None).await;
        return;
    }
    shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let mut conn = Connection {
        nonce: {
            let mut n = [0u8; 32];
            OsRng.fill_bytes(&mut n);
            n
        },
        opened: HashSet::new(),
        touched: 0,
    };
    let hello = Response::Hello {
        version: PROTOCOL_VERSION,
        nonce: conn.nonce,
        limits: WireLimits {
            max_request_frame: FRAME_SIZE as u32,
            max_envelopes_per_mailbox: shared.limits.max_envelopes_per_mailbox,
            max_mailboxes_per_connection: shared.limits.max_mailboxes_per_connection as u32,
        },
    };
    if send_response(&mut ws, 0, &hello).await.is_ok() {
        loop {
            let msg = match tokio::time::timeout(shared.limits.idle_timeout, ws.next()).await {
                Ok(Some(Ok(m))) => m,
                _ => break,
            };
            let bytes = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Text(_) => {
                    shared.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let e = Response::Error {
                        code: ErrorCode::Malformed,
                        detail: 0,
                    };
                    if send_response(&mut ws, 0, &e).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let (id, response) = match decode_request(&bytes) {
                Ok((id, req)) => (id, conn.serve(&shared, req).await),
                Err(err) => {
                    let code = match err {
                        FrameError::TooLarge(_) => ErrorCode::FrameTooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    // The request id, if the frame got that far.
                    let id = bytes
                        .get(1..5)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_be_bytes)
                        .unwrap_or(0);
                    (id, Response::Error { code, detail: 0 })
                }
            };
            if matches!(response, Response::Error { .. }) {
                shared.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
            }
            if send_response(&mut ws, id, &response).await.is_err() {
                break;
            }
        }
    }
    shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    drop(permit);
}

/// Sends a response's frames (several for a fetch), flushing once.
async fn send_response<S>(ws: &mut S, id: u32, response: &Response) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    for frame in encode_response(id, response) {
        ws.feed(Message::Binary(frame.into())).await?;
    }
    ws.flush().await
}

struct Connection {
    nonce: [u8; 32],
    opened: HashSet<MailboxId>,
    /// Mailboxes created or opened on this connection.
    touched: usize,
}

fn store_error(e: StoreError) -> Response {
    let (code, detail) = match e {
        StoreError::NoSuchMailbox => (ErrorCode::NoSuchMailbox, 0),
        StoreError::MailboxExists => (ErrorCode::MailboxExists, 0),
        StoreError::MailboxFull => (ErrorCode::MailboxFull, 0),
        StoreError::EpochConflict(next) => (ErrorCode::EpochConflict, next),
        StoreError::Storage(_) => {
            tracing::error!("storage failure");
            (ErrorCode::Storage, 0)
        }
    };
    Response::Error { code, detail }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Storage("store task failed".into())))
}

impl Connection {
    fn err(code: ErrorCode) -> Response {
        Response::Error { code, detail: 0 }
    }

    async fn serve(&mut self, shared: &Shared, req: Request) -> Response {
        let store = shared.store.clone();
        match req {
            Request::Ping => Response::Pong,
            Request::Create {
                mailbox,
                recipient_key,
                send_digest,
            } => {
                if self.touched >= shared.limits.max_mailboxes_per_connection {
                    return Self::err(ErrorCode::TooManyMailboxes);
                }
                match blocking(move || store.create(mailbox, recipient_key, send_digest)).await {
                    Ok(()) => {
                        self.touched += 1;
                        self.opened.insert(mailbox);
                        Response::Ok
                    }
                    Err(e) => store_error(e),
                }
            }
            Request::Send { send, envelope } => {
                let expires = now_secs().saturating_add(shared.limits.envelope_ttl.as_secs());
                match blocking(move || store.send(send, envelope, expires)).await {
                    Ok((mailbox, _)) => {
                        shared.metrics.envelopes_in.fetch_add(1, Ordering::Relaxed);
                        let _ = shared.notify.send(mailbox);
                        Response::Ok
                    }
                    Err(e) => store_error(e),
                }
            }
            Request::Open { mailbox, proof } => {
                if self.opened.contains(&mailbox) {
                    return Response::Ok;
                }
                if self.touched >= shared.limits.max_mailboxes_per_connection {
                    return Self::err(ErrorCode::TooManyMailboxes);
                }
                match blocking(move || store.recipient_key(mailbox)).await {
                    Ok(Some(key)) => {
                        if verify_open_proof(&key, &self.nonce, &mailbox, &proof) {
                            self.touched += 1;
                            self.opened.insert(mailbox);
                            Response::Ok
                        } else {
                            Self::err(ErrorCode::BadProof)
                        }
                    }
                    Ok(None) => Self::err(ErrorCode::NoSuchMailbox),
                    Err(e) => store_error(e),
                }
            }
            Request::Fetch { max, wait_ms } => {
                let max = max.clamp(1, MAX_FETCH) as usize;
                let wait = Duration::from_millis(u64::from(wait_ms)).min(shared.limits.max_wait);
                self.fetch(shared, max, wait).await
            }
            Request::Ack { mailbox, seq } => {
                if !self.opened.contains(&mailbox) {
                    return Self::err(ErrorCode::NotOpened);
                }
                match blocking(move || store.ack(mailbox, seq)).await {
                    Ok(()) => {
                        shared.metrics.envelopes_acked.fetch_add(1, Ordering::Relaxed);
                        Response::Ok
                    }
                    Err(e) => store_error(e),
                }
            }
            Request::Delete { mailbox } => {
                if !self.opened.contains(&mailbox) {
                    return Self::err(ErrorCode::NotOpened);
                }
                match blocking(move || store.delete(mailbox)).await {
                    Ok(()) => {
                        if self.opened.remove(&mailbox) {
                            self.touched = self.touched.saturating_sub(1);
                        }
                        Response::Ok
                    }
                    Err(e) => store_error(e),
                }
            }
            Request::Claim { send, epoch, token } => match blocking(move || store.claim(send, epoch, token)).await {
                Ok(()) => Response::Ok,
                Err(e) => store_error(e),
            },
        }
    }

    async fn fetch(&self, shared: &Shared, max: usize, wait: Duration) -> Response {
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = shared.notify.subscribe();
        let ids: Vec<MailboxId> = self.opened.iter().copied().collect();
        loop {
            let store = shared.store.clone();
            let query = ids.clone();
            match blocking(move || store.fetch(&query, max)).await {
                Ok(list) if !list.is_empty() => return Response::Envelopes(list),
                Ok(_) => {}
                Err(e) => return store_error(e),
            }
            // Wait for a delivery into one of our mailboxes, or the deadline.
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Response::Envelopes(Vec::new()),
                    Ok(Ok(id)) if self.opened.contains(&id) => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Response::Envelopes(Vec::new()),
                }
            }
        }
    }
}
