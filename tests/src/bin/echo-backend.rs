//! The demo and benchmark backend: an HTTP server that echoes what it received
//! as JSON. Run with `echo-backend <name> <ip:port>`.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: echo-backend <name> <ip:port>");
        std::process::exit(2);
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    let b = wicket_tests::serve_backend(listener, name.clone());
    println!("echo backend {name} on {}", b.addr);
    std::future::pending::<()>().await;
}
