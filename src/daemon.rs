//! The daemon: wires the [`Runtime`] (switches, ports, pools, exports) to the
//! control socket, the optional metrics endpoint and NBD server and the FDB
//! ager, and stops them in order.

use fabric_config::FabricConfig;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vhost_backends::blk::SharedPool;
use vswitch::Switch;

use crate::control::server::ControlServer;
use crate::metrics::MetricsServer;
use crate::nbd::NbdServer;
use crate::runtime::Runtime;

pub struct Daemon {
    rt: Arc<Runtime>,
    stop: Arc<AtomicBool>,
    ager: Option<JoinHandle<()>>,
    control: Option<ControlServer>,
    metrics: Option<MetricsServer>,
    nbd: Option<NbdServer>,
    stopped: bool,
}

impl Daemon {
    /// Creates every switch, port, pool and export and starts serving, with
    /// the control socket. On error, whatever was started is stopped again.
    pub fn start(config: &FabricConfig) -> io::Result<Daemon> {
        Self::start_from(config, None)
    }

    /// [`start`](Self::start), remembering the file the config came from
    /// (`config save` writes there by default).
    pub fn start_from(config: &FabricConfig, path: Option<&Path>) -> io::Result<Daemon> {
        let mut daemon = Daemon {
            rt: Arc::new(Runtime::start(config, path)?),
            stop: Arc::new(AtomicBool::new(false)),
            ager: None,
            control: None,
            metrics: None,
            nbd: None,
            stopped: false,
        };
        if let Err(e) = daemon.start_servers(config) {
            daemon.stop_all();
            return Err(e);
        }
        daemon.start_ager();
        Ok(daemon)
    }

    fn start_servers(&mut self, config: &FabricConfig) -> io::Result<()> {
        self.control = Some(ControlServer::spawn(
            &config.daemon.control_socket,
            self.rt.clone(),
        )?);
        if let Some(addr) = config.daemon.metrics_listen {
            let rt = self.rt.clone();
            let srv = crate::metrics::serve(addr, move || rt.snapshot()).map_err(|e| {
                io::Error::new(e.kind(), format!("daemon.metrics_listen {addr}: {e}"))
            })?;
            log::info!("metrics on http://{}/metrics", srv.local_addr());
            self.metrics = Some(srv);
        }
        if let Some(nbd) = &config.nbd {
            self.nbd = Some(NbdServer::spawn(nbd, self.rt.clone())?);
        }
        Ok(())
    }

    /// Ages every switch's FDB once a second.
    fn start_ager(&mut self) {
        let rt = self.rt.clone();
        let stop = self.stop.clone();
        self.ager = std::thread::Builder::new()
            .name("fdb-ager".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    rt.age_fdbs();
                }
            })
            .ok();
    }

    /// Where the metrics endpoint listens, if it is on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The NBD server, if `[nbd]` is configured.
    pub fn nbd(&self) -> Option<&NbdServer> {
        self.nbd.as_ref()
    }

    /// The shared runtime (what the control socket changes).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    pub fn switch(&self, name: &str) -> Option<&Arc<Switch>> {
        self.rt.switch(name)
    }

    pub fn switches(&self) -> Vec<Arc<Switch>> {
        self.rt
            .switches()
            .iter()
            .map(|e| e.switch.clone())
            .collect()
    }

    /// The open pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&SharedPool> {
        self.rt.pool(name)
    }

    /// The SIGUSR1 report ([`Runtime::counters_report`]), and the NBD
    /// server's line if it runs.
    pub fn counters_report(&self) -> Vec<String> {
        let mut report = self.rt.counters_report();
        if let Some(n) = &self.nbd {
            report.push(n.stats().report_line());
        }
        report
    }

    /// Disconnects every guest, removes the sockets and stops all threads.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.stop.store(true, Ordering::Release);
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        // Before the runtime: no NBD session may hold a pool past it.
        if let Some(n) = self.nbd.take() {
            n.stop();
        }
        self.rt.stop();
        if let Some(ager) = self.ager.take() {
            ager.thread().unpark();
            let _ = ager.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_all();
    }
}
