//! Link emulation for the benchmarks: a TCP relay between lamina (or skopeo) and the registry
//! that delays and paces traffic, since kernel `netem` is not available on these machines.
//!
//! ```text
//! client ──► relay ──(uplink: rate, RTT/2)──► registry
//! client ◄── relay ◄──(downlink: rate, RTT/2)── registry
//! ```
//!
//! Each direction is one serial link shared by every connection: a piece of `len` bytes
//! arriving at `t` leaves the link at `max(t, link free) + len/rate` and is delivered RTT/2
//! later. Pieces of one connection keep their order. The relay buffers what it has been sent
//! (TCP flow control ends at the relay), which is what a deep-buffered bottleneck does.
//! [`validate`] checks the emulation against the configured rate and RTT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

/// Bytes read at a time: small enough that pacing is smooth.
const PIECE: usize = 64 << 10;

/// A link setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Bits per second; None = as fast as loopback.
    pub rate_bps: Option<u64>,
    /// Round-trip time added.
    pub rtt: Duration,
}

impl Link {
    /// Parse `unlimited/1ms`, `100mbit/20ms`, `20mbit/50ms`.
    pub fn parse(s: &str) -> Result<Link, String> {
        let (rate, rtt) = s.split_once('/').ok_or_else(|| format!("link {s:?}: want RATE/RTT"))?;
        let rate_bps = match rate.to_ascii_lowercase().as_str() {
            "unlimited" | "inf" => None,
            r => {
                let (n, mult) = if let Some(n) = r.strip_suffix("gbit") {
                    (n, 1e9)
                } else if let Some(n) = r.strip_suffix("mbit") {
                    (n, 1e6)
                } else if let Some(n) = r.strip_suffix("kbit") {
                    (n, 1e3)
                } else {
                    return Err(format!("link {s:?}: rate like 100mbit"));
                };
                Some((n.parse::<f64>().map_err(|e| format!("link {s:?}: {e}"))? * mult) as u64)
            }
        };
        let ms = rtt
            .strip_suffix("ms")
            .ok_or_else(|| format!("link {s:?}: RTT like 20ms"))?
            .parse::<f64>()
            .map_err(|e| format!("link {s:?}: {e}"))?;
        Ok(Link {
            rate_bps,
            rtt: Duration::from_secs_f64(ms / 1e3),
        })
    }

    /// As written on the command line.
    pub fn name(&self) -> String {
        let rate = match self.rate_bps {
            None => "unlimited".to_string(),
            Some(b) if b % 1_000_000 == 0 => format!("{}mbit", b / 1_000_000),
            Some(b) => format!("{}kbit", b / 1000),
        };
        format!("{rate}/{}ms", self.rtt.as_secs_f64() * 1e3)
    }

    /// Time to carry `bytes` over the link (serialization only).
    pub fn serialize(&self, bytes: u64) -> Duration {
        self.rate_bps.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(bytes as f64 * 8.0 / r as f64)
        })
    }
}

/// One direction of the link: when it is next free.
struct Direction {
    link: Link,
    free_at: parking_lot::Mutex<Instant>,
}

impl Direction {
    /// When a piece of `len` bytes arriving now is delivered.
    fn schedule(&self, len: usize) -> Instant {
        let now = Instant::now();
        let mut free = self.free_at.lock();
        let start = (*free).max(now);
        let end = start + self.link.serialize(len as u64);
        *free = end;
        end + self.link.rtt / 2
    }
}

/// A running relay (its threads end with the process).
pub struct Relay {
    /// `127.0.0.1:PORT` to use instead of the registry's address.
    pub addr: String,
}

/// Start a relay emulating `link` in front of `upstream` (`host:port`). Plain threads with
/// blocking sockets: `thread::sleep` keeps delivery times to a few tens of microseconds, where
/// an async timer wheel rounds to milliseconds.
pub fn start(link: Link, upstream: &str) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
    let addr = listener.local_addr().expect("local address").to_string();
    let up = Arc::new(Direction {
        link,
        free_at: parking_lot::Mutex::new(Instant::now()),
    });
    let down = Arc::new(Direction {
        link,
        free_at: parking_lot::Mutex::new(Instant::now()),
    });
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            pump(client, server, up.clone());
            pump(s2, c2, down.clone());
        }
    });
    Relay { addr }
}

/// Carry one direction of one connection over the emulated link (a reader and a writer thread).
fn pump(mut from: TcpStream, mut to: TcpStream, dir: Arc<Direction>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        while let Ok((at, piece)) = rx.recv() {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if to.write_all(&piece).is_err() {
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; PIECE];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let at = dir.schedule(n);
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// One validation measurement.
#[derive(Debug)]
pub struct Validation {
    /// The link.
    pub link: Link,
    /// Small request (GET /v2/) on a kept-alive connection: median through the relay.
    pub small: Duration,
    /// The same, direct to the registry (the loopback's own time).
    pub small_direct: Duration,
    /// Bytes of the large download.
    pub large_bytes: u64,
    /// Large download through the relay.
    pub large: Duration,
    /// The same, direct.
    pub large_direct: Duration,
}

impl Validation {
    /// Added round-trip time measured (relay minus direct).
    pub fn measured_rtt(&self) -> Duration {
        self.small.saturating_sub(self.small_direct)
    }

    /// Rate measured from the large download, bits per second: its time beyond one RTT.
    pub fn measured_rate(&self) -> f64 {
        let t = self.large.saturating_sub(self.small).as_secs_f64();
        self.large_bytes as f64 * 8.0 / t.max(1e-9)
    }

    /// Expected time of the large download.
    pub fn expected_large(&self) -> Duration {
        self.link.rtt + self.link.serialize(self.large_bytes) + self.large_direct
    }

    /// Whether the added RTT is within 10% of the setting (or 0.2 ms, for 1 ms links), and
    /// the large download within 10% of RTT + size/rate (rate-limited links; an unlimited link
    /// carries what the relay can, reported as measured).
    pub fn passes(&self) -> bool {
        let rtt_err = (self.measured_rtt().as_secs_f64() - self.link.rtt.as_secs_f64()).abs();
        let rtt_ok = rtt_err <= (self.link.rtt.as_secs_f64() * 0.10).max(0.0002);
        let exp = self.expected_large().as_secs_f64();
        let large_ok = self.link.rate_bps.is_none() || (self.large.as_secs_f64() - exp).abs() <= exp * 0.10;
        rtt_ok && large_ok
    }

    /// One line for the report.
    pub fn line(&self) -> String {
        format!(
            "link {:<18} RTT measured {:>7.2} ms (configured {:>6.1}); {:.1} MB in {:.3} s (expected {:.3} s, {:.1} Mbit/s) → {}",
            self.link.name(),
            self.measured_rtt().as_secs_f64() * 1e3,
            self.link.rtt.as_secs_f64() * 1e3,
            self.large_bytes as f64 / 1e6,
            self.large.as_secs_f64(),
            self.expected_large().as_secs_f64(),
            self.measured_rate() / 1e6,
            if self.passes() { "ok" } else { "FAILED" }
        )
    }
}

/// A blocking HTTP/1.1 GET on a kept-alive connection, of at most `limit` bytes (a Range
/// request): the body's length.
fn get(stream: &mut std::net::TcpStream, host: &str, path: &str, limit: Option<u64>) -> u64 {
    use std::io::{BufRead, BufReader, Read, Write};
    let range = limit.map_or(String::new(), |n| format!("Range: bytes=0-{}\r\n", n.max(1) - 1));
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{range}\r\n").expect("request");
    let mut reader = BufReader::new(stream);
    let mut len = 0u64;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("response header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).expect("response body");
    len
}

fn time_gets(addr: &str, path: &str, limit: Option<u64>, n: usize) -> (Duration, u64) {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting");
    s.set_nodelay(true).ok();
    get(&mut s, addr, "/v2/", None); // warm the connection
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        bytes = get(&mut s, addr, path, limit);
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], bytes)
}

/// Measure `relay` (emulating `link` in front of `direct`): small requests and the download of
/// blob `large_path` — the first 4 seconds' worth of it at the link's rate (the whole blob on
/// an unlimited link), so the check takes a few seconds on any link.
pub fn validate(link: Link, relay: &str, direct: &str, large_path: &str) -> Validation {
    let limit = link.rate_bps.map(|r| r / 8 * 4);
    let (small, _) = time_gets(relay, "/v2/", None, 21);
    let (small_direct, _) = time_gets(direct, "/v2/", None, 21);
    let (large, large_bytes) = time_gets(relay, large_path, limit, 1);
    let (large_direct, _) = time_gets(direct, large_path, limit, 3);
    Validation {
        link,
        small,
        small_direct,
        large_bytes,
        large,
        large_direct,
    }
}
