//! The access log: one line per request, JSON or text, handed to a writer
//! thread of its own, so logging never blocks a worker and never fails a
//! request — a full queue drops the line and counts it.
//!
//! A line is written when the response body has gone to the client (or the
//! client went away), so it carries the bytes sent and the whole duration,
//! as nginx's does.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Version};
use http_body::Body as _;
use serde::Serialize;

use crate::body::{Body, BodyError};
use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::metrics::{AccessLogCounters, Metrics};
use crate::plugin::Pool;
use crate::request::RequestId;

/// Lines queued for the writer; past this, new lines are dropped (and
/// counted) rather than wait.
const QUEUE_LINES: usize = 16_384;

/// One generation's access log settings, over a writer that outlives
/// generations while its destination stays the same.
#[derive(Debug)]
pub struct AccessLog {
    sink: Arc<Sink>,
    format: AccessLogFormat,
    /// `sample_success` scaled to `u64::MAX`, compared with a random draw.
    sample_below: Option<u64>,
}

impl AccessLog {
    /// Check `cfg` and open its destination (relative paths from `base`);
    /// `None` when logging is off. The writer of `previous` is kept when the
    /// destination is the same, so a reload neither reopens nor reorders.
    /// Errors name the field under `access_log`.
    pub fn build(
        cfg: &AccessLogConfig,
        base: &Path,
        previous: Option<&AccessLog>,
        metrics: &Metrics,
    ) -> Result<Option<Arc<AccessLog>>, (String, String)> {
        if !(0.0..=1.0).contains(&cfg.sample_success) {
            return Err((
                "access_log.sample_success".into(),
                format!("must be between 0 and 1, not {}", cfg.sample_success),
            ));
        }
        if !cfg.enabled {
            return Ok(None);
        }
        let path = cfg.path.as_ref().map(|p| base.join(p));
        let sink = match previous.filter(|p| p.sink.path == path) {
            Some(p) => p.sink.clone(),
            None => Sink::open(path, metrics.access_log_counters()).map_err(|e| {
                (
                    "access_log.path".to_string(),
                    format!(
                        "cannot open {}: {e}",
                        cfg.path.as_deref().unwrap_or("stdout")
                    ),
                )
            })?,
        };
        let sample_below =
            (cfg.sample_success < 1.0).then_some((cfg.sample_success * u64::MAX as f64) as u64);
        Ok(Some(Arc::new(AccessLog {
            sink,
            format: cfg.format,
            sample_below,
        })))
    }

    /// Whether a request that ended with `status` is logged: every failure,
    /// and the configured share of successes.
    pub fn wants(&self, status: u16) -> bool {
        match self.sample_below {
            Some(below) if status < 400 => random() < below,
            _ => true,
        }
    }

    /// Reopen the file (after logrotate moved it): SIGUSR1.
    pub fn reopen(&self) {
        self.sink.reopen.store(true, Ordering::Release);
    }

    fn write(&self, record: &Record, end: &End) {
        let mut line = Vec::with_capacity(512);
        match self.format {
            AccessLogFormat::Json => json_line(&mut line, record, end),
            AccessLogFormat::Text => text_line(&mut line, record, end),
        }
        line.push(b'\n');
        self.sink.send(line);
    }
}

/// What one plugin hook decided, for the request's log line.
#[derive(Debug)]
pub struct Step {
    /// The plugin's pool (its name is what is logged).
    pub pool: Arc<Pool>,
    /// `on-request` or `on-response`.
    pub hook: &'static str,
    /// `continue`, `respond`, `replace`, `skipped` (failed, fail-open) or
    /// `refused` (failed, fail-closed).
    pub decision: &'static str,
    /// The failure kind, when it failed.
    pub failure: Option<&'static str>,
    /// How long the call took, in microseconds.
    pub us: u64,
}

/// Everything the line says, gathered when the response head is ready.
#[derive(Debug)]
pub struct Record {
    /// Wall-clock time the request arrived.
    pub time: SystemTime,
    /// When it arrived, for durations.
    pub started: Instant,
    /// Microseconds until the response head was ready.
    pub head_us: u64,
    /// The request's id.
    pub request_id: RequestId,
    /// The client's W3C trace id, when it sent a valid `traceparent`.
    pub trace_id: Option<[u8; 32]>,
    /// The client's address.
    pub client: SocketAddr,
    /// The request method.
    pub method: Method,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The authority routed (empty before it was settled).
    pub authority: String,
    /// The normalised path (the raw one for a request refused first).
    pub path: String,
    /// The client's HTTP version.
    pub version: Version,
    /// The status sent.
    pub status: u16,
    /// The route, when one matched.
    pub route: Option<Arc<str>>,
    /// The upstream called or chosen, when there was one.
    pub upstream: Option<String>,
    /// The endpoint of the last try.
    pub endpoint: Option<String>,
    /// Tries made upstream.
    pub attempts: u32,
    /// Microseconds the upstream took to answer the head.
    pub upstream_us: u64,
    /// The upstream failure kind, when it failed.
    pub upstream_error: Option<&'static str>,
    /// The gateway's error code, when the gateway answered with an error.
    pub error: Option<&'static str>,
    /// Each hook called, in order.
    pub plugins: Vec<Step>,
    /// Request body bytes read, for a request that had a body.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// The configuration generation that served it.
    pub generation: u64,
}

/// How the response ended.
struct End {
    bytes_out: u64,
    completed: bool,
    duration: Duration,
}

/// The response body, counted; the line is written when it ends or is
/// dropped (the client went away).
pub struct Logged {
    inner: Body,
    pending: Option<Box<(Record, Arc<AccessLog>)>>,
    bytes_out: u64,
    ended: bool,
}

impl Logged {
    /// Wrap `body`; `record` is written to `log` when it ends.
    pub fn wrap(body: Body, record: Record, log: Arc<AccessLog>) -> Body {
        crate::body::boxed(Logged {
            inner: body,
            pending: Some(Box::new((record, log))),
            bytes_out: 0,
            ended: false,
        })
    }

    fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            let (record, log) = &*pending;
            let end = End {
                bytes_out: self.bytes_out,
                completed: self.ended || self.inner.is_end_stream(),
                duration: record.started.elapsed(),
            };
            log.write(record, &end);
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.ended = true;
                    this.finish();
                }
            }
            Poll::Ready(None) => {
                this.ended = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The writer thread's end: lines in, reopen requests in.
#[derive(Debug)]
struct Sink {
    tx: SyncSender<Vec<u8>>,
    /// `None`: stdout.
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
    counters: AccessLogCounters,
}

impl Sink {
    fn open(path: Option<PathBuf>, counters: AccessLogCounters) -> io::Result<Arc<Sink>> {
        let out = Out::open(path.as_deref())?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            rx,
            out,
            path: path.clone(),
            reopen: reopen.clone(),
            counters: counters.clone(),
            last_warned: None,
        };
        std::thread::Builder::new()
            .name("wicket-access-log".into())
            .spawn(move || writer.run())?;
        Ok(Arc::new(Sink {
            tx,
            path,
            reopen,
            counters,
        }))
    }

    fn send(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
            }
        }
    }
}

enum Out {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Out {
    fn open(path: Option<&Path>) -> io::Result<Out> {
        Ok(match path {
            None => Out::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout())),
            Some(p) => Out::File(BufWriter::with_capacity(
                64 * 1024,
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Out::Stdout(w) => w,
            Out::File(w) => w,
        }
    }
}

struct Writer {
    rx: Receiver<Vec<u8>>,
    out: Out,
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
    counters: AccessLogCounters,
    last_warned: Option<Instant>,
}

impl Writer {
    /// Until every sender is gone (no generation uses this destination):
    /// write what is queued, flush when the queue runs dry, reopen when
    /// asked or after a failed write.
    fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => Some(line),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.out.writer().flush();
                    return;
                }
            };
            if let Some(line) = first {
                self.put(&line);
                while let Ok(line) = self.rx.try_recv() {
                    self.put(&line);
                }
                if let Err(e) = self.out.writer().flush() {
                    self.failed(&e);
                }
            }
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_now();
            }
        }
    }

    fn put(&mut self, line: &[u8]) {
        match self.out.writer().write_all(line) {
            Ok(()) => {
                self.counters.written.inc();
            }
            Err(e) => {
                self.counters.failed.inc();
                self.failed(&e);
            }
        }
    }

    /// A write failed (disk full, file removed, stdout closed): warn at
    /// most every 10 s, and reopen a file before the next batch.
    fn failed(&mut self, e: &io::Error) {
        if self
            .last_warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_warned = Some(Instant::now());
            tracing::warn!(path = ?self.path, error = %e, "access log write failed; lines are counted as failed");
        }
        if self.path.is_some() {
            self.reopen.store(true, Ordering::Release);
        }
    }

    fn reopen_now(&mut self) {
        let _ = self.out.writer().flush();
        if self.path.is_none() {
            return;
        }
        match Out::open(self.path.as_deref()) {
            Ok(out) => {
                self.out = out;
                tracing::info!(path = ?self.path, "access log reopened");
            }
            Err(e) => self.failed(&e),
        }
    }
}

/// A fast per-thread random number for sampling (xorshift64*, seeded from
/// the standard library's per-process random keys).
fn random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    request_id: &'a str,
    trace_id: Option<&'a str>,
    client_ip: String,
    client_port: u16,
    method: &'a str,
    scheme: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    head_ms: f64,
    plugins_ms: f64,
    upstream_ms: f64,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    endpoint: Option<&'a str>,
    attempts: u32,
    upstream_error: Option<&'static str>,
    error: Option<&'static str>,
    plugins: Vec<JsonStep<'a>>,
    completed: bool,
    generation: u64,
}

#[derive(Serialize)]
struct JsonStep<'a> {
    plugin: &'a str,
    hook: &'static str,
    decision: &'static str,
    ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'static str>,
}

fn json_line(out: &mut Vec<u8>, r: &Record, end: &End) {
    let time = rfc3339(r.time);
    let line = JsonLine {
        time: &time,
        request_id: r.request_id.as_str(),
        trace_id: r
            .trace_id
            .as_ref()
            .and_then(|t| std::str::from_utf8(t).ok()),
        client_ip: r.client.ip().to_string(),
        client_port: r.client.port(),
        method: r.method.as_str(),
        scheme: r.scheme,
        authority: &r.authority,
        path: &r.path,
        protocol: protocol(r.version),
        status: r.status,
        bytes_in: bytes_in(r),
        bytes_out: end.bytes_out,
        duration_ms: end.duration.as_micros() as f64 / 1000.0,
        head_ms: ms(r.head_us),
        plugins_ms: ms(r.plugins.iter().map(|s| s.us).sum()),
        upstream_ms: ms(r.upstream_us),
        route: r.route.as_deref(),
        upstream: r.upstream.as_deref(),
        endpoint: r.endpoint.as_deref(),
        attempts: r.attempts,
        upstream_error: r.upstream_error,
        error: r.error,
        plugins: r
            .plugins
            .iter()
            .map(|s| JsonStep {
                plugin: s.pool.plugin().name(),
                hook: s.hook,
                decision: s.decision,
                ms: ms(s.us),
                failure: s.failure,
            })
            .collect(),
        completed: end.completed,
        generation: r.generation,
    };
    // Serialising plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
}

fn bytes_in(r: &Record) -> u64 {
    r.bytes_in.as_ref().map_or(0, |n| n.load(Ordering::Relaxed))
}

/// `2026-12-03T12:00:00.123Z 127.0.0.1 a1b2… "GET host /path HTTP/1.1" 200
/// in=0 out=13 1.234ms route=r upstream=u endpoint=… attempts=1
/// plugins=key-auth:continue,rate-limit:respond`: fields that may hold
/// client text are escaped, so one request is one line.
fn text_line(out: &mut Vec<u8>, r: &Record, end: &End) {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{} {} {} \"{} {}://",
        rfc3339(r.time),
        r.client.ip(),
        r.request_id,
        r.method,
        r.scheme
    );
    escape_into(&mut s, &r.authority);
    escape_into(&mut s, &r.path);
    let _ = write!(
        s,
        " {}\" {} in={} out={} {:.3}ms route={} upstream={} endpoint={} attempts={}",
        protocol(r.version),
        r.status,
        bytes_in(r),
        end.bytes_out,
        end.duration.as_micros() as f64 / 1000.0,
        r.route.as_deref().unwrap_or("-"),
        r.upstream.as_deref().unwrap_or("-"),
        r.endpoint.as_deref().unwrap_or("-"),
        r.attempts,
    );
    if let Some(e) = r.error.or(r.upstream_error) {
        let _ = write!(s, " error={e}");
    }
    if !r.plugins.is_empty() {
        s.push_str(" plugins=");
        for (i, step) in r.plugins.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{}:{}", step.pool.plugin().name(), step.decision);
            if let Some(f) = step.failure {
                let _ = write!(s, ":{f}");
            }
        }
    }
    if !end.completed {
        s.push_str(" incomplete");
    }
    out.extend_from_slice(s.as_bytes());
}

fn escape_into(s: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' | '\\' | ' ' => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c => s.push(c),
        }
    }
}

/// UTC, millisecond precision: `2026-12-03T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's civil-from-days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        let t = |s: u64, ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339(t(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(t(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(t(1_796_299_376, 999)), "2026-12-03T12:02:56.999Z");
        assert_eq!(rfc3339(t(4_102_444_799, 0)), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn text_fields_stay_on_one_line() {
        let mut s = String::new();
        escape_into(&mut s, "/a b\"c\\d\ne");
        assert_eq!(s, "/a\\x20b\\x22c\\x5cd\\x0ae");
    }

    #[test]
    fn sampling_keeps_its_share_and_every_failure() {
        let metrics = Metrics::new();
        let cfg = AccessLogConfig {
            sample_success: 0.25,
            ..AccessLogConfig::default()
        };
        let log = AccessLog::build(&cfg, Path::new("."), None, &metrics)
            .unwrap()
            .unwrap();
        let kept = (0..40_000).filter(|_| log.wants(200)).count();
        assert!((9_000..11_000).contains(&kept), "{kept} of 40000 kept");
        assert!((0..1000).all(|_| log.wants(503)));
        let none = AccessLogConfig {
            sample_success: 0.0,
            ..AccessLogConfig::default()
        };
        let log = AccessLog::build(&none, Path::new("."), None, &metrics)
            .unwrap()
            .unwrap();
        assert!((0..1000).all(|_| !log.wants(200)));
        let bad = AccessLogConfig {
            sample_success: 1.5,
            ..AccessLogConfig::default()
        };
        let err = AccessLog::build(&bad, Path::new("."), None, &metrics).unwrap_err();
        assert_eq!(err.0, "access_log.sample_success");
    }
}
