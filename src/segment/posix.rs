//! A segment in a POSIX shared-memory object (`/dev/shm/<prefix><name>`).
//!
//! The object is its own lock file: every handle holds the locks of the lifetime protocol
//! ([`super::mapped`]) on its own open file description of the object. The last handle to
//! go unlinks the object.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::layout::HEADER_SIZE;
use super::mapped::{
    io, is_ready, unlink_if_same, Backing, Mapping, OpenMode, Segment, SegmentError, Spec,
    LIFE_LOCK,
};
use crate::sys::{lock, shm};

/// Opens or creates the object `object` (already validated and prefixed).
pub(crate) fn open(object: &str, spec: &Spec, mode: OpenMode) -> Result<Segment, SegmentError> {
    let start = Instant::now();
    let mut not_ready_since: Option<Instant> = None;
    let path = shm::path_of(object);
    let backing = || Backing::Posix {
        object: object.to_owned(),
    };
    loop {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(SegmentError::Io(
                "open",
                io::Error::new(io::ErrorKind::TimedOut, "segment never became ready"),
            ));
        }
        if mode != OpenMode::Open {
            match shm::create_exclusive(object, &spec.access) {
                Ok(file) => match initialise(object, file, spec)? {
                    Some(seg) => return Ok(seg),
                    None => continue,
                },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if mode == OpenMode::Create {
                        return Err(SegmentError::AlreadyExists);
                    }
                }
                Err(e) => return Err(SegmentError::Io("create", e)),
            }
        }
        let file = match shm::open_existing(object) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if mode == OpenMode::Open {
                    return Err(SegmentError::NotFound);
                }
                continue;
            }
            Err(e) => {
                return Err(match std::fs::symlink_metadata(&path) {
                    Ok(m) if !m.file_type().is_file() => SegmentError::WrongKind(format!(
                        "{} is {}, not a segment (symbolic links are never followed)",
                        path.display(),
                        crate::transport::kind_name(&m.file_type())
                    )),
                    _ => SegmentError::Io("open", e),
                })
            }
        };
        // Before anything is locked or read: whose is it?
        spec.access
            .check_fd(file.as_fd())
            .map_err(|e| SegmentError::perm(path.display(), e))?;
        lock::lock_wait(file.as_fd(), LIFE_LOCK, lock::Kind::Shared).map_err(io("lock"))?;
        let st = shm::stat(&file).map_err(io("fstat"))?;
        if st.links == 0 {
            continue; // unlinked by its last handle while we waited: start over
        }
        if !st.is_file {
            return Err(SegmentError::WrongKind(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let ready = st.size >= HEADER_SIZE as u64 && {
            let map = Mapping::Mmap(shm::map(&file, HEADER_SIZE).map_err(io("mmap"))?);
            is_ready(&map)
        };
        if !ready {
            // The creator has not taken its lock yet, or died while initialising.
            let since = *not_ready_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(200)
                && lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive)
                    .map_err(io("lock"))?
            {
                // Nobody else is in it and it never became ready: remove it (unless it is
                // another user's, in the sticky /dev/shm: then say so rather than wait).
                match unlink_if_same(&path, &file) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(SegmentError::Io("unlink a half-initialised segment", e))
                    }
                    _ => {}
                }
            }
            drop(file);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let map = Mapping::Mmap(shm::map(&file, st.size as usize).map_err(io("mmap"))?);
        match Segment::attach(map, file, backing(), spec, st.size) {
            Ok(seg) => return Ok(seg),
            Err((file, _, err)) => {
                // A segment nobody else uses is stale: replace it rather than fail.
                let stale = lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive)
                    .map_err(io("lock"))?;
                if stale && mode != OpenMode::Open {
                    tracing::info!(object, reason = ?err, "replacing a stale segment");
                    match unlink_if_same(&path, &file) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {}
                        _ => continue,
                    }
                    // Another user's segment in the sticky /dev/shm: not ours to replace.
                }
                return Err(err);
            }
        }
    }
}

/// Initialises a freshly created object. `Ok(None)`: it was removed meanwhile, retry.
fn initialise(
    object: &str,
    file: std::fs::File,
    spec: &Spec,
) -> Result<Option<Segment>, SegmentError> {
    lock::lock_wait(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive).map_err(io("lock"))?;
    if shm::stat(&file).map_err(io("fstat"))?.links == 0 {
        return Ok(None);
    }
    let g = spec.geometry;
    if let Err(e) = shm::reserve(&file, g.total_size) {
        let _ = shm::unlink(object);
        return Err(match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EFBIG) => SegmentError::NoSpace(e),
            _ => SegmentError::Io("fallocate", e),
        });
    }
    let map = match shm::map(&file, g.total_size as usize) {
        Ok(m) => Mapping::Mmap(m),
        Err(e) => {
            let _ = shm::unlink(object);
            return Err(SegmentError::Io("mmap", e));
        }
    };
    let backing = Backing::Posix {
        object: object.to_owned(),
    };
    Segment::create(map, file, backing, spec).map(Some)
}

/// Removes `object` if no handle holds it (nobody holds its lifetime lock). Taking the
/// lifetime lock exclusively makes the check and the removal atomic with respect to openers,
/// which wait for a shared lock and then see the object unlinked. Returns whether it was
/// removed.
pub(crate) fn remove_if_unused(object: &str) -> Result<bool, SegmentError> {
    let file = match shm::open_existing(object) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SegmentError::NotFound),
        Err(e) => return Err(SegmentError::Io("open", e)),
    };
    if !lock::try_lock(file.as_fd(), LIFE_LOCK, lock::Kind::Exclusive).map_err(io("lock"))? {
        return Ok(false);
    }
    unlink_if_same(&shm::path_of(object), &file).map_err(io("unlink"))?;
    tracing::info!(object, "removed a stale segment");
    Ok(true)
}
