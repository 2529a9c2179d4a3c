//! Harness for tests that cross a process boundary.
//!
//! A test's child processes are the test binary itself, re-run as
//! `<exe> --exact child_main --nocapture --test-threads=1` with environment variables naming
//! the child's role, its channel and its parameters (the habit of servo/ipc-channel's
//! `src/test.rs`). The binary's `#[test] fn child_main()` returns at once unless [`role`] is
//! set; in a child it runs the role and exits with its status (a panicking child exits
//! non-zero through the test harness).
//!
//! Parent and child talk through the child's standard streams only:
//!
//! * stdout lines holding `@@ <key> <value>` are reports ([`report`] in the child,
//!   [`Child::expect`] / [`Child::try_take`] in the parent); anything else (the test
//!   harness's own chatter) is ignored;
//! * stdin lines are commands from the parent ([`Child::tell`] / [`command`]); end of input
//!   means "finish";
//! * stderr is collected and shown when a child misbehaves.
//!
//! The parent reads stdout without blocking, so "has the child reported X yet?" is answered
//! from what the child has written so far: a report written before the child did something
//! that the parent has observed through shared memory is always visible to
//! [`Child::try_take`]. Tests use that to assert orderings without measuring time.
//!
//! Every wait has a generous deadline ([`PATIENCE`]) so that a hung child fails its test
//! instead of hanging the run; no test asserts on durations.
//!
//! Clean-up: a [`Harness`] owns the test's channel names and children. Dropping it (also
//! while unwinding from a failed assertion) kills and reaps every child still running and
//! removes every segment file named after the test that is still in `/dev/shm`. A test checks
//! that the library itself removed its segments with [`Harness::assert_no_segment`] /
//! [`assert_no_segment`] before the harness is dropped.

// Each test crate that includes this module uses a subset of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::{Debug, Display};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod fork;

/// Environment variable naming a child's role; unset in the parent.
pub const ROLE_VAR: &str = "SHMBUS_TEST_ROLE";
/// Environment variable naming a child's channel.
pub const CHANNEL_VAR: &str = "SHMBUS_TEST_CHANNEL";
/// Prefix of the environment variables carrying a child's parameters.
const PARAM_VAR_PREFIX: &str = "SHMBUS_TEST_PARAM_";
/// Marks a report line on a child's stdout.
const MARK: &str = "@@ ";
/// The test that runs a child's role.
const CHILD_TEST: &str = "child_main";
/// Where segments live, and the library's default prefix.
const SHM_DIR: &str = "/dev/shm";
const PREFIX: &str = "shmbus.";

/// Longest any wait of the harness lasts before it declares the child hung. A safety net
/// for a broken build, far above what any step needs; never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(120);
/// How long [`assert_no_segment`] gives a segment to disappear: a peer of a killed process
/// may still be on its way out when the test reaches its end.
pub const SEGMENT_GRACE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Names and segments

/// A channel name unique to this test run: the test's name, this process's id, a counter
/// and the clock, so that parallel tests, repeated runs and concurrent runs never collide.
pub fn unique_name(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{test}-{}-{n}-{nanos}", std::process::id())
}

/// The file of channel `name` (default prefix).
pub fn segment_path(name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(format!("{PREFIX}{name}"))
}

/// Asserts that the segment of channel `name` is gone, giving it [`SEGMENT_GRACE`] to go.
pub fn assert_no_segment(name: &str) {
    let path = segment_path(name);
    let start = Instant::now();
    while path.exists() {
        assert!(
            start.elapsed() < SEGMENT_GRACE,
            "{} still exists: the library did not remove the segment",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends SIGKILL to process `pid`. Only for a child that has not been reaped yet (its pid
/// cannot have been reused); usable from any thread.
pub fn sigkill(pid: u32) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    // ESRCH: it exited on its own meanwhile; nothing to do.
    let _ = kill(pid, Signal::SIGKILL);
}

// ---------------------------------------------------------------------------------------
// Parent side

/// One test's channel names and child processes; cleans up after the test (see the module
/// docs).
pub struct Harness {
    name: String,
    children: RefCell<Vec<Rc<RefCell<Proc>>>>,
}

impl Harness {
    /// A harness for test `test`, with a fresh channel name.
    pub fn new(test: &str) -> Harness {
        Harness {
            name: unique_name(test),
            children: RefCell::new(Vec::new()),
        }
    }

    /// The test's main channel name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another channel name owned by this test (cleaned up with the main one).
    pub fn sub_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// The file of the test's main channel.
    pub fn segment_path(&self) -> PathBuf {
        segment_path(&self.name)
    }

    /// Asserts that the library removed the test's main segment.
    pub fn assert_no_segment(&self) {
        assert_no_segment(&self.name);
    }

    /// Starts a child playing `role` on the test's main channel.
    pub fn spawn(&self, role: &str, params: &[(&str, &dyn Display)]) -> Child {
        self.spawn_on(&self.name, role, params)
    }

    /// Starts a child playing `role` on `channel`, with parameters `params` (read in the
    /// child with [`param`] / [`param_or`]).
    pub fn spawn_on(&self, channel: &str, role: &str, params: &[(&str, &dyn Display)]) -> Child {
        self.spawn_via(&[], channel, role, params)
    }

    /// [`spawn_on`](Self::spawn_on) through a wrapper command that executes the rest of its
    /// command line in place (e.g. `ip netns exec NS`), so the child's pid stays its own.
    pub fn spawn_via(
        &self,
        wrapper: &[&str],
        channel: &str,
        role: &str,
        params: &[(&str, &dyn Display)],
    ) -> Child {
        // Serialise spawning (nix-rust/nix `test/test.rs`): a child forked while another test
        // thread is mid-way through its own spawn must not pick up that one's pipes.
        static SPAWN: Mutex<()> = Mutex::new(());

        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env(CHANNEL_VAR, channel)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in params {
            cmd.env(param_var(key), value.to_string());
        }
        let mut child = {
            let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning child {role:?}: {e}"))
        };
        let stdout = child.stdout.take().expect("piped stdout");
        fcntl(&stdout, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK on stdout");
        let stdin = child.stdin.take();
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr_pipe.read(&mut chunk) {
                    stderr
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            })
        };
        let pid = child.id();
        let proc_ = Rc::new(RefCell::new(Proc {
            child,
            status: None,
        }));
        self.children.borrow_mut().push(Rc::clone(&proc_));
        Child {
            role: role.to_owned(),
            pid,
            proc_,
            stdin,
            stdout,
            stdout_buf: Vec::new(),
            stdout_eof: false,
            reports: VecDeque::new(),
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for p in self.children.borrow().iter() {
            p.borrow_mut().kill_and_reap();
        }
        // Remove what the test (or the library, if it failed) left behind: the main segment
        // and any `<name>-<suffix>` one.
        let main = format!("{PREFIX}{}", self.name);
        let sub = format!("{main}-");
        if let Ok(dir) = std::fs::read_dir(SHM_DIR) {
            for entry in dir.flatten() {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                if *file == main || file.starts_with(&sub) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

struct Proc {
    child: std::process::Child,
    status: Option<ExitStatus>,
}

impl Proc {
    fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // `Child::kill` sends SIGKILL; it fails only if the child was already reaped.
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait");
        self.status = Some(status);
        status
    }
}

/// A child process seen from the parent.
pub struct Child {
    role: String,
    pid: u32,
    proc_: Rc<RefCell<Proc>>,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stdout_buf: Vec<u8>,
    stdout_eof: bool,
    reports: VecDeque<(String, String)>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Child {
    /// The child's process id (valid until it is reaped).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads whatever the child has written to stdout so far, without blocking.
    fn pump(&mut self) {
        let mut chunk = [0u8; 4096];
        while !self.stdout_eof {
            match self.stdout.read(&mut chunk) {
                Ok(0) => self.stdout_eof = true,
                Ok(n) => self.stdout_buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => self.fail(&format!("reading stdout: {e}")),
            }
        }
        while let Some(end) = self.stdout_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stdout_buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(at) = line.find(MARK) {
                let body = line[at + MARK.len()..].trim_end();
                let (key, value) = body.split_once(' ').unwrap_or((body, ""));
                self.reports.push_back((key.to_owned(), value.to_owned()));
            }
        }
    }

    /// The first report `key` the child has made so far and that was not taken yet, without
    /// waiting.
    pub fn try_take(&mut self, key: &str) -> Option<String> {
        self.pump();
        let at = self.reports.iter().position(|(k, _)| k == key)?;
        self.reports.remove(at).map(|(_, v)| v)
    }

    /// Waits for report `key` and returns its value. Fails the test if the child exits
    /// without making it.
    pub fn expect(&mut self, key: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(value) = self.try_take(key) {
                return value;
            }
            if self.stdout_eof && self.proc_.borrow_mut().try_reap().is_some() {
                self.pump();
                if let Some(value) = self.try_take(key) {
                    return value;
                }
                self.fail(&format!("exited without reporting {key:?}"));
            }
            if start.elapsed() > PATIENCE {
                self.fail(&format!("did not report {key:?} within {PATIENCE:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for report `key` and parses its value.
    pub fn expect_parse<T: FromStr>(&mut self, key: &str) -> T
    where
        T::Err: Debug,
    {
        let value = self.expect(key);
        value
            .parse()
            .unwrap_or_else(|e| self.fail(&format!("report {key}={value:?}: {e:?}")))
    }

    /// Sends the child a command line (read with [`command`]).
    pub fn tell(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            self.fail("told something after its stdin was closed");
        };
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            self.fail(&format!("writing {line:?} to stdin: {e}"));
        }
    }

    /// Closes the child's stdin: [`command`] returns `None` in the child.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Closes stdin, waits for the child to exit and asserts that it succeeded. Reports not
    /// taken yet stay available to [`try_take`](Self::try_take).
    pub fn wait_success(&mut self) {
        self.close_stdin();
        let status = self.wait_exit();
        if !status.success() {
            self.fail(&format!("exited with {status}"));
        }
    }

    /// SIGKILLs the child (if it still runs), reaps it and asserts that SIGKILL is what
    /// ended it.
    pub fn kill(&mut self) {
        let status = self.proc_.borrow_mut().kill_and_reap();
        self.assert_killed(status);
    }

    /// Waits for a child that someone else SIGKILLs (see [`sigkill`]) and asserts that
    /// SIGKILL is what ended it.
    pub fn wait_killed(&mut self) {
        let status = self.wait_exit();
        self.assert_killed(status);
    }

    fn assert_killed(&mut self, status: ExitStatus) {
        if status.signal() != Some(Signal::SIGKILL as i32) {
            self.fail(&format!("expected death by SIGKILL, got {status}"));
        }
        self.pump();
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.proc_.borrow_mut().try_reap() {
                break status;
            }
            if start.elapsed() > PATIENCE {
                self.fail(&format!("did not exit within {PATIENCE:?}"));
            }
            self.pump();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Fails the test, showing the child's stderr. Kills the child first.
    pub fn fail(&mut self, what: &str) -> ! {
        let status = self.proc_.borrow_mut().kill_and_reap();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        panic!(
            "child {:?} (pid {}, {status}) {what}\n--- its stderr ---\n{}--- end ---",
            self.role,
            self.pid,
            String::from_utf8_lossy(&stderr)
        );
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.proc_.borrow_mut().kill_and_reap();
    }
}

// ---------------------------------------------------------------------------------------
// Child side

/// This process's role, if it is a child of a test.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// This child's channel.
pub fn channel() -> String {
    std::env::var(CHANNEL_VAR).expect("child without a channel")
}

fn param_var(key: &str) -> String {
    format!("{PARAM_VAR_PREFIX}{}", key.to_ascii_uppercase())
}

/// Parameter `key` of this child, if given.
pub fn param_opt<T: FromStr>(key: &str) -> Option<T>
where
    T::Err: Debug,
{
    let raw = std::env::var(param_var(key)).ok()?;
    Some(
        raw.parse()
            .unwrap_or_else(|e| panic!("parameter {key}={raw:?}: {e:?}")),
    )
}

/// Parameter `key` of this child; panics if it was not given.
pub fn param<T: FromStr>(key: &str) -> T
where
    T::Err: Debug,
{
    param_opt(key).unwrap_or_else(|| panic!("parameter {key} missing"))
}

/// Parameter `key` of this child, or `default`.
pub fn param_or<T: FromStr>(key: &str, default: T) -> T
where
    T::Err: Debug,
{
    param_opt(key).unwrap_or(default)
}

/// Reports `key` = `value` to the parent. Written and flushed before returning, so the
/// report is visible to the parent before anything the child does next.
pub fn report(key: &str, value: impl Display) {
    let mut out = std::io::stdout().lock();
    // A leading newline keeps the report off a line the test harness left open.
    writeln!(out, "\n{MARK}{key} {value}").expect("writing a report");
    out.flush().expect("flushing a report");
}

/// The next command from the parent; `None` once the parent closed our stdin.
pub fn command() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

/// Waits for the parent to close our stdin (or to kill us).
pub fn wait_for_parent() {
    while command().is_some() {}
}

/// Sleeps until killed.
pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Makes this child exit if its parent goes away (the test run was interrupted), so that no
/// child outlives its test, whatever it is blocked in.
pub fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(3);
        }
    });
}
