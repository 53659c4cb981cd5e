//! Link emulation for the benchmarks: a TCP relay between lamina (or skopeo) and the registry
//! that delays and paces traffic, since kernel `netem` is not available on these machines, and
//! counts what crosses it.
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
//! [`validate`] checks the emulation against the configured rate and RTT. `none` is a relay
//! that only counts (no pacing, no delay): the real network behind it is what is measured.
//!
//! A registry reached over plain HTTP is stood in for: image references name the relay's
//! address. One reached over HTTPS (`https://HOST` as the upstream) is not: the relay is then
//! an HTTP CONNECT proxy that lamina is given as `HTTPS_PROXY` ([`Relay::env`]), and each TLS
//! connection is a tunnel across the same link (`tunnel`).
//!
//! [`Counters`]: bytes the registry sent (headers included: what the link carried; over
//! HTTPS, TLS records and handshakes) and HTTP requests (request lines seen going up; none are
//! seen inside TLS, so tunnels count only bytes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

use super::tunnel::Stream;

/// Bytes read at a time: small enough that pacing is smooth.
const PIECE: usize = 64 << 10;

/// The forms `--link` accepts, for error messages.
pub const ACCEPTED_FORMS: &str = "none (the real network, counted only) | unlimited | RATE/RTT \
with RATE = unlimited or a number with kbit, mbit or gbit (20mbit, 1.5gbit) and RTT = a number \
with ms or s (20ms, 0.15s); e.g. unlimited/1ms, 100mbit/20ms, 20mbit/50ms, 10mbit/150ms";

/// A link setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Bits per second; None = as fast as loopback.
    pub rate_bps: Option<u64>,
    /// Round-trip time added.
    pub rtt: Duration,
    /// `none`: nothing emulated, the relay only counts.
    pub real: bool,
}

/// A `--link` that does not parse: what was wrong, and the accepted forms.
#[derive(Debug, thiserror::Error)]
#[error("link {spec:?}: {why}; accepted forms: {ACCEPTED_FORMS}")]
pub struct LinkError {
    /// As given.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
}

impl Link {
    /// The real network, counted only.
    pub const NONE: Link = Link {
        rate_bps: None,
        rtt: Duration::ZERO,
        real: true,
    };

    /// Parse `none`, `unlimited`, `unlimited/1ms`, `100mbit/20ms`, `20mbit/0.05s`.
    pub fn parse(s: &str) -> Result<Link, LinkError> {
        let err = |why: String| LinkError {
            spec: s.to_string(),
            why,
        };
        let lower = s.trim().to_ascii_lowercase();
        if lower == "none" {
            return Ok(Link::NONE);
        }
        let (rate, rtt) = match lower.split_once('/') {
            Some((r, t)) => (r, Some(t)),
            None if lower == "unlimited" => (lower.as_str(), None),
            None => return Err(err("want RATE/RTT".into())),
        };
        let rate_bps = match rate {
            "unlimited" | "inf" => None,
            r => {
                let (n, mult) = if let Some(n) = r.strip_suffix("gbit") {
                    (n, 1e9)
                } else if let Some(n) = r.strip_suffix("mbit") {
                    (n, 1e6)
                } else if let Some(n) = r.strip_suffix("kbit") {
                    (n, 1e3)
                } else {
                    return Err(err(format!("rate {r:?} is not like 100mbit")));
                };
                let v = n.parse::<f64>().map_err(|e| err(format!("rate {r:?}: {e}")))? * mult;
                if !(v.is_finite() && v >= 1000.0) {
                    return Err(err(format!("rate {r:?} must be at least 1kbit")));
                }
                Some(v as u64)
            }
        };
        let secs = match rtt {
            None => 0.0,
            Some(t) => {
                let (n, unit) = if let Some(n) = t.strip_suffix("ms") {
                    (n, 1e-3)
                } else if let Some(n) = t.strip_suffix('s') {
                    (n, 1.0)
                } else {
                    return Err(err(format!("RTT {t:?} is not like 20ms")));
                };
                let v = n.parse::<f64>().map_err(|e| err(format!("RTT {t:?}: {e}")))? * unit;
                if !(v.is_finite() && (0.0..=60.0).contains(&v)) {
                    return Err(err(format!("RTT {t:?} must be 0 to 60 s")));
                }
                v
            }
        };
        Ok(Link {
            rate_bps,
            rtt: Duration::from_secs_f64(secs),
            real: false,
        })
    }

    /// As written on the command line.
    pub fn name(&self) -> String {
        if self.real {
            return "none".into();
        }
        if self.rate_bps.is_none() && self.rtt.is_zero() {
            return "unlimited".into();
        }
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

    /// Fastest first: order of a sweep (its first link's runs predict the others').
    pub fn sort(links: &mut [Link]) {
        links.sort_by_key(|l| (std::cmp::Reverse(l.rate_bps.unwrap_or(u64::MAX)), l.rtt));
    }
}

/// What crossed a relay since it started.
#[derive(Default, Debug)]
pub struct Counters {
    /// Bytes the registry sent (headers and bodies).
    pub down_bytes: AtomicU64,
    /// HTTP requests seen going up (plain HTTP only).
    pub requests: AtomicU64,
}

impl Counters {
    /// (requests, bytes down) now.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.down_bytes.load(Ordering::Relaxed),
        )
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
    /// `127.0.0.1:PORT`: the registry's stand-in (plain HTTP), or the proxy (HTTPS).
    pub addr: String,
    /// What has crossed it.
    pub counters: Arc<Counters>,
    /// The registry is reached over HTTPS: the relay is its clients' CONNECT proxy, and
    /// [`Counters::requests`] stays 0 (requests are hidden in TLS).
    pub tunnel: bool,
    /// The registry as the measured runs' image references name it: the relay's address
    /// (plain HTTP), or the registry's own `host[:port]` (HTTPS).
    pub image_host: String,
}

impl Relay {
    /// Environment for the processes whose traffic must cross the link: for a tunnel, the
    /// relay as the HTTPS proxy of every host (a `NO_PROXY` of the user's would let some
    /// hosts go round the link). Nothing for plain HTTP.
    pub fn env(&self) -> Vec<(String, String)> {
        if !self.tunnel {
            return Vec::new();
        }
        let proxy = format!("http://{}", self.addr);
        [
            ("HTTPS_PROXY", proxy.as_str()),
            ("https_proxy", &proxy),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    }
}

/// Start a relay emulating `link` in front of `upstream`: `host:port` of a registry over plain
/// HTTP, or `https://host[:port]` of one over HTTPS (the relay is then a CONNECT proxy, to
/// that registry and to whatever host its clients ask for, such as a blob's CDN). Plain
/// threads with blocking sockets: `thread::sleep` keeps delivery times to a few tens of
/// microseconds, where an async timer wheel rounds to milliseconds.
pub fn start(link: Link, upstream: &str) -> std::io::Result<Relay> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let direction = || {
        Arc::new(Direction {
            link,
            free_at: parking_lot::Mutex::new(Instant::now()),
        })
    };
    let (up, down) = (direction(), direction());
    let https = upstream.strip_prefix("https://").map(str::to_string);
    let upstream = upstream.to_string();
    let tunnel = https.is_some();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let (up, down, c) = (up.clone(), down.clone(), c.clone());
            if tunnel {
                // A thread per tunnel: its CONNECT may name a host that is slow to resolve.
                std::thread::spawn(move || {
                    if let Ok((client, server)) = super::tunnel::accept(client) {
                        carry(client, server, up, down, Count::Nothing, c);
                    }
                });
            } else if let Ok(server) = TcpStream::connect(&upstream) {
                carry(client, server, up, down, Count::Requests(c.clone()), c);
            }
        }
    });
    Ok(Relay {
        image_host: https.unwrap_or_else(|| addr.clone()),
        addr,
        counters,
        tunnel,
    })
}

/// Carry one connection over the link both ways: `up_count` counts what goes up, bytes coming
/// down are counted.
fn carry(
    client: TcpStream,
    server: TcpStream,
    up: Arc<Direction>,
    down: Arc<Direction>,
    up_count: Count,
    counters: Arc<Counters>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    pump(client, server, up, up_count);
    pump(s2, c2, down, Count::Bytes(counters));
}

/// What one direction counts.
enum Count {
    /// Request lines going up.
    Requests(Arc<Counters>),
    /// Bytes coming down.
    Bytes(Arc<Counters>),
    /// Nothing (a tunnel going up: its request lines are encrypted).
    Nothing,
}

/// The end of an HTTP/1.1 request line: one per request a client sends (lamina sends no
/// bodies in the modes measured, so no body can hold it).
const REQUEST_LINE_END: &[u8] = b" HTTP/1.1\r\n";

impl Count {
    /// Count `piece`; `tail` is the end of the previous piece (a request line may straddle).
    fn add(&self, piece: &[u8], tail: &mut Vec<u8>) {
        match self {
            Count::Bytes(c) => {
                c.down_bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
            Count::Requests(c) => {
                let keep = REQUEST_LINE_END.len() - 1;
                let mut joined = std::mem::take(tail);
                let skip = joined.len();
                joined.extend_from_slice(piece);
                let n = joined
                    .windows(REQUEST_LINE_END.len())
                    .enumerate()
                    .filter(|(i, w)| *w == REQUEST_LINE_END && i + REQUEST_LINE_END.len() > skip)
                    .count();
                c.requests.fetch_add(n as u64, Ordering::Relaxed);
                *tail = joined[joined.len().saturating_sub(keep)..].to_vec();
            }
            Count::Nothing => {}
        }
    }
}

/// Carry one direction of one connection over the emulated link (a reader and a writer thread).
fn pump(mut from: TcpStream, mut to: TcpStream, dir: Arc<Direction>, count: Count) {
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
        let mut tail = Vec::new();
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    count.add(&buf[..n], &mut tail);
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

/// How the link check reaches the registry.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// Plain HTTP to `addr` (the relay, or the registry).
    Plain(&'a str),
    /// TLS to the registry `host`, through the relay as its proxy or direct.
    Tls { proxy: Option<&'a str>, host: &'a str },
}

impl<'a> Route<'a> {
    /// A new connection, ready for requests (a TLS handshake is finished: it is not timed).
    fn open(self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Route::Plain(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(60)))?;
                Ok(Box::new(s))
            }
            Route::Tls { proxy, host } => super::tunnel::open_tls(proxy, host),
        }
    }

    /// The `Host` header.
    fn host(self) -> &'a str {
        match self {
            Route::Plain(addr) => addr,
            Route::Tls { host, .. } => host,
        }
    }
}

/// A blocking HTTP/1.1 GET on a kept-alive connection, of at most `limit` bytes (a Range
/// request): the status and the body's length.
fn get(stream: &mut dyn Stream, host: &str, path: &str, limit: Option<u64>) -> std::io::Result<(u16, u64)> {
    use std::io::{BufRead, BufReader};
    let range = limit.map_or(String::new(), |n| format!("Range: bytes=0-{}\r\n", n.max(1) - 1));
    // One write: one TLS record, one piece on the link.
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{range}\r\n").as_bytes())?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut len = 0u64;
    let mut status = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the connection closed in a response header"));
        }
        if line == "\r\n" {
            break;
        }
        if status == 0 {
            status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let len = std::io::copy(&mut reader.take(len), &mut std::io::sink())?;
    Ok((status, len))
}

/// The median time of `n` GETs of `path` on one kept-alive connection, and the last
/// response's status and body length.
fn time_gets(route: Route, path: &str, limit: Option<u64>, n: usize) -> std::io::Result<(Duration, u16, u64)> {
    let mut s = route.open()?;
    get(&mut *s, route.host(), "/v2/", None)?; // warm the connection
    let mut times = Vec::new();
    let (mut status, mut bytes) = (0, 0);
    for _ in 0..n {
        let t = Instant::now();
        (status, bytes) = get(&mut *s, route.host(), path, limit)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], status, bytes))
}

/// Measure `relay` (emulating `link` in front of `registry`, as given to [`start`]): small
/// requests and the download of blob `large_path` — the first 4 seconds' worth of it at the
/// link's rate (the whole blob on an unlimited link), so the check takes a few seconds on any
/// link. Over HTTPS the same requests go through a tunnel (and direct) in TLS. A blob that is
/// not served (a registry that wants a token even to read) cannot check the rate: an error.
pub fn validate(link: Link, relay: &Relay, registry: &str, large_path: &str) -> std::io::Result<Validation> {
    let limit = link.rate_bps.map(|r| r / 8 * 4);
    let (through, direct) = match registry.strip_prefix("https://") {
        Some(host) if relay.tunnel => (
            Route::Tls {
                proxy: Some(&relay.addr),
                host,
            },
            Route::Tls { proxy: None, host },
        ),
        _ => (Route::Plain(&relay.addr), Route::Plain(registry)),
    };
    let (small, _, _) = time_gets(through, "/v2/", None, 21)?;
    let (small_direct, _, _) = time_gets(direct, "/v2/", None, 21)?;
    let (large, status, large_bytes) = time_gets(through, large_path, limit, 1)?;
    if !(200..300).contains(&status) {
        return Err(std::io::Error::other(format!(
            "{large_path} answered HTTP {status} (no credentials are sent): the rate cannot be checked"
        )));
    }
    let (large_direct, _, _) = time_gets(direct, large_path, limit, 3)?;
    Ok(Validation {
        link,
        small,
        small_direct,
        large_bytes,
        large,
        large_direct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_specs() {
        let ms = Duration::from_millis;
        type Parsed = Option<(Option<u64>, Duration)>;
        let cases: [(&str, Parsed); 10] = [
            ("unlimited/1ms", Some((None, ms(1)))),
            ("unlimited", Some((None, ms(0)))),
            ("100mbit/20ms", Some((Some(100_000_000), ms(20)))),
            ("20MBIT/0.05s", Some((Some(20_000_000), ms(50)))),
            ("1.5gbit/150ms", Some((Some(1_500_000_000), ms(150)))),
            ("20mbit", None),
            ("20mb/20ms", None),
            ("20mbit/20", None),
            ("0kbit/20ms", None),
            ("fast/20ms", None),
        ];
        for (spec, want) in cases {
            let got = Link::parse(spec).ok().map(|l| (l.rate_bps, l.rtt));
            assert_eq!(got, want, "{spec}");
        }
        assert_eq!(Link::parse("none").unwrap(), Link::NONE);
        let e = Link::parse("20mbit").unwrap_err().to_string();
        assert!(e.contains("accepted forms") && e.contains("100mbit/20ms"), "{e}");
        for name in ["20mbit/50ms", "unlimited", "unlimited/1ms", "none", "1500kbit/20ms"] {
            assert_eq!(Link::parse(name).unwrap().name(), name);
        }
    }

    #[test]
    fn request_lines_are_counted_across_pieces() {
        let c = Arc::new(Counters::default());
        let count = Count::Requests(c.clone());
        let mut tail = Vec::new();
        count.add(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/a HTTP/1", &mut tail);
        count.add(b".1\r\nHost: x\r\n\r\n", &mut tail);
        count.add(b"HEAD /v2/b HTTP/1.1\r\n\r\n", &mut tail);
        assert_eq!(c.snapshot().0, 3);
    }
}
