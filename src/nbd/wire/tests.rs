use super::*;

const SIZE: u64 = 1 << 20;

fn export(read_only: bool) -> Export {
    Export {
        size: SIZE,
        read_only,
        structured: true,
        allocation: true,
    }
}

fn header(flags: u16, kind: u16, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0; 28];
    b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..].copy_from_slice(&len.to_be_bytes());
    b
}

fn parse(b: &[u8], e: &Export) -> Result<Command, Refused> {
    Command::parse(&RequestHeader::new_checked(b).unwrap(), e)
}

fn error(errno: u32, payload: u32) -> Result<Command, Refused> {
    Err(Refused::Error { errno, payload })
}

#[test]
fn views_refuse_truncated_headers() {
    assert!(RequestHeader::new_checked(&[0u8; 27][..]).is_none());
    assert!(OptionHeader::new_checked(&[0u8; 15][..]).is_none());
    let h = header(CMD_FLAG_FUA, CMD_WRITE, 4096, 512);
    let v = RequestHeader::new_checked(&h[..]).unwrap();
    assert_eq!(
        (v.flags(), v.kind(), v.cookie(), v.offset(), v.length()),
        (CMD_FLAG_FUA, CMD_WRITE, 0x1122_3344_5566_7788, 4096, 512)
    );
}

#[test]
fn good_requests_parse_to_their_commands() {
    let e = export(false);
    assert_eq!(
        parse(&header(0, CMD_READ, 0, 4096), &e),
        Ok(Command::Read {
            offset: 0,
            len: 4096
        })
    );
    assert_eq!(
        parse(&header(CMD_FLAG_FUA, CMD_WRITE, SIZE - 512, 512), &e),
        Ok(Command::Write {
            offset: SIZE - 512,
            len: 512,
            fua: true
        })
    );
    assert_eq!(
        parse(&header(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 0, 65536), &e),
        Ok(Command::WriteZeroes {
            offset: 0,
            len: 65536,
            fua: false,
            no_hole: true
        })
    );
    assert_eq!(
        parse(&header(0, CMD_TRIM, 512, 1024), &e),
        Ok(Command::Trim {
            offset: 512,
            len: 1024,
            fua: false
        })
    );
    assert_eq!(
        parse(&header(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 0, 4096), &e),
        Ok(Command::BlockStatus {
            offset: 0,
            len: 4096,
            req_one: true
        })
    );
    assert_eq!(parse(&header(0, CMD_FLUSH, 0, 0), &e), Ok(Command::Flush));
    assert_eq!(
        parse(&header(0, CMD_DISC, 0, 0), &e),
        Ok(Command::Disconnect)
    );
}

#[test]
fn bad_magic_and_oversize_writes_close_the_connection() {
    let mut h = header(0, CMD_READ, 0, 512);
    h[0] ^= 1;
    assert!(matches!(parse(&h, &export(false)), Err(Refused::Close(_))));
    let h = header(0, CMD_WRITE, 0, MAX_DRAIN + 512);
    assert!(matches!(parse(&h, &export(false)), Err(Refused::Close(_))));
    // up to 32 MiB the payload is read and dropped
    let h = header(0, CMD_WRITE, 0, MAX_PAYLOAD + 512);
    assert_eq!(
        parse(&h, &export(false)),
        error(EOVERFLOW, MAX_PAYLOAD + 512)
    );
}

#[test]
fn out_of_range_offsets_are_refused_and_a_write_payload_is_skipped() {
    let e = export(false);
    assert_eq!(parse(&header(0, CMD_READ, SIZE, 512), &e), error(EINVAL, 0));
    assert_eq!(
        parse(&header(0, CMD_READ, SIZE - 512, 1024), &e),
        error(EINVAL, 0)
    );
    // offset + length wraps around
    assert_eq!(
        parse(&header(0, CMD_READ, u64::MAX - 511, 1024), &e),
        error(EINVAL, 0)
    );
    assert_eq!(
        parse(&header(0, CMD_WRITE, SIZE, 4096), &e),
        error(ENOSPC, 4096)
    );
    assert_eq!(
        parse(&header(0, CMD_TRIM, SIZE - 512, 1024), &e),
        error(ENOSPC, 0)
    );
    assert_eq!(
        parse(&header(0, CMD_BLOCK_STATUS, SIZE, 512), &e),
        error(EINVAL, 0)
    );
}

#[test]
fn misaligned_empty_and_oversize_requests_are_refused() {
    let e = export(false);
    assert_eq!(parse(&header(0, CMD_READ, 1, 512), &e), error(EINVAL, 0));
    assert_eq!(parse(&header(0, CMD_READ, 0, 100), &e), error(EINVAL, 0));
    assert_eq!(parse(&header(0, CMD_WRITE, 0, 100), &e), error(EINVAL, 100));
    assert_eq!(parse(&header(0, CMD_READ, 0, 0), &e), error(EINVAL, 0));
    assert_eq!(
        parse(&header(0, CMD_READ, 0, MAX_PAYLOAD + 512), &e),
        error(EOVERFLOW, 0)
    );
    assert_eq!(parse(&header(0, CMD_FLUSH, 0, 512), &e), error(EINVAL, 0));
}

#[test]
fn unknown_commands_and_flags_are_refused() {
    let e = export(false);
    assert_eq!(parse(&header(0, 99, 0, 512), &e), error(EINVAL, 0));
    assert_eq!(parse(&header(0, 5, 0, 512), &e), error(EINVAL, 0)); // CACHE
    assert_eq!(
        parse(&header(CMD_FLAG_NO_HOLE, CMD_WRITE, 0, 512), &e),
        error(EINVAL, 512)
    );
    assert_eq!(
        parse(&header(CMD_FLAG_DF, CMD_READ, 0, 512), &e),
        error(EINVAL, 0)
    );
    assert_eq!(
        parse(&header(1 << 9, CMD_READ, 0, 512), &e),
        error(EINVAL, 0)
    );
}

#[test]
fn a_read_only_export_refuses_every_change_with_eperm() {
    let e = export(true);
    assert_eq!(parse(&header(0, CMD_WRITE, 0, 512), &e), error(EPERM, 512));
    assert_eq!(parse(&header(0, CMD_TRIM, 0, 512), &e), error(EPERM, 0));
    assert_eq!(
        parse(&header(0, CMD_WRITE_ZEROES, 0, 512), &e),
        error(EPERM, 0)
    );
    assert!(parse(&header(0, CMD_READ, 0, 512), &e).is_ok());
    assert_ne!(e.transmission_flags() & TFLAG_READ_ONLY, 0);
    assert_eq!(export(false).transmission_flags() & TFLAG_READ_ONLY, 0);
}

#[test]
fn block_status_needs_the_negotiated_context() {
    let e = Export {
        allocation: false,
        ..export(false)
    };
    assert_eq!(
        parse(&header(0, CMD_BLOCK_STATUS, 0, 512), &e),
        error(EINVAL, 0)
    );
}

fn named(name: &str) -> Vec<u8> {
    prefixed(name.len() as u32, name)
}

#[test]
fn info_requests_parse_and_truncated_ones_are_invalid() {
    let mut d = named("vm1-disk@monday");
    d.extend_from_slice(&2u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&INFO_NAME.to_be_bytes());
    assert_eq!(
        InfoRequest::parse(&d),
        Ok(InfoRequest {
            name: "vm1-disk@monday",
            items: vec![INFO_BLOCK_SIZE, INFO_NAME]
        })
    );
    for cut in 0..d.len() {
        assert!(InfoRequest::parse(&d[..cut]).is_err(), "cut at {cut}");
    }
    // a name longer than the option
    let mut d = 100u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"abc\0\0");
    assert!(InfoRequest::parse(&d).is_err());
    // too many items
    let mut d = named("a");
    d.extend_from_slice(&(MAX_INFO_REQUESTS as u16 + 1).to_be_bytes());
    d.extend(std::iter::repeat_n(0u8, 2 * (MAX_INFO_REQUESTS + 1)));
    assert!(InfoRequest::parse(&d).is_err());
}

#[test]
fn meta_requests_parse_and_select_base_allocation() {
    let mut d = named("v");
    d.extend_from_slice(&2u32.to_be_bytes());
    d.extend(named("qemu:dirty-bitmap:x"));
    d.extend(named(BASE_ALLOCATION));
    let m = MetaRequest::parse(&d).unwrap();
    assert_eq!(m.queries, vec!["qemu:dirty-bitmap:x", BASE_ALLOCATION]);
    assert!(m.selects_allocation(false));
    for cut in 0..d.len() {
        assert!(MetaRequest::parse(&d[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = d.clone();
    longer.push(0);
    assert!(MetaRequest::parse(&longer).is_err());

    let mut d = named("v");
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend(named("base:"));
    let m = MetaRequest::parse(&d).unwrap();
    assert!(m.selects_allocation(true) && !m.selects_allocation(false));
    let mut d = named("v");
    d.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(MetaRequest::parse(&d).is_err());
}

#[test]
fn client_flags_must_be_known_and_fixed_newstyle() {
    assert!(client_flags(1u32.to_be_bytes()).is_ok());
    assert!(client_flags(3u32.to_be_bytes()).is_ok());
    assert!(client_flags(0u32.to_be_bytes()).is_err());
    assert!(client_flags(5u32.to_be_bytes()).is_err());
}

#[test]
fn replies_have_the_documented_layout() {
    let g = greeting();
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..], &[0, 3]);
    let mut out = Vec::new();
    block_status_chunk(
        &mut out,
        7,
        &[Extent {
            len: 4096,
            flags: STATE_HOLE | STATE_ZERO,
        }],
    );
    assert_eq!(out.len(), 20 + 4 + 8);
    assert_eq!(&out[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&out[16..20], &12u32.to_be_bytes());
    assert_eq!(&out[28..32], &3u32.to_be_bytes());
    let mut out = Vec::new();
    simple_reply(&mut out, EPERM, 9);
    assert_eq!(
        out,
        [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]
    );
}
