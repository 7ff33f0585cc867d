//! The one accept loop, for client listeners and the admin listener alike:
//! connection caps, shedding of idle connections, the handshake, header, idle
//! and drain timeouts, and HTTP/1.1 or HTTP/2 chosen from the first bytes.
//!
//! A connection's life: accepted → handshake (on a TLS listener the TLS
//! handshake, then the first byte and the whole HTTP/2 preface, all within
//! `handshake`) → served by hyper (HTTP/1.1 heads
//! within `header`) → closed when idle for `idle` (HTTP/2 with GOAWAY), when
//! shed to make room, or at drain. A connection with no request in flight is
//! *idle* from its accept on, so silent sockets are the first to be shed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::body::Body;
use crate::request::Conn;
use frames::FrameWatch;
use tls::ListenerTls;

pub mod frames;
pub mod tls;

/// How one listener treats its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `proxy` or `admin`, for logs.
    pub role: &'static str,
    /// Accept to the first byte and to the end of the HTTP/2 preface.
    pub handshake: Duration,
    /// HTTP/1.1: to read a whole request head (and so, in hyper, the longest
    /// keep-alive wait between requests).
    pub header: Duration,
    /// No request in flight for this long closes the connection.
    pub idle: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2: requests per connection handled at once; the rest wait.
    pub max_requests_in_flight: u32,
    /// HTTP/1.1: most header fields hyper parses (a backstop; the request
    /// path checks the configured limit with a JSON reply).
    pub max_headers: usize,
    /// HTTP/1.1: most bytes of request line and headers hyper buffers;
    /// HTTP/2: the header list size advertised to clients.
    pub max_head_bytes: usize,
    /// Where its connections are counted.
    pub metrics: crate::metrics::ConnMetrics,
}

impl Settings {
    /// Settings for a client listener.
    pub fn for_listener(l: &crate::config::Listener) -> Settings {
        Settings {
            role: "proxy",
            handshake: Duration::from_millis(l.timeouts.handshake_ms),
            header: Duration::from_millis(l.timeouts.header_ms),
            idle: Duration::from_millis(l.timeouts.idle_ms),
            max_connections: l.limits.max_connections,
            max_concurrent_streams: l.limits.max_concurrent_streams,
            max_requests_in_flight: l.limits.max_requests_in_flight,
            // One more than the limit, so the request path sees the excess
            // header and answers it with the JSON 431.
            max_headers: l.limits.max_headers + 1,
            // The request line plus the headers; beyond it hyper answers 431
            // itself (no body), before any of it is buffered.
            max_head_bytes: l.limits.max_headers_bytes + l.limits.max_uri_bytes + 64,
            metrics: Default::default(),
        }
    }

    /// Settings for the admin listener.
    pub fn for_admin(a: &crate::config::Admin) -> Settings {
        Settings {
            role: "admin",
            handshake: Duration::from_millis(a.timeouts.handshake_ms),
            header: Duration::from_millis(a.timeouts.header_ms),
            idle: Duration::from_millis(a.timeouts.idle_ms),
            max_connections: a.max_connections,
            max_concurrent_streams: 16,
            max_requests_in_flight: 16,
            max_headers: 64,
            max_head_bytes: 16 * 1024,
            metrics: Default::default(),
        }
    }
}

/// The request handler a listener serves with.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Serve one request (on a clone of the listener's handler).
    fn call(
        self,
        req: Request<Incoming>,
        conn: Conn,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;

    /// The TLS a new connection on listener `index` handshakes with, or
    /// `None` for cleartext.
    fn tls(&self, _index: usize) -> Option<Arc<ListenerTls>> {
        None
    }
}

// How a connection is asked to end, in rising order (a later, stronger
// request wins): not at all; gracefully (drain); gracefully and soon (an
// abusive HTTP/2 client); at once (shed, or past the drain deadline).
const RUN: u8 = 0;
const GRACEFUL: u8 = 1;
const ABUSE: u8 = 2;
const ABORT: u8 = 3;

/// One open connection, as the accept loop sees it.
struct Tracker {
    in_flight: AtomicU32,
    /// ms since the registry's epoch when the last request ended (or the
    /// connection was accepted).
    last_active_ms: AtomicU64,
    mode: AtomicU8,
    wake: Notify,
}

impl Tracker {
    fn close(&self, mode: u8) {
        self.mode.fetch_max(mode, Ordering::SeqCst);
        // Every waiter: the connection's task and each tunnel on it (an
        // HTTP/2 connection carries several); and a permit for a handshake
        // not yet waiting. A waiter in a loop reads the mode on every pass,
        // so a permit taken by another does not hide a close from it.
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}

/// A connection's place in its listener, shared by its task and by the
/// requests and tunnels on it: the listener counts the connection open (so
/// a drain waits for it) until every holder is gone.
#[derive(Clone)]
pub struct Hold(Arc<HoldInner>);

struct HoldInner {
    id: u64,
    tracker: Arc<Tracker>,
    registry: Arc<Registry>,
}

impl Drop for HoldInner {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hold({})", self.0.id)
    }
}

impl Hold {
    /// Count a tunnel (an upgraded connection) as a request in flight, so
    /// it is never shed as idle, until the guard drops.
    pub fn tunnel(&self) -> TunnelGuard {
        self.0.tracker.in_flight.fetch_add(1, Ordering::SeqCst);
        TunnelGuard(self.clone())
    }
}

/// A running tunnel's claim on its connection.
pub struct TunnelGuard(Hold);

impl TunnelGuard {
    /// Resolves when the tunnel must end now: the drain deadline passed.
    /// (A graceful drain lets tunnels run until then.)
    pub async fn cut(&self) {
        let t = &self.0 .0.tracker;
        loop {
            let woken = t.wake.notified();
            if t.mode.load(Ordering::SeqCst) == ABORT {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let inner = &self.0 .0;
        inner
            .tracker
            .last_active_ms
            .store(inner.registry.now_ms(), Ordering::Relaxed);
        inner.tracker.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections of one listener.
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Tracker>>>,
    /// Signalled each time a connection ends (drain waits on it).
    ended: Notify,
    metrics: crate::metrics::ConnMetrics,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn add(&self) -> (u64, Arc<Tracker>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = Arc::new(Tracker {
            in_flight: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
            mode: AtomicU8::new(RUN),
            wake: Notify::new(),
        });
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, t.clone());
        self.metrics.open.inc();
        (id, t)
    }

    fn remove(&self, id: u64) {
        let removed = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if removed.is_some() {
            self.metrics.open.dec();
        }
        self.ended.notify_waiters();
    }

    /// Close the connection that has been idle longest; false when none is
    /// idle (or all are already closing).
    fn shed_oldest_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = conns
            .values()
            .filter(|t| t.in_flight.load(Ordering::Relaxed) == 0)
            .filter(|t| t.mode.load(Ordering::Relaxed) != ABORT)
            .min_by_key(|t| t.last_active_ms.load(Ordering::Relaxed));
        match oldest {
            Some(t) => {
                t.close(ABORT);
                self.metrics.shed.inc();
                true
            }
            None => false,
        }
    }

    fn close_all(&self, mode: u8) {
        for t in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            t.close(mode);
        }
    }
}

/// Raise the soft open-files limit to the hard limit, so the cap on
/// connections rather than the kernel decides when to shed.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let before = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => {
                tracing::debug!(from = ?before, to = ?limit.current, "raised the open-files limit")
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
}

/// A warning that a flood would repeat thousands of times a second: logged
/// at most once a second, with how many occurrences the line stands for.
struct Throttled {
    epoch: std::sync::OnceLock<Instant>,
    next_ms: AtomicU64,
    count: AtomicU64,
}

impl Throttled {
    const fn new() -> Throttled {
        Throttled {
            epoch: std::sync::OnceLock::new(),
            next_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Count one occurrence; `Some(n)` when it is time to log the `n`
    /// occurrences since the last line.
    fn allow(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next
            || self
                .next_ms
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

static FD_WARNING: Throttled = Throttled::new();
static ABUSE_WARNING: Throttled = Throttled::new();

fn fd_exhausted(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23): out of descriptors, per process or system.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// Accept connections on `listener` and serve them with `handler` until
/// `stop` fires; then stop accepting, let in-flight requests finish for up
/// to `drain`, and cut what is left.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    index: usize,
    settings: Settings,
    handler: H,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        conns: Mutex::new(HashMap::new()),
        ended: Notify::new(),
        metrics: settings.metrics.clone(),
    });
    let settings = Arc::new(settings);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        if fd_exhausted(&e) {
                            // Make room by closing the longest-idle
                            // connection, then try again.
                            registry.shed_oldest_idle();
                            if let Some(shed) = FD_WARNING.allow() {
                                tracing::warn!(role = settings.role, error = %e, shed, "out of file descriptors; shedding the oldest idle connections");
                            }
                        } else {
                            tracing::warn!(role = settings.role, error = %e, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                if registry.len() >= settings.max_connections && !registry.shed_oldest_idle() {
                    tracing::debug!(role = settings.role, client = %peer, max = settings.max_connections, "connection refused: at the connection cap and none idle");
                    settings.metrics.refused.inc();
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let (id, tracker) = registry.add();
                let hold = Hold(Arc::new(HoldInner { id, tracker: tracker.clone(), registry: registry.clone() }));
                let conn = Conn { client: peer, scheme: "http", listener: index, tls: None, hold: Some(hold) };
                let (registry, settings, handler) = (registry.clone(), settings.clone(), handler.clone());
                tokio::spawn(async move {
                    // The connection leaves the registry when the last
                    // holder (this task, a request, a tunnel) is gone.
                    connection(stream, conn, &tracker, &registry, &settings, handler).await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let open = registry.len();
    if open == 0 {
        return;
    }
    tracing::info!(role = settings.role, connections = open, "draining");
    registry.close_all(GRACEFUL);
    let deadline = Instant::now() + drain;
    loop {
        let ended = registry.ended.notified();
        if registry.len() == 0 {
            tracing::info!(role = settings.role, "all connections drained");
            return;
        }
        if tokio::time::timeout_at(deadline, ended).await.is_err() {
            break;
        }
    }
    let cut = registry.len();
    tracing::warn!(
        role = settings.role,
        connections = cut,
        drain_ms = drain.as_millis() as u64,
        "drain deadline passed; cutting the remaining connections"
    );
    registry.close_all(ABORT);
    while registry.len() > 0 {
        let ended = registry.ended.notified();
        if registry.len() == 0 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), ended).await;
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum Protocol {
    Http1,
    Http2,
}

/// Read the first bytes: the whole HTTP/2 preface, or anything else (then
/// HTTP/1.1). `None` when the client closes or sends nothing in time.
async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8; 24],
) -> io::Result<(Protocol, usize)> {
    let mut n = 0;
    loop {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        n += read;
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((Protocol::Http1, n));
        }
        if n == H2_PREFACE.len() {
            return Ok((Protocol::Http2, n));
        }
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    mut conn: Conn,
    tracker: &Arc<Tracker>,
    registry: &Arc<Registry>,
    settings: &Settings,
    handler: H,
) {
    // The TLS handshake and the first bytes share one deadline.
    let deadline = Instant::now() + settings.handshake;
    let Some(tls) = handler.tls(conn.listener) else {
        return http(stream, conn, deadline, tracker, registry, settings, handler).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(stream);
    let accepted = tokio::select! {
        r = tokio::time::timeout_at(deadline, accept) => r,
        _ = tracker.wake.notified() => return,
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, error = %e, "TLS handshake failed");
            settings.metrics.tls_failed.inc();
            return;
        }
        Err(_) => {
            tracing::debug!(client = %conn.client, "TLS handshake timeout");
            settings.metrics.tls_timeout.inc();
            return;
        }
    };
    settings.metrics.tls_ok.inc();
    conn.tls = Some(Arc::new(tls.info(stream.get_ref().1)));
    conn.scheme = "https";
    http(stream, conn, deadline, tracker, registry, settings, handler).await
}

/// Serve HTTP/1.1 or HTTP/2, as the first bytes say, on a connection whose
/// handshake (if any) is done.
async fn http<S, H>(
    mut stream: S,
    conn: Conn,
    deadline: Instant,
    tracker: &Arc<Tracker>,
    registry: &Arc<Registry>,
    settings: &Settings,
    handler: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut buf = [0u8; 24];
    let sniffed = tokio::select! {
        r = tokio::time::timeout_at(deadline, sniff(&mut stream, &mut buf)) => r,
        _ = tracker.wake.notified() => return,
    };
    let (protocol, n) = match sniffed {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, error = %e, "connection closed before a request");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %conn.client, role = settings.role, "handshake timeout");
            return;
        }
    };
    match protocol {
        Protocol::Http1 => settings.metrics.http1.inc(),
        Protocol::Http2 => settings.metrics.http2.inc(),
    };
    let watch = matches!(protocol, Protocol::Http2).then(|| Watch {
        frames: FrameWatch::new(H2_PREFACE.len()),
        tracker: tracker.clone(),
        client: conn.client,
        abused: false,
    });
    let io = TokioIo::new(Prefixed {
        prefix: Bytes::copy_from_slice(&buf[..n]),
        inner: stream,
        watch,
    });
    // HTTP/2: a turn per bodiless request being handled, up to the response
    // head — the shape of a many-streams flood. A request with a body (an
    // upload, every gRPC call) takes no turn: while it waited its DATA would
    // fill the connection's flow-control window and stall the streams that
    // hold turns. gRPC is exempt as such too (a server-streaming call may
    // answer its head late). HTTP/1.1 has one request at a time.
    let turns = (matches!(protocol, Protocol::Http2)
        && settings.max_requests_in_flight < settings.max_concurrent_streams)
        .then(|| {
            Arc::new(tokio::sync::Semaphore::new(
                settings.max_requests_in_flight as usize,
            ))
        });
    let service = {
        let (tracker, registry, conn) = (tracker.clone(), registry.clone(), conn.clone());
        service_fn(move |req: Request<Incoming>| {
            tracker.in_flight.fetch_add(1, Ordering::SeqCst);
            let guard = InFlight {
                tracker: tracker.clone(),
                registry: registry.clone(),
            };
            let (handler, conn, turns) = (handler.clone(), conn.clone(), turns.clone());
            async move {
                // Never closed, so acquiring only waits.
                let turn = match turns {
                    Some(t) if takes_turn(&req) => t.acquire_owned().await.ok(),
                    _ => None,
                };
                let resp = handler.call(req, conn).await;
                drop(turn);
                Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked {
                    inner: body,
                    _guard: guard,
                }))
            }
        })
    };
    match protocol {
        Protocol::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(settings.header)
                .max_header_size(settings.max_head_bytes);
            if settings.max_headers != 100 {
                b.max_headers(settings.max_headers);
            }
            let c = b.serve_connection(io, service).with_upgrades();
            watch_connection(c, &conn, tracker, registry, settings).await;
        }
        Protocol::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(settings.max_concurrent_streams)
                // WebSocket over HTTP/2 (RFC 8441): `:protocol` on CONNECT.
                // Which routes take it is decided per request.
                .enable_connect_protocol()
                .max_header_list_size(settings.max_head_bytes as u32)
                .keep_alive_interval(Some(settings.idle / 2))
                .keep_alive_timeout(Duration::from_secs(20));
            let c = b.serve_connection(io, service);
            watch_connection(c, &conn, tracker, registry, settings).await;
        }
    }
}

/// Whether an HTTP/2 request waits for a turn under
/// `max_requests_in_flight`: one without a body that is not gRPC.
fn takes_turn(req: &Request<Incoming>) -> bool {
    use http_body::Body as _;
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    req.body().is_end_stream() && !grpc
}

/// A hyper connection that can be asked to finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    hyper::server::conn::http1::Connection<I, S>: Future<Output = hyper::Result<()>>,
    S: hyper::service::HttpService<Incoming>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    hyper::server::conn::http1::UpgradeableConnection<I, S>: Future<Output = hyper::Result<()>>,
    S: hyper::service::HttpService<Incoming>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    hyper::server::conn::http2::Connection<I, S, E>: Future<Output = hyper::Result<()>>,
    S: hyper::service::HttpService<Incoming>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How long a connection closed for being idle has to finish before it is
/// cut (a drain has its own deadline). Nothing is in flight on an idle
/// connection: this only lets an HTTP/2 client read the GOAWAY (hyper waits
/// for a PING ack a silent client never sends).
const GRACE: Duration = Duration::from_secs(1);
/// How long an abusive HTTP/2 connection has, after its GOAWAY, before it is
/// cut; its input is no longer read meanwhile.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

async fn watch_connection<C: Graceful>(
    c: C,
    conn: &Conn,
    tracker: &Tracker,
    registry: &Registry,
    settings: &Settings,
) {
    let mut c = std::pin::pin!(c);
    // Once hyper has been asked to finish (GOAWAY on HTTP/2), only the
    // connection's end, a cut deadline or an abort remain.
    let mut closing = false;
    let mut cut_at: Option<Instant> = None;
    loop {
        // Registered before the mode is read, so a close between the two is
        // not missed; and the mode is read on every pass, not only when woken,
        // because a tunnel on this connection may have taken the wake-up.
        let woken = tracker.wake.notified();
        let mut woken = std::pin::pin!(woken);
        woken.as_mut().enable();
        match tracker.mode.load(Ordering::SeqCst) {
            ABORT => return,
            RUN => {}
            mode => {
                if !closing {
                    c.as_mut().graceful();
                    closing = true;
                }
                if mode == ABUSE {
                    let soon = Instant::now() + ABUSE_GRACE;
                    cut_at = Some(cut_at.map_or(soon, |t| t.min(soon)));
                }
            }
        }
        let wake_at = if closing {
            cut_at
        } else {
            Some(next_idle_check(tracker, registry, settings))
        };
        let timer = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = c.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %conn.client, role = settings.role, error = %e, "connection ended with an error");
                }
                return;
            }
            // The new mode is acted on at the top of the loop.
            _ = woken => {}
            _ = timer => {
                if closing {
                    tracing::debug!(client = %conn.client, "cut after the grace period");
                    return;
                }
                let idle = tracker.in_flight.load(Ordering::Relaxed) == 0
                    && idle_for(tracker, registry) >= settings.idle;
                if idle {
                    tracing::debug!(client = %conn.client, role = settings.role, "idle timeout");
                    c.as_mut().graceful();
                    closing = true;
                    cut_at = Some(Instant::now() + GRACE);
                }
            }
        }
    }
}

fn idle_for(tracker: &Tracker, registry: &Registry) -> Duration {
    Duration::from_millis(
        registry
            .now_ms()
            .saturating_sub(tracker.last_active_ms.load(Ordering::Relaxed)),
    )
}

/// When the connection could next have been idle for `settings.idle`.
fn next_idle_check(tracker: &Tracker, registry: &Registry, settings: &Settings) -> Instant {
    if tracker.in_flight.load(Ordering::Relaxed) == 0 {
        Instant::now() + settings.idle.saturating_sub(idle_for(tracker, registry))
    } else {
        Instant::now() + settings.idle
    }
}

/// Counts a request in flight until its response body is done or dropped.
struct InFlight {
    tracker: Arc<Tracker>,
    registry: Arc<Registry>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tracker
            .last_active_ms
            .store(self.registry.now_ms(), Ordering::Relaxed);
        self.tracker.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight.
pub struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The sniffed first bytes, then the rest of the stream; on HTTP/2, with
/// the frames it carries watched for abuse.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
    watch: Option<Watch>,
}

struct Watch {
    frames: FrameWatch,
    tracker: Arc<Tracker>,
    client: std::net::SocketAddr,
    /// Judged abusive: GOAWAY is on its way and nothing more is read.
    abused: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.as_ref().is_some_and(|w| w.abused) {
            // The connection is being cut; its input is no longer served.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            let head = this.prefix.split_to(n);
            buf.put_slice(&head);
        } else {
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        if let Some(w) = &mut this.watch {
            if let Err(abuse) = w.frames.feed(&buf.filled()[before..]) {
                if let Some(connections) = ABUSE_WARNING.allow() {
                    tracing::warn!(client = %w.client, reason = %abuse, connections, "HTTP/2 abuse: GOAWAY, then the connection is cut");
                }
                w.abused = true;
                w.tracker.close(ABUSE);
                // hyper never sees the read that crossed the line (it may
                // hold a request start): no upstream call comes of it.
                buf.set_filled(before);
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
