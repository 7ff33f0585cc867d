//! An open-loop HTTP/1.1 load generator for `bench/run`'s fixed-rate step:
//! requests are scheduled at a fixed rate over N keep-alive connections and
//! each latency is measured from the request's *intended* send time, so a
//! stall counts against every request it delays (wrk2's correction for
//! coordinated omission). Prints one line of JSON.
//!
//! Run with `loadgen --url http://127.0.0.1:8080/bytes/0 --rate 20000
//! --duration 10 --connections 64 [--header 'x-api-key: k']`.
//!
//! How it schedules: request `i` of the run is due at `start + i / rate` and
//! belongs to connection `i mod N`; each connection sends its share in order,
//! one at a time. If the connection is still busy when a request is due, the
//! request's clock starts at its due time, so the wait is part of its latency.
//! If the connection is idle, the request is sent when tokio's timer fires (up
//! to 1 ms late, at millisecond granularity) and its clock starts then: that
//! lateness is the generator's, not the server's.
//!
//! Bounded: the schedule ends after `--duration`; requests still queued or in
//! flight `--grace` seconds later are given up, counted as `unfinished`, and
//! enter the percentiles with their age at that moment (so the percentiles
//! are then lower bounds).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What to run, from the command line.
struct Plan {
    host: String,
    path: String,
    rate: f64,
    duration: Duration,
    grace: Duration,
    connections: usize,
    headers: Vec<(String, String)>,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    /// Latency of each finished (or given-up) request, µs from its intended send time.
    latencies_us: Vec<u64>,
    scheduled: u64,
    completed: u64,
    errors: u64,
    unfinished: u64,
    /// When this connection's last response arrived.
    last_done: Option<Instant>,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --url http://HOST:PORT/PATH --rate REQ_PER_S --duration SECONDS \
         [--connections N] [--grace SECONDS] [--header 'name: value']..."
    );
    std::process::exit(2)
}

fn parse_args() -> Plan {
    let mut url = None;
    let (mut rate, mut duration, mut grace, mut connections) = (None, None, 2.0, 64usize);
    let mut headers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => url = Some(value),
            "--rate" => rate = value.parse::<f64>().ok(),
            "--duration" => duration = value.parse::<f64>().ok(),
            "--grace" => grace = value.parse::<f64>().unwrap_or_else(|_| usage()),
            "--connections" => connections = value.parse().unwrap_or_else(|_| usage()),
            "--header" => {
                let (name, v) = value.split_once(':').unwrap_or_else(|| usage());
                headers.push((name.trim().to_owned(), v.trim().to_owned()));
            }
            _ => usage(),
        }
    }
    let (Some(url), Some(rate), Some(duration)) = (url, rate, duration) else {
        usage()
    };
    let rest = url.strip_prefix("http://").unwrap_or_else(|| usage());
    let (host, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    };
    if rate <= 0.0 || duration <= 0.0 || connections == 0 {
        usage()
    }
    Plan {
        host,
        path,
        rate,
        duration: Duration::from_secs_f64(duration),
        grace: Duration::from_secs_f64(grace),
        connections,
        headers,
    }
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(host: &str) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request on `sender`; true when it came back 2xx with its whole body.
async fn exchange(sender: &mut Sender, plan: &Plan) -> bool {
    let mut req = Request::get(plan.path.as_str()).header(header::HOST, plan.host.as_str());
    for (name, value) in &plan.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let Ok(req) = req.body(Empty::new()) else {
        return false;
    };
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED;
            resp.into_body().collect().await.is_ok() && ok
        }
        Err(_) => false,
    }
}

/// Serves connection `index`'s share of the schedule: requests `index`,
/// `index + N`, `index + 2N`, ... of the whole run.
async fn run_connection(mut sender: Sender, index: usize, plan: &Plan, start: Instant) -> Tally {
    let end = start + plan.duration;
    let give_up = end + plan.grace;
    // This connection's k-th request is request `index + k * N` of the run.
    let due = |k: u64| {
        start
            + Duration::from_secs_f64(
                (index as u64 + k * plan.connections as u64) as f64 / plan.rate,
            )
    };
    let mut tally = Tally::default();
    let mut k = 0u64;
    loop {
        let intended = due(k);
        if intended >= end {
            break;
        }
        k += 1;
        tally.scheduled += 1;
        // Idle when the request is due: the clock starts when it is sent, so
        // the timer's own lateness (tokio's is up to 1 ms) is not charged to
        // the server. Still busy: the clock started when it was due.
        let from = if Instant::now() < intended {
            tokio::time::sleep_until(intended).await;
            Instant::now()
        } else {
            intended
        };
        match tokio::time::timeout_at(give_up, exchange(&mut sender, plan)).await {
            Ok(ok) => {
                let now = Instant::now();
                tally.latencies_us.push((now - from).as_micros() as u64);
                tally.last_done = Some(now);
                if ok {
                    tally.completed += 1;
                } else {
                    tally.errors += 1;
                    // The connection may be dead; a new one keeps the rest of
                    // this share of the schedule measurable.
                    if let Ok(s) = connect(&plan.host).await {
                        sender = s;
                    }
                }
            }
            Err(_) => {
                // Given up: this request and every later one of this share
                // enter with their age at `give_up`.
                tally.unfinished += 1;
                tally
                    .latencies_us
                    .push((give_up - intended).as_micros() as u64);
                loop {
                    let intended = due(k);
                    if intended >= end {
                        break;
                    }
                    k += 1;
                    tally.scheduled += 1;
                    tally.unfinished += 1;
                    tally
                        .latencies_us
                        .push((give_up - intended).as_micros() as u64);
                }
                break;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let plan = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(plan));
}

async fn run(plan: Plan) {
    let mut conns = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        match connect(&plan.host).await {
            Ok(s) => conns.push(s),
            Err(e) => {
                eprintln!("loadgen: cannot connect to {}: {e}", plan.host);
                std::process::exit(1);
            }
        }
    }

    // Connections are open before the clock starts, so connecting is not
    // charged to the first requests.
    let start = Instant::now() + Duration::from_millis(10);
    let plan = std::sync::Arc::new(plan);
    let mut tasks = Vec::with_capacity(conns.len());
    for (index, sender) in conns.into_iter().enumerate() {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            run_connection(sender, index, &plan, start).await
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("connection task");
        all.latencies_us.extend(t.latencies_us);
        all.scheduled += t.scheduled;
        all.completed += t.completed;
        all.errors += t.errors;
        all.unfinished += t.unfinished;
        all.last_done = all.last_done.max(t.last_done);
    }

    all.latencies_us.sort_unstable();
    let elapsed = all
        .last_done
        .map_or(plan.duration, |t| t.saturating_duration_since(start))
        .max(plan.duration);
    let achieved = (all.completed + all.errors) as f64 / elapsed.as_secs_f64();
    let report = serde_json::json!({
        "rate": plan.rate,
        "connections": plan.connections,
        "duration_s": plan.duration.as_secs_f64(),
        "scheduled": all.scheduled,
        "completed": all.completed,
        "errors": all.errors,
        "unfinished": all.unfinished,
        "achieved_rps": (achieved * 10.0).round() / 10.0,
        "p50_us": percentile(&all.latencies_us, 50.0),
        "p99_us": percentile(&all.latencies_us, 99.0),
        "p999_us": percentile(&all.latencies_us, 99.9),
        "max_us": all.latencies_us.last().copied().unwrap_or(0),
    });
    println!("{report}");
}
