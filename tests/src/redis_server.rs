//! A real `redis-server` on a free loopback port, for the state tests and the
//! state benchmark.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A `redis-server` child, killed on drop; no persistence, so a restart
/// starts empty, as a lost Redis does.
pub struct RedisServer {
    child: Option<std::process::Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Vec::new())
    }

    /// Starts one with `extra` settings (`--requirepass`, `--tls-port`, ...)
    /// after the defaults; the cleartext port still answers readiness.
    pub fn start_with(extra: Vec<String>) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: crate::free_port(),
            dir: crate::scratch_dir("redis"),
            extra,
        };
        r.spawn();
        r
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed (Debian: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it, as a crashed or unreachable Redis.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr())
    }

    /// One `PING` over a fresh connection: loading or not yet listening
    /// answers something other than `+PONG` (or, with a password, `-NOAUTH`).
    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(self.addr()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
