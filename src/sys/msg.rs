//! System V message queues (`msgget`, `msgsnd`, `msgrcv`, `msgctl`).
//!
//! They have no timed calls: callers use the non-blocking forms and sleep in short steps.

use std::io;

/// A System V message queue id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgQueue {
    id: libc::c_int,
}

/// A reusable, aligned `struct msgbuf`: a `c_long` type followed by the text.
pub(crate) struct MsgBuf {
    words: Vec<libc::c_long>,
}

impl MsgBuf {
    /// A buffer for messages of up to `max` bytes.
    pub(crate) fn new(max: usize) -> MsgBuf {
        let w = size_of::<libc::c_long>();
        MsgBuf {
            words: vec![0; 1 + max.div_ceil(w)],
        }
    }

    fn capacity(&self) -> usize {
        (self.words.len() - 1) * size_of::<libc::c_long>()
    }

    fn text_mut(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        // SAFETY: the words after the first are `cap` initialised bytes owned by `self`;
        // viewing them as bytes is valid for any value.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().add(1).cast::<u8>(), cap) }
    }
}

impl MsgQueue {
    /// Gets the queue for `key`, creating it with `mode` if `create`. Returns the queue and
    /// whether this call created it.
    pub(crate) fn get(key: i32, create: bool, mode: u32) -> io::Result<(MsgQueue, bool)> {
        if create {
            // SAFETY: msgget takes plain integers.
            let id = unsafe {
                libc::msgget(
                    key,
                    libc::IPC_CREAT | libc::IPC_EXCL | (mode as libc::c_int & 0o777),
                )
            };
            if id >= 0 {
                return Ok((MsgQueue { id }, true));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        // SAFETY: msgget takes plain integers.
        let id = unsafe { libc::msgget(key, 0) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((MsgQueue { id }, false))
    }

    /// `(messages waiting, queue size limit in bytes, pid of the last msgsnd, pid of the
    /// last msgrcv)` (`IPC_STAT`; pids are 0 before the first call).
    pub(crate) fn stat(&self) -> io::Result<(u64, u64, u32, u32)> {
        // SAFETY: `msqid_ds` is a plain C struct for which all-zero is valid.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, writable msqid_ds that IPC_STAT fills.
        if unsafe { libc::msgctl(self.id, libc::IPC_STAT, &mut ds) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            ds.msg_qnum as u64,
            ds.msg_qbytes as u64,
            ds.msg_lspid as u32,
            ds.msg_lrpid as u32,
        ))
    }

    /// Owner uid and gid of the queue.
    pub(crate) fn owner(&self) -> io::Result<(u32, u32)> {
        // SAFETY: `msqid_ds` is a plain C struct for which all-zero is valid.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, writable msqid_ds; IPC_STAT fills it.
        if unsafe { libc::msgctl(self.id, libc::IPC_STAT, &mut ds) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((ds.msg_perm.uid, ds.msg_perm.gid))
    }

    /// Gives the queue group `gid` (`IPC_SET`; owner, mode and size limit stay).
    pub(crate) fn set_group(&self, gid: u32) -> io::Result<()> {
        // SAFETY: as in `owner`.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, writable msqid_ds.
        if unsafe { libc::msgctl(self.id, libc::IPC_STAT, &mut ds) } == -1 {
            return Err(io::Error::last_os_error());
        }
        ds.msg_perm.gid = gid;
        // SAFETY: `ds` is a valid msqid_ds; IPC_SET reads its ids, mode and qbytes.
        if unsafe { libc::msgctl(self.id, libc::IPC_SET, &mut ds) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes the queue (`IPC_RMID`).
    pub(crate) fn remove(self) -> io::Result<()> {
        // SAFETY: IPC_RMID ignores the buffer argument.
        if unsafe { libc::msgctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `bytes` as a message of type `mtype` (>= 1) without waiting. `Ok(false)`: the
    /// queue is full.
    pub(crate) fn try_send(&self, buf: &mut MsgBuf, mtype: i64, bytes: &[u8]) -> io::Result<bool> {
        if bytes.len() > buf.capacity() {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        debug_assert!(mtype >= 1);
        buf.words[0] = mtype as libc::c_long;
        buf.text_mut()[..bytes.len()].copy_from_slice(bytes);
        loop {
            // SAFETY: `buf` is an aligned c_long type followed by at least `bytes.len()`
            // bytes of text, as msgsnd requires.
            let r = unsafe {
                libc::msgsnd(
                    self.id,
                    buf.words.as_ptr().cast(),
                    bytes.len(),
                    libc::IPC_NOWAIT,
                )
            };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(false),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Receives one message whose type matches `mtype` (msgrcv's rules: 0 any, > 0 that
    /// type, < 0 the lowest type up to `-mtype`) into `out`, without waiting. `Ok(None)`: no
    /// such message. A message longer than the buffer is an `E2BIG` error (it stays queued).
    pub(crate) fn try_recv(
        &self,
        buf: &mut MsgBuf,
        mtype: i64,
        out: &mut Vec<u8>,
    ) -> io::Result<Option<i64>> {
        let cap = buf.capacity();
        loop {
            // SAFETY: `buf` is an aligned, writable c_long followed by `cap` bytes of text.
            let r = unsafe {
                libc::msgrcv(
                    self.id,
                    buf.words.as_mut_ptr().cast(),
                    cap,
                    mtype as libc::c_long,
                    libc::IPC_NOWAIT,
                )
            };
            if r >= 0 {
                out.clear();
                out.extend_from_slice(&buf.text_mut()[..r as usize]);
                #[allow(clippy::unnecessary_cast)] // c_long is i32 on 32-bit targets
                return Ok(Some(buf.words[0] as i64));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOMSG) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }
}

/// The kernel's largest System V message (`kernel.msgmax`, default 8192).
pub(crate) fn msgmax() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/msgmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8192)
}
