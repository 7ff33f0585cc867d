//! Connections to one endpoint, on hyper's client connection API:
//! keep-alive HTTP/1.1 connections (connect, reuse, and the retry of a
//! request that a pooled connection closed before it was written), one
//! shared HTTP/2 connection, and one-off connections for upgrades.
//!
//! A connection is checked out for one exchange and comes back when its
//! response body has been read to the end ([`PooledBody`]); a body dropped
//! half-read takes its connection with it, as hyper must close it. Idle
//! connections older than [`IDLE_TIMEOUT`] are dropped when the pool is next
//! touched, and at most `max_idle` are kept. A request that has to open a
//! connection takes a returned one instead if it comes first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::retry::is_idempotent;
use super::tls::{Connector, Stream};
use super::UpstreamErrorKind;
use crate::body::{Body, BodyError};
use crate::config::UpstreamProtocol;

/// How long an idle connection is kept for reuse.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = http1::SendRequest<Body>;

/// A failed exchange: how, and the request when it was never sent (so it
/// can go to another endpoint, whatever its method).
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) kind: UpstreamErrorKind,
    pub(crate) unsent: Option<http::Request<Body>>,
}

impl Failed {
    fn sent(kind: UpstreamErrorKind) -> Failed {
        Failed { kind, unsent: None }
    }

    fn unsent(kind: UpstreamErrorKind, req: http::Request<Body>) -> Failed {
        Failed {
            kind,
            unsent: Some(req),
        }
    }
}

impl From<UpstreamErrorKind> for Failed {
    fn from(kind: UpstreamErrorKind) -> Failed {
        Failed::sent(kind)
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Default)]
struct Slots {
    /// Most recently returned last.
    idle: Vec<Idle>,
    /// Requests connecting anew that take a returned connection instead if
    /// one comes first, so a slow connect (a dropped SYN costs a second)
    /// does not hold them while others finish.
    waiting: VecDeque<oneshot::Sender<Sender>>,
}

/// The idle connections to one endpoint, and the requests waiting for one.
pub(crate) struct EndpointPool {
    addr: SocketAddr,
    slots: Mutex<Slots>,
    max_idle: usize,
    connect_timeout: Duration,
    protocol: UpstreamProtocol,
    tls: Option<Connector>,
    /// HTTP/2: the connection all requests share while it is open, with a
    /// generation that tells a replaced one from its successor.
    h2: tokio::sync::Mutex<Option<(u64, http2::SendRequest<Body>)>>,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("addr", &self.addr)
            .finish()
    }
}

impl EndpointPool {
    pub(crate) fn new(
        addr: SocketAddr,
        max_idle: usize,
        connect_timeout: Duration,
        protocol: UpstreamProtocol,
        tls: Option<Connector>,
    ) -> EndpointPool {
        EndpointPool {
            addr,
            slots: Mutex::default(),
            max_idle,
            connect_timeout,
            protocol,
            tls,
            h2: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether requests to it go over HTTP/2.
    pub(crate) fn is_h2(&self) -> bool {
        self.protocol != UpstreamProtocol::Http1
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Send `req` (origin-form URI, `Host` set) and wait for the response
    /// head. A pooled connection that turns out closed before the request was
    /// written is replaced by a new one, once: the request never reached the
    /// endpoint, so this is safe for any method.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, Failed> {
        if self.is_h2() {
            return self.send_h2(req).await;
        }
        let (mut sender, mut reused) = match self.checkout() {
            Some(s) => (s, true),
            None => match self.connect_or_wait().await {
                Ok(s) => s,
                Err(kind) => return Err(Failed::unsent(kind, req)),
            },
        };
        // A connection comes back when its last body ends, a moment before
        // its task has seen that end: wait for it rather than open another.
        if reused && sender.ready().await.is_err() {
            sender = match self.connect().await {
                Ok(s) => s,
                Err(kind) => return Err(Failed::unsent(kind, req)),
            };
            reused = false;
        }
        // A reused connection may have been closed by the endpoint while our
        // request was on its way (it sees the close only after writing): a
        // bodiless idempotent request that got no response head is sent once
        // more on a new connection, as nginx does for a cached connection.
        // Nothing else is: a body may be half consumed, and a POST may have
        // been acted on.
        let again =
            (reused && req.body().is_end_stream() && is_idempotent(req.method())).then(|| {
                (
                    req.method().clone(),
                    req.uri().clone(),
                    req.headers().clone(),
                )
            });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.pooled(resp, sender)),
            Err(mut e) => match e.take_message() {
                None if again.is_some() && classify(e.error()) == UpstreamErrorKind::Reset => {
                    tracing::debug!(endpoint = %self.addr, error = %e.error(), "pooled connection closed under the request; sending it again on a new one");
                    let (method, uri, headers) = again.expect("checked");
                    let mut req = http::Request::new(crate::body::empty());
                    *req.method_mut() = method;
                    *req.uri_mut() = uri;
                    *req.headers_mut() = headers;
                    let mut sender = self.connect().await.map_err(Failed::sent)?;
                    match sender.try_send_request(req).await {
                        Ok(resp) => Ok(self.pooled(resp, sender)),
                        Err(mut e) => Err(Failed {
                            kind: classify(e.error()),
                            unsent: e.take_message(),
                        }),
                    }
                }
                Some(unsent) if reused => {
                    tracing::debug!(endpoint = %self.addr, error = %e.error(), "pooled connection closed; retrying on a new one");
                    let mut sender = match self.connect().await {
                        Ok(s) => s,
                        Err(kind) => return Err(Failed::unsent(kind, unsent)),
                    };
                    match sender.try_send_request(unsent).await {
                        Ok(resp) => Ok(self.pooled(resp, sender)),
                        Err(mut e) => Err(Failed {
                            kind: classify(e.error()),
                            unsent: e.take_message(),
                        }),
                    }
                }
                Some(never) => Err(Failed::unsent(classify(e.error()), never)),
                None => Err(Failed::sent(classify(e.error()))),
            },
        }
    }

    /// HTTP/2: the request on the shared connection, with the scheme and
    /// authority HTTP/2 carries as pseudo-headers.
    async fn send_h2(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Failed> {
        let (mut generation, mut sender) = match self.h2_sender(None).await {
            Ok(s) => s,
            Err(kind) => return Err(Failed::unsent(kind, req)),
        };
        if sender.ready().await.is_err() {
            // Closed since it was shared out (GOAWAY, the endpoint restarted):
            // nothing was sent on it, so a new connection is safe.
            (generation, sender) = match self.h2_sender(Some(generation)).await {
                Ok(s) => s,
                Err(kind) => return Err(Failed::unsent(kind, req)),
            };
            if let Err(e) = sender.ready().await {
                return Err(Failed::unsent(classify(&e), req));
            }
        }
        self.send_on_h2(generation, sender, req).await
    }

    async fn send_on_h2(
        &self,
        generation: u64,
        mut sender: http2::SendRequest<Body>,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Body>, Failed> {
        let authority = req
            .headers_mut()
            .remove(http::header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| {
                http::uri::Authority::try_from(self.addr.to_string())
                    .expect("an address is an authority")
            });
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(match self.protocol {
            UpstreamProtocol::H2 => http::uri::Scheme::HTTPS,
            _ => http::uri::Scheme::HTTP,
        });
        uri.authority = Some(authority);
        *req.uri_mut() = http::Uri::from_parts(uri).map_err(|_| UpstreamErrorKind::Protocol)?;
        *req.version_mut() = http::Version::HTTP_2;
        // A request without a body can be sent again as it was, should the
        // endpoint refuse it unprocessed.
        let replay = req.body().is_end_stream().then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            )
        });
        let unsent = match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp.map(crate::body::boxed)),
            Err(mut e) => match (e.take_message(), replay) {
                // Refused before it was sent (the connection went away
                // meanwhile).
                (Some(unsent), _) => unsent,
                // Sent, but the endpoint says it never processed it: its
                // GOAWAY named an earlier last stream, or it refused the
                // stream. Safe to send again (RFC 9113 §8.7).
                (None, Some((method, uri, headers))) if unprocessed(e.error()) => {
                    let mut again = http::Request::new(crate::body::empty());
                    *again.method_mut() = method;
                    *again.uri_mut() = uri;
                    *again.version_mut() = http::Version::HTTP_2;
                    *again.headers_mut() = headers;
                    again
                }
                // Sent, unprocessed, but its body is gone: the endpoint
                // refused it, and it cannot be sent again from here.
                (None, None) if unprocessed(e.error()) => {
                    return Err(Failed::sent(UpstreamErrorKind::Refused))
                }
                _ => {
                    tracing::debug!(endpoint = %self.addr, error = ?e.error(), "HTTP/2 request failed");
                    return Err(Failed::sent(classify(e.error())));
                }
            },
        };
        tracing::debug!(endpoint = %self.addr, "HTTP/2 request not processed; retrying on a new connection");
        let (_, mut sender) = match self.h2_sender(Some(generation)).await {
            Ok(s) => s,
            Err(kind) => return Err(Failed::unsent(kind, unsent)),
        };
        if let Err(e) = sender.ready().await {
            return Err(Failed::unsent(classify(&e), unsent));
        }
        match sender.try_send_request(unsent).await {
            Ok(r) => Ok(r.map(crate::body::boxed)),
            Err(mut e) => {
                tracing::debug!(endpoint = %self.addr, error = ?e.error(), "HTTP/2 request failed on a new connection");
                let kind = if unprocessed(e.error()) {
                    UpstreamErrorKind::Refused
                } else {
                    classify(e.error())
                };
                Err(Failed {
                    kind,
                    unsent: e.take_message(),
                })
            }
        }
    }

    /// The shared HTTP/2 connection and its generation, opened when there is
    /// none (one request opens it; the others wait for it rather than open
    /// their own). `broken` names a generation the caller found unusable: it
    /// is replaced, unless another request already replaced it.
    async fn h2_sender(
        &self,
        broken: Option<u64>,
    ) -> Result<(u64, http2::SendRequest<Body>), UpstreamErrorKind> {
        let mut slot = self.h2.lock().await;
        let next = match slot.as_ref() {
            Some((generation, s)) if !s.is_closed() && broken != Some(*generation) => {
                return Ok((*generation, s.clone()));
            }
            Some((generation, _)) => generation + 1,
            None => 0,
        };
        let stream = self.open().await?;
        if self.protocol == UpstreamProtocol::H2 && stream.alpn() != Some(b"h2") {
            tracing::warn!(endpoint = %self.addr, "upstream did not agree to HTTP/2 in ALPN");
            return Err(UpstreamErrorKind::Protocol);
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| classify(&e))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *slot = Some((next, sender.clone()));
        Ok((next, sender))
    }

    /// An upgrade request (WebSocket) on a connection of its own: after a
    /// 101 the connection is the tunnel's, never the pool's.
    pub(crate) async fn upgrade(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, Failed> {
        let stream = match self.open().await {
            Ok(s) => s,
            Err(kind) => return Err(Failed::unsent(kind, req)),
        };
        let (mut sender, conn) = match http1::handshake(TokioIo::new(stream)).await {
            Ok(h) => h,
            Err(e) => return Err(Failed::unsent(classify(&e), req)),
        };
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream upgrade connection ended");
            }
        });
        match sender.send_request(req).await {
            Ok(resp) => Ok(resp.map(crate::body::boxed)),
            Err(e) => Err(Failed::sent(classify(&e))),
        }
    }

    /// The response, its body tied to `sender` so the connection comes back
    /// when the body ends.
    fn pooled(
        self: &Arc<Self>,
        resp: http::Response<Incoming>,
        sender: Sender,
    ) -> http::Response<Body> {
        // A response without a body (204, 304, `Content-Length: 0`) may never
        // be polled: its connection is free now.
        if resp.body().is_end_stream() {
            self.put(sender);
            return resp.map(crate::body::boxed);
        }
        let pool = self.clone();
        resp.map(|body| {
            crate::body::boxed(PooledBody {
                inner: body,
                give_back: Some((pool, sender)),
            })
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<Sender> {
        let mut slots = self.slots();
        while let Some(i) = slots.idle.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.sender);
            }
        }
        None
    }

    /// A new connection, or a pooled one returned while it was being opened
    /// (then the new one joins the pool when it is up). `true` when pooled.
    async fn connect_or_wait(self: &Arc<Self>) -> Result<(Sender, bool), UpstreamErrorKind> {
        let (tx, mut returned) = oneshot::channel();
        {
            let mut slots = self.slots();
            slots.waiting.retain(|w| !w.is_closed());
            slots.waiting.push_back(tx);
        }
        let pool = self.clone();
        let mut connect = Box::pin(async move { pool.connect().await });
        tokio::select! {
            biased;
            r = &mut connect => r.map(|s| (s, false)),
            Ok(s) = &mut returned => {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Ok(s) = connect.await {
                        pool.put(s);
                    }
                });
                Ok((s, true))
            }
        }
    }

    /// Return a connection whose exchange has finished: to a request waiting
    /// for one, else to the idle list.
    fn put(&self, mut sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut slots = self.slots();
        while let Some(w) = slots.waiting.pop_front() {
            match w.send(sender) {
                Ok(()) => return,
                Err(s) => sender = s,
            }
        }
        slots
            .idle
            .retain(|i| !i.sender.is_closed() && now - i.since < IDLE_TIMEOUT);
        if slots.idle.len() < self.max_idle {
            slots.idle.push(Idle { sender, since: now });
        }
    }

    /// A new connection: TCP, then TLS when configured, both within the
    /// connect deadline.
    pub(crate) async fn open(&self) -> Result<Stream, UpstreamErrorKind> {
        let open = async {
            let tcp = match TcpStream::connect(self.addr).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(endpoint = %self.addr, error = %e, "upstream connect failed");
                    return Err(UpstreamErrorKind::ConnectFailed);
                }
            };
            // Request heads are small and written whole; Nagle would only
            // delay them.
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some(tls) => tls.connect(tcp, self.addr).await,
            }
        };
        match tokio::time::timeout(self.connect_timeout, open).await {
            Err(_) => Err(UpstreamErrorKind::Timeout),
            Ok(r) => r,
        }
    }

    async fn connect(&self) -> Result<Sender, UpstreamErrorKind> {
        let stream = self.open().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| classify(&e))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Whether an HTTP/2 stream failed without the endpoint processing it.
fn unprocessed(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    match e.source().and_then(|s| s.downcast_ref::<h2::Error>()) {
        Some(h2) => {
            (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        }
        None => false,
    }
}

/// What a failed exchange means for the caller.
fn classify(e: &hyper::Error) -> UpstreamErrorKind {
    if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        UpstreamErrorKind::Protocol
    } else {
        UpstreamErrorKind::Reset
    }
}

/// A response body that gives its connection back to the pool once read to
/// the end.
struct PooledBody {
    inner: Incoming,
    give_back: Option<(Arc<EndpointPool>, Sender)>,
}

impl PooledBody {
    fn finished(&mut self) {
        if let Some((pool, sender)) = self.give_back.take() {
            pool.put(sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finished(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finished(),
            // A broken body breaks its connection: never pool it.
            Poll::Ready(Some(Err(_))) => this.give_back = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
