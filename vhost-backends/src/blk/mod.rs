//! vhost-user-blk exports: one thin volume of a vblock pool per socket.
//!
//! [`request`] validates each virtio-blk request once at the boundary;
//! [`device`] is the vhost-user device (features, config space, one io_uring
//! per queue); [`BlkExport::spawn`] serves frontends on the socket one after
//! another through the shared [`SocketServer`].

pub mod device;
pub mod request;

use crate::session::SocketServer;
use crate::GuestMemAtomic;
use device::BlkBackend;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vblock::dev::FileDev;
use vblock::pool::Pool;
use vhost_user_backend::VringMutex;

/// The vring type of our devices.
pub type Vring = VringMutex<GuestMemAtomic>;

/// A pool shared by its exports (and the control plane).
pub type SharedPool = Arc<Mutex<Pool<FileDev>>>;

/// What the guest sees of an export.
#[derive(Clone, Debug)]
pub struct BlkExportConfig {
    /// Export name (the volume's name), for logs.
    pub name: String,
    pub socket: PathBuf,
    /// Volume id in the pool.
    pub volume: u32,
    pub queues: u16,
    pub queue_size: u16,
    pub read_only: bool,
    /// GET_ID serial (at most 20 bytes are sent).
    pub serial: String,
}

/// Counters of one export (all connections).
#[derive(Debug, Default)]
pub struct BlkCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// Discard and write-zeroes requests.
    pub discards: AtomicU64,
    /// Requests failed with IOERR by the backing device or pool.
    pub io_errors: AtomicU64,
    /// Writes failed with IOERR because the pool was full.
    pub out_of_space: AtomicU64,
    /// Requests answered IOERR/UNSUPP at parsing (out of range, read-only,
    /// malformed, unknown type).
    pub invalid: AtomicU64,
    /// Chains dropped without a status (no status byte, broken chain).
    pub bad_chains: AtomicU64,
}

impl BlkCounters {
    /// One line for logs and SIGUSR1.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "reads {} ({} B) writes {} ({} B) flushes {} discards {} io_errors {} out_of_space {} invalid {} bad_chains {}",
            g(&self.reads),
            g(&self.read_bytes),
            g(&self.writes),
            g(&self.write_bytes),
            g(&self.flushes),
            g(&self.discards),
            g(&self.io_errors),
            g(&self.out_of_space),
            g(&self.invalid),
            g(&self.bad_chains)
        )
    }
}

/// One volume exported over vhost-user-blk.
pub struct BlkExport {
    pub config: BlkExportConfig,
    pub pool: SharedPool,
    pub counters: BlkCounters,
    pub sessions_ended: AtomicU64,
}

/// The running socket of an export; `stop` disconnects its frontend.
pub type BlkExportHandle = SocketServer;

impl BlkExport {
    pub fn new(config: BlkExportConfig, pool: SharedPool) -> Arc<BlkExport> {
        Arc::new(BlkExport {
            config,
            pool,
            counters: BlkCounters::default(),
            sessions_ended: AtomicU64::new(0),
        })
    }

    /// Binds the socket now and serves frontends on a thread of its own.
    pub fn spawn(self: &Arc<Self>) -> io::Result<BlkExportHandle> {
        let export = self.clone();
        let name = format!("export {}", self.config.name);
        SocketServer::spawn(&name, &self.config.socket, move |mem| {
            BlkBackend::new(export.clone(), mem)
        })
    }
}
