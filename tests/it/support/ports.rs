//! Free TCP ports on 127.0.0.1 for the servers the tests start.
//!
//! A port is free when binding it succeeds; the listener is dropped before the
//! server binds it, so another process could take it in between. Within this
//! test binary a registry makes sure no port is handed out twice, which is the
//! race that matters when tests run in parallel.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Every port handed out by this process (gRPC companions included).
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// SeaweedFS listens for gRPC on each HTTP port + this offset.
pub const GRPC_OFFSET: u16 = 10_000;

/// Highest port handed out by [`free_ports_with_grpc`] (exclusive).
const GRPC_PAIR_MAX: u16 = 55_000;
/// Lowest port handed out by [`free_ports_with_grpc`].
const GRPC_PAIR_MIN: u16 = 10_000;

fn taken() -> std::sync::MutexGuard<'static, BTreeSet<u16>> {
    // A test that panicked while holding the lock leaves valid data behind.
    TAKEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn can_bind(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A free port chosen by the kernel (bind 127.0.0.1:0), never one this process
/// handed out before.
pub fn free_port() -> u16 {
    let mut taken = taken();
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        if taken.insert(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 after 1000 tries");
}

/// `n` distinct free ports `p` such that `p + 10000` is free too (SeaweedFS's
/// gRPC ports), all below 55000. None of them, nor their companions, was
/// handed out before by this process.
///
/// Ports are taken below the kernel's ephemeral range when it leaves room, so
/// outgoing connections cannot grab them between the check and the bind.
pub fn free_ports_with_grpc(n: usize) -> Vec<u16> {
    let max = ephemeral_low()
        .saturating_sub(GRPC_OFFSET)
        .clamp(GRPC_PAIR_MIN + 1000, GRPC_PAIR_MAX);
    let span = u32::from(max - GRPC_PAIR_MIN);
    // Start at a different place in each process so that two test binaries
    // running at once rarely probe the same ports.
    let seed = std::process::id()
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let start = seed % span;

    let mut taken = taken();
    let mut ports = Vec::with_capacity(n);
    for i in 0..span {
        if ports.len() == n {
            break;
        }
        let port = GRPC_PAIR_MIN + ((start + i) % span) as u16;
        let grpc = port + GRPC_OFFSET;
        if taken.contains(&port) || taken.contains(&grpc) {
            continue;
        }
        if can_bind(port) && can_bind(grpc) {
            taken.insert(port);
            taken.insert(grpc);
            ports.push(port);
        }
    }
    assert_eq!(
        ports.len(),
        n,
        "found only {} of {n} free port pairs (p, p+{GRPC_OFFSET}) in {GRPC_PAIR_MIN}..{max}",
        ports.len()
    );
    ports
}

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
