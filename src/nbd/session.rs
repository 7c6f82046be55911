//! One NBD connection: the fixed newstyle negotiation, then the
//! transmission phase, one request at a time. Every value the client sends
//! goes through `wire` once; what does not pass is answered with an option
//! error or an NBD error reply (and counted), or ends the connection when
//! the stream cannot be trusted any more. Nothing here panics on input.

use super::disk::Disk;
use super::wire::{self, Command, Export, InfoRequest, MetaRequest, OptionHeader, Refused};
use super::NbdStats;
use crate::runtime::nbd::NbdVolume;
use crate::runtime::{ErrorKind, Runtime};
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;
use vblock::pool::PoolError;

/// A client connection (Unix or TCP).
pub trait Stream: Read + Write + Send + 'static {
    /// Socket options for a connection (TCP: no Nagle delay between a
    /// reply's header and its data).
    fn prepare(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Something that ends the connection from another thread (at stop).
    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>> {
        let s = self.try_clone()?;
        Ok(Box::new(move || {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }))
    }
}

impl Stream for std::net::TcpStream {
    fn prepare(&self) -> io::Result<()> {
        self.set_nodelay(true)
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, t)
    }
    fn closer(&self) -> io::Result<Box<dyn Fn() + Send>> {
        let s = self.try_clone()?;
        Ok(Box::new(move || {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }))
    }
}

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    /// The client went away or the socket failed.
    Io(io::Error),
    /// The client broke the protocol (counted).
    Protocol(&'static str),
    /// NBD_OPT_ABORT, NBD_CMD_DISC, or a refused NBD_OPT_EXPORT_NAME.
    Done,
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Io(e)
    }
}

/// Serves one client until it disconnects.
pub fn serve<S: Stream>(stream: S, rt: &Runtime, stats: &NbdStats) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut s = Session {
        stream,
        rt,
        stats,
        structured: false,
        allocation_for: None,
        out: Vec::new(),
    };
    if let Err(e) = s.stream.prepare() {
        log::debug!("nbd: connection dropped: {e}");
        return;
    }
    let ended = match s.negotiate() {
        Ok(Some((volume, export))) => {
            let r = s.transmit(&volume, export);
            log::info!("nbd: {} closed", volume.label);
            rt.nbd_close(&volume);
            r
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    match ended {
        Ok(()) | Err(End::Done) => {}
        Err(End::Io(e)) => log::debug!("nbd: connection ended: {e}"),
        Err(End::Protocol(why)) => {
            stats.closed_bad_input.fetch_add(1, Ordering::Relaxed);
            log::warn!("nbd: connection closed: {why}");
        }
    }
}

struct Session<'a, S> {
    stream: S,
    rt: &'a Runtime,
    stats: &'a NbdStats,
    structured: bool,
    /// The export name `base:allocation` was selected for.
    allocation_for: Option<String>,
    out: Vec<u8>,
}

impl<S: Stream> Session<'_, S> {
    fn send(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    fn reply(&mut self, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
        wire::option_reply(&mut self.out, option, reply, data);
        self.send()
    }

    /// An option error reply (counted), with a message for the client's log.
    fn refuse_option(&mut self, option: u32, reply: u32, why: &str) -> io::Result<()> {
        self.stats.options_refused.fetch_add(1, Ordering::Relaxed);
        log::debug!("nbd: option {option} refused: {why}");
        self.reply(option, reply, why.as_bytes())
    }

    /// The negotiation: the volume and what was negotiated for it, or None
    /// when the client aborted.
    fn negotiate(&mut self) -> Result<Option<(NbdVolume, Export)>, End> {
        self.out.extend_from_slice(&wire::greeting());
        self.send()?;
        let mut flags = [0; 4];
        self.stream.read_exact(&mut flags)?;
        wire::client_flags(flags).map_err(refusal)?;
        let no_zeroes = u32::from_be_bytes(flags) & u32::from(wire::FLAG_NO_ZEROES) != 0;
        loop {
            let mut head = [0; OptionHeader::<&[u8]>::LEN];
            self.stream.read_exact(&mut head)?;
            let h = OptionHeader::new_checked(&head[..]).ok_or(End::Protocol("short option"))?;
            if h.magic() != wire::IHAVEOPT {
                return Err(End::Protocol("bad option magic"));
            }
            if h.data_len() > wire::MAX_OPTION_DATA {
                return Err(End::Protocol("option data over the maximum"));
            }
            let option = h.option();
            let mut data = vec![0; h.data_len() as usize];
            self.stream.read_exact(&mut data)?;
            match option {
                wire::OPT_EXPORT_NAME => return self.export_name(&data, no_zeroes).map(Some),
                wire::OPT_ABORT => {
                    self.reply(option, wire::REP_ACK, &[])?;
                    return Ok(None);
                }
                wire::OPT_LIST if !data.is_empty() => {
                    self.refuse_option(option, wire::REP_ERR_INVALID, "LIST takes no data")?
                }
                wire::OPT_LIST => {
                    for name in self.rt.nbd_names() {
                        let d = wire::prefixed(name.len() as u32, &name);
                        wire::option_reply(&mut self.out, option, wire::REP_SERVER, &d);
                    }
                    self.reply(option, wire::REP_ACK, &[])?;
                }
                wire::OPT_STRUCTURED_REPLY if !data.is_empty() => self.refuse_option(
                    option,
                    wire::REP_ERR_INVALID,
                    "STRUCTURED_REPLY takes no data",
                )?,
                wire::OPT_STRUCTURED_REPLY => {
                    self.structured = true;
                    self.reply(option, wire::REP_ACK, &[])?;
                }
                wire::OPT_INFO | wire::OPT_GO => {
                    if let Some(opened) = self.info(option, &data)? {
                        return Ok(Some(opened));
                    }
                }
                wire::OPT_LIST_META_CONTEXT | wire::OPT_SET_META_CONTEXT => {
                    self.meta_context(option, &data)?
                }
                _ => self.refuse_option(option, wire::REP_ERR_UNSUP, "unsupported option")?,
            }
        }
    }

    /// NBD_OPT_EXPORT_NAME: the export or a closed connection (the only
    /// refusal the old option knows).
    fn export_name(&mut self, data: &[u8], no_zeroes: bool) -> Result<(NbdVolume, Export), End> {
        let name = std::str::from_utf8(data).map_err(|_| End::Protocol("name not UTF-8"))?;
        let volume = self.rt.nbd_open(name).map_err(|e| {
            log::info!("nbd: export {name:?} refused: {e}");
            self.stats.options_refused.fetch_add(1, Ordering::Relaxed);
            End::Done
        })?;
        let export = self.export(&volume, name);
        self.out.extend_from_slice(&volume.size.to_be_bytes());
        self.out
            .extend_from_slice(&export.transmission_flags().to_be_bytes());
        if !no_zeroes {
            self.out.extend_from_slice(&[0; 124]);
        }
        if let Err(e) = self.send() {
            self.rt.nbd_close(&volume);
            return Err(e.into());
        }
        Ok((volume, export))
    }

    fn export(&self, v: &NbdVolume, name: &str) -> Export {
        Export {
            size: v.size,
            read_only: v.read_only,
            structured: self.structured,
            allocation: self.structured && self.allocation_for.as_deref() == Some(name),
        }
    }

    /// NBD_OPT_INFO and NBD_OPT_GO: the export's size, flags and block
    /// sizes; GO returns it open.
    fn info(&mut self, option: u32, data: &[u8]) -> Result<Option<(NbdVolume, Export)>, End> {
        let req = match InfoRequest::parse(data) {
            Ok(r) => r,
            Err(wire::InvalidOption(why)) => {
                self.refuse_option(option, wire::REP_ERR_INVALID, why)?;
                return Ok(None);
            }
        };
        let volume = match self.rt.nbd_open(req.name) {
            Ok(v) => v,
            Err(e) => {
                let reply = match e.kind() {
                    ErrorKind::NotFound => wire::REP_ERR_UNKNOWN,
                    _ => wire::REP_ERR_POLICY,
                };
                self.refuse_option(option, reply, &e.to_string())?;
                return Ok(None);
            }
        };
        let export = self.export(&volume, req.name);
        // Sent whether asked or not: a client that did not ask for the
        // block size still learns the 512-byte alignment requests need.
        let preferred = volume.cluster_size.clamp(4096, wire::MAX_PAYLOAD);
        wire::option_reply(
            &mut self.out,
            option,
            wire::REP_INFO,
            &wire::info_export(&export),
        );
        wire::option_reply(
            &mut self.out,
            option,
            wire::REP_INFO,
            &wire::info_block_size(preferred),
        );
        wire::option_reply(&mut self.out, option, wire::REP_ACK, &[]);
        let sent = self.send();
        if option == wire::OPT_INFO || sent.is_err() {
            self.rt.nbd_close(&volume);
            sent?;
            return Ok(None);
        }
        log::info!(
            "nbd: {} open{}",
            volume.label,
            if export.read_only { " read-only" } else { "" }
        );
        Ok(Some((volume, export)))
    }

    /// NBD_OPT_{LIST,SET}_META_CONTEXT: only `base:allocation` exists.
    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<(), End> {
        if !self.structured {
            self.refuse_option(option, wire::REP_ERR_INVALID, "structured replies first")?;
            return Ok(());
        }
        let req = match MetaRequest::parse(data) {
            Ok(r) => r,
            Err(wire::InvalidOption(why)) => {
                self.refuse_option(option, wire::REP_ERR_INVALID, why)?;
                return Ok(());
            }
        };
        if self.rt.nbd_resolve(req.name).is_err() {
            self.refuse_option(option, wire::REP_ERR_UNKNOWN, "no such export")?;
            return Ok(());
        }
        let listing = option == wire::OPT_LIST_META_CONTEXT;
        let selected = req.selects_allocation(listing);
        if !listing {
            self.allocation_for = selected.then(|| req.name.to_owned());
        }
        if selected {
            let d = wire::prefixed(wire::BASE_ALLOCATION_ID, wire::BASE_ALLOCATION);
            wire::option_reply(&mut self.out, option, wire::REP_META_CONTEXT, &d);
        }
        self.reply(option, wire::REP_ACK, &[])?;
        Ok(())
    }

    /// The transmission phase, until NBD_CMD_DISC or the client leaves.
    fn transmit(&mut self, volume: &NbdVolume, export: Export) -> Result<(), End> {
        // Negotiated: a client may now sit idle as long as it likes.
        self.stream.set_read_timeout(None)?;
        let mut disk = Disk::open(volume)?;
        loop {
            let mut head = [0; wire::RequestHeader::<&[u8]>::LEN];
            match self.stream.read_exact(&mut head) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                r => r?,
            }
            let h = wire::RequestHeader::new_checked(&head[..])
                .ok_or(End::Protocol("short request"))?;
            let cookie = h.cookie();
            let command = match Command::parse(&h, &export) {
                Ok(c) => c,
                Err(Refused::Close(why)) => return Err(End::Protocol(why)),
                Err(Refused::Error { errno, payload }) => {
                    self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                    io::copy(
                        &mut (&mut self.stream).take(u64::from(payload)),
                        &mut io::sink(),
                    )?;
                    self.error(cookie, errno, "request refused")?;
                    continue;
                }
            };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.execute(&mut disk, cookie, command)?;
            if disk.broken() {
                return Err(End::Io(io::Error::other("the engine's ring failed")));
            }
        }
    }

    fn execute(&mut self, disk: &mut Disk, cookie: u64, command: Command) -> Result<(), End> {
        let done = match command {
            Command::Disconnect => return Err(End::Done),
            Command::Read { offset, len } => match disk.read(offset, len) {
                Ok(()) => return Ok(self.data(cookie, offset, disk.payload(len))?),
                Err(e) => Err(e),
            },
            Command::Write { offset, len, fua } => {
                self.stream.read_exact(disk.payload(len))?;
                disk.write(offset, len, fua)
            }
            Command::Flush => disk.flush(),
            Command::Trim { offset, len, fua } => disk.trim(offset, len, fua),
            Command::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
            } => disk.write_zeroes(offset, len, fua, no_hole),
            Command::BlockStatus {
                offset,
                len,
                req_one,
            } => match disk.extents(offset, len, req_one) {
                Ok(extents) => {
                    wire::block_status_chunk(&mut self.out, cookie, &extents);
                    return Ok(self.send()?);
                }
                Err(e) => Err(e),
            },
        };
        match done {
            Ok(()) => {
                wire::simple_reply(&mut self.out, 0, cookie);
                Ok(self.send()?)
            }
            Err(e) => {
                log::warn!("nbd: request failed: {e}");
                Ok(self.error(cookie, errno(&e), &e.to_string())?)
            }
        }
    }

    /// A READ's data: one OFFSET_DATA chunk, or a simple reply.
    fn data(&mut self, cookie: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.structured {
            let len = 8 + data.len() as u32;
            wire::chunk_header(
                &mut self.out,
                wire::REPLY_FLAG_DONE,
                wire::REPLY_TYPE_OFFSET_DATA,
                cookie,
                len,
            );
            self.out.extend_from_slice(&offset.to_be_bytes());
        } else {
            wire::simple_reply(&mut self.out, 0, cookie);
        }
        self.send()?;
        self.stream.write_all(data)
    }

    /// An error reply: an error chunk once structured replies are on.
    fn error(&mut self, cookie: u64, errno: u32, message: &str) -> io::Result<()> {
        if self.structured {
            wire::error_chunk(&mut self.out, cookie, errno, message);
        } else {
            wire::simple_reply(&mut self.out, errno, cookie);
        }
        self.send()
    }
}

fn refusal(r: Refused) -> End {
    match r {
        Refused::Close(why) => End::Protocol(why),
        Refused::Error { .. } => End::Protocol("refused"),
    }
}

/// The errno a failed pool request is answered with.
fn errno(e: &PoolError) -> u32 {
    match e {
        PoolError::ReadOnly(_) | PoolError::NotWritable => wire::EPERM,
        PoolError::OutOfSpace { .. } => wire::ENOSPC,
        PoolError::OutOfRange { .. } | PoolError::Unaligned { .. } => wire::EINVAL,
        PoolError::TooLarge { .. } => wire::EOVERFLOW,
        _ => wire::EIO,
    }
}
