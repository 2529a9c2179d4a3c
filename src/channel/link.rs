//! The typed channel over a [`Link`](crate::transport::Link): encoding, decoding, error
//! mapping, and the constructors that only exist for fallback transports (anonymous pipes
//! and inherited descriptors).

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::process::Command;

use super::{Receiver, Sender};
use crate::error::{CorruptError, OpenError, TypeDesc};
use crate::message::{DecodeError, EncodeError, Encoding, Message};
use crate::options::Options;
use crate::segment::OpenMode;
use crate::segment::Role;
use crate::transport::pipe::{PipeReceiver, PipeSender};
use crate::transport::posix_mq::PosixMq;
use crate::transport::sysv_mq::SysvMq;
use crate::transport::unix_socket::{Address, SocketReceiver, SocketSender};
use crate::transport::{
    fifo, file, Link, LinkError, LinkOpenError, Transport, TransportKind, Wait, Wire,
};

/// The environment variable [`Sender::pass_to`] and [`Receiver::pass_to`] use unless told
/// otherwise.
pub const INHERIT_VAR: &str = "SHMBUS_FD";

/// One end of a channel over a fallback transport.
pub(crate) struct LinkEnd {
    link: RefCell<Box<dyn Link>>,
    /// The link's pollable descriptor, if it has one.
    poll: Option<std::sync::Arc<dyn std::os::fd::AsFd + Send + Sync>>,
    buf: RefCell<Vec<u8>>,
    pub(crate) name: String,
    pub(crate) max_frame: usize,
}

/// How a link operation on a typed channel failed.
pub(crate) enum LinkFail {
    Full,
    Timeout,
    Disconnected,
    Encode(EncodeError),
    Decode(DecodeError),
    Corrupt(CorruptError),
}

impl From<LinkError> for LinkFail {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::WouldBlock => LinkFail::Full,
            LinkError::Timeout => LinkFail::Timeout,
            LinkError::Disconnected => LinkFail::Disconnected,
            LinkError::TooLarge { max } => LinkFail::Encode(EncodeError::TooLarge { max }),
            LinkError::Corrupt(reason) => LinkFail::Corrupt(CorruptError { reason }),
        }
    }
}

pub(crate) fn wire<T: Message>(options: &Options) -> Wire {
    let info = T::INFO;
    Wire {
        name: info.name,
        encoding: info.encoding as u32,
        fingerprint: info.fingerprint,
        max_frame: match info.encoding {
            Encoding::ZeroCopy => info.size,
            _ => options.max_message_size,
        },
    }
}

pub(crate) fn open_error<T: Message>(name: &str, e: LinkOpenError) -> OpenError {
    let name = name.to_owned();
    match e {
        LinkOpenError::NotFound(object) => OpenError::NotFound { name, object },
        LinkOpenError::TypeMismatch(found) => OpenError::TypeMismatch {
            name,
            expected: TypeDesc {
                name: T::INFO.name.to_owned(),
                encoding: T::INFO.encoding.name(),
                fingerprint: T::INFO.fingerprint,
            },
            found,
        },
        LinkOpenError::Invalid(reason) => OpenError::InvalidOptions { name, reason },
        LinkOpenError::Refused(role) if role == "sender" || role == "receiver" => {
            OpenError::TooManyParticipants {
                name,
                role: if role == "sender" {
                    "sender"
                } else {
                    "receiver"
                },
                max: 1,
            }
        }
        LinkOpenError::Refused(reason) => OpenError::Io {
            name,
            op: "connect",
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, reason),
        },
        LinkOpenError::Foreign(object, owner, group) => OpenError::NotOwner {
            name,
            object,
            owner,
            group,
        },
        LinkOpenError::WrongKind(reason) => OpenError::WrongKind { name, reason },
        LinkOpenError::Io(op, source) => OpenError::from_io(&name, op, source),
    }
}

/// Whether `/dev/shm` is a directory this process may create files in.
fn dev_shm_usable() -> bool {
    let probe = crate::sys::shm::probe_dir().join(format!(
        ".shmbus-probe-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// The transport `Auto` stands for here: POSIX shared memory, else System V shared memory,
/// else a POSIX queue, else a System V queue.
pub(crate) fn resolve(t: &Transport) -> Transport {
    match t {
        Transport::Auto if dev_shm_usable() => Transport::SharedMemory,
        Transport::Auto if std::path::Path::new("/proc/sysvipc/shm").exists() => {
            Transport::SysvSharedMemory { key: None }
        }
        Transport::Auto if std::path::Path::new("/proc/sys/fs/mqueue").exists() => {
            Transport::PosixQueue
        }
        Transport::Auto => Transport::SysvQueue { key: None },
        other => other.clone(),
    }
}

/// Whether the channel `object` exists on `transport` and is in use, for `create`: a FIFO
/// that exists (a FIFO cannot tell a live peer without disturbing it, so one left by a
/// crashed process counts too), a socket with a listening receiver, a queue whose presence
/// file a live handle holds. A check before opening: two `create` calls racing may both
/// pass it.
fn in_use(transport: &Transport, object: &str) -> bool {
    match transport {
        Transport::Fifo { path } => std::fs::symlink_metadata(path).is_ok(),
        Transport::UnixSocket { path } => {
            crate::transport::unix_socket::listening(&Address::Path(path.clone()))
        }
        Transport::AbstractSocket { name } => {
            crate::transport::unix_socket::listening(&Address::Abstract(name.clone()))
        }
        Transport::PosixQueue => crate::transport::presence::in_use(
            &crate::transport::presence::dir().join(format!("{object}.mq")),
        ),
        Transport::SysvQueue { key } => crate::transport::presence::in_use(
            &crate::transport::sysv_mq::presence_path(object, *key),
        ),
        // A log is persistent: `create` means a new log, so any existing one is in use.
        Transport::File { dir } => dir.join(crate::transport::file::CONTROL_FILE).exists(),
        // The channel's well-known name has an owner.
        #[cfg(feature = "dbus")]
        Transport::DBus { bus } => crate::transport::dbus::in_use(bus, object),
        _ => false,
    }
}

impl LinkEnd {
    fn new(name: &str, link: Box<dyn Link>, max_frame: usize) -> LinkEnd {
        LinkEnd {
            poll: link.poll_fd(),
            link: RefCell::new(link),
            buf: RefCell::new(Vec::with_capacity(max_frame)),
            name: name.to_owned(),
            max_frame,
        }
    }

    /// Opens `name` over `options.transport`; `Ok(None)` for shared memory.
    pub(crate) fn open<T: Message>(
        name: &str,
        options: &Options,
        mode: OpenMode,
        role: Role,
    ) -> Result<Option<LinkEnd>, OpenError> {
        options.check(name)?;
        let transport = resolve(&options.transport);
        if matches!(
            transport,
            Transport::SharedMemory | Transport::SysvSharedMemory { .. }
        ) {
            return Ok(None);
        }
        let object = crate::name::object_name(&options.prefix, name)?;
        crate::name::check_transport(&transport, options)?;
        if mode == OpenMode::Create && in_use(&transport, &object) {
            return Err(OpenError::AlreadyExists {
                name: name.to_owned(),
            });
        }
        let w = wire::<T>(options);
        let access = options.access();
        let create = mode != OpenMode::Open;
        let err = |e| open_error::<T>(name, e);
        let (link, max): (Box<dyn Link>, usize) = match (&transport, role) {
            (Transport::Fifo { path }, Role::Sender) => (
                Box::new(
                    fifo::sender(path, &w, create, &access, options.connect_timeout)
                        .map_err(err)?,
                ),
                w.max_frame,
            ),
            (Transport::Fifo { path }, Role::Receiver) => (
                Box::new(
                    fifo::receiver(path, &w, create, &access, options.connect_timeout)
                        .map_err(err)?,
                ),
                w.max_frame,
            ),
            (Transport::File { dir }, Role::Sender) => (
                Box::new(
                    file::LogWriter::open(dir, &w, create, &access, &options.log).map_err(err)?,
                ),
                w.max_frame,
            ),
            (Transport::File { dir }, Role::Receiver) => (
                Box::new(
                    file::LogReader::open(dir, Some(&w), create, &access, &options.log)
                        .map_err(err)?,
                ),
                w.max_frame,
            ),
            (Transport::UnixSocket { .. } | Transport::AbstractSocket { .. }, _) => {
                let address = match &transport {
                    Transport::UnixSocket { path } => Address::Path(path.clone()),
                    Transport::AbstractSocket { name } => Address::Abstract(name.clone()),
                    _ => unreachable!(),
                };
                if role == Role::Sender {
                    let s = SocketSender::connect(&address, &w, options.connect_timeout, &access)
                        .map_err(err)?;
                    (Box::new(s), w.max_frame)
                } else {
                    let r = SocketReceiver::bind(&address, &w, access.clone()).map_err(err)?;
                    (Box::new(r), w.max_frame)
                }
            }
            #[cfg(feature = "dbus")]
            (Transport::DBus { bus }, _) => {
                use crate::options::Delivery;
                use crate::transport::dbus::{self, Names};
                let names = Names::for_object(&object).map_err(err)?;
                let broadcast = options.delivery == Some(Delivery::Broadcast);
                let max = w.max_frame.min(dbus::MAX_PAYLOAD);
                match (broadcast, role) {
                    (false, Role::Sender) => {
                        let s = dbus::QueueSender::open(bus, &names, &w, options.connect_timeout)
                            .map_err(err)?;
                        let max = s.max_frame();
                        (Box::new(s), max)
                    }
                    (false, Role::Receiver) => (
                        Box::new(
                            dbus::QueueReceiver::open(bus, &names, &w, options.capacity)
                                .map_err(err)?,
                        ),
                        max,
                    ),
                    (true, Role::Sender) => (
                        Box::new(dbus::Publisher::open(bus, &names, &w).map_err(err)?),
                        max,
                    ),
                    (true, Role::Receiver) => (
                        Box::new(dbus::Subscriber::open(bus, &names, &w).map_err(err)?),
                        max,
                    ),
                }
            }
            (Transport::PosixQueue, _) => {
                let q = PosixMq::open(&object, &w, role, create, options.capacity, &access)
                    .map_err(err)?;
                let max = q.max_frame();
                (Box::new(q), max)
            }
            (Transport::SysvQueue { key }, _) => {
                let q = SysvMq::open(
                    &object,
                    *key,
                    &w,
                    role,
                    create,
                    &access,
                    options.message_type,
                    options.spin,
                )
                .map_err(err)?;
                let max = q.max_frame().min(w.max_frame.max(1));
                (Box::new(q), max)
            }
            _ => {
                return Err(OpenError::InvalidOptions {
                    name: name.to_owned(),
                    reason: format!("transport {transport:?} is not available here"),
                })
            }
        };
        Ok(Some(LinkEnd::new(name, link, max)))
    }

    pub(crate) fn kind(&self) -> TransportKind {
        self.link.borrow().kind()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.link.borrow_mut().is_connected()
    }

    /// The descriptor to poll for readability; see [`Link::prepare_poll`].
    pub(crate) fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.poll.as_deref().map(std::os::fd::AsFd::as_fd)
    }

    pub(crate) fn prepare_poll(&self) -> bool {
        self.link.borrow_mut().prepare_poll()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.link.borrow().capacity().unwrap_or(0)
    }

    /// Encodes and sends `msg`.
    pub(crate) fn send<T: Message>(
        &self,
        msg: T,
        tag: u32,
        wait: Wait,
    ) -> Result<(), (T, LinkFail)> {
        let mut buf = self.buf.borrow_mut();
        buf.resize(self.max_frame, 0);
        let n = match msg.__encode(&mut buf) {
            Ok(n) => n,
            Err(e) => return Err((msg, LinkFail::Encode(e))),
        };
        let r = self.link.borrow_mut().send_frame(&buf[..n], tag, wait);
        r.map_err(|e| (msg, e.into()))
    }

    /// Receives and decodes one message.
    pub(crate) fn recv<T: Message>(&self, wait: Wait) -> Result<T, LinkFail> {
        let mut buf = self.buf.borrow_mut();
        self.link.borrow_mut().recv_frame(&mut buf, wait)?;
        T::__decode(&buf).map_err(LinkFail::Decode)
    }

    pub(crate) fn into_link(self) -> Box<dyn Link> {
        self.link.into_inner()
    }
}

fn spawn_var(cmd: &mut Command, var: &str, fd: OwnedFd) {
    let raw = crate::sys::fd::inherit_in_child(cmd, fd);
    cmd.env(var, raw.to_string());
}

fn inherited_fd(var: &str) -> Result<OwnedFd, OpenError> {
    let bad = |reason: String| OpenError::InvalidOptions {
        name: var.to_owned(),
        reason,
    };
    let value =
        std::env::var(var).map_err(|_| bad(format!("environment variable {var} is not set")))?;
    let raw: i32 = value
        .trim()
        .parse()
        .map_err(|_| bad(format!("{var}={value:?} is not a descriptor number")))?;
    if raw < 3 {
        return Err(bad(format!("{var}={raw} names a standard stream")));
    }
    // The variable is consumed: a second adoption of the same number would double-own it.
    std::env::remove_var(var);
    // SAFETY: the parent handed this descriptor to us through `var`, which we just removed,
    // so nothing else in this process claims it.
    unsafe { crate::sys::fd::adopt_inherited(raw) }.map_err(|e| OpenError::Io {
        name: var.to_owned(),
        op: "inherit",
        source: e,
    })
}

/// Creates an anonymous pipe carrying `T`: `(sender, receiver)`.
///
/// Keep both ends in one process, or hand one to a child process with
/// [`Sender::pass_to`] / [`Receiver::pass_to`]; the child takes it back with
/// [`Sender::from_inherited`] / [`Receiver::from_inherited`]. The pipe is a framed byte
/// stream (`docs/wire-format.md`); messages are copied, not shared.
///
/// # Errors
///
/// [`OpenError::Io`] if the pipe cannot be made.
///
/// # Examples
///
/// ```
/// #[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
/// #[repr(C)]
/// struct Job { id: u64 }
///
/// let (tx, rx) = shmbus::pipe::<Job>()?;
/// tx.send(Job { id: 7 })?;
/// assert_eq!(rx.recv()?.id, 7);
/// assert_eq!(tx.transport(), shmbus::TransportKind::Pipe);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pipe<T: Message>() -> Result<(Sender<T>, Receiver<T>), OpenError> {
    let options = Options::default();
    let w = wire::<T>(&options);
    let (tx, rx) = crate::transport::pipe::pipe(&w).map_err(|e| open_error::<T>("pipe", e))?;
    Ok((
        Sender::from_link(LinkEnd::new("pipe", Box::new(tx), w.max_frame)),
        Receiver::from_link(LinkEnd::new("pipe", Box::new(rx), w.max_frame)),
    ))
}

/// Passes the descriptor of an anonymous-pipe link to the child that `cmd` will spawn.
fn pass_link(
    name: String,
    link: Option<Box<dyn Link>>,
    cmd: &mut Command,
    var: &str,
) -> Result<(), OpenError> {
    let fd = link
        .and_then(|l| l.into_pipe_fd())
        .ok_or(OpenError::InvalidOptions {
            name,
            reason: "only anonymous pipes can be passed to a child".into(),
        })?;
    spawn_var(cmd, var, fd);
    Ok(())
}

impl<T: Message> Sender<T> {
    /// Hands this sender (made by [`pipe`](crate::pipe())) to the child that `cmd` will
    /// spawn: the descriptor is inherited at the same number and the environment variable
    /// `var` (e.g. [`INHERIT_VAR`]) tells the child which. The descriptor leaves this
    /// process when `cmd` is dropped (after `spawn`), so the receiver sees the child as its
    /// only sender.
    ///
    /// # Errors
    ///
    /// [`OpenError::InvalidOptions`] if this sender is not an anonymous pipe (the handle is
    /// dropped).
    pub fn pass_to(self, cmd: &mut Command, var: &str) -> Result<(), OpenError> {
        let name = self.name().to_owned();
        pass_link(name, self.into_link(), cmd, var)
    }

    /// Takes the pipe sender that the parent passed with [`pass_to`](Self::pass_to) under
    /// the environment variable `var`, and introduces this handle's type to the receiver.
    /// A receiver of another type reports the mismatch on its next receive.
    ///
    /// # Errors
    ///
    /// [`OpenError::InvalidOptions`] if `var` is missing or malformed, [`OpenError::Io`] if
    /// the descriptor is not open.
    pub fn from_inherited(var: &str) -> Result<Self, OpenError> {
        let fd = inherited_fd(var)?;
        let options = Options::default();
        let w = wire::<T>(&options);
        let tx = PipeSender::new(fd.into(), &w, TransportKind::Pipe)
            .map_err(|e| open_error::<T>(var, e))?;
        Ok(Sender::from_link(LinkEnd::new(
            var,
            Box::new(tx),
            w.max_frame,
        )))
    }
}

impl<T: Message> Receiver<T> {
    /// Hands this receiver (made by [`pipe`](crate::pipe())) to the child that `cmd` will
    /// spawn; see [`Sender::pass_to`].
    ///
    /// # Errors
    ///
    /// [`OpenError::InvalidOptions`] if this receiver is not an anonymous pipe.
    pub fn pass_to(self, cmd: &mut Command, var: &str) -> Result<(), OpenError> {
        let name = self.name().to_owned();
        pass_link(name, self.into_link(), cmd, var)
    }

    /// Takes the pipe receiver that the parent passed with [`pass_to`](Self::pass_to) under
    /// `var`, and checks the sender's type (waiting up to `Options::connect_timeout`'s
    /// default, 10 s, for its hello).
    ///
    /// # Errors
    ///
    /// [`OpenError::TypeMismatch`] if the sender carries another type; otherwise as for
    /// [`Sender::from_inherited`].
    pub fn from_inherited(var: &str) -> Result<Self, OpenError> {
        let fd = inherited_fd(var)?;
        let options = Options::default();
        let w = wire::<T>(&options);
        let rx = PipeReceiver::new(
            fd.into(),
            &w,
            TransportKind::Pipe,
            Some(options.connect_timeout),
        )
        .map_err(|e| open_error::<T>(var, e))?;
        Ok(Receiver::from_link(LinkEnd::new(
            var,
            Box::new(rx),
            w.max_frame,
        )))
    }
}
