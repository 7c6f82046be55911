//! The NBD wire format (the protocol document of the NBD project, "fixed
//! newstyle" negotiation and the transmission phase): constants, typed views
//! over the fixed-size headers a client sends (smoltcp style: a view checks
//! its length once, its accessors cannot fail), the validation of every
//! value a client controls ([`Command::parse`], [`InfoRequest::parse`],
//! [`MetaRequest::parse`]), and the replies the server writes. No I/O.

/// "NBDMAGIC": the server's first eight bytes.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": the greeting's second word and every option's magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags: the fixed newstyle
/// negotiation, and no 124 zero bytes after NBD_OPT_EXPORT_NAME.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// The handshake flags this server sends and the only client flags it takes.
pub const HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;

/// Information items of NBD_OPT_INFO / NBD_OPT_GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// `base:allocation` states.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context served, and its id.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Errors of the transmission phase (errno values the protocol fixes).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;

/// Every request's offset and length are multiples of this (the pool's
/// sector); advertised as the minimum block size.
pub const BLOCK: u64 = 512;
/// Most bytes one READ or WRITE may move, advertised as the maximum block
/// size: one request of the pool's engine (`vblock::engine::MAX_REQUEST_BYTES`),
/// so a request is never split. Larger ones are refused with EOVERFLOW.
pub const MAX_PAYLOAD: u32 = 4 << 20;
/// A WRITE longer than this closes the connection rather than have its
/// payload read and dropped: 32 MiB, the most the protocol lets a client
/// send a server that advertised no block size.
pub const MAX_DRAIN: u32 = 32 << 20;
/// Most bytes of one option's data (export names are at most 4096 bytes).
pub const MAX_OPTION_DATA: u32 = 16 << 10;
/// Most queries one NBD_OPT_{LIST,SET}_META_CONTEXT may carry.
pub const MAX_META_QUERIES: usize = 64;
/// Most info items one NBD_OPT_{INFO,GO} may ask for.
pub const MAX_INFO_REQUESTS: usize = 64;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    (u64::from(u32_at(b, at)) << 32) | u64::from(u32_at(b, at + 4))
}

/// The header of a client's option: magic, option, data length.
pub struct OptionHeader<T>(T);

impl<T: AsRef<[u8]>> OptionHeader<T> {
    pub const LEN: usize = 16;

    /// A view, if `buf` holds at least a whole header.
    pub fn new_checked(buf: T) -> Option<Self> {
        (buf.as_ref().len() >= Self::LEN).then_some(Self(buf))
    }
    pub fn magic(&self) -> u64 {
        u64_at(self.0.as_ref(), 0)
    }
    pub fn option(&self) -> u32 {
        u32_at(self.0.as_ref(), 8)
    }
    pub fn data_len(&self) -> u32 {
        u32_at(self.0.as_ref(), 12)
    }
}

/// The header of a transmission request.
pub struct RequestHeader<T>(T);

impl<T: AsRef<[u8]>> RequestHeader<T> {
    pub const LEN: usize = 28;

    /// A view, if `buf` holds at least a whole header.
    pub fn new_checked(buf: T) -> Option<Self> {
        (buf.as_ref().len() >= Self::LEN).then_some(Self(buf))
    }
    pub fn magic(&self) -> u32 {
        u32_at(self.0.as_ref(), 0)
    }
    pub fn flags(&self) -> u16 {
        u16_at(self.0.as_ref(), 4)
    }
    pub fn kind(&self) -> u16 {
        u16_at(self.0.as_ref(), 6)
    }
    pub fn cookie(&self) -> u64 {
        u64_at(self.0.as_ref(), 8)
    }
    pub fn offset(&self) -> u64 {
        u64_at(self.0.as_ref(), 16)
    }
    pub fn length(&self) -> u32 {
        u32_at(self.0.as_ref(), 24)
    }
}

/// What the session negotiated, against which requests are checked.
#[derive(Clone, Copy, Debug)]
pub struct Export {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    /// `base:allocation` was selected (NBD_OPT_SET_META_CONTEXT).
    pub allocation: bool,
}

impl Export {
    /// The transmission flags of this export.
    pub fn transmission_flags(&self) -> u16 {
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        } else {
            f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        }
        f
    }
}

/// A request whose every value was checked against the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Disconnect,
}

/// Why a request is not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Answered with `errno`; `payload` bytes of a WRITE follow the header
    /// and must be read and dropped to stay in step.
    Error { errno: u32, payload: u32 },
    /// The stream cannot be trusted any more: close the connection.
    Close(&'static str),
}

impl Command {
    /// Checks a request header against the export: magic, command, flags
    /// known for that command, offset and length aligned and within the
    /// export, lengths capped, writes to a read-only export.
    pub fn parse<T: AsRef<[u8]>>(h: &RequestHeader<T>, e: &Export) -> Result<Command, Refused> {
        if h.magic() != REQUEST_MAGIC {
            return Err(Refused::Close("bad request magic"));
        }
        let (flags, offset, len) = (h.flags(), h.offset(), h.length());
        let kind = h.kind();
        // A WRITE's payload follows whatever the verdict; an oversize one
        // cannot be skipped safely.
        let payload = if kind == CMD_WRITE {
            if len > MAX_DRAIN {
                return Err(Refused::Close("write payload over 32 MiB"));
            }
            len
        } else {
            0
        };
        let fail = |errno| Err(Refused::Error { errno, payload });
        let allowed = match kind {
            CMD_READ | CMD_DISC | CMD_FLUSH => 0,
            CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => return fail(EINVAL),
        };
        if flags & !allowed != 0 {
            return fail(EINVAL);
        }
        let fua = flags & CMD_FLAG_FUA != 0;
        match kind {
            CMD_DISC => return Ok(Command::Disconnect),
            CMD_FLUSH if offset != 0 || len != 0 => return fail(EINVAL),
            CMD_FLUSH => return Ok(Command::Flush),
            CMD_READ | CMD_WRITE if len > MAX_PAYLOAD => return fail(EOVERFLOW),
            CMD_BLOCK_STATUS if !e.allocation => return fail(EINVAL),
            _ => {}
        }
        let writes = matches!(kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && e.read_only {
            return fail(EPERM);
        }
        if len == 0 || !offset.is_multiple_of(BLOCK) || !u64::from(len).is_multiple_of(BLOCK) {
            return fail(EINVAL);
        }
        if offset
            .checked_add(u64::from(len))
            .is_none_or(|end| end > e.size)
        {
            return fail(if writes { ENOSPC } else { EINVAL });
        }
        Ok(match kind {
            CMD_READ => Command::Read { offset, len },
            CMD_WRITE => Command::Write { offset, len, fua },
            CMD_TRIM => Command::Trim { offset, len, fua },
            CMD_WRITE_ZEROES => Command::WriteZeroes {
                offset,
                len,
                fua,
                no_hole: flags & CMD_FLAG_NO_HOLE != 0,
            },
            _ => Command::BlockStatus {
                offset,
                len,
                req_one: flags & CMD_FLAG_REQ_ONE != 0,
            },
        })
    }
}

/// Option data that does not parse (answered NBD_REP_ERR_INVALID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidOption(pub &'static str);

/// Reads a length-prefixed string (u32 length) at `*at`.
fn string<'a>(data: &'a [u8], at: &mut usize) -> Result<&'a str, InvalidOption> {
    let len = data
        .get(*at..*at + 4)
        .map(|b| u32_at(b, 0) as usize)
        .ok_or(InvalidOption("truncated length"))?;
    *at += 4;
    let bytes = data
        .get(*at..)
        .and_then(|rest| rest.get(..len))
        .ok_or(InvalidOption("string past the end of the option"))?;
    *at += len;
    std::str::from_utf8(bytes).map_err(|_| InvalidOption("string is not UTF-8"))
}

/// The data of NBD_OPT_INFO and NBD_OPT_GO: an export name and the info
/// items asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a str,
    pub items: Vec<u16>,
}

impl<'a> InfoRequest<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, InvalidOption> {
        let mut at = 0;
        let name = string(data, &mut at)?;
        let count = data
            .get(at..at + 2)
            .map(|b| usize::from(u16_at(b, 0)))
            .ok_or(InvalidOption("truncated info count"))?;
        at += 2;
        if count > MAX_INFO_REQUESTS {
            return Err(InvalidOption("too many info requests"));
        }
        if data.len() != at + 2 * count {
            return Err(InvalidOption("info requests do not fill the option"));
        }
        let items = data[at..].chunks_exact(2).map(|c| u16_at(c, 0)).collect();
        Ok(InfoRequest { name, items })
    }
}

/// The data of NBD_OPT_{LIST,SET}_META_CONTEXT: an export name and queries.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub name: &'a str,
    pub queries: Vec<&'a str>,
}

impl<'a> MetaRequest<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, InvalidOption> {
        let mut at = 0;
        let name = string(data, &mut at)?;
        let count = data
            .get(at..at + 4)
            .map(|b| u32_at(b, 0) as usize)
            .ok_or(InvalidOption("truncated query count"))?;
        at += 4;
        if count > MAX_META_QUERIES {
            return Err(InvalidOption("too many queries"));
        }
        let mut queries = Vec::with_capacity(count);
        for _ in 0..count {
            queries.push(string(data, &mut at)?);
        }
        if at != data.len() {
            return Err(InvalidOption("bytes after the last query"));
        }
        Ok(MetaRequest { name, queries })
    }

    /// Whether a query selects `base:allocation` (for LIST, `base:` lists
    /// the whole namespace; no query at all lists everything).
    pub fn selects_allocation(&self, listing: bool) -> bool {
        (listing && self.queries.is_empty())
            || self
                .queries
                .iter()
                .any(|q| *q == BASE_ALLOCATION || (listing && *q == "base:"))
    }
}

/// The server's greeting.
pub fn greeting() -> [u8; 18] {
    let mut b = [0; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&HANDSHAKE_FLAGS.to_be_bytes());
    b
}

/// Checks the client's flags (the four bytes after the greeting).
pub fn client_flags(b: [u8; 4]) -> Result<(), Refused> {
    let flags = u32::from_be_bytes(b);
    if flags & !u32::from(HANDSHAKE_FLAGS) != 0 {
        return Err(Refused::Close("unknown client flags"));
    }
    if flags & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
        return Err(Refused::Close("the client does not speak fixed newstyle"));
    }
    Ok(())
}

/// Appends an option reply.
pub fn option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// NBD_INFO_EXPORT's data: size and transmission flags.
pub fn info_export(e: &Export) -> [u8; 12] {
    let mut b = [0; 12];
    b[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&e.size.to_be_bytes());
    b[10..].copy_from_slice(&e.transmission_flags().to_be_bytes());
    b
}

/// NBD_INFO_BLOCK_SIZE's data: minimum, preferred, maximum.
pub fn info_block_size(preferred: u32) -> [u8; 14] {
    let mut b = [0; 14];
    b[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&(BLOCK as u32).to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..].copy_from_slice(&MAX_PAYLOAD.to_be_bytes());
    b
}

/// A length-prefixed name (NBD_REP_SERVER) or an id and a name
/// (NBD_REP_META_CONTEXT).
pub fn prefixed(prefix: u32, name: &str) -> Vec<u8> {
    let mut b = prefix.to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

/// Appends a simple reply header.
pub fn simple_reply(out: &mut Vec<u8>, errno: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a structured reply chunk header (its payload follows).
pub fn chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends a final NBD_REPLY_TYPE_ERROR chunk.
pub fn error_chunk(out: &mut Vec<u8>, cookie: u64, errno: u32, message: &str) {
    let message = &message.as_bytes()[..message.len().min(4096)];
    chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + message.len() as u32,
    );
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
}

/// One run of a `base:allocation` status reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub flags: u32,
}

/// Appends a final NBD_REPLY_TYPE_BLOCK_STATUS chunk for `base:allocation`.
pub fn block_status_chunk(out: &mut Vec<u8>, cookie: u64, extents: &[Extent]) {
    let len = 4 + 8 * extents.len() as u32;
    chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len);
    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for e in extents {
        out.extend_from_slice(&e.len.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
    }
}

#[cfg(test)]
mod tests;
