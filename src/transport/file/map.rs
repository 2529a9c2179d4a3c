//! Memory-mapped access to log files: the only unsafe code of the file transport.
//!
//! A [`Mapping`] maps a prefix of a file shared and read-write (through `sys::shm::map`),
//! and copies bytes in and out of it with bounds checks. The files are writable by every
//! process that can open the log directory: nothing read through a mapping is trusted
//! (records are validated by length, sequence number and CRC-32 before use), and bytes are
//! only ever copied out, never referenced in place.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A shared, read-write mapping of the first `len` bytes of a file.
pub(crate) struct Mapping {
    raw: memmap2::MmapRaw,
}

impl Mapping {
    /// Maps the first `len` bytes of `file` (which must be at least that long, so that no
    /// access can fault past the end of the file).
    pub(crate) fn new(file: &File, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let size = file.metadata()?.len();
        if (size as usize) < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file shorter than the mapping",
            ));
        }
        Ok(Mapping {
            raw: crate::sys::shm::map(file, len)?,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    /// Copies `out.len()` bytes at `off` out of the mapping.
    ///
    /// # Panics
    ///
    /// If the range is not inside the mapping.
    pub(crate) fn read(&self, off: usize, out: &mut [u8]) {
        let end = off.checked_add(out.len()).expect("range overflow");
        assert!(end <= self.len(), "read past the mapping");
        // SAFETY: `off..end` lies inside the live mapping (checked above), which stays
        // mapped for the life of `self`; `out` is a distinct local buffer. Another process
        // may write these bytes concurrently; the caller validates what it copied (CRC) and
        // only relies on bytes the writer published before (see `Control::committed`).
        unsafe {
            std::ptr::copy_nonoverlapping(self.raw.as_ptr().add(off), out.as_mut_ptr(), out.len())
        };
    }

    /// Copies `data` into the mapping at `off`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the mapping.
    pub(crate) fn write(&self, off: usize, data: &[u8]) {
        let end = off.checked_add(data.len()).expect("range overflow");
        assert!(end <= self.len(), "write past the mapping");
        // SAFETY: `off..end` lies inside the live, writable shared mapping (checked above);
        // `data` is a distinct buffer. The bytes are not yet published to readers (the
        // writer publishes them afterwards with a Release store of the committed count).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.raw.as_mut_ptr().add(off), data.len())
        };
    }

    fn check_atomic(&self, off: usize, size: usize) {
        assert!(
            off % size == 0 && off + size <= self.len(),
            "bad atomic offset"
        );
        // The mapping starts on a page boundary, so an aligned offset is an aligned address.
        debug_assert_eq!(self.raw.as_ptr() as usize % 4096, 0);
    }

    /// The 64-bit atomic at `off` (a multiple of 8 inside the mapping).
    pub(crate) fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check_atomic(off, 8);
        // SAFETY: the address is inside the mapping and 8-aligned (checked); any bit pattern
        // is a valid AtomicU64; the reference cannot outlive the mapping (`&self`); every
        // process touches this word only through atomics.
        unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU64) }
    }

    /// The 32-bit atomic at `off` (a multiple of 4 inside the mapping).
    pub(crate) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check_atomic(off, 4);
        // SAFETY: as for `atomic_u64`, with 4-byte alignment.
        unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU32) }
    }
}

/// Zeroes `len` bytes of `file` from `off` without changing its size: punches a hole where
/// the file system can, and writes zeros otherwise.
pub(crate) fn zero_range(file: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}
