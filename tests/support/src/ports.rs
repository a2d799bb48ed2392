//! Loopback ports owned by one test or bench run: adjacent blocks of 100
//! ports from 20000 up, each held through an exclusive lock on a file in
//! `$TMPDIR/prism-launcher-test-ports`, so that concurrent test processes
//! (of this checkout or another) never share a port.

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::TcpListener;
use std::time::{SystemTime, UNIX_EPOCH};

/// Size of the blocks ports are taken in.
const PORT_BLOCK: u16 = 100;
const PORT_BLOCK_FIRST: u16 = 20000;
const PORT_BLOCK_LAST_MAX: u16 = 45000;

/// The last port a block may use: below the kernel's ephemeral range, where
/// any client socket (a probe, a gRPC client) may hold a port an instance
/// is about to bind. Falls back to the old bound when that range starts too
/// low.
fn port_block_last() -> u16 {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let last = PORT_BLOCK_LAST_MAX.min(low.saturating_sub(1));
    if last < PORT_BLOCK_FIRST + 20 * PORT_BLOCK {
        PORT_BLOCK_LAST_MAX
    } else {
        last
    }
}

/// True if `127.0.0.1:port` can be bound right now.
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A block of ports owned by one test: `base` is the launcher's gRPC port,
/// `base + 1` the preferred health port of the generated manifests,
/// `base + 2` the metrics port (when a test turns metrics on), and
/// `base + 10 ..= base + size - 1` the `--port-range`. Made of `size / 100`
/// adjacent 100-port blocks.
pub struct PortBlock {
    pub base: u16,
    /// Number of ports in the block (a multiple of 100).
    pub size: u16,
    _locks: Vec<File>,
}

/// Which ports of a block must be bindable when it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The gRPC, health and metrics ports (the launcher checks the others
    /// itself).
    GrpcAndHealth,
    /// Every one (a bench binds them all itself).
    Every,
}

impl PortBlock {
    /// The usual block of 100 ports (45 instances).
    pub fn allocate() -> PortBlock {
        PortBlock::allocate_ports(PORT_BLOCK)
    }

    /// A block of at least `ports` ports (rounded up to a multiple of 100);
    /// an instance takes two ports, so 500 instances need 1010 or more.
    pub fn allocate_ports(ports: u16) -> PortBlock {
        PortBlock::take(usize::from(ports), Check::GrpcAndHealth).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A block of at least `ports` ports, every one of them bindable now.
    pub fn allocate_bindable(ports: usize) -> Result<PortBlock, String> {
        PortBlock::take(ports, Check::Every)
    }

    fn take(ports: usize, check: Check) -> Result<PortBlock, String> {
        let lock_dir = std::env::temp_dir().join("prism-launcher-test-ports");
        fs::create_dir_all(&lock_dir)
            .map_err(|e| format!("cannot create {}: {e}", lock_dir.display()))?;
        let blocks = (port_block_last() - PORT_BLOCK_FIRST) / PORT_BLOCK;
        let wanted = u16::try_from(ports.div_ceil(usize::from(PORT_BLOCK)).max(1))
            .ok()
            .filter(|w| *w <= blocks)
            .ok_or_else(|| {
                format!(
                    "{ports} ports asked for, at most {} available",
                    blocks * PORT_BLOCK
                )
            })?;
        'attempt: for _ in 0..500 {
            let first = (random_u64() % u64::from(blocks - wanted + 1)) as u16;
            let base = PORT_BLOCK_FIRST + first * PORT_BLOCK;
            let mut locks = Vec::with_capacity(usize::from(wanted));
            for k in 0..wanted {
                let path = lock_dir.join(format!("{}.lock", base + k * PORT_BLOCK));
                let Ok(file) = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                else {
                    continue 'attempt;
                };
                if file.try_lock().is_err() {
                    continue 'attempt;
                }
                locks.push(file);
            }
            let size = wanted * PORT_BLOCK;
            let free = match check {
                Check::GrpcAndHealth => (base..=base + 2).all(port_free),
                Check::Every => (base..=base + (size - 1)).all(port_free),
            };
            if free {
                return Ok(PortBlock {
                    base,
                    size,
                    _locks: locks,
                });
            }
        }
        Err(format!(
            "could not find {wanted} free adjacent blocks of {PORT_BLOCK} ports between {PORT_BLOCK_FIRST} and {}",
            port_block_last()
        ))
    }

    pub fn grpc_port(&self) -> u16 {
        self.base
    }

    /// The preferred health port written into generated manifests.
    pub fn health_port(&self) -> u16 {
        self.base + 1
    }

    /// The launcher's `--metrics-port` when a test turns metrics on.
    pub fn metrics_port(&self) -> u16 {
        self.base + 2
    }

    /// The `--port-range` value for instances.
    pub fn instance_range(&self) -> (u16, u16) {
        (self.base + 10, self.base + self.size - 1)
    }
}
