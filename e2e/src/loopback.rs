//! Loopback addresses for tests that run agents without network
//! namespaces. An agent listens on fixed ports (15000, 15001, 15006, ...)
//! of its own address, so each test takes a [`Block`] of addresses,
//! `127.S.N.0/24`, and the tests of one binary run side by side.
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::bail;

/// A `/24` of loopback addresses that one test has to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    series: u8,
    n: u8,
}

impl Block {
    /// A block of `series` (one per test binary, 1 to 255, not 0: the
    /// demo and older tests use `127.0.x.y`) not taken yet in this process,
    /// whose `listeners` (ports at host numbers of the block) are all free
    /// (another run of the same tests may be using a block).
    pub fn take(series: u8, listeners: &[(u8, u16)]) -> anyhow::Result<Block> {
        // Spread runs in different processes over the blocks; taken in
        // turn within one.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let start = std::process::id();
        for _ in 0..254 {
            let k = NEXT.fetch_add(1, Ordering::Relaxed);
            let n = (start.wrapping_add(k) % 254 + 1) as u8;
            let block = Block { series, n };
            let free = listeners.iter().all(|&(host, port)| {
                TcpListener::bind(SocketAddr::from((block.ip(host), port))).is_ok()
            });
            if free {
                return Ok(block);
            }
        }
        bail!("no block 127.{series}.N.0/24 has {listeners:?} free")
    }

    /// Address `host` of the block: `127.S.N.host`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.series, self.n, host)
    }
}
