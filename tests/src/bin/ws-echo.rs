//! A WebSocket echo server and a throughput client, for `bench/run`'s
//! WebSocket step.
//!
//! `ws-echo serve ADDR` echoes every message on every connection.
//! `ws-echo load URL CONNECTIONS SECONDS SIZE` keeps one message of SIZE
//! bytes in flight per connection for SECONDS and prints one line of JSON:
//! `{"messages": n, "messages_per_sec": r, "bytes_per_sec": b}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => serve(&args[1]).await,
        Some("load") if args.len() == 5 => {
            let n = args[2].parse().expect("CONNECTIONS");
            let secs = args[3].parse().expect("SECONDS");
            let size = args[4].parse().expect("SIZE");
            load(&args[1], n, Duration::from_secs_f64(secs), size).await
        }
        _ => {
            eprintln!("usage: ws-echo serve ADDR | ws-echo load URL CONNECTIONS SECONDS SIZE");
            std::process::exit(2);
        }
    }
}

async fn serve(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn load(url: &str, connections: usize, duration: Duration, size: usize) {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (url, done) = (url.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("connect");
            let payload = vec![b'x'; size];
            while Instant::now() < until {
                ws.send(Message::binary(payload.clone()))
                    .await
                    .expect("send");
                match ws.next().await {
                    Some(Ok(m)) if m.len() == size => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("bad echo: {other:?}"),
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    for t in tasks {
        t.await.expect("a connection failed");
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"messages\": {n}, \"messages_per_sec\": {:.0}, \"bytes_per_sec\": {:.0}}}",
        n as f64 / secs,
        (n as f64 * size as f64) / secs
    );
}
