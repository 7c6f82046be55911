//! Offload metadata through the switch (virtio 1.2 §5.1.6.2, §5.1.6.4).
//!
//! A frame's virtio-net header is parsed once at ingress ([`parse_header`]);
//! at egress, a sink that accepts what the frame needs gets it unchanged with
//! its header ([`egress_header`], offsets moved by a pushed or popped tag),
//! and any other sink gets what the switch completes in software
//! ([`deliver_in_software`]): the checksum filled in, or a GSO super-frame cut
//! into MTU-sized segments, each a complete frame with no offload left.

use super::{Delivery, DeliveryReport, FrameSink, FrameSource, HDR_LEN};
use fabric_offload::{complete_csum, segment, Accepts, Offload, OffloadError, VnetHdr};
use vm_memory::VolatileSlice;
use vswitch::{DropReason, Egress, OffloadOutcome, PortCounters};

/// The largest frame an offloading peer hands over: a 64 KiB GSO super-frame
/// (Linux's `GSO_LEGACY_MAX_SIZE`) plus an Ethernet header and a tag.
pub(crate) const MAX_GSO_FRAME: usize = 65_536 + 18;

/// The drop reason of each way a virtio-net header can be wrong.
pub(crate) fn drop_reason(e: OffloadError) -> DropReason {
    match e {
        OffloadError::GsoSizeZero => DropReason::GsoSizeZero,
        OffloadError::HeaderPastFrame => DropReason::HeaderPastFrame,
        OffloadError::CsumOutsideFrame => DropReason::CsumOutsideFrame,
        OffloadError::CsumNotL4 => DropReason::CsumNotL4,
        OffloadError::TooManySegments => DropReason::TooManySegments,
        OffloadError::GsoUnsupported => DropReason::GsoUnsupported,
        // Every frame we parse has its whole header (`gather`, `read_batch`).
        OffloadError::HdrTruncated => DropReason::BadDescriptor,
        // Our scratch holds any frame parsing lets through: not reached.
        OffloadError::ScratchTooSmall => DropReason::NoBuffer,
    }
}

/// Who wrote a frame's virtio-net header, which says whether its DATA_VALID
/// flag means anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderFrom {
    /// A guest driver: it must not set DATA_VALID (virtio 1.2 §5.1.6.2.1),
    /// and a guest vouching for its own checksums must not make another
    /// port skip checking them. The flag is cleared.
    Guest,
    /// The host kernel (a TAP read): DATA_VALID says the kernel verified
    /// the checksums; kept for ports that take checksum offload.
    Kernel,
}

/// Validates the virtio-net header `hdr` of a frame of `frame_len` bytes whose
/// first bytes are `head` (empty if the header asks for nothing). An offload
/// the port did not negotiate (`allowed`) is refused like bad metadata: the
/// driver must not send what was not negotiated (§5.1.6.2).
pub(crate) fn parse_header(
    hdr: &[u8; HDR_LEN],
    head: &[u8],
    frame_len: usize,
    allowed: Accepts,
    from: HeaderFrom,
) -> Result<Offload, DropReason> {
    let hdr = VnetHdr::from_bytes(hdr);
    let off = match from {
        HeaderFrom::Guest => Offload::parse(&hdr, head, frame_len),
        HeaderFrom::Kernel => Offload::parse_trusted(&hdr, head, frame_len),
    }
    .map_err(drop_reason)?;
    if !allowed.contains(off.needs()) {
        return Err(DropReason::OffloadNotNegotiated);
    }
    Ok(off)
}

/// The virtio-net header a sink that `accepts` writes before a frame carrying
/// `off`, rewritten with `shift` (see [`Egress::shift`]). A peer that did not
/// negotiate checksum offload gets flags 0 (§5.1.6.4.1: no DATA_VALID without
/// GUEST_CSUM); it is never handed a frame needing more (see [`deliver`]).
#[inline]
pub(crate) fn egress_header(
    off: &Offload,
    shift: isize,
    accepts: Accepts,
    num_buffers: u16,
) -> [u8; HDR_LEN] {
    if off.csum.is_none() && off.gso.is_none() && !off.data_valid {
        // A complete frame (the common case): only num_buffers to write.
        let mut hdr = [0u8; HDR_LEN];
        hdr[10..].copy_from_slice(&num_buffers.to_le_bytes());
        return hdr;
    }
    if accepts.contains(Accepts::CSUM) {
        off.shifted(shift).to_hdr(num_buffers).to_bytes()
    } else {
        Offload::NONE.to_hdr(num_buffers).to_bytes()
    }
}

/// Buffers for what the switch completes in software, per queue, each
/// allocated once, the first time a frame needs it.
#[derive(Default)]
pub(crate) struct SoftwareScratch {
    /// The rewritten frame (egress head, then the frame).
    frame: Vec<u8>,
    /// Where `segment` builds each segment.
    segment: Vec<u8>,
}

/// Hands `group` (one destination's share of a batch) to `sink`: runs of
/// frames the sink takes as they are go through [`FrameSink::deliver`] in
/// one call; each other frame is completed in software. Order is kept.
pub(crate) fn deliver(
    sink: &dyn FrameSink,
    group: &[Delivery],
    frames: &[FrameSource],
    report: &mut dyn DeliveryReport,
    counters: &PortCounters,
    scratch: &mut SoftwareScratch,
) {
    let accepts = sink.accepts();
    let mut rest = group;
    while !rest.is_empty() {
        let taken = rest
            .iter()
            .take_while(|d| accepts.contains(frames[d.frame].offload().needs()))
            .count();
        if taken > 0 {
            let intact = rest[..taken]
                .iter()
                .filter(|d| frames[d.frame].offload().gso.is_some())
                .count();
            sink.deliver(&rest[..taken], frames, report);
            if intact > 0 {
                counters.add_offload(OffloadOutcome::GsoPassed, intact as u64);
            }
        }
        let Some(d) = rest.get(taken) else {
            break;
        };
        deliver_in_software(sink, d, &frames[d.frame], report, counters, scratch);
        rest = &rest[taken + 1..];
    }
}

/// Completes what `frame` needs for a sink that does not take it: copies the
/// egress head and the frame into `scratch`, then fills in the checksum
/// (`csum_completed`) or cuts the super-frame into segments, each with its
/// checksums (`gso_segmented`), and hands each result to `sink` as a complete
/// frame. Each result is reported as a delivery of its own (tx packets and
/// bytes count what went out).
pub(crate) fn deliver_in_software(
    sink: &dyn FrameSink,
    d: &Delivery,
    frame: &FrameSource,
    report: &mut dyn DeliveryReport,
    counters: &PortCounters,
    scratch: &mut SoftwareScratch,
) {
    if scratch.frame.is_empty() {
        scratch.frame = vec![0; MAX_GSO_FRAME];
        scratch.segment = vec![0; MAX_GSO_FRAME];
    }
    let SoftwareScratch {
        frame: buf,
        segment: seg_buf,
    } = scratch;
    let head = d.egress.head();
    let len = d.egress.len();
    if len > buf.len() || head.len() > len {
        // Parsing bounded the frame (64 KiB of payload): not reached.
        report.outcome(d, Err(DropReason::TooManySegments));
        return;
    }
    buf[..head.len()].copy_from_slice(head);
    frame.copy_from(d.egress.skip(), &mut buf[head.len()..len]);
    let off = frame.offload().shifted(d.egress.shift());
    let mut emit = |bytes: &[u8]| {
        // SAFETY: `bytes` lives in `scratch` for this call and sinks only
        // read a FrameSource: nothing writes through this pointer.
        let slice = unsafe { VolatileSlice::new(bytes.as_ptr() as *mut u8, bytes.len()) };
        let segments = [slice];
        let frames = [FrameSource::new(&segments, 0)];
        let item = Delivery {
            port: d.port,
            frame: 0,
            egress: Egress::verbatim(d.port, bytes.len()),
        };
        sink.deliver(std::slice::from_ref(&item), &frames, report);
        true
    };
    let done = if off.gso.is_some() {
        segment(&buf[..len], &off, seg_buf, &mut emit)
            .map(|_| counters.add_offload(OffloadOutcome::Segmented, 1))
    } else {
        // In place: the frame is already our copy.
        let completed = match off.csum {
            Some((start, offset)) => complete_csum(&mut buf[..len], start.into(), offset.into())
                .map(|()| counters.add_offload(OffloadOutcome::CsumCompleted, 1)),
            None => Ok(()),
        };
        completed.map(|()| {
            emit(&buf[..len]);
        })
    };
    if let Err(e) = done {
        report.outcome(d, Err(drop_reason(e)));
    }
}
