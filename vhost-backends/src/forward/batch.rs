//! One batch of frames through the switch, whatever port it came from (a
//! guest's TX chains, frames read from a TAP device or a tunnel): decide each
//! frame, then deliver grouped by destination, and count what happened.

use super::offload::{self, SoftwareScratch};
use super::{Delivery, DeliveryReport, FrameSource, PortTable, BATCH};
use vswitch::{Dest, DropReason, PortCounters, PortId, Switch, Topology, HEAD_LEN};

/// Where a batch of frames comes from: the ingress port, its switch, and the
/// table where the switch's ports publish their receive side.
pub(crate) struct Ingress<'a> {
    pub id: PortId,
    pub switch: &'a Switch,
    pub table: &'a PortTable,
    /// The port's queue the batch came through (0 for a single-queue port),
    /// for the per-queue counters.
    pub queue: usize,
}

/// Per-queue buffers of [`forward`], allocated once and reused.
pub(crate) struct ForwardScratch {
    deliveries: Vec<Delivery>,
    /// Per frame of the batch: dropped by the ingress port's policing.
    policed: Vec<bool>,
    software: SoftwareScratch,
}

impl Default for ForwardScratch {
    fn default() -> Self {
        ForwardScratch {
            deliveries: Vec::with_capacity(4 * BATCH),
            policed: Vec::with_capacity(BATCH),
            software: SoftwareScratch::default(),
        }
    }
}

/// Forwards a batch of frames received on `from` (a guest's TX chains, frames
/// read from a TAP device or a tunnel): decide every frame, then deliver
/// grouped by destination, so each receiver's queue is locked, and its peer
/// notified, once per batch. `dropped` are the reasons of the frames that
/// never made it into `frames` (a malformed chain, a bad virtio-net header).
pub(crate) fn forward(
    from: &Ingress,
    frames: &[FrameSource],
    dropped: &[DropReason],
    scratch: &mut ForwardScratch,
) {
    let ForwardScratch {
        deliveries,
        policed,
        software,
    } = scratch;
    let topo = from.switch.topology();
    let now = from.switch.now();
    deliveries.clear();
    policed.clear();
    policed.resize(frames.len(), false);
    if let Some(p) = topo.port(from.id) {
        // Ingress policing comes first: a policed frame is not learned from.
        p.state
            .police(frames.iter().map(FrameSource::len), |i| policed[i] = true);
    }
    let mut rx_bytes = 0u64;
    for i in 0..frames.len() {
        rx_bytes += frames[i].len() as u64;
        if !policed[i] {
            decide(from, &topo, &frames[..=i], now, deliveries);
        }
    }
    if let Some(p) = topo.port(from.id) {
        p.state.counters.add_rx(frames.len() as u64, rx_bytes);
        p.state
            .counters
            .add_queue_rx(from.queue, frames.len() as u64);
        for &reason in dropped {
            p.state.counters.add_drop(reason);
        }
    }
    // Unstable sort needs no buffer; the frame index keeps each port's frames in order.
    deliveries.sort_unstable_by_key(|d| (d.port, d.frame));
    for group in deliveries.chunk_by(|a, b| a.port == b.port) {
        deliver(from, &topo, group, frames, software);
    }
}

/// Classifies, learns and looks up the last frame of `frames`; appends one
/// delivery per egress port.
fn decide(
    from: &Ingress,
    topo: &Topology,
    frames: &[FrameSource],
    now: u32,
    out: &mut Vec<Delivery>,
) {
    let index = frames.len() - 1;
    let frame = &frames[index];
    let mut head = [0u8; HEAD_LEN];
    let n = frame.read_head(&mut head);
    let largest = frame.offload().largest_frame(frame.len());
    let Ok(ingress) =
        from.switch
            .receive_offloaded(topo, from.id, &head[..n], frame.len(), largest, now)
    else {
        return; // counted by the switch
    };
    let mut push = |to: PortId| {
        if let Some(egress) = topo.egress(to, &ingress) {
            out.push(Delivery {
                port: to,
                frame: index,
                egress,
            });
        }
    };
    match ingress.dest {
        Dest::Port(to) => push(to),
        Dest::Flood => topo.flood_targets(&ingress).for_each(push),
    }
}

/// Hands one destination's share of the batch to its sink and counts the outcomes.
fn deliver(
    from: &Ingress,
    topo: &Topology,
    group: &[Delivery],
    frames: &[FrameSource],
    software: &mut SoftwareScratch,
) {
    let Some(out) = topo.port(group[0].port) else {
        return;
    };
    let counters = &out.state.counters;
    let mut count = TxCount {
        counters,
        packets: 0,
        bytes: 0,
    };
    let published = from.table.with(out.id, |sink| {
        // The sink must be the port decided on. A port added under a reused
        // id publishes only once it is in the topology, and the sink was
        // loaded before this check, so a successor's sink cannot pass it.
        from.switch
            .is_current(out)
            .then(|| offload::deliver(sink, group, frames, &mut count, counters, software))
    });
    if published.flatten().is_none() {
        for _ in group {
            counters.add_drop(DropReason::NoBuffer);
        }
    }
    count.publishing();
}

/// A destination's delivered frames, summed: one atomic add per destination
/// per batch (or per publication), not per frame.
struct TxCount<'c> {
    counters: &'c PortCounters,
    packets: u64,
    bytes: u64,
}

impl DeliveryReport for TxCount<'_> {
    fn outcome(&mut self, item: &Delivery, result: Result<(), DropReason>) {
        match result {
            Ok(()) => {
                self.packets += 1;
                self.bytes += item.egress.len() as u64;
            }
            Err(reason) => self.counters.add_drop(reason),
        }
    }

    fn delivered_on_queue(&mut self, queue: usize, packets: u64) {
        self.counters.add_queue_tx(queue, packets);
    }

    fn publishing(&mut self) {
        if self.packets > 0 {
            self.counters.add_tx(self.packets, self.bytes);
            (self.packets, self.bytes) = (0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{FrameSink, HDR_LEN};
    use std::sync::{Arc, Mutex};
    use vm_memory::VolatileSlice;
    use vswitch::VlanMode;

    /// Records what it is given; may run `hook` first (a race played out).
    struct Recorder {
        got: Arc<Mutex<Vec<Vec<u8>>>>,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Recorder {
        fn new(hook: Option<Box<dyn FnOnce() + Send>>) -> (Recorder, Arc<Mutex<Vec<Vec<u8>>>>) {
            let got = Arc::new(Mutex::new(Vec::new()));
            let sink = Recorder {
                got: got.clone(),
                hook: Mutex::new(hook),
            };
            (sink, got)
        }
    }

    impl FrameSink for Recorder {
        fn deliver(
            &self,
            batch: &[Delivery],
            frames: &[FrameSource],
            report: &mut dyn DeliveryReport,
        ) {
            if let Some(hook) = self.hook.lock().unwrap().take() {
                hook();
            }
            for d in batch {
                let out = d.bytes(frames);
                self.got.lock().unwrap().push(out);
                report.outcome(d, Ok(()));
            }
        }

        fn accepts(&self) -> fabric_offload::Accepts {
            fabric_offload::Accepts::NONE
        }
    }

    /// A port removed and its id reused by a port of another VLAN while a
    /// batch is being delivered: the batch's frames for the old port do not
    /// reach the new one.
    #[test]
    fn a_reused_port_id_gets_nothing_decided_for_its_predecessor() {
        let switch = Arc::new(Switch::new("br0", 100, 100, 300));
        let table = Arc::new(PortTable::default());
        let add = |name: &str, vlan: u16| {
            let id = switch
                .add_port(
                    name,
                    VlanMode::Access(vswitch::VlanId::new(vlan).unwrap()),
                    1500,
                )
                .unwrap();
            switch.set_link(id, true);
            id
        };
        let (src, first, doomed) = (add("src", 10), add("first", 10), add("doomed", 10));
        let (successor, successor_got) = Recorder::new(None);
        let successor = Mutex::new(Some(successor));
        let race = {
            let (switch, table) = (switch.clone(), table.clone());
            Box::new(move || {
                table.withdraw(doomed);
                switch.remove_port("doomed").unwrap();
                let id = switch
                    .add_port(
                        "vlan20",
                        VlanMode::Access(vswitch::VlanId::new(20).unwrap()),
                        1500,
                    )
                    .unwrap();
                assert_eq!(id, doomed);
                switch.set_link(id, true);
                let sink = successor.lock().unwrap().take().unwrap();
                table.publish(id, Box::new(sink));
            }) as Box<dyn FnOnce() + Send>
        };
        // `first` sorts before `doomed`: its delivery plays the race.
        let (first_sink, first_got) = Recorder::new(Some(race));
        table.publish(first, Box::new(first_sink));
        let (doomed_sink, _) = Recorder::new(None);
        table.publish(doomed, Box::new(doomed_sink));

        let mut frame = vec![0u8; HDR_LEN];
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        frame.resize(HDR_LEN + 60, 0xab);
        let segments = [VolatileSlice::from(&mut frame[..])];
        let frames = [FrameSource::new(&segments, HDR_LEN)];
        let ingress = Ingress {
            id: src,
            switch: &switch,
            table: &table,
            queue: 0,
        };
        forward(&ingress, &frames, &[], &mut ForwardScratch::default());
        assert_eq!(first_got.lock().unwrap().len(), 1);
        assert!(
            successor_got.lock().unwrap().is_empty(),
            "a VLAN 10 frame reached the VLAN 20 port that took the id"
        );
        let counters = switch
            .topology()
            .port(doomed)
            .unwrap()
            .state
            .counters
            .snapshot();
        assert_eq!(counters.tx_packets, 0);
    }
}
