//! Permissions and names on every transport (issue 7): what a channel creates is owner-only
//! (or shared with one group), what it opens must belong to an accepted user, paths are
//! never followed through symbolic links and must hold the right kind of object, names are
//! checked for every transport; a process of another user gets typed errors; and whatever
//! fails, messages already in a channel are still delivered.
//!
//! The ownership tests change owners with `chown`/`IPC_SET` and start a child process as
//! user 65534, so they need root (CI runs as root); as another user they say so and return.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/exe_for_nobody.rs"]
mod exe_for_nobody;
use exe_for_nobody::ExeForNobody;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shmbus::{OpenError, Options, Receiver, Sender, Transport, TryRecvError};

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Msg {
    seq: u64,
}

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Other {
    a: u32,
    b: u32,
}

/// The user and group that tests hand objects to, and run the intruder process as.
const NOBODY: u32 = 65534;
const ROLE_VAR: &str = "SHMBUS_PERM_ROLE";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: needs root (chown, setuid); skipped");
    }
    is_root()
}

/// Kinds of transport with named objects.
const KINDS: [&str; 8] = [
    "shm", "sysv_shm", "posix_mq", "sysv_mq", "fifo", "unix", "abstract", "file",
];

/// A channel of one test on one transport: its name, options, and the objects it makes.
/// Dropping it removes whatever the library left (after a failed assertion).
struct Chan {
    kind: &'static str,
    name: String,
    key: i32,
    path: PathBuf,
}

fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| "/tmp".into())
}

impl Chan {
    fn new(test: &str, kind: &'static str) -> Chan {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("perm-{test}-{kind}-{pid}-{n}");
        let key = 0x5c00_0000 | (((pid & 0xffff) as i32) << 8) | (n as i32 & 0xff);
        let path = std::env::temp_dir().join(format!("shmbus-{name}"));
        Chan {
            kind,
            name,
            key,
            path,
        }
    }

    fn options(&self) -> Options {
        let mut o = Options::new();
        o.capacity(8).connect_timeout(Duration::from_secs(5));
        o.transport(match self.kind {
            "shm" => Transport::SharedMemory,
            "sysv_shm" => Transport::SysvSharedMemory {
                key: Some(self.key),
            },
            "posix_mq" => Transport::PosixQueue,
            "sysv_mq" => Transport::SysvQueue {
                key: Some(self.key),
            },
            "fifo" => Transport::Fifo {
                path: self.path.clone(),
            },
            "unix" => Transport::UnixSocket {
                path: self.path.clone(),
            },
            "abstract" => Transport::AbstractSocket {
                name: self.name.clone(),
            },
            "file" => Transport::File {
                dir: self.path.clone(),
            },
            k => panic!("unknown kind {k}"),
        });
        o
    }

    /// Opens a sender and a receiver with `o`.
    fn pair(&self, o: &Options) -> (Sender<Msg>, Receiver<Msg>) {
        match self.kind {
            "fifo" => {
                let (name, o2) = (self.name.clone(), o.clone());
                let rx = std::thread::spawn(move || Receiver::<Msg>::open_or_create(&name, &o2));
                let tx = Sender::<Msg>::open_or_create(&self.name, o).unwrap();
                (tx, rx.join().unwrap().unwrap())
            }
            _ => {
                let rx = Receiver::<Msg>::open_or_create(&self.name, o).unwrap();
                let tx = Sender::<Msg>::open_or_create(&self.name, o).unwrap();
                (tx, rx)
            }
        }
    }

    /// The file-system objects of the open channel (directories included).
    fn files(&self) -> Vec<PathBuf> {
        let rt = runtime_dir();
        match self.kind {
            "shm" => vec![PathBuf::from(format!("/dev/shm/shmbus.{}", self.name))],
            "sysv_shm" => vec![rt.join(format!("shmbus.sysv-shm-{:08x}.lock", self.key))],
            "posix_mq" => vec![rt.join(format!("shmbus.{}.mq", self.name))],
            "sysv_mq" => vec![rt.join(format!("shmbus.sysv-{}.sysv", self.key))],
            "fifo" | "unix" => vec![self.path.clone()],
            "abstract" => vec![],
            "file" => {
                let mut v = vec![self.path.clone(), self.path.join("log.ctl")];
                let mut segs: Vec<_> = std::fs::read_dir(&self.path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                    .collect();
                assert!(!segs.is_empty(), "a log has a segment file");
                v.append(&mut segs);
                v
            }
            _ => unreachable!(),
        }
    }

    /// `(uid, gid, mode)` of the channel's kernel object that has no path, if any.
    fn ipc_owner(&self) -> Option<(u32, u32, u32)> {
        match self.kind {
            "sysv_shm" => {
                // SAFETY: plain integers.
                let id = unsafe { libc::shmget(self.key, 0, 0) };
                assert!(id >= 0, "segment {:#x} exists", self.key);
                // SAFETY: all-zero shmid_ds is valid; IPC_STAT fills it.
                let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
                // SAFETY: `ds` is writable.
                assert_eq!(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }, 0);
                Some((
                    ds.shm_perm.uid,
                    ds.shm_perm.gid,
                    ds.shm_perm.mode as u32 & 0o777,
                ))
            }
            "sysv_mq" => {
                // SAFETY: plain integers.
                let id = unsafe { libc::msgget(self.key, 0) };
                assert!(id >= 0, "queue {:#x} exists", self.key);
                // SAFETY: all-zero msqid_ds is valid; IPC_STAT fills it.
                let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
                // SAFETY: `ds` is writable.
                assert_eq!(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) }, 0);
                Some((
                    ds.msg_perm.uid,
                    ds.msg_perm.gid,
                    ds.msg_perm.mode as u32 & 0o777,
                ))
            }
            "posix_mq" => {
                let q = posix_mq_fd(&self.name);
                // SAFETY: all-zero stat is valid; fstat fills it.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: `q` is an open queue descriptor (a file descriptor on Linux).
                assert_eq!(unsafe { libc::fstat(q, &mut st) }, 0);
                // SAFETY: closes the descriptor opened above.
                unsafe { libc::mq_close(q) };
                Some((st.st_uid, st.st_gid, st.st_mode & 0o777))
            }
            _ => None,
        }
    }

    /// Hands the channel's kernel object without a path to `uid`.
    fn chown_ipc(&self, uid: u32) {
        match self.kind {
            "sysv_shm" => {
                // SAFETY: plain integers, then a valid shmid_ds for IPC_STAT / IPC_SET.
                unsafe {
                    let id = libc::shmget(self.key, 0, 0);
                    let mut ds: libc::shmid_ds = std::mem::zeroed();
                    assert_eq!(libc::shmctl(id, libc::IPC_STAT, &mut ds), 0);
                    ds.shm_perm.uid = uid;
                    assert_eq!(libc::shmctl(id, libc::IPC_SET, &mut ds), 0);
                }
            }
            "sysv_mq" => {
                // SAFETY: plain integers, then a valid msqid_ds for IPC_STAT / IPC_SET.
                unsafe {
                    let id = libc::msgget(self.key, 0);
                    let mut ds: libc::msqid_ds = std::mem::zeroed();
                    assert_eq!(libc::msgctl(id, libc::IPC_STAT, &mut ds), 0);
                    ds.msg_perm.uid = uid;
                    assert_eq!(libc::msgctl(id, libc::IPC_SET, &mut ds), 0);
                }
            }
            "posix_mq" => {
                let q = posix_mq_fd(&self.name);
                // SAFETY: `q` is an open queue descriptor; -1 keeps the group.
                assert_eq!(unsafe { libc::fchown(q, uid, u32::MAX) }, 0);
                // SAFETY: closes the descriptor opened above.
                unsafe { libc::mq_close(q) };
            }
            _ => unreachable!(),
        }
    }
}

impl Drop for Chan {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn posix_mq_fd(name: &str) -> libc::mqd_t {
    let c = CString::new(format!("/shmbus.{name}")).unwrap();
    // SAFETY: `c` is NUL-terminated.
    let q = unsafe { libc::mq_open(c.as_ptr(), libc::O_RDONLY) };
    assert!(q >= 0, "queue /shmbus.{name} exists");
    q
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
}

fn send(tx: &Sender<Msg>, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        tx.send(Msg { seq }).unwrap();
    }
}

/// Receives exactly `seqs`, in order: nothing already accepted was lost.
fn expect(rx: &Receiver<Msg>, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(m.seq, seq);
    }
    assert!(matches!(
        rx.try_recv().map(|m| m.seq),
        Err(TryRecvError::Empty | TryRecvError::Disconnected)
    ));
}

fn mode_of(p: &Path) -> (u32, u32, u32, bool) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.permissions().mode() & 0o777, m.is_dir())
}

/// Every object a channel creates is owner-only by default (0600, directories 0700), on
/// every transport, whatever the umask; and owned by this user.
#[test]
fn every_created_object_is_owner_only() {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for kind in KINDS {
        let c = Chan::new("owner-only", kind);
        let o = c.options();
        let (tx, rx) = c.pair(&o);
        send(&tx, 0..2);
        if kind == "file" {
            // A named cursor makes the cursor directory and file too.
            let mut ro = o.clone();
            ro.cursor("audit");
            let r2 = Receiver::<Msg>::open(&c.name, &ro).unwrap();
            expect(&r2, 0..2);
        }
        let mut files = c.files();
        if kind == "file" {
            files.push(c.path.join("cursors"));
            files.push(c.path.join("cursors").join("audit"));
        }
        for f in &files {
            let (uid, _, mode, dir) = mode_of(f);
            assert_eq!(uid, me, "{kind}: owner of {}", f.display());
            let want = if dir { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{kind}: mode of {} is {mode:o}", f.display());
        }
        if let Some((uid, _, mode)) = c.ipc_owner() {
            assert_eq!((uid, mode), (me, 0o600), "{kind}: kernel object");
        }
        expect(&rx, 0..2);
    }
}

/// `Options::group(gid)` gives every created object that group and group read-write
/// permission (0660, directories 0770), even under a umask of 077.
#[test]
fn group_option_shares_every_object() {
    if !root_or_skip("group_option_shares_every_object") {
        return;
    }
    // SAFETY: umask has no preconditions; it removes bits the library must put back.
    unsafe { libc::umask(0o077) };
    for kind in KINDS {
        let c = Chan::new("group", kind);
        let mut o = c.options();
        o.group(NOBODY);
        assert_eq!(o.get_mode(), 0o660);
        let (tx, rx) = c.pair(&o);
        send(&tx, 0..2);
        if kind == "file" {
            let mut ro = o.clone();
            ro.cursor("shared");
            expect(&Receiver::<Msg>::open(&c.name, &ro).unwrap(), 0..2);
        }
        let mut files = c.files();
        if kind == "file" {
            files.push(c.path.join("cursors"));
            files.push(c.path.join("cursors").join("shared"));
        }
        for f in &files {
            let (_, gid, mode, dir) = mode_of(f);
            assert_eq!(gid, NOBODY, "{kind}: group of {}", f.display());
            let want = if dir { 0o770 } else { 0o660 };
            assert_eq!(mode, want, "{kind}: mode of {} is {mode:o}", f.display());
        }
        if let Some((_, gid, mode)) = c.ipc_owner() {
            assert_eq!((gid, mode), (NOBODY, 0o660), "{kind}: kernel object");
        }
        expect(&rx, 0..2);
    }
}

/// An object owned by another user is refused with `NotOwner` before anything is read from
/// it; `allow_uid`, `allow_any_uid` or a matching `group` lets it in, and the messages that
/// were in the channel all along are delivered.
#[test]
fn objects_of_another_owner_are_refused_unless_allowed() {
    if !root_or_skip("objects_of_another_owner_are_refused_unless_allowed") {
        return;
    }
    for kind in ["shm", "sysv_shm", "posix_mq", "sysv_mq", "file"] {
        let c = Chan::new("foreign", kind);
        let o = c.options();
        let tx = Sender::<Msg>::open_or_create(&c.name, &o).unwrap();
        // A queue needs its receiver attached before a send counts (presence).
        let keep = (kind != "file").then(|| Receiver::<Msg>::open(&c.name, &o).unwrap());
        send(&tx, 0..3);
        // The receiver role of a queue is free again for the opens below; the messages stay.
        drop(keep);
        let mut handed = c.files();
        if kind == "file" {
            handed.truncate(2); // the directory, then the control file
        }
        let refused = |what: &str| match Receiver::<Msg>::open(&c.name, &o) {
            Err(OpenError::NotOwner { owner, .. }) => assert_eq!(owner, NOBODY),
            other => panic!("{kind}: {what} owned by {NOBODY}: expected NotOwner, got {other:?}"),
        };
        for f in &handed {
            chown(f, NOBODY);
            refused(&f.display().to_string());
            chown(f, 0);
        }
        if c.ipc_owner().is_some() {
            c.chown_ipc(NOBODY);
            refused("kernel object");
            c.chown_ipc(0);
        }
        // Everything handed over at once, then allowed three ways.
        for f in &handed {
            chown(f, NOBODY);
        }
        if c.ipc_owner().is_some() {
            c.chown_ipc(NOBODY);
        }
        refused("everything");
        let mut allowed = o.clone();
        allowed.allow_uid(NOBODY);
        let rx = Receiver::<Msg>::open(&c.name, &allowed).unwrap();
        expect(&rx, 0..3);
        drop(rx);
        let mut any = o.clone();
        any.allow_any_uid();
        drop(Receiver::<Msg>::open(&c.name, &any).unwrap());
        for f in &handed {
            std::os::unix::fs::lchown(f, None, Some(NOBODY)).unwrap();
        }
        if c.ipc_owner().is_some() && kind != "posix_mq" {
            // System V objects: the group lives in ipc_perm.
            set_ipc_group(&c, NOBODY);
        } else if kind == "posix_mq" {
            let q = posix_mq_fd(&c.name);
            // SAFETY: `q` is an open queue descriptor; -1 keeps the owner.
            assert_eq!(unsafe { libc::fchown(q, u32::MAX, NOBODY) }, 0);
            // SAFETY: closes it.
            unsafe { libc::mq_close(q) };
        }
        let mut group = o.clone();
        group.group(NOBODY);
        drop(Receiver::<Msg>::open(&c.name, &group).unwrap());
        // Back to us, so that the last handle removes everything.
        for f in &handed {
            std::os::unix::fs::lchown(f, Some(0), Some(0)).unwrap();
        }
        if c.ipc_owner().is_some() {
            c.chown_ipc(0);
        }
    }
}

fn set_ipc_group(c: &Chan, gid: u32) {
    match c.kind {
        // SAFETY: plain integers, then a valid ipc struct for IPC_STAT / IPC_SET.
        "sysv_shm" => unsafe {
            let id = libc::shmget(c.key, 0, 0);
            let mut ds: libc::shmid_ds = std::mem::zeroed();
            assert_eq!(libc::shmctl(id, libc::IPC_STAT, &mut ds), 0);
            ds.shm_perm.gid = gid;
            assert_eq!(libc::shmctl(id, libc::IPC_SET, &mut ds), 0);
        },
        // SAFETY: as above.
        "sysv_mq" => unsafe {
            let id = libc::msgget(c.key, 0);
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            assert_eq!(libc::msgctl(id, libc::IPC_STAT, &mut ds), 0);
            ds.msg_perm.gid = gid;
            assert_eq!(libc::msgctl(id, libc::IPC_SET, &mut ds), 0);
        },
        _ => unreachable!(),
    }
}

/// A FIFO that another user made (a squatter) is refused before `open` waits for a peer.
#[test]
fn fifo_of_another_owner_is_refused() {
    if !root_or_skip("fifo_of_another_owner_is_refused") {
        return;
    }
    let c = Chan::new("foreign", "fifo");
    let p = CString::new(c.path.to_str().unwrap()).unwrap();
    // SAFETY: `p` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o666) }, 0);
    chown(&c.path, NOBODY);
    let o = c.options();
    for r in [
        Receiver::<Msg>::open_or_create(&c.name, &o).map(drop),
        Sender::<Msg>::open_or_create(&c.name, &o).map(drop),
    ] {
        assert!(
            matches!(r, Err(OpenError::NotOwner { owner: NOBODY, .. })),
            "{r:?}"
        );
    }
    let mut allowed = o.clone();
    allowed.allow_uid(NOBODY);
    let (tx, rx) = c.pair(&allowed);
    send(&tx, 0..2);
    expect(&rx, 0..2);
}

/// Paths are never followed through symbolic links, and an object of the wrong kind at a
/// path is `WrongKind`, on every transport that has paths.
#[test]
fn symlinks_and_wrong_kinds_are_refused() {
    let wrong = |what: &str, r: Result<(), OpenError>| match r {
        Err(OpenError::WrongKind { reason, .. }) => eprintln!("{what}: {reason}"),
        other => panic!("{what}: expected WrongKind, got {other:?}"),
    };
    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let tree =
        Tree(std::env::temp_dir().join(format!("shmbus-perm-target-{}", std::process::id())));
    let target = tree.0.clone();
    std::fs::create_dir_all(&target).unwrap();
    let regular = target.join("regular");
    std::fs::write(&regular, b"not a channel").unwrap();
    let dir = target.join("dir");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo_target = target.join("fifo");
    let p = CString::new(fifo_target.to_str().unwrap()).unwrap();
    // SAFETY: `p` is NUL-terminated.
    unsafe { libc::mkfifo(p.as_ptr(), 0o600) };

    for kind in ["fifo", "unix", "file"] {
        let c = Chan::new("kind", kind);
        let o = c.options();
        let real = match kind {
            "fifo" => fifo_target.clone(),
            _ => dir.clone(),
        };
        for (what, make) in [
            (
                "symlink",
                Box::new(|p: &Path| std::os::unix::fs::symlink(&real, p).unwrap())
                    as Box<dyn Fn(&Path)>,
            ),
            (
                "regular file",
                Box::new(|p: &Path| std::fs::copy(&regular, p).map(drop).unwrap()),
            ),
            (
                "directory",
                Box::new(|p: &Path| std::fs::create_dir(p).unwrap()),
            ),
        ] {
            if kind == "file" && what == "directory" {
                continue; // a directory is what a log wants
            }
            make(&c.path);
            wrong(
                &format!("{kind} sender at a {what}"),
                Sender::<Msg>::open_or_create(&c.name, &o).map(drop),
            );
            wrong(
                &format!("{kind} receiver at a {what}"),
                Receiver::<Msg>::open_or_create(&c.name, &o).map(drop),
            );
            let _ = std::fs::remove_file(&c.path);
            let _ = std::fs::remove_dir(&c.path);
            assert!(
                std::fs::symlink_metadata(&real).is_ok(),
                "the target is untouched"
            );
        }
    }
    // A log whose control file is a symbolic link.
    let c = Chan::new("kind", "file");
    std::fs::create_dir(&c.path).unwrap();
    std::os::unix::fs::symlink(&regular, c.path.join("log.ctl")).unwrap();
    wrong(
        "log control file symlink",
        Receiver::<Msg>::open_or_create(&c.name, &c.options()).map(drop),
    );
    // A segment name in /dev/shm, a System V lock file and a presence file that are links.
    for kind in ["shm", "sysv_shm", "posix_mq", "sysv_mq"] {
        let c = Chan::new("kind", kind);
        let f = c.files().remove(0);
        std::os::unix::fs::symlink(&regular, &f).unwrap();
        let r = Sender::<Msg>::open_or_create(&c.name, &c.options()).map(drop);
        let _ = std::fs::remove_file(&f);
        wrong(&format!("{kind} at a symlink"), r);
        assert_eq!(std::fs::read(&regular).unwrap(), b"not a channel");
    }
    let c = Chan::new("kind", "shm");
    let f = c.files().remove(0);
    std::fs::create_dir(&f).unwrap();
    let r = Sender::<Msg>::open_or_create(&c.name, &c.options()).map(drop);
    std::fs::remove_dir(&f).unwrap();
    wrong("shm at a directory", r);
}

/// Names are checked in one place for every transport: `/`, `..`, a NUL byte, too long,
/// empty; and so are the paths and names inside transports (FIFO, socket and log paths,
/// abstract names, cursor names). A rejected name touches nothing: messages in a channel
/// of a valid name are all delivered.
#[test]
fn bad_names_on_every_transport() {
    let long = "x".repeat(shmbus::MAX_NAME_LEN + 1);
    for kind in KINDS {
        let c = Chan::new("names", kind);
        let o = c.options();
        let (tx, rx) = c.pair(&o);
        send(&tx, 0..2);
        for bad in [
            "a/b",
            "..",
            "a..b",
            "../x",
            ".hidden",
            "x\0y",
            "",
            long.as_str(),
        ] {
            for (side, r) in [
                ("sender", Sender::<Msg>::open_or_create(bad, &o).map(drop)),
                ("receiver", Receiver::<Msg>::open(bad, &o).map(drop)),
            ] {
                assert!(
                    matches!(r, Err(OpenError::InvalidName { .. })),
                    "{kind} {side} {bad:?}: {r:?}"
                );
            }
        }
        expect(&rx, 0..2);
    }
    let long_socket = std::env::temp_dir().join("s".repeat(shmbus::MAX_SOCKET_PATH));
    let cases: Vec<(&str, Transport)> = vec![
        (
            "FIFO path with NUL",
            Transport::Fifo {
                path: "/tmp/a\0b".into(),
            },
        ),
        ("empty FIFO path", Transport::Fifo { path: "".into() }),
        (
            "log dir with NUL",
            Transport::File {
                dir: "/tmp/a\0b".into(),
            },
        ),
        (
            "socket path too long",
            Transport::UnixSocket { path: long_socket },
        ),
        (
            "empty abstract name",
            Transport::AbstractSocket {
                name: String::new(),
            },
        ),
        (
            "abstract name too long",
            Transport::AbstractSocket {
                name: "a".repeat(shmbus::MAX_SOCKET_PATH + 1),
            },
        ),
    ];
    for (what, t) in cases {
        let mut o = Options::new();
        o.transport(t);
        let r = Receiver::<Msg>::open_or_create("ok-name", &o).map(drop);
        assert!(
            matches!(r, Err(OpenError::InvalidName { .. })),
            "{what}: {r:?}"
        );
    }
    let c = Chan::new("names", "file");
    for bad in ["../escape", "a/b", ".."] {
        let mut o = c.options();
        o.cursor(bad);
        let r = Receiver::<Msg>::open_or_create(&c.name, &o).map(drop);
        assert!(
            matches!(r, Err(OpenError::InvalidName { .. })),
            "cursor {bad:?}: {r:?}"
        );
    }
    assert!(!c.path.exists(), "a rejected cursor name created nothing");
}

// ---------------------------------------------------------------------------------------
// A process of another user.

/// A real process of another user (uid 65534) tries to open 0600 objects that root made
/// on every transport: it gets `PermissionDenied` (the kernel's refusal) or `NotOwner` (the
/// library's own check: a FIFO's owner before waiting in `open`, the receiver's uid on an
/// abstract socket, which has no permission bits), and the receiver refuses it as a peer unless it allows uid 65534. Root's channels
/// keep every message.
#[test]
fn process_of_another_user_gets_typed_errors() {
    if !root_or_skip("process_of_another_user_gets_typed_errors") {
        return;
    }
    let mut chans = Vec::new();
    let mut ends = Vec::new();
    for kind in KINDS {
        let c = Chan::new("intruder", kind);
        let (tx, rx) = c.pair(&c.options());
        send(&tx, 0..3);
        ends.push((tx, rx));
        chans.push(c);
    }
    // The child is this test binary, run as NOBODY.
    let exe = ExeForNobody::new();
    let mut cmd = Command::new(&exe.0);
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, "intruder")
        .env(
            "SHMBUS_PERM_CHANS",
            chans
                .iter()
                .map(|c| format!("{}={}={}={}", c.kind, c.name, c.key, c.path.display()))
                .collect::<Vec<_>>()
                .join(";"),
        );
    std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "intruder failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for c in &chans {
        let tag = format!("@@ {} ", c.kind);
        let line = stdout
            .lines()
            .find_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
            .unwrap_or_else(|| panic!("no report for {}: {stdout}", c.kind));
        // Where the library can see the owner before the kernel refuses (a FIFO's `lstat`,
        // an abstract socket's peer), the error is `NotOwner`.
        let want = if matches!(c.kind, "abstract" | "fifo") {
            "NotOwner"
        } else {
            "PermissionDenied"
        };
        assert!(line.starts_with(want), "{}: {line}", c.kind);
    }
    for (c, (tx, rx)) in chans.iter().zip(&ends) {
        let _ = c;
        send(tx, 3..4);
        expect(rx, 0..4);
    }
    drop(ends);

    // Unix-socket peers by uid, both ways, with a real other-user sender.
    let c = Chan::new("peer", "abstract");
    let rx = Receiver::<Msg>::open_or_create(&c.name, &c.options()).unwrap();
    let exe = ExeForNobody::new();
    let run = |allow_root: bool| {
        let mut cmd = Command::new(&exe.0);
        cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, "peer_sender")
            .env("SHMBUS_PERM_NAME", &c.name)
            .env("SHMBUS_PERM_ALLOW_ROOT", if allow_root { "1" } else { "0" });
        std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
        std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The sender does not accept a root receiver by default.
    assert!(run(false).contains("@@ result NotOwner"));
    // It does with allow_uid(0), but this receiver does not accept uid 65534.
    let out = run(true);
    assert!(out.contains("@@ result Err"), "{out}");
    drop(rx);
    let mut o = c.options();
    o.allow_uid(NOBODY);
    let rx = Receiver::<Msg>::open_or_create(&c.name, &o).unwrap();
    let out = run(true);
    assert!(out.contains("@@ result sent"), "{out}");
    expect(&rx, 0..2);
}

/// Sharing with another user through a group: root creates channels with
/// `Options::group(65534)`; a process running as uid 65534 (group 65534) opens them with
/// the same option and receives what root sent (a Unix-socket receiver in root accepts the
/// sender because its primary group is 65534; the sender accepts root with `allow_uid(0)`).
#[test]
fn group_shares_a_channel_with_another_user() {
    if !root_or_skip("group_shares_a_channel_with_another_user") {
        return;
    }
    let kinds = ["shm", "sysv_shm", "posix_mq", "sysv_mq", "file", "unix"];
    let mut chans = Vec::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for kind in kinds {
        let c = Chan::new("share", kind);
        let mut o = c.options();
        o.group(NOBODY);
        if kind == "unix" {
            receivers.push(Receiver::<Msg>::open_or_create(&c.name, &o).unwrap());
        } else {
            let tx = Sender::<Msg>::open_or_create(&c.name, &o).unwrap();
            send(&tx, 0..3);
            senders.push(tx);
        }
        chans.push(c);
    }
    let exe = ExeForNobody::new();
    let mut cmd = Command::new(&exe.0);
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, "member")
        .env(
            "SHMBUS_PERM_CHANS",
            chans
                .iter()
                .map(|c| format!("{}={}={}={}", c.kind, c.name, c.key, c.path.display()))
                .collect::<Vec<_>>()
                .join(";"),
        );
    std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "member failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in kinds {
        assert!(
            stdout.contains(&format!("@@ {kind} exchanged 3")),
            "{kind}: {stdout}"
        );
    }
    for rx in &receivers {
        expect(rx, 0..3);
    }
}

fn chan_spec(c: &Chan) -> String {
    format!("{}={}={}={}", c.kind, c.name, c.key, c.path.display())
}

fn chan_from_spec(item: &str) -> Chan {
    let mut it = item.split('=');
    let k = it.next().unwrap();
    Chan {
        kind: KINDS.into_iter().find(|x| *x == k).unwrap(),
        name: it.next().unwrap().to_owned(),
        key: it.next().unwrap().parse().unwrap(),
        path: PathBuf::from(it.next().unwrap()),
    }
}

/// A channel shared through a group outlives a creator of another user that was killed:
/// a group member (uid 65534), who may not remove the creator's files from the sticky
/// `/dev/shm` and `/tmp`, takes the left-behind objects over in place and receives the
/// messages the dead creator sent.
#[test]
fn group_member_takes_over_after_the_creator_is_killed() {
    use std::io::BufRead;
    if !root_or_skip("group_member_takes_over_after_the_creator_is_killed") {
        return;
    }
    for kind in ["shm", "sysv_shm", "posix_mq", "sysv_mq"] {
        let c = Chan::new("takeover", kind);
        let exe = ExeForNobody::new();
        let child = |role: &str, as_nobody: bool| {
            let mut cmd = Command::new(&exe.0);
            cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
                .env(ROLE_VAR, role)
                .env("SHMBUS_PERM_CHANS", chan_spec(&c))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            if as_nobody {
                std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
                std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
            }
            cmd.spawn().unwrap()
        };
        let mut creator = child("creator", false);
        let mut lines = std::io::BufReader::new(creator.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.unwrap().contains("@@ ready")),
            "{kind}: the creator never got ready"
        );
        creator.kill().unwrap();
        creator.wait().unwrap();
        // A member who wants another type may not replace root's left-behind objects: a
        // typed error at once, not a retry until the timeout.
        let out = child("taker_other", true).wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("@@ other TypeMismatch"),
            "{kind}: {stdout}"
        );
        let out = child("taker", true).wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("@@ {kind} took over 3")),
            "{kind}: {stdout}"
        );
        // Root may remove what the member could not: the last handle cleans up.
        let mut o = c.options();
        o.group(NOBODY);
        drop(Receiver::<Msg>::open_or_create(&c.name, &o).unwrap());
        for f in c.files() {
            assert!(!f.exists(), "{kind}: {} is left", f.display());
        }
    }
}

/// Runs a child role (`SHMBUS_PERM_ROLE`); a no-op in the parent.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    match role.as_str() {
        "creator" => {}
        _ => {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            assert_eq!(euid, NOBODY, "children run as {NOBODY}");
        }
    }
    match role.as_str() {
        "intruder" => {
            let spec = std::env::var("SHMBUS_PERM_CHANS").unwrap();
            for item in spec.split(';') {
                let mut it = item.split('=');
                let k = it.next().unwrap();
                let kind: &'static str = KINDS.into_iter().find(|x| *x == k).unwrap();
                let name = it.next().unwrap().to_owned();
                let key = it.next().unwrap().parse().unwrap();
                let path = PathBuf::from(it.next().unwrap());
                let c = Chan {
                    kind,
                    name,
                    key,
                    path,
                };
                let mut o = c.options();
                o.connect_timeout(Duration::from_secs(2));
                let r = match kind {
                    // Senders: a socket is reached by connecting.
                    "unix" | "abstract" => Sender::<Msg>::open(&c.name, &o).map(drop),
                    _ => Receiver::<Msg>::open(&c.name, &o).map(drop),
                };
                let word = match &r {
                    Ok(()) => "Ok".to_owned(),
                    Err(OpenError::PermissionDenied { .. }) => "PermissionDenied".into(),
                    Err(OpenError::NotOwner { .. }) => "NotOwner".into(),
                    Err(e) => format!("Other {e:?}"),
                };
                println!("@@ {kind} {word} {r:?}");
                std::mem::forget(c); // the parent's objects are not ours to remove
            }
        }
        "member" => {
            let spec = std::env::var("SHMBUS_PERM_CHANS").unwrap();
            for item in spec.split(';') {
                let mut it = item.split('=');
                let k = it.next().unwrap();
                let kind: &'static str = KINDS.into_iter().find(|x| *x == k).unwrap();
                let c = Chan {
                    kind,
                    name: it.next().unwrap().to_owned(),
                    key: it.next().unwrap().parse().unwrap(),
                    path: PathBuf::from(it.next().unwrap()),
                };
                let mut o = c.options();
                o.group(NOBODY);
                if kind == "unix" {
                    o.allow_uid(0);
                    let tx = Sender::<Msg>::open(&c.name, &o).unwrap();
                    send(&tx, 0..3);
                } else {
                    let rx = Receiver::<Msg>::open(&c.name, &o).unwrap();
                    expect(&rx, 0..3);
                }
                println!("@@ {kind} exchanged 3");
                std::mem::forget(c); // the parent's objects are not ours to remove
            }
        }
        "creator" => {
            let c = chan_from_spec(&std::env::var("SHMBUS_PERM_CHANS").unwrap());
            let mut o = c.options();
            o.group(NOBODY);
            let tx = Sender::<Msg>::open_or_create(&c.name, &o).unwrap();
            send(&tx, 0..3);
            println!("@@ ready");
            // Killed by the parent.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            std::mem::forget(tx);
            std::mem::forget(c);
        }
        "taker" => {
            let c = chan_from_spec(&std::env::var("SHMBUS_PERM_CHANS").unwrap());
            let mut o = c.options();
            o.group(NOBODY);
            let rx = Receiver::<Msg>::open_or_create(&c.name, &o).unwrap();
            expect(&rx, 0..3);
            println!("@@ {} took over 3", c.kind);
            drop(rx);
            std::mem::forget(c);
        }
        "taker_other" => {
            let c = chan_from_spec(&std::env::var("SHMBUS_PERM_CHANS").unwrap());
            let mut o = c.options();
            o.group(NOBODY);
            match Receiver::<Other>::open_or_create(&c.name, &o) {
                Err(OpenError::TypeMismatch { .. }) => println!("@@ other TypeMismatch"),
                other => println!("@@ other {:?}", other.map(drop)),
            }
            std::mem::forget(c);
        }
        "peer_sender" => {
            let name = std::env::var("SHMBUS_PERM_NAME").unwrap();
            let mut o = Options::new();
            o.transport(Transport::AbstractSocket { name: name.clone() })
                .connect_timeout(Duration::from_secs(2));
            if std::env::var("SHMBUS_PERM_ALLOW_ROOT").unwrap() == "1" {
                o.allow_uid(0);
            }
            match Sender::<Msg>::open(&name, &o) {
                Ok(tx) => {
                    send(&tx, 0..2);
                    println!("@@ result sent");
                }
                Err(OpenError::NotOwner { .. }) => println!("@@ result NotOwner"),
                Err(e) => println!("@@ result Err {e:?}"),
            }
        }
        r => panic!("unknown role {r}"),
    }
}
