//! POSIX shared-memory objects (files in `/dev/shm`), System V shared-memory segments
//! (`shmget`/`shmat`), and their mapping.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Where POSIX shared-memory objects live on Linux (`shm_open` opens files here).
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The directory `Transport::Auto` probes for POSIX shared memory: [`SHM_DIR`], unless the
/// environment variable `SHMBUS_SHM_DIR` names another (a test hook: `shm_open` itself
/// always uses `/dev/shm`).
pub(crate) fn probe_dir() -> PathBuf {
    std::env::var_os("SHMBUS_SHM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SHM_DIR))
}

/// The path of the object called `name` (already validated: no `/`).
pub(crate) fn path_of(name: &str) -> PathBuf {
    Path::new(SHM_DIR).join(name)
}

fn to_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Creates a new object, failing with `AlreadyExists` if one is there. The object is opened
/// read-write, close-on-exec, never through a symlink, with exactly the permission bits and
/// group of `access`.
#[allow(clippy::disallowed_methods)]
pub(crate) fn create_exclusive(name: &str, access: &super::perm::Access) -> io::Result<File> {
    let fd: OwnedFd = nix::sys::mman::shm_open(
        format!("/{name}").as_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(access.mode as nix::libc::mode_t),
    )
    .map_err(to_io)?;
    let file = File::from(fd);
    // The umask may have removed bits; set exactly what was asked for.
    if let Err(e) = access.apply_fd(file.as_fd(), false) {
        let _ = unlink(name);
        return Err(e);
    }
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

/// A System V shared-memory segment attached to this process (`shmat`), detached on drop.
pub(crate) struct SysvMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the attachment is a plain address range valid in every thread of the process;
// what is stored there is accessed through the segment layer's atomics.
unsafe impl Send for SysvMap {}
// SAFETY: as above.
unsafe impl Sync for SysvMap {}

impl SysvMap {
    /// The start of the attachment (page aligned).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length: the segment's size when it was attached.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SysvMap {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the address `shmat` returned and is detached exactly once, here;
        // references into it do not outlive the segment that owns this value.
        unsafe { libc::shmdt(self.ptr.as_ptr().cast()) };
    }
}

/// What `IPC_STAT` says about a System V segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SysvStat {
    pub(crate) size: u64,
}

/// Owner uid and gid of System V segment `id`.
pub(crate) fn sysv_owner(id: i32) -> io::Result<(u32, u32)> {
    // SAFETY: `shmid_ds` is a plain C struct for which all-zero is valid; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((ds.shm_perm.uid, ds.shm_perm.gid))
}

/// Gives System V segment `id` group `gid` (`IPC_SET`; the owner and mode stay).
pub(crate) fn sysv_set_group(id: i32, gid: u32) -> io::Result<()> {
    // SAFETY: as in `sysv_owner`.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    ds.shm_perm.gid = gid;
    // SAFETY: `ds` is a valid shmid_ds; IPC_SET reads its uid, gid and mode.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The id of the System V segment with `key`, if there is one.
pub(crate) fn sysv_lookup(key: i32) -> io::Result<Option<i32>> {
    // SAFETY: shmget takes plain integers.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id >= 0 {
        return Ok(Some(id));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

/// Creates a System V segment of `len` bytes with `key` and permission bits `mode`; fails
/// with `AlreadyExists` if the key is taken. The kernel zero-fills it.
pub(crate) fn sysv_create(key: i32, len: u64, mode: u32) -> io::Result<i32> {
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: shmget takes plain integers.
    let id = unsafe {
        libc::shmget(
            key,
            len,
            libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as libc::c_int,
        )
    };
    if id < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// The size of segment `id`.
pub(crate) fn sysv_stat(id: i32) -> io::Result<SysvStat> {
    // SAFETY: `shmid_ds` is a plain C struct for which all-zero is valid; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(SysvStat {
        size: ds.shm_segsz as u64,
    })
}

/// Attaches segment `id` read-write; `len` is its size (from [`sysv_stat`]).
pub(crate) fn sysv_attach(id: i32, len: u64) -> io::Result<SysvMap> {
    // SAFETY: shmat with a null address lets the kernel choose where to attach; nothing in
    // this process is at that range yet.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    let ptr = std::ptr::NonNull::new(p.cast::<u8>())
        .ok_or_else(|| io::Error::other("shmat returned null"))?;
    Ok(SysvMap {
        ptr,
        len: len as usize,
    })
}

/// Marks segment `id` for removal (`IPC_RMID`): it goes once the last process detaches,
/// and its key is free at once.
/// Attaches segment `id` (of `len` bytes) read-only, for observers.
pub(crate) fn sysv_attach_read_only(id: i32, len: u64) -> io::Result<SysvMap> {
    // SAFETY: as in `sysv_attach`; SHM_RDONLY maps the pages without write permission.
    let p = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    let ptr = std::ptr::NonNull::new(p.cast::<u8>())
        .ok_or_else(|| io::Error::other("shmat returned null"))?;
    Ok(SysvMap {
        ptr,
        len: len as usize,
    })
}

pub(crate) fn sysv_remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID ignores the buffer argument.
    if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
