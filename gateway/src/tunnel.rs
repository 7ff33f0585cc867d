//! WebSocket tunnels: once the upstream has answered 101, the client's and
//! the upstream's connections are spliced both ways until either side
//! closes, nothing moves for the idle timeout, or a drain reaches its
//! deadline. Bytes are counted per route and direction.
//!
//! Nothing here runs before the upstream's 101: the request path hands over
//! both connections only then (see `proxy::open_tunnel`), so a client can
//! never get a raw connection to an upstream that did not agree to one.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::request::RequestId;
use crate::server::TunnelGuard;

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Idle,
    Drain,
    Error,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle",
            End::Drain => "drain",
            End::Error => "error",
        }
    }
}

/// Splice `client` and `upstream` once both upgrades complete.
pub fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    guard: Option<TunnelGuard>,
    metrics: Arc<Metrics>,
    route: Arc<str>,
    request_id: RequestId,
) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::info!(request_id = %request_id, route = %route, error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        metrics.tunnel_opened(&route);
        let activity = Arc::new(Activity::new());
        let mut c = Counted::new(TokioIo::new(client), activity.clone());
        let mut u = Counted::new(TokioIo::new(upstream), activity.clone());
        let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
        let idle_check = async {
            loop {
                let last = activity.last();
                let at = last + idle;
                if Instant::now() >= at {
                    return;
                }
                tokio::time::sleep_until(at).await;
            }
        };
        let cut = async {
            match &guard {
                Some(g) => g.cut().await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            r = copy => match r {
                Ok(_) => End::Closed,
                Err(e) => {
                    tracing::debug!(request_id = %request_id, error = %e, "WebSocket tunnel broke");
                    End::Error
                }
            },
            _ = idle_check => End::Idle,
            _ = cut => End::Drain,
        };
        let (up, down) = (
            c.read.load(Ordering::Relaxed),
            u.read.load(Ordering::Relaxed),
        );
        metrics.tunnel_closed(&route, end.as_str(), up, down);
        tracing::info!(request_id = %request_id, route = %route, end = end.as_str(), client_to_upstream = up, upstream_to_client = down, "WebSocket tunnel closed");
        drop(guard);
    });
}

/// When either side last moved a byte.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that counts what is read from it and marks activity.
struct Counted<S> {
    inner: S,
    read: AtomicU64,
    activity: Arc<Activity>,
}

impl<S> Counted<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Counted<S> {
        Counted {
            inner,
            read: AtomicU64::new(0),
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
