//! Opening a TCP connection to an upstream server: its name resolved as the
//! system resolves it, then its addresses raced as RFC 8305 ("happy
//! eyeballs") describes.
//!
//! Each address gets its own attempt, bounded by the connect timeout. The
//! first starts at once; the next starts when the one before it fails or
//! after [`ATTEMPT_DELAY`], whichever comes first, while the earlier ones keep
//! trying; the first to connect wins and the others are dropped. So a host
//! whose first address is black-holed costs a quarter of a second, not the
//! whole connect timeout, and one address's failure never spends the budget
//! of the next.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// RFC 8305's recommended "Connection Attempt Delay": how long an attempt
/// runs alone before the next address is tried beside it.
pub(crate) const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// A connection to `host:port` (`addr`), or to `ip` when the upstream's URL
/// names an address (nothing to resolve). Resolution is bounded by `timeout`,
/// and so is each address's attempt.
pub(crate) async fn connect(
    addr: &str,
    ip: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let stream = match ip {
        Some(ip) => attempt(ip, timeout).await?,
        None => {
            let resolved = tokio::time::timeout(timeout, tokio::net::lookup_host(addr))
                .await
                .map_err(|_| timed_out("resolving the upstream's name timed out"))??;
            let addrs = interleave(resolved.collect());
            race(&addrs, timeout, ATTEMPT_DELAY).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Orders addresses as RFC 8305 section 4 does: alternating families, starting
/// with the family of the resolver's first answer, each family in the
/// resolver's order.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_v6 = first.is_ipv6();
    let (mut lead, mut other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(addrs.len());
    lead.reverse();
    other.reverse();
    while !lead.is_empty() || !other.is_empty() {
        out.extend(lead.pop());
        out.extend(other.pop());
    }
    out
}

/// One address's attempt, bounded by `timeout`.
async fn attempt(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connect timed out"))?
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

/// Races `addrs` in order: the first attempt at once, each next one when the
/// one before fails or after `delay`; each attempt bounded by `timeout`. The
/// first connection wins; when every attempt fails, the last failure is the
/// error.
pub(crate) async fn race(
    addrs: &[SocketAddr],
    timeout: Duration,
    delay: Duration,
) -> io::Result<TcpStream> {
    let mut pending = addrs.iter().copied();
    let mut running = JoinSet::new();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    loop {
        if running.is_empty() {
            match pending.next() {
                Some(addr) => {
                    running.spawn(attempt(addr, timeout));
                }
                None => return Err(last_error),
            }
        }
        let more = pending.len() > 0;
        tokio::select! {
            done = running.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(e))) => {
                    last_error = e;
                    // A failure starts the next attempt at once.
                    if let Some(addr) = pending.next() {
                        running.spawn(attempt(addr, timeout));
                    }
                }
                Some(Err(e)) => last_error = io::Error::other(e),
                None => {}
            },
            () = tokio::time::sleep(delay), if more => {
                if let Some(addr) = pending.next() {
                    running.spawn(attempt(addr, timeout));
                }
            }
        }
    }
    // Dropping `running` aborts the attempts still going.
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpSocket};

    /// An address on 127.0.0.1 that accepts nothing and answers nothing: a
    /// listener with a full accept queue, whose kernel drops further SYNs, as
    /// a black-holed route would. The returned streams keep the queue full.
    async fn black_hole() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(0).unwrap();
        let mut fill = Vec::new();
        // The queue holds backlog + 1; connect until one does not complete.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fill.push(s),
                _ => break,
            }
            assert!(fill.len() < 64, "the accept queue never filled");
        }
        // The listener stays open, never accepting.
        (addr, listener, fill)
    }

    async fn refusing() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr
    }

    #[tokio::test]
    async fn a_refusing_first_address_falls_back_to_the_next() {
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = [refusing().await, good.local_addr().unwrap()];
        // A delay far beyond the test's patience: only the failure can start
        // the second attempt.
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            race(&addrs, Duration::from_secs(5), Duration::from_secs(3600)),
        )
        .await
        .expect("the failure started the next attempt")
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addrs[1]);
    }

    #[tokio::test]
    async fn a_black_holed_first_address_falls_back_after_the_attempt_delay() {
        let (hole, _kept, _fill) = black_hole().await;
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = [hole, good.local_addr().unwrap()];
        // The connect timeout is far beyond the test's patience: only the
        // attempt delay can start the second attempt.
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            race(&addrs, Duration::from_secs(3600), ATTEMPT_DELAY),
        )
        .await
        .expect("the attempt delay started the next attempt")
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addrs[1]);
    }

    #[tokio::test]
    async fn each_attempt_is_bounded_by_the_connect_timeout() {
        let (hole, _kept, _fill) = black_hole().await;
        let e = race(&[hole], Duration::from_millis(200), ATTEMPT_DELAY)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    #[tokio::test]
    async fn when_every_address_fails_the_last_failure_is_the_error() {
        let addrs = [refusing().await, refusing().await];
        let e = race(&addrs, Duration::from_secs(5), ATTEMPT_DELAY)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        let e = race(&[], Duration::from_secs(5), ATTEMPT_DELAY)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn addresses_alternate_families_starting_with_the_first_answers() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let got = interleave(vec![
            a("[::1]:1"),
            a("[::2]:1"),
            a("[::3]:1"),
            a("10.0.0.1:1"),
        ]);
        assert_eq!(
            got,
            [a("[::1]:1"), a("10.0.0.1:1"), a("[::2]:1"), a("[::3]:1")]
        );
        let got = interleave(vec![a("10.0.0.1:1"), a("[::1]:1"), a("10.0.0.2:1")]);
        assert_eq!(got, [a("10.0.0.1:1"), a("[::1]:1"), a("10.0.0.2:1")]);
    }
}
