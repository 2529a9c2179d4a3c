//! A persistent, replayable log of frames in a directory (`Transport::File`).
//!
//! ```text
//! <dir>/log.ctl                 control file: type, committed count, wake-up word
//! <dir>/<first seq, 20 digits>.seg   append-only segments
//! <dir>/cursors/<name>          durable reader cursors (next sequence number, u64 LE)
//! ```
//!
//! One writer (the `Sender`) appends records; any number of independent readers
//! (`Receiver`s) read them from the beginning, from a sequence number or from the live end,
//! optionally through a named cursor that survives restarts. A record is
//!
//! ```text
//! len: u32 | crc: u32 | seq: u64 | time_ns: u64 | payload: len bytes | zero padding to 8
//! ```
//!
//! where `crc` is the CRC-32 of `len`, `seq`, `time_ns` and the payload. The writer copies
//! a record into the segment, then publishes it by a Release store of the committed count in
//! the control file and bumps a futex word there, waking readers only if some sleep. A
//! writer killed at any point leaves at most one torn record at the tail, which fails its
//! CRC: readers never deliver it and the next writer zeroes it when it opens the log.
//! `docs/wire-format.md` describes the format in full.

mod map;
pub(crate) mod replay;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use self::map::Mapping;
use super::frame::{crc32, MAX_FRAME};
use super::{Link, LinkError, LinkOpenError, TransportKind, Wait, Wire};
use crate::error::TypeDesc;
use crate::message::Encoding;
use crate::options::Options;
use crate::sys::perm::Access;
use crate::sys::{fd, futex, lock};

/// Where a new reader starts when it has no saved cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Start {
    /// The oldest record still in the log (default).
    #[default]
    Beginning,
    /// The record with this sequence number (or the oldest kept, if it was deleted).
    Sequence(u64),
    /// The live end: only records written after the reader opened.
    End,
}

/// When a file-log sender forces its records to stable storage.
///
/// Whatever the policy, a record whose `send` returned survives the sender's process being
/// killed (it is in the page cache); the policy decides what survives a machine crash or
/// power loss. See the README for the measured cost of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Never sync (the kernel writes back in its own time). The default.
    #[default]
    None,
    /// `fdatasync` after every `n` messages, at segment roll-over and when the sender is
    /// dropped.
    Batch(u32),
    /// `fdatasync` before every `send` returns.
    Message,
}

/// How a file log's segments are accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FileIo {
    /// Memory-mapped segments, pre-sized to the segment size (default).
    #[default]
    Mmap,
    /// `pwrite`/`pread`, growing the segment as records are appended; for file systems
    /// where shared mappings are unsuitable (some network and FUSE file systems).
    ReadWrite,
}

/// Default size at which a file log rolls over to a new segment.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// File-log settings carried in [`Options`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogOptions {
    start: Start,
    pub(crate) cursor: Option<String>,
    durability: Durability,
    segment_size: u64,
    retention: Option<u64>,
    io: FileIo,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            start: Start::Beginning,
            cursor: None,
            durability: Durability::None,
            segment_size: DEFAULT_SEGMENT_SIZE,
            retention: None,
            io: FileIo::Mmap,
        }
    }
}

/// File-log settings ([`Transport::File`](crate::Transport::File)); other transports ignore
/// them.
impl Options {
    /// Where a file-log receiver starts if it has no saved [`cursor`](Self::cursor)
    /// (default [`Start::Beginning`]).
    pub fn start(&mut self, start: Start) -> &mut Self {
        self.log.start = start;
        self
    }

    /// A named, durable cursor for a file-log receiver: the receiver resumes from it after a
    /// restart, and retention never deletes records it has not passed. The cursor advances
    /// when `recv` returns a message (at-most-once delivery across a crash). Names are
    /// file names: no `/`, not empty, not `.` or `..`.
    ///
    /// # Examples
    ///
    /// ```
    /// #[derive(shmbus::Message, Clone, Copy)]
    /// #[repr(C)]
    /// struct N { v: u64 }
    ///
    /// let dir = std::env::temp_dir().join(format!("doc-cursor-{}", std::process::id()));
    /// let mut o = shmbus::Options::new();
    /// o.transport(shmbus::Transport::File { dir: dir.clone() }).cursor("audit");
    /// let tx = shmbus::Sender::<N>::open_or_create("log", &o)?;
    /// tx.send(N { v: 1 })?;
    /// tx.send(N { v: 2 })?;
    /// {
    ///     let rx = shmbus::Receiver::<N>::open_or_create("log", &o)?;
    ///     assert_eq!(rx.recv()?.v, 1);
    /// }
    /// let rx = shmbus::Receiver::<N>::open_or_create("log", &o)?; // resumes
    /// assert_eq!(rx.recv()?.v, 2);
    /// # drop((tx, rx)); std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cursor(&mut self, name: impl Into<String>) -> &mut Self {
        self.log.cursor = Some(name.into());
        self
    }

    /// When a file-log sender syncs to stable storage (default [`Durability::None`]).
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.log.durability = durability;
        self
    }

    /// Size at which a file log rolls over to a new segment (default 16 MiB; at least
    /// 4 KiB). A record larger than this gets a segment of its own.
    pub fn segment_size(&mut self, bytes: u64) -> &mut Self {
        self.log.segment_size = bytes.max(4096);
        self
    }

    /// Keep about this many bytes of file log: at roll-over the sender deletes the oldest
    /// segments beyond it, but never one that a named cursor has not finished. Readers
    /// without a cursor that fall behind skip to the oldest kept record. Default: keep all.
    pub fn retention(&mut self, bytes: u64) -> &mut Self {
        self.log.retention = Some(bytes);
        self
    }

    /// How file-log segments are accessed (default [`FileIo::Mmap`]).
    pub fn file_io(&mut self, io: FileIo) -> &mut Self {
        self.log.io = io;
        self
    }
}

// ---- format ----------------------------------------------------------------------------

/// The control file of a log directory.
pub(crate) const CONTROL_FILE: &str = "log.ctl";
const CTL_NAME: &str = CONTROL_FILE;
const CTL_MAGIC: [u8; 8] = *b"SHMBUSF1";
const CTL_LEN: usize = 4096;
const CTL_NAME_MAX: usize = 192;
const OFF_SEEN: usize = 224;
const OFF_COMMITTED: usize = 256;
const OFF_WAKE: usize = 264;
const OFF_SLEEPERS: usize = 268;
/// Lock bytes on the control file.
const LOCK_WRITER: u64 = 1;
const LOCK_READERS: u64 = 2;

const SEG_MAGIC: [u8; 8] = *b"SHMBUSS1";
/// Segment header bytes; records start here.
pub(crate) const SEG_HEADER: u64 = 64;
/// Record header bytes (before the payload).
pub(crate) const REC_HEADER: usize = 24;
/// The CRC of a record is over this many header bytes, plus the payload.
const CRC_HEADER: std::ops::Range<usize> = 8..REC_HEADER;

/// On-disk size of a record with `len` payload bytes.
pub(crate) fn record_size(len: usize) -> u64 {
    ((REC_HEADER + len + 7) & !7) as u64
}

fn record_crc(len: u32, rest_of_header: &[u8], payload: &[u8]) -> u32 {
    let c = crc32(0, &len.to_le_bytes());
    let c = crc32(c, rest_of_header);
    crc32(c, payload)
}

/// Appends an encoded record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, seq: u64, time_ns: u64, payload: &[u8]) {
    let start = out.len();
    let len = payload.len() as u32;
    let mut h = [0u8; REC_HEADER];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&time_ns.to_le_bytes());
    let crc = record_crc(len, &h[CRC_HEADER], payload);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.resize(start + record_size(payload.len()) as usize, 0);
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// First sequence numbers of the segments in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name.strip_suffix(".seg") {
            if num.len() == 20 && num.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = num.parse() {
                    v.push(n);
                }
            }
        }
    }
    v.sort_unstable();
    Ok(v)
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(fd::O_NOFOLLOW)
        .open(path)
}

fn invalid(path: &Path, what: &str) -> LinkOpenError {
    LinkOpenError::Invalid(format!("{}: {what}", path.display()))
}

// ---- control file ----------------------------------------------------------------------

/// The control file: the log's type, the committed record count and the wake-up word.
pub(crate) struct Control {
    file: File,
    map: Mapping,
}

fn control_header(wire: &Wire) -> Vec<u8> {
    let mut h = vec![0u8; CTL_LEN];
    h[..8].copy_from_slice(&CTL_MAGIC);
    h[8..12].copy_from_slice(&wire.encoding.to_le_bytes());
    h[12..16].copy_from_slice(&(wire.max_frame.min(u32::MAX as usize) as u32).to_le_bytes());
    h[16..24].copy_from_slice(&wire.fingerprint.to_le_bytes());
    let name = &wire.name.as_bytes()[..wire.name.len().min(CTL_NAME_MAX)];
    h[24..26].copy_from_slice(&(name.len() as u16).to_le_bytes());
    h[32..32 + name.len()].copy_from_slice(name);
    h
}

/// Checks (and, if `create`, makes) the log directory: never a symbolic link, always a
/// directory of an accepted owner; one this call created gets `access`'s mode and group.
fn open_dir(dir: &Path, create: bool, access: &Access) -> Result<(), LinkOpenError> {
    let io = |op| move |e| LinkOpenError::Io(op, e);
    let mut created = false;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.file_type().is_dir() => {
            return Err(LinkOpenError::WrongKind(format!(
                "{} is {}, not a log directory{}",
                dir.display(),
                super::kind_name(&m.file_type()),
                if m.file_type().is_symlink() {
                    " (symbolic links are never followed)"
                } else {
                    ""
                }
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(access.dir_mode())
                .create(dir)
                .map_err(io("mkdir"))?;
            created = true;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LinkOpenError::NotFound(dir.display().to_string()))
        }
        Err(e) => return Err(LinkOpenError::Io("stat", e)),
    }
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(fd::O_NOFOLLOW | fd::O_DIRECTORY)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(fd::ELOOP) | Some(fd::ENOTDIR) => LinkOpenError::WrongKind(format!(
                "{} is not a directory (symbolic links are never followed)",
                dir.display()
            )),
            _ => LinkOpenError::Io("open", e),
        })?;
    access
        .check_fd(d.as_fd())
        .map_err(|e| LinkOpenError::perm(dir.display(), e))?;
    if created {
        access.apply_fd(d.as_fd(), true).map_err(io("fchmod"))?;
    }
    Ok(())
}

impl Control {
    /// Opens the log in `dir` (creating the directory and control file if `create`), and
    /// checks that it carries `wire`'s type; `wire: None` accepts any type.
    pub(crate) fn open(
        dir: &Path,
        wire: Option<&Wire>,
        create: bool,
        access: &Access,
    ) -> Result<Control, LinkOpenError> {
        let io = |op| move |e| LinkOpenError::Io(op, e);
        open_dir(dir, create, access)?;
        let path = dir.join(CTL_NAME);
        let file = loop {
            match open_rw(&path) {
                Ok(f) => break f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    let Some(wire) = wire else {
                        return Err(LinkOpenError::NotFound(path.display().to_string()));
                    };
                    // Write the whole header to an unnamed file, then link it into place:
                    // the control file appears complete or not at all.
                    let r = fd::create_complete(&path, access.mode & 0o777, |t| {
                        access.apply_fd(t.as_fd(), false)?;
                        t.write_all_at(&control_header(wire), 0)
                    })
                    .map(drop);
                    match r {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(LinkOpenError::Io("create", e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(LinkOpenError::NotFound(path.display().to_string()))
                }
                Err(e) if e.raw_os_error() == Some(fd::ELOOP) => {
                    return Err(LinkOpenError::WrongKind(format!(
                        "{} is a symbolic link (never followed)",
                        path.display()
                    )))
                }
                Err(e) => return Err(LinkOpenError::Io("open", e)),
            }
        };
        access
            .check_fd(file.as_fd())
            .map_err(|e| LinkOpenError::perm(path.display(), e))?;
        let meta = file.metadata().map_err(io("fstat"))?;
        if !meta.is_file() {
            return Err(LinkOpenError::WrongKind(format!(
                "{} is {}, not a log control file",
                path.display(),
                super::kind_name(&meta.file_type())
            )));
        }
        if (meta.len() as usize) < CTL_LEN {
            return Err(invalid(&path, "not a shmbus log control file"));
        }
        let mut h = [0u8; 256];
        file.read_exact_at(&mut h, 0).map_err(io("read"))?;
        if h[..8] != CTL_MAGIC {
            return Err(invalid(&path, "not a shmbus log control file"));
        }
        let encoding = u32::from_le_bytes(h[8..12].try_into().expect("4"));
        let fingerprint = u64::from_le_bytes(h[16..24].try_into().expect("8"));
        if let Some(wire) = wire {
            if encoding != wire.encoding || fingerprint != wire.fingerprint {
                let n = (u16::from_le_bytes([h[24], h[25]]) as usize).min(CTL_NAME_MAX);
                return Err(LinkOpenError::TypeMismatch(TypeDesc {
                    name: String::from_utf8_lossy(&h[32..32 + n]).into_owned(),
                    encoding: Encoding::from_u32(encoding).map_or("unknown", Encoding::name),
                    fingerprint,
                }));
            }
        }
        let map = Mapping::new(&file, CTL_LEN).map_err(io("mmap"))?;
        Ok(Control { file, map })
    }

    /// The number of records published (the next sequence number to be written).
    fn committed(&self) -> &AtomicU64 {
        self.map.atomic_u64(OFF_COMMITTED)
    }

    /// Bumped after every publication; readers sleep on it.
    fn wake(&self) -> &AtomicU32 {
        self.map.atomic_u32(OFF_WAKE)
    }

    /// How many readers sleep (or are about to) on `wake`.
    fn sleepers(&self) -> &AtomicU32 {
        self.map.atomic_u32(OFF_SLEEPERS)
    }

    /// Non-zero once any writer has opened the log.
    fn seen(&self) -> &AtomicU32 {
        self.map.atomic_u32(OFF_SEEN)
    }

    /// Whether a writer (other than this handle) holds the log.
    fn writer_alive(&self) -> bool {
        lock::is_held_by_other(self.file.as_fd(), LOCK_WRITER).unwrap_or(true)
    }
}

/// What an observer reads from a log's control file, without opening the log.
pub(crate) struct Described {
    pub(crate) encoding: u32,
    pub(crate) type_name: String,
    /// Records published so far (the next sequence number).
    pub(crate) committed: u64,
    /// First sequence number still kept (of the oldest segment).
    pub(crate) oldest: u64,
    /// A writer holds the log now.
    pub(crate) writer: bool,
    pub(crate) writer_lock: u64,
    pub(crate) readers_lock: u64,
}

/// Reads the control file of the log in `dir` (read-only; takes no lock).
pub(crate) fn describe(dir: &Path) -> io::Result<Described> {
    let path = dir.join(CTL_NAME);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(fd::O_NOFOLLOW)
        .open(&path)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a shmbus log control file");
    let meta = file.metadata()?;
    if !meta.is_file() || (meta.len() as usize) < CTL_LEN {
        return Err(bad());
    }
    let mut h = [0u8; OFF_COMMITTED + 8];
    file.read_exact_at(&mut h, 0)?;
    if h[..8] != CTL_MAGIC {
        return Err(bad());
    }
    let n = (u16::from_le_bytes([h[24], h[25]]) as usize).min(CTL_NAME_MAX);
    let committed = u64::from_le_bytes(
        h[OFF_COMMITTED..OFF_COMMITTED + 8]
            .try_into()
            .expect("8 bytes"),
    );
    Ok(Described {
        encoding: u32::from_le_bytes(h[8..12].try_into().expect("4")),
        type_name: String::from_utf8_lossy(&h[32..32 + n]).into_owned(),
        committed,
        oldest: segments(dir)?.first().copied().unwrap_or(committed),
        writer: lock::is_held_by_other(file.as_fd(), LOCK_WRITER)?,
        writer_lock: LOCK_WRITER,
        readers_lock: LOCK_READERS,
    })
}

// ---- segments --------------------------------------------------------------------------

/// One open segment file.
struct Segment {
    first: u64,
    file: File,
    map: Option<Mapping>,
    io: FileIo,
}

impl Segment {
    fn open(dir: &Path, first: u64, io: FileIo) -> io::Result<Segment> {
        let file = open_rw(&seg_path(dir, first))?;
        let mut h = [0u8; 16];
        file.read_exact_at(&mut h, 0)?;
        if h[..8] != SEG_MAGIC || u64::from_le_bytes(h[8..16].try_into().expect("8")) != first {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {first} has a bad header"),
            ));
        }
        Ok(Segment {
            first,
            file,
            map: None,
            io,
        })
    }

    /// Creates the segment starting at `first`, `size` bytes long in mmap mode.
    fn create(
        dir: &Path,
        first: u64,
        io: FileIo,
        size: u64,
        access: &Access,
        sync: bool,
    ) -> io::Result<Segment> {
        let tmp = dir.join(format!(".{first:020}.seg.tmp"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(access.mode & 0o777)
            .custom_flags(fd::O_NOFOLLOW)
            .open(&tmp)?;
        access.apply_fd(file.as_fd(), false)?;
        let mut h = [0u8; SEG_HEADER as usize];
        h[..8].copy_from_slice(&SEG_MAGIC);
        h[8..16].copy_from_slice(&first.to_le_bytes());
        file.write_all_at(&h, 0)?;
        if io == FileIo::Mmap {
            file.set_len(size.max(SEG_HEADER))?;
        }
        if sync {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, seg_path(dir, first))?;
        if sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(Segment {
            first,
            file,
            map: None,
            io,
        })
    }

    /// Makes sure bytes `..end` are readable through the mapping (mmap mode); `false` if
    /// the file is shorter.
    fn mapped(&mut self, end: u64) -> io::Result<bool> {
        if self.map.as_ref().is_some_and(|m| m.len() as u64 >= end) {
            return Ok(true);
        }
        let size = self.file.metadata()?.len();
        if size < end {
            return Ok(false);
        }
        self.map = Some(Mapping::new(&self.file, size as usize)?);
        Ok(true)
    }

    /// Reads `out.len()` bytes at `off`; `false` if the file ends first.
    fn read_at(&mut self, off: u64, out: &mut [u8]) -> io::Result<bool> {
        match self.io {
            FileIo::Mmap => {
                if !self.mapped(off + out.len() as u64)? {
                    return Ok(false);
                }
                self.map.as_ref().expect("mapped").read(off as usize, out);
                Ok(true)
            }
            FileIo::ReadWrite => match self.file.read_exact_at(out, off) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Writes `data` at `off`, growing the file if needed.
    fn write_at(&mut self, off: u64, data: &[u8], min_size: u64) -> io::Result<()> {
        match self.io {
            FileIo::Mmap => {
                let end = off + data.len() as u64;
                if !self.mapped(end)? {
                    self.file.set_len(end.max(min_size))?;
                    self.map = None;
                    self.mapped(end)?;
                }
                self.map.as_ref().expect("mapped").write(off as usize, data);
                Ok(())
            }
            FileIo::ReadWrite => self.file.write_all_at(data, off),
        }
    }

    /// The record with sequence number `seq` at `off`, into `buf`: `(time_ns, size)`, or
    /// `None` if there is no complete, intact record with that number there.
    fn record(&mut self, off: u64, seq: u64, buf: &mut Vec<u8>) -> io::Result<Option<(u64, u64)>> {
        let mut h = [0u8; REC_HEADER];
        if !self.read_at(off, &mut h)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4"));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4"));
        let rseq = u64::from_le_bytes(h[8..16].try_into().expect("8"));
        if rseq != seq || len as usize > MAX_FRAME {
            return Ok(None);
        }
        buf.clear();
        buf.resize(len as usize, 0);
        if !self.read_at(off + REC_HEADER as u64, buf)? {
            return Ok(None);
        }
        if record_crc(len, &h[CRC_HEADER], buf) != crc {
            return Ok(None);
        }
        let time = u64::from_le_bytes(h[16..24].try_into().expect("8"));
        Ok(Some((time, record_size(len as usize))))
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

// ---- writer ----------------------------------------------------------------------------

/// The sending end: appends records.
pub(crate) struct LogWriter {
    dir: PathBuf,
    ctl: Control,
    seg: Segment,
    off: u64,
    next: u64,
    opts: LogOptions,
    access: Access,
    unsynced: u32,
    buf: Vec<u8>,
}

impl LogWriter {
    /// Opens (or creates) the log in `dir` for writing, recovering a torn tail.
    pub(crate) fn open(
        dir: &Path,
        wire: &Wire,
        create: bool,
        access: &Access,
        opts: &LogOptions,
    ) -> Result<LogWriter, LinkOpenError> {
        let ctl = Control::open(dir, Some(wire), create, access)?;
        let io = |op| move |e| LinkOpenError::Io(op, e);
        if !lock::try_lock(ctl.file.as_fd(), LOCK_WRITER, lock::Kind::Exclusive)
            .map_err(io("lock"))?
        {
            return Err(LinkOpenError::Refused("sender".into()));
        }
        let sync = opts.durability != Durability::None;
        let segs = segments(dir).map_err(io("readdir"))?;
        let (seg, off, next) = match segs.last() {
            None => {
                let seg = Segment::create(dir, 0, opts.io, opts.segment_size, access, sync)
                    .map_err(io("create segment"))?;
                (seg, SEG_HEADER, 0)
            }
            Some(&first) => {
                let mut seg = Segment::open(dir, first, opts.io).map_err(io("open segment"))?;
                let (mut off, mut next) = (SEG_HEADER, first);
                let mut scratch = Vec::new();
                while let Some((_, size)) =
                    seg.record(off, next, &mut scratch).map_err(io("read"))?
                {
                    off += size;
                    next += 1;
                }
                // Whatever follows the last intact record is a torn write: zero it, so that
                // no stale bytes can ever pass for a record.
                let size = seg.size().map_err(io("fstat"))?;
                map::zero_range(&seg.file, off, size.saturating_sub(off))
                    .map_err(io("zero tail"))?;
                if opts.io == FileIo::Mmap && size < opts.segment_size {
                    seg.file.set_len(opts.segment_size).map_err(io("grow"))?;
                }
                (seg, off, next)
            }
        };
        ctl.committed().store(next, Ordering::SeqCst);
        ctl.seen().store(1, Ordering::SeqCst);
        let w = LogWriter {
            dir: dir.to_owned(),
            ctl,
            seg,
            off,
            next,
            opts: opts.clone(),
            access: access.clone(),
            unsynced: 0,
            buf: Vec::new(),
        };
        w.publish();
        Ok(w)
    }

    /// Wakes readers after a change of `committed` (or of the writer's presence).
    fn publish(&self) {
        // SYNC POINT: the wake bump (SeqCst) pairs with a reader's sleepers increment and
        // wake load (SeqCst): either the reader sees the new count, or we see it asleep.
        self.ctl.wake().fetch_add(1, Ordering::SeqCst);
        if self.ctl.sleepers().load(Ordering::SeqCst) > 0 {
            futex::wake(self.ctl.wake(), u32::MAX);
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.unsynced = 0;
        self.seg.file.sync_data()
    }

    fn roll(&mut self, needed: u64) -> io::Result<()> {
        if self.opts.durability != Durability::None {
            self.sync()?;
        }
        let size = self.opts.segment_size.max(SEG_HEADER + needed);
        self.seg = Segment::create(
            &self.dir,
            self.next,
            self.opts.io,
            size,
            &self.access,
            self.opts.durability != Durability::None,
        )?;
        self.off = SEG_HEADER;
        if let Some(limit) = self.opts.retention {
            retain(&self.dir, limit)?;
        }
        Ok(())
    }

    /// Appends one record; returns its sequence number.
    pub(crate) fn append(&mut self, payload: &[u8], time_ns: u64) -> Result<u64, LinkError> {
        if payload.len() > MAX_FRAME {
            return Err(LinkError::TooLarge { max: MAX_FRAME });
        }
        let size = record_size(payload.len());
        if self.off + size > self.opts.segment_size.max(SEG_HEADER + size) && self.off > SEG_HEADER
        {
            self.roll(size).map_err(|e| LinkError::io("roll over", e))?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_record(&mut buf, self.next, time_ns, payload);
        let r = self.seg.write_at(self.off, &buf, self.opts.segment_size);
        self.buf = buf;
        r.map_err(|e| LinkError::io("write", e))?;
        match self.opts.durability {
            Durability::None => {}
            Durability::Message => self.sync().map_err(|e| LinkError::io("fdatasync", e))?,
            Durability::Batch(n) => {
                self.unsynced += 1;
                if self.unsynced >= n.max(1) {
                    self.sync().map_err(|e| LinkError::io("fdatasync", e))?;
                }
            }
        }
        let seq = self.next;
        self.off += size;
        self.next += 1;
        // SYNC POINT: Release publication of the record bytes written above; pairs with
        // the reader's Acquire load of `committed`.
        self.ctl.committed().store(self.next, Ordering::Release);
        self.publish();
        Ok(seq)
    }
}

impl Link for LogWriter {
    fn send_frame(&mut self, bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        self.append(bytes, now_ns()).map(|_| ())
    }

    fn recv_frame(&mut self, _buf: &mut Vec<u8>, _wait: Wait) -> Result<(), LinkError> {
        Err(LinkError::Corrupt("a sender does not receive".into()))
    }

    fn is_connected(&mut self) -> bool {
        lock::is_held_by_other(self.ctl.file.as_fd(), LOCK_READERS).unwrap_or(true)
    }

    fn kind(&self) -> TransportKind {
        TransportKind::File
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.opts.durability != Durability::None {
            let _ = self.sync();
        }
        let _ = lock::unlock(self.ctl.file.as_fd(), LOCK_WRITER);
        // Readers waiting at the end notice that the writer left.
        self.publish();
    }
}

fn cursor_dir(dir: &Path) -> PathBuf {
    dir.join("cursors")
}

/// Positions of all named cursors.
fn cursors(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(cursor_dir(dir)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e),
    };
    for e in rd {
        let mut b = [0u8; 8];
        if File::open(e?.path())
            .and_then(|f| f.read_exact_at(&mut b, 0))
            .is_ok()
        {
            v.push(u64::from_le_bytes(b));
        }
    }
    Ok(v)
}

/// Deletes the oldest segments while the log exceeds `limit` bytes, never the newest one
/// and never one that holds a record a named cursor has not passed.
fn retain(dir: &Path, limit: u64) -> io::Result<()> {
    let segs = segments(dir)?;
    let sizes: Vec<u64> = segs
        .iter()
        .map(|&s| std::fs::metadata(seg_path(dir, s)).map_or(0, |m| m.len()))
        .collect();
    let mut total: u64 = sizes.iter().sum();
    let slowest = cursors(dir)?.into_iter().min().unwrap_or(u64::MAX);
    for i in 0..segs.len().saturating_sub(1) {
        // Segment i holds records segs[i] .. segs[i + 1].
        if total <= limit || segs[i + 1] > slowest {
            break;
        }
        std::fs::remove_file(seg_path(dir, segs[i]))?;
        total -= sizes[i];
    }
    Ok(())
}

// ---- reader ----------------------------------------------------------------------------

/// The receiving end: reads records in order, independently of other readers.
pub(crate) struct LogReader {
    dir: PathBuf,
    ctl: Control,
    io: FileIo,
    seg: Option<Segment>,
    off: u64,
    /// The sequence number of the next record to read.
    next: u64,
    /// Records below this are skipped (a start position inside a segment).
    skip_until: u64,
    cursor: Option<File>,
    /// Timestamp of the last record delivered (ns since the Unix epoch).
    pub(crate) last_time: u64,
}

fn check_cursor_name(name: &str) -> Result<(), LinkOpenError> {
    crate::name::validate(name, "cursor name", false)
        .map_err(|e| LinkOpenError::Invalid(e.to_string()))
}

impl LogReader {
    /// Opens the log in `dir` for reading (creating it if `create`, so that a reader may
    /// come first). `wire: None` reads any type (raw frames).
    pub(crate) fn open(
        dir: &Path,
        wire: Option<&Wire>,
        create: bool,
        access: &Access,
        opts: &LogOptions,
    ) -> Result<LogReader, LinkOpenError> {
        let ctl = Control::open(dir, wire, create, access)?;
        let io = |op| move |e| LinkOpenError::Io(op, e);
        lock::lock_wait(ctl.file.as_fd(), LOCK_READERS, lock::Kind::Shared).map_err(io("lock"))?;
        let mut cursor = None;
        let mut saved = None;
        if let Some(name) = &opts.cursor {
            check_cursor_name(name)?;
            let cdir = cursor_dir(dir);
            let made_dir = !cdir.exists();
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(access.dir_mode())
                .create(&cdir)
                .map_err(io("mkdir"))?;
            if made_dir {
                let d = File::open(&cdir).map_err(io("open"))?;
                access.apply_fd(d.as_fd(), true).map_err(io("fchmod"))?;
            }
            let path = cdir.join(name);
            let open = |new: bool| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(new)
                    .mode(access.mode & 0o777)
                    .custom_flags(fd::O_NOFOLLOW)
                    .open(&path)
            };
            let (f, made) = match open(true) {
                Ok(f) => (Ok(f), true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (open(false), false),
                Err(e) => (Err(e), false),
            };
            let f = f.map_err(|e| match e.raw_os_error() {
                Some(fd::ELOOP) => LinkOpenError::WrongKind(format!(
                    "cursor {} is a symbolic link (never followed)",
                    path.display()
                )),
                _ => LinkOpenError::Io("open cursor", e),
            })?;
            access
                .check_fd(f.as_fd())
                .map_err(|e| LinkOpenError::perm(path.display(), e))?;
            if made {
                access.apply_fd(f.as_fd(), false).map_err(io("fchmod"))?;
            }
            let mut b = [0u8; 8];
            if f.read_exact_at(&mut b, 0).is_ok() {
                saved = Some(u64::from_le_bytes(b));
            }
            cursor = Some(f);
        }
        let mut r = LogReader {
            dir: dir.to_owned(),
            ctl,
            io: opts.io,
            seg: None,
            off: SEG_HEADER,
            next: 0,
            skip_until: 0,
            cursor,
            last_time: 0,
        };
        let target = match (saved, opts.start) {
            (Some(n), _) | (None, Start::Sequence(n)) => n,
            (None, Start::Beginning) => 0,
            (None, Start::End) => u64::MAX,
        };
        r.position(target).map_err(io("read"))?;
        if r.cursor.is_some() && saved.is_none() {
            r.save_cursor().map_err(io("write cursor"))?;
        }
        Ok(r)
    }

    /// Moves to record `target` (`u64::MAX`: the current end).
    fn position(&mut self, target: u64) -> io::Result<()> {
        let segs = segments(&self.dir)?;
        let Some(&oldest) = segs.first() else {
            self.next = 0;
            self.skip_until = if target == u64::MAX { 0 } else { target };
            return Ok(());
        };
        let first = segs
            .iter()
            .rev()
            .find(|&&s| s <= target)
            .copied()
            .unwrap_or(oldest);
        self.seg = Some(Segment::open(&self.dir, first, self.io)?);
        self.off = SEG_HEADER;
        self.next = first;
        self.skip_until = target;
        if target == u64::MAX {
            let mut scratch = Vec::new();
            while self.advance(&mut scratch, true)?.is_some() {}
            self.skip_until = self.next;
        }
        Ok(())
    }

    fn save_cursor(&mut self) -> io::Result<()> {
        if let Some(f) = &self.cursor {
            f.write_all_at(&self.next.to_le_bytes(), 0)?;
        }
        Ok(())
    }

    /// Reads the next record into `buf` if it is there: `Some(time_ns)`. `scan`: also look
    /// past the committed count (valid when no writer is alive, whose records may be
    /// complete but unpublished).
    fn advance(&mut self, buf: &mut Vec<u8>, scan: bool) -> io::Result<Option<u64>> {
        loop {
            // SYNC POINT: Acquire pairs with the writer's Release store after the record.
            let committed = self.ctl.committed().load(Ordering::Acquire);
            if self.next >= committed && !scan {
                return Ok(None);
            }
            if self.seg.is_none() {
                match Segment::open(&self.dir, self.next, self.io) {
                    Ok(s) => {
                        self.seg = Some(s);
                        self.off = SEG_HEADER;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if self.lagged(committed)? {
                            continue;
                        }
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            let seg = self.seg.as_mut().expect("segment");
            if let Some((time, size)) = seg.record(self.off, self.next, buf)? {
                self.off += size;
                self.next += 1;
                if self.next <= self.skip_until {
                    continue;
                }
                return Ok(Some(time));
            }
            // Not here: the writer may have rolled over to the next segment.
            if seg.first != self.next && seg_path(&self.dir, self.next).exists() {
                self.seg = None;
                continue;
            }
            if self.next < committed && !seg_path(&self.dir, seg.first).exists() {
                // Our segment was deleted by retention and the next one too.
                if self.lagged(committed)? {
                    continue;
                }
                return Ok(None);
            }
            if self.next < committed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("record {} is published but missing or damaged", self.next),
                ));
            }
            return Ok(None);
        }
    }

    /// A reader whose records were deleted by retention skips to the oldest kept segment;
    /// returns whether it moved.
    fn lagged(&mut self, committed: u64) -> io::Result<bool> {
        let segs = segments(&self.dir)?;
        match segs.first() {
            Some(&oldest) if oldest > self.next && self.next < committed => {
                self.seg = None;
                self.next = oldest;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The next record, without waiting: `Some(time_ns)`.
    pub(crate) fn try_next(&mut self, buf: &mut Vec<u8>) -> Result<Option<u64>, LinkError> {
        let mut got = self
            .advance(buf, false)
            .map_err(|e| LinkError::Corrupt(format!("file log: {e}")))?;
        if got.is_none() && !self.ctl.writer_alive() {
            got = self
                .advance(buf, true)
                .map_err(|e| LinkError::Corrupt(format!("file log: {e}")))?;
        }
        if let Some(t) = got {
            self.last_time = t;
            self.save_cursor()
                .map_err(|e| LinkError::io("write cursor", e))?;
        }
        Ok(got)
    }

    /// Whether the log has ended for now: no writer holds it and one did before.
    pub(crate) fn writer_gone(&self) -> bool {
        self.ctl.seen().load(Ordering::SeqCst) != 0 && !self.ctl.writer_alive()
    }

    /// The next record, waiting as `wait` allows; `Disconnected` at the end of a log whose
    /// writer left.
    pub(crate) fn next(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<u64, LinkError> {
        loop {
            if let Some(t) = self.try_next(buf)? {
                return Ok(t);
            }
            if self.writer_gone() {
                // The writer may have committed its last record just before leaving.
                if let Some(t) = self.try_next(buf)? {
                    return Ok(t);
                }
                return Err(LinkError::Disconnected);
            }
            let Some(slice) = wait.slice(super::LIVENESS_SLICE) else {
                return Err(wait.expired());
            };
            // SYNC POINT: see `LogWriter::publish`.
            self.ctl.sleepers().fetch_add(1, Ordering::SeqCst);
            let w = self.ctl.wake().load(Ordering::SeqCst);
            let got = self.try_next(buf);
            if !matches!(got, Ok(None)) {
                self.ctl.sleepers().fetch_sub(1, Ordering::SeqCst);
                return got.map(|t| t.expect("some"));
            }
            futex::wait(self.ctl.wake(), w, Some(slice));
            self.ctl.sleepers().fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Link for LogReader {
    fn send_frame(&mut self, _bytes: &[u8], _tag: u32, _wait: Wait) -> Result<(), LinkError> {
        Err(LinkError::Corrupt("a receiver does not send".into()))
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>, wait: Wait) -> Result<(), LinkError> {
        self.next(buf, wait).map(|_| ())
    }

    fn is_connected(&mut self) -> bool {
        self.ctl.writer_alive()
    }

    fn kind(&self) -> TransportKind {
        TransportKind::File
    }
}

#[cfg(test)]
mod tests;
