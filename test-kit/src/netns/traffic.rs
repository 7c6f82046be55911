//! Traffic between namespaces: iputils `ping` and a content-checked TCP transfer over
//! std sockets created inside the namespaces ([`super::in_netns`]).

use crate::pattern::fill_pattern;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{in_netns, require_tool, Netns};

/// Gap between echo requests (root may go below iputils' 0.2 s floor; no need).
const PING_INTERVAL: &str = "0.2";

/// `ping -c COUNT -W TIMEOUT DST` inside `ns`; (transmitted, received) from ping's
/// summary line. `timeout` is how long ping waits for a reply (the last one
/// included). Panics when ping is missing or prints no summary.
pub fn ping(ns: &Netns, dst: &str, count: u32, timeout: Duration) -> (u32, u32) {
    let ping = require_tool("ping", "iputils-ping");
    let wait = format!("{:.3}", timeout.as_secs_f64().max(0.001));
    let count_s = count.to_string();
    let budget = timeout + Duration::from_millis(200) * count + Duration::from_secs(5);
    let out = ns.run_timeout(
        &ping.to_string_lossy(),
        &[
            "-n",
            "-q",
            "-c",
            &count_s,
            "-i",
            PING_INTERVAL,
            "-W",
            &wait,
            dst,
        ],
        budget,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping_summary(&text).unwrap_or_else(|| {
        panic!(
            "no summary from `ping {dst}` in {} ({}):\n{text}{}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// "5 packets transmitted, 4 received, 20% packet loss, time 803ms" -> (5, 4).
pub fn parse_ping_summary(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = line.split(',');
    let sent = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let received = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some((sent, received))
}

/// How long a transfer may take, connect to acknowledgement.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `bytes` bytes of a seeded pattern over TCP from a client in `client_ns` to a
/// server in `server_ns` listening on `dst_ip` (an address of `server_ns`, port picked
/// by the kernel). The server checks every byte and the total, then acknowledges with
/// the count it got; the client checks that. Errors describe the first failure.
pub fn tcp_transfer(
    server_ns: &Netns,
    client_ns: &Netns,
    dst_ip: &str,
    bytes: usize,
) -> Result<(), String> {
    static SEED: AtomicU64 = AtomicU64::new(0x5eed_0000);
    let seed = SEED.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id()) << 32;
    let ip: IpAddr = dst_ip
        .parse()
        .map_err(|e| format!("bad address {dst_ip:?}: {e}"))?;
    let listener = in_netns(server_ns, || TcpListener::bind((ip, 0)))
        .map_err(|e| format!("bind {ip} in {}: {e}", server_ns.name()))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TRANSFER_TIMEOUT;

    let server = thread::spawn(move || serve_one(listener, seed, bytes, deadline));
    let client = send_all(client_ns, addr, seed, bytes, deadline);
    let served = server
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    match (served, client) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(s), Ok(())) => Err(format!("server: {s}")),
        (Ok(()), Err(c)) => Err(format!("client: {c}")),
        (Err(s), Err(c)) => Err(format!("server: {s}; client: {c}")),
    }
}

fn left(deadline: Instant) -> Result<Duration, String> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(format!("timed out after {TRANSFER_TIMEOUT:?}"))
    } else {
        Ok(d)
    }
}

/// Accepts one connection, checks `bytes` bytes of the pattern up to EOF, answers
/// with the count received (8 bytes, little endian).
fn serve_one(
    listener: TcpListener,
    seed: u64,
    bytes: usize,
    deadline: Instant,
) -> Result<(), String> {
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                left(deadline).map_err(|e| format!("no connection: {e}"))?;
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024 + 8];
    let mut got: u64 = 0;
    loop {
        conn.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {got} bytes: {e}")),
        };
        let start = got & !7;
        let skew = (got - start) as usize;
        fill_pattern(seed, start, &mut want[..skew + n]);
        if buf[..n] != want[skew..skew + n] {
            let i = (0..n).find(|&i| buf[i] != want[skew + i]).unwrap();
            return Err(format!(
                "byte {} is {:#04x}, sent {:#04x}",
                got + i as u64,
                buf[i],
                want[skew + i]
            ));
        }
        got += n as u64;
        if got > bytes as u64 {
            return Err(format!("{got} bytes received, {bytes} sent"));
        }
    }
    conn.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    conn.write_all(&got.to_le_bytes())
        .map_err(|e| format!("ack: {e}"))?;
    if got != bytes as u64 {
        return Err(format!("EOF after {got} of {bytes} bytes"));
    }
    Ok(())
}

fn send_all(
    ns: &Netns,
    addr: SocketAddr,
    seed: u64,
    bytes: usize,
    deadline: Instant,
) -> Result<(), String> {
    let timeout = left(deadline)?;
    let mut conn = in_netns(ns, || TcpStream::connect_timeout(&addr, timeout))
        .map_err(|e| format!("connect to {addr} from {}: {e}", ns.name()))?;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut off = 0usize;
    while off < bytes {
        let n = chunk.len().min(bytes - off);
        fill_pattern(seed, off as u64, &mut chunk[..n]);
        conn.set_write_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        conn.write_all(&chunk[..n])
            .map_err(|e| format!("write at {off}: {e}"))?;
        off += n;
    }
    conn.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    conn.set_read_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    let mut ack = [0u8; 8];
    conn.read_exact(&mut ack)
        .map_err(|e| format!("no acknowledgement: {e}"))?;
    let acked = u64::from_le_bytes(ack);
    if acked != bytes as u64 {
        return Err(format!("server acknowledged {acked} of {bytes} bytes"));
    }
    Ok(())
}
