//! Write a throwaway CA and a server certificate signed by it, for the demo
//! and the benchmark's TLS step: `make-cert DIR NAME...` writes `DIR/ca.pem`,
//! `DIR/server.crt` and `DIR/server.key` (the certificate covers every NAME).

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), names) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: make-cert DIR NAME...");
        std::process::exit(2);
    };
    if names.is_empty() {
        eprintln!("usage: make-cert DIR NAME...");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the directory");
    let ca = wicket_tests::pki::Ca::new("Wicket demo CA");
    std::fs::write(dir.join("ca.pem"), &ca.pem).expect("write ca.pem");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ca.server(&names, wicket_tests::pki::Validity::Current)
        .write(&dir, "server");
}
