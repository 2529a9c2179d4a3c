//! Who has a file or socket open, from `/proc`: the descriptor tables `/proc/<pid>/fd` and,
//! per descriptor, `/proc/<pid>/fdinfo/<fd>` (its open flags and the byte-range locks its
//! open file description holds). Open-file-description locks report no pid
//! (`F_OFD_GETLK` says -1), so this is how the tool learns which process holds which role.
//!
//! Only processes whose `/proc/<pid>/fd` this process may read are seen (the same user, or
//! root); others are simply missing. Everything read here is a snapshot.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// A descriptor of some process that refers to the file looked for.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    pub(crate) pid: u32,
    /// `O_ACCMODE` bits of its open flags (0 read-only, 1 write-only, 2 read-write).
    pub(crate) access: u32,
    /// Byte ranges it locks: (first, last, exclusive).
    pub(crate) locks: Vec<(u64, u64, bool)>,
}

impl Holder {
    /// Whether it holds a lock on byte `b`.
    pub(crate) fn locks_byte(&self, b: u64) -> bool {
        self.locks.iter().any(|&(s, e, _)| s <= b && b <= e)
    }
}

/// A snapshot of every readable descriptor table, indexed by what the descriptors refer to.
pub(crate) struct Procs {
    /// (device, inode) of files; sockets are under device `u64::MAX` (their inode is the
    /// one `/proc/net/unix` shows).
    by_inode: HashMap<(u64, u64), Vec<(u32, String)>>,
}

const SOCKET_DEV: u64 = u64::MAX;

impl Procs {
    /// Reads `/proc/*/fd` (this process excluded).
    pub(crate) fn scan() -> Procs {
        let me = std::process::id();
        let mut by_inode: HashMap<(u64, u64), Vec<(u32, String)>> = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Procs { by_inode };
        };
        for p in dir.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(meta) = std::fs::metadata(fd.path()) else {
                    continue;
                };
                let key = if meta.file_type().is_socket() {
                    (SOCKET_DEV, meta.ino())
                } else {
                    (meta.dev(), meta.ino())
                };
                by_inode
                    .entry(key)
                    .or_default()
                    .push((pid, fd.file_name().to_string_lossy().into_owned()));
            }
        }
        Procs { by_inode }
    }

    /// The descriptors that refer to the file with `meta`.
    pub(crate) fn holders_of(&self, meta: &std::fs::Metadata) -> Vec<Holder> {
        self.holders((meta.dev(), meta.ino()))
    }

    /// The descriptors of the socket with inode `ino`.
    pub(crate) fn socket_holders(&self, ino: u64) -> Vec<Holder> {
        self.holders((SOCKET_DEV, ino))
    }

    fn holders(&self, key: (u64, u64)) -> Vec<Holder> {
        let Some(list) = self.by_inode.get(&key) else {
            return Vec::new();
        };
        list.iter()
            .map(|(pid, fd)| {
                let info =
                    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
                parse_fdinfo(*pid, &info)
            })
            .collect()
    }
}

/// Parses `flags:` (octal) and `lock:` lines, e.g.
/// `lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10010704 1 1`.
fn parse_fdinfo(pid: u32, info: &str) -> Holder {
    let mut h = Holder {
        pid,
        access: 0,
        locks: Vec::new(),
    };
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("flags:") {
            h.access = u32::from_str_radix(v.trim(), 8).unwrap_or(0) & 3;
        } else if let Some(v) = line.strip_prefix("lock:") {
            let t: Vec<&str> = v.split_whitespace().collect();
            if t.len() >= 8 {
                let start = t[6].parse().unwrap_or(0);
                let end = if t[7] == "EOF" {
                    u64::MAX
                } else {
                    t[7].parse().unwrap_or(start)
                };
                h.locks.push((start, end, t[3] == "WRITE"));
            }
        }
    }
    h
}

/// A bound Unix socket as `/proc/net/unix` lists it.
#[derive(Debug, Clone)]
pub(crate) struct UnixSocket {
    /// The path, or `@name` for an abstract name.
    pub(crate) path: String,
    pub(crate) inode: u64,
    /// Listening (accepting connections).
    pub(crate) listening: bool,
    /// A connected socket (an accepted connection carries the listener's path).
    pub(crate) connected: bool,
}

/// The bound Unix sockets of the machine (of this network namespace).
pub(crate) fn unix_sockets() -> Vec<UnixSocket> {
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    // Num RefCount Protocol Flags Type St Inode Path
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            if t.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(t[3], 16).ok()?;
            Some(UnixSocket {
                path: t[7..].join(" "),
                inode: t[6].parse().ok()?,
                listening: flags & 0x0001_0000 != 0,
                connected: t[5] == "03",
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo() {
        let h = parse_fdinfo(
            7,
            "pos:\t0\nflags:\t02100001\nmnt_id:\t27\nlock:\t1: OFDLCK ADVISORY  READ -1 fe:00:1 0 0\nlock:\t2: OFDLCK ADVISORY  WRITE -1 fe:00:1 2 EOF\n",
        );
        assert_eq!(h.access, 1);
        assert_eq!(h.locks, [(0, 0, false), (2, u64::MAX, true)]);
        assert!(h.locks_byte(0) && h.locks_byte(9) && !h.locks_byte(1));
    }
}
