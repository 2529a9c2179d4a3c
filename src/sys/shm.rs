//! POSIX shared-memory objects (files in `/dev/shm`) and their mapping.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Where POSIX shared-memory objects live on Linux (`shm_open` opens files here).
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The path of the object called `name` (already validated: no `/`).
pub(crate) fn path_of(name: &str) -> PathBuf {
    Path::new(SHM_DIR).join(name)
}

fn to_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Creates a new object, failing with `AlreadyExists` if one is there. The object is opened
/// read-write, close-on-exec, never through a symlink, with permission bits `mode`.
#[allow(clippy::disallowed_methods)]
pub(crate) fn create_exclusive(name: &str, mode: u32) -> io::Result<File> {
    let fd: OwnedFd = nix::sys::mman::shm_open(
        format!("/{name}").as_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode as nix::libc::mode_t),
    )
    .map_err(to_io)?;
    let file = File::from(fd);
    // The umask may have removed bits; set exactly what was asked for.
    nix::sys::stat::fchmod(
        file.as_fd(),
        Mode::from_bits_truncate(mode as nix::libc::mode_t),
    )
    .map_err(to_io)?;
    Ok(file)
}

/// Opens an existing object read-write.
#[allow(clippy::disallowed_methods)]
pub(crate) fn open_existing(name: &str) -> io::Result<File> {
    let fd: OwnedFd = nix::sys::mman::shm_open(
        format!("/{name}").as_str(),
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(to_io)?;
    Ok(File::from(fd))
}

/// Opens an existing object read-only (for observers that never write).
#[allow(clippy::disallowed_methods)]
pub(crate) fn open_read_only(name: &str) -> io::Result<File> {
    let fd: OwnedFd = nix::sys::mman::shm_open(
        format!("/{name}").as_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(to_io)?;
    Ok(File::from(fd))
}

/// Removes the name (the memory lives on while mapped).
pub(crate) fn unlink(name: &str) -> io::Result<()> {
    nix::sys::mman::shm_unlink(format!("/{name}").as_str()).map_err(to_io)
}

/// Sets the size and reserves the memory now, so that a full `/dev/shm` is an error here
/// rather than a SIGBUS on first touch.
pub(crate) fn reserve(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    nix::fcntl::posix_fallocate(file.as_fd(), 0, len as nix::libc::off_t).map_err(to_io)
}

/// Size and link count of an open object.
pub(crate) struct Stat {
    pub(crate) size: u64,
    pub(crate) links: u64,
    pub(crate) is_file: bool,
}

pub(crate) fn stat(file: &File) -> io::Result<Stat> {
    let st = nix::sys::stat::fstat(file.as_fd()).map_err(to_io)?;
    Ok(Stat {
        size: st.st_size.max(0) as u64,
        links: st.st_nlink as u64,
        is_file: (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG,
    })
}

/// Maps `len` bytes of `file` shared and read-only.
#[allow(clippy::disallowed_methods)]
pub(crate) fn map_read_only(file: &File, len: usize) -> io::Result<memmap2::MmapRaw> {
    memmap2::MmapOptions::new().len(len).map_raw_read_only(file)
}

/// Maps `len` bytes of `file` shared and read-write.
#[allow(clippy::disallowed_methods)]
pub(crate) fn map(file: &File, len: usize) -> io::Result<memmap2::MmapRaw> {
    memmap2::MmapOptions::new().len(len).map_raw(file)
}
