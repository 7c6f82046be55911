//! The opt-in Prometheus endpoint: a [`Snapshot`](crate::runtime::Snapshot) of the daemon's
//! counters, [`render`](fn@render)ed in the OpenMetrics text format by
//! `prometheus-client`, and served at `GET /metrics` by a small HTTP/1.1
//! server over std's `TcpListener` ([`serve`]).
//!
//! Metric families (every counter's samples carry the `_total` suffix):
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `vswitchd_port_rx_packets`, `vswitchd_port_tx_packets` | counter | `switch`, `port` |
//! | `vswitchd_port_rx_bytes`, `vswitchd_port_tx_bytes` | counter | `switch`, `port` |
//! | `vswitchd_port_drops` | counter | `switch`, `port`, `reason` |
//! | `vswitchd_port_broken_queues` | counter | `switch`, `port` |
//! | `vswitchd_port_announces` | counter | `switch`, `port` |
//! | `vswitchd_port_tx_gso_packets`, `_gso_segmented`, `_csum_completed` | counter | `switch`, `port` |
//! | `vswitchd_port_queue_rx_packets`, `vswitchd_port_queue_tx_packets` | counter (multi-queue ports only) | `switch`, `port`, `queue` |
//! | `vswitchd_port_link_up` | gauge (0/1) | `switch`, `port` |
//! | `vswitchd_fdb_entries` | gauge | `switch` |
//! | `vswitchd_fdb_learned`, `vswitchd_fdb_moved`, `vswitchd_fdb_aged` | counter | `switch` |
//! | `vswitchd_fdb_refused` | counter | `switch`, `reason` (`full`, `port_limit`, `move`) |
//! | `vswitchd_tunnel_rx_packets`, `_tx_packets`, `vswitchd_tunnel_rx_bytes`, `_tx_bytes` | counter | `switch`, `port` |
//! | `vswitchd_tunnel_rx_coalesced` | counter | `switch`, `port` |
//! | `vswitchd_tunnel_drops` | counter | `switch`, `port`, `reason` |
//! | `vswitchd_tunnel_remote_entries` | gauge | `switch`, `port` |
//! | `vswitchd_tunnel_remote_learned`, `_moved`, `_aged` | counter | `switch`, `port` |
//! | `vswitchd_tunnel_remote_refused` | counter | `switch`, `port`, `reason` (`full`, `vtep_limit`) |
//! | `vswitchd_blk_reads`, `_writes`, `_flushes`, `_discards` | counter | `pool`, `volume` |
//! | `vswitchd_blk_read_bytes`, `vswitchd_blk_write_bytes` | counter | `pool`, `volume` |
//! | `vswitchd_blk_io_errors`, `_out_of_space`, `_invalid_requests`, `_bad_chains`, `_too_large`, `_broken_queues`, `_resubmitted`, `_handover_waits`, `_handover_refused`, `_throttled` | counter | `pool`, `volume` |
//! | `vswitchd_blk_request_duration_seconds` | histogram | `pool`, `volume`, `op` (`read`, `write`, `flush`) |
//! | `vswitchd_pool_{capacity,used,free,releasing,provisioned}_bytes` | gauge | `pool` |
//! | `vswitchd_pool_used_percent`, `_warn_percent`, `_over_warn_threshold` (0/1), `_paused_requests` | gauge | `pool` |
//! | `vswitchd_pool_requests_paused` | counter | `pool` |
//! | `vswitchd_volume_{size,allocated,exclusive}_bytes` | gauge | `pool`, `volume` |
//!
//! One job per file: the snapshot is the runtime's (`crate::runtime::snapshot`), `render.rs` encodes it,
//! `http.rs` serves it; `testing.rs` holds the tests' strict parser.

mod http;
mod render;
#[cfg(test)]
mod scrape_tests;
#[cfg(test)]
mod testing;

pub use http::{serve, MetricsServer, CLIENT_TIMEOUT, MAX_REQUEST_HEAD};
pub use render::{render, CONTENT_TYPE};
