//! Rate limits at run time: an export's I/O limits and a port's ingress
//! policing, applied at once and kept in the runtime config (so `config
//! save` writes them).

use super::{Error, Result, Runtime};
use fabric_config::{ExportLimits, RateLimit};
use std::num::NonZeroU64;
use vhost_backends::blk::limit;
use vswitch::{PortId, Rate, Switch};

/// A configured limit as a bucket's rate, tokens scaled by `unit` (1000 for
/// kbit to bits). The config refuses zeros; one is the floor all the same.
fn rate(limit: RateLimit, unit: u64) -> Rate {
    let nonzero = |v: u64| NonZeroU64::new(v.saturating_mul(unit)).unwrap_or(NonZeroU64::MIN);
    Rate {
        per_sec: nonzero(limit.rate),
        burst: nonzero(limit.burst),
    }
}

/// The export's limits as its buckets take them.
pub(crate) fn blk_limits(l: &ExportLimits) -> limit::ExportLimits {
    let bucket = |r: Option<RateLimit>| r.map(|r| rate(r, 1));
    limit::ExportLimits {
        iops_read: bucket(l.iops_read),
        iops_write: bucket(l.iops_write),
        bytes_per_sec_read: bucket(l.bytes_per_sec_read),
        bytes_per_sec_write: bucket(l.bytes_per_sec_write),
    }
}

/// Polices port `id` of `switch` at `policing` (kbit/s, kbit), or not.
pub(super) fn apply_policing(switch: &Switch, id: PortId, policing: Option<RateLimit>) {
    if let Some(p) = switch.topology().port(id) {
        p.state.set_policing(policing.map(|r| rate(r, 1000)));
    }
}

impl Runtime {
    /// New I/O limits for the export of `volume`, for every request started
    /// from now on (full buckets).
    pub fn set_export_limits(&self, pool: &str, volume: &str, limits: ExportLimits) -> Result<()> {
        self.pool_entry(pool)?;
        let mut st = self.lock();
        let entry = st
            .exports
            .iter_mut()
            .find(|e| e.pool == pool && e.volume == volume)
            .ok_or_else(|| Error::not_found(format!("volume {volume:?} is not exported")))?;
        entry.served.export.set_limits(blk_limits(&limits));
        entry.config.limits = limits;
        let config = entry.config.clone();
        if let Some(v) = Self::declared_mut(&mut st, pool, volume) {
            v.export = Some(config);
        }
        log::info!("pool {pool}: export of {volume}: limits {limits:?}");
        Ok(())
    }

    /// Requests of the export of `volume` that waited for its limits (none
    /// if it is not exported).
    pub fn export_throttled(&self, pool: &str, volume: &str) -> Option<u64> {
        let st = self.lock();
        let e = st
            .exports
            .iter()
            .find(|e| e.pool == pool && e.volume == volume)?;
        Some(
            e.served
                .export
                .counters
                .throttled
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// New ingress policing for port `name` (kbit/s, kbit), or none.
    pub fn set_port_policing(&self, name: &str, policing: Option<RateLimit>) -> Result<()> {
        let mut st = self.lock();
        let entry = st
            .ports
            .iter_mut()
            .find(|p| p.config.name == name)
            .ok_or_else(|| Error::not_found(format!("no port named {name:?}")))?;
        let switch = self.switch_entry(&entry.switch)?.switch.clone();
        let id = switch
            .port_id(name)
            .ok_or_else(|| Error::not_found(format!("no port named {name:?}")))?;
        apply_policing(&switch, id, policing);
        entry.config.policing = policing;
        let switch_name = entry.switch.clone();
        let declared = st
            .config
            .switches
            .iter_mut()
            .filter(|s| s.name == switch_name)
            .flat_map(|s| s.ports.iter_mut())
            .find(|p| p.name == name);
        if let Some(p) = declared {
            p.policing = policing;
        }
        log::info!("port {name}: policing {policing:?}");
        Ok(())
    }
}
