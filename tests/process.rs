//! Channels between real processes.
//!
//! Every test here puts at least one end of a channel in a child process (the test binary
//! itself, re-run by `common::Harness`; see `tests/common/mod.rs`) and checks outcomes:
//! what arrived, in which order, intact or not, and which error came back. No test asserts
//! on a duration; orderings are checked through what a child reported before doing
//! something that the parent observed through the channel.
//!
//! Every test removes what it creates (the harness kills its children and removes leftover
//! segments, also when a test fails) and ends by checking that the library itself removed
//! the segment file.

mod common;

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmbus::{
    EncodeError, Message, OpenError, Options, Receiver, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, Sender, TryRecvError, TrySendError, MAX_NAME_LEN,
};

use common::{
    assert_no_segment, command, param, param_or, report, sleep_forever, wait_for_parent, Child,
    Harness,
};

// ---------------------------------------------------------------------------------------
// Messages

/// The zero-copy message of most tests. Every field is derived from `seq`, so a receiver can
/// check each message on its own.
#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Tick {
    seq: u64,
    price: f64,
    venue: [u8; 8],
}

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        price: seq as f64 * 0.5,
        venue: venue(seq),
    }
}

fn venue(seq: u64) -> [u8; 8] {
    (seq ^ 0x5A5A_5A5A_5A5A_5A5A)
        .rotate_left(13)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .to_le_bytes()
}

/// An order-sensitive digest of a stream of ticks.
fn digest(acc: u64, t: &Tick) -> u64 {
    (acc.rotate_left(5) ^ t.seq ^ t.price.to_bits() ^ u64::from_le_bytes(t.venue))
        .wrapping_mul(0x0100_0000_01B3)
}

fn digest_of(seqs: impl IntoIterator<Item = u64>) -> u64 {
    seqs.into_iter().fold(0, |acc, seq| digest(acc, &tick(seq)))
}

/// Another zero-copy type, for type mismatches.
#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Quote {
    bid: f64,
    ask: f64,
}

/// A serialized (postcard) message.
#[derive(shmbus::Message, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Order {
    id: u64,
    symbol: String,
    fills: Vec<u32>,
    note: Option<String>,
    side: Side,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Side {
    Buy,
    Sell { limit: f64 },
    Cancel(u32, String),
}

fn order(id: u64) -> Order {
    Order {
        id,
        symbol: format!("SYM{id}"),
        fills: (0..id as u32).map(|k| k * k + 1).collect(),
        note: (id % 2 == 0).then(|| format!("note {id}")),
        side: match id % 3 {
            0 => Side::Buy,
            1 => Side::Sell {
                limit: id as f64 * 1.25,
            },
            _ => Side::Cancel(id as u32, "changed my mind".to_owned()),
        },
    }
}

/// An order too large for a 256-byte channel.
fn huge_order() -> Order {
    Order {
        fills: vec![7; 1000],
        ..order(99)
    }
}

/// Which loans the loaning child drops instead of sending.
fn dropped_loan(seq: u64) -> bool {
    seq % 5 == 3
}

fn opts(capacity: usize) -> Options {
    let mut o = Options::new();
    o.capacity(capacity);
    o
}

/// The participant limits a channel is created with. The behaviours tested here must hold
/// for both: the library's defaults (several senders and receivers may attach, slots are
/// claimed and taken with compare-and-swap) and one of each (the single-participant paths,
/// with plain stores).
#[derive(Clone, Copy, Debug)]
enum Limits {
    Default,
    Single,
}

impl Limits {
    fn options(self, capacity: usize) -> Options {
        let mut o = opts(capacity);
        if let Limits::Single = self {
            o.max_senders(1).max_receivers(1);
        }
        o
    }

    /// The value of a child's `limits` parameter.
    fn param(self) -> &'static str {
        match self {
            Limits::Default => "default",
            Limits::Single => "single",
        }
    }

    /// A test name for `test` under these limits.
    fn test_name(self, test: &str) -> String {
        format!("{test}-{}", self.param())
    }
}

/// Runs a test body once per [`Limits`], as `<body>::default_limits` and
/// `<body>::single_participants`.
macro_rules! for_each_limits {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[test]
            fn default_limits() {
                super::$body(super::Limits::Default);
            }

            #[test]
            fn single_participants() {
                super::$body(super::Limits::Single);
            }
        }
    )*};
}

for_each_limits!(
    million_ticks_child_to_parent,
    million_ticks_parent_to_child,
    send_blocks_while_full_until_the_receiver_reads,
    sigkill_of_the_sender_mid_stream,
    sigkill_of_the_sender_while_the_receiver_spins,
    sigkill_of_the_receiver_unblocks_a_full_sender,
    restarted_receiver_gets_what_the_killed_one_left,
    stale_segment_of_a_killed_sender_keeps_its_messages,
    loans_across_processes,
);

/// Receives once and asserts that the channel reports `Disconnected` (not a message, not a
/// hang: a hang fails the test through the child's or the harness's deadline).
fn assert_disconnected<T: Message + Debug>(rx: &Receiver<T>) {
    match rx.recv() {
        Err(RecvError::Disconnected) => {}
        Ok(sample) => panic!("expected Disconnected, received {:?}", *sample),
        Err(e) => panic!("expected Disconnected, got {e}"),
    }
}

/// Receives `seqs` in order and checks every field of every message.
fn receive_ticks(rx: &Receiver<Tick>, seqs: impl IntoIterator<Item = u64>) {
    for seq in seqs {
        let sample = rx
            .recv()
            .unwrap_or_else(|e| panic!("receiving tick {seq}: {e}"));
        assert!(sample.is_in_place(), "a zero-copy tick is read in place");
        if *sample != tick(seq) {
            panic!("expected {:?}, received {:?}", tick(seq), *sample);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// Entry point of every child process; a no-op in the parent (see `common`).
#[test]
fn child_main() {
    let Some(role) = common::role() else {
        return;
    };
    common::exit_with_parent();
    match role.as_str() {
        "sender" => child_sender(),
        "receiver" => child_receiver(),
        "loaner" => child_loaner(),
        "order_sender" => child_order_sender(),
        "holder" => child_holder(),
        "loan_holder" => child_loan_holder(),
        "try_open" => child_try_open(),
        other => panic!("unknown child role {other:?}"),
    }
    std::process::exit(0);
}

fn child_options() -> Options {
    let limits = match param_or("limits", "default".to_owned()).as_str() {
        "default" => Limits::Default,
        "single" => Limits::Single,
        other => panic!("limits {other:?}"),
    };
    limits.options(param_or("capacity", 8))
}

/// Opens this child's sender as parameter `mode` says (default: `open`).
fn child_sender_handle<T: Message>() -> Sender<T> {
    let name = common::channel();
    let o = child_options();
    let mode: String = param_or("mode", "open".to_owned());
    match mode.as_str() {
        "create" => Sender::create(&name, &o),
        "open" => Sender::open(&name, &o),
        "open_or_create" => Sender::open_or_create(&name, &o),
        other => panic!("mode {other:?}"),
    }
    .unwrap_or_else(|e| panic!("opening the sender: {e}"))
}

/// Opens this child's receiver as parameter `mode` says (default: `open`).
fn child_receiver_handle<T: Message>() -> Receiver<T> {
    let name = common::channel();
    let o = child_options();
    let mode: String = param_or("mode", "open".to_owned());
    match mode.as_str() {
        "create" => Receiver::create(&name, &o),
        "open" => Receiver::open(&name, &o),
        "open_or_create" => Receiver::open_or_create(&name, &o),
        other => panic!("mode {other:?}"),
    }
    .unwrap_or_else(|e| panic!("opening the receiver: {e}"))
}

/// Waits for "go" on stdin if parameter `wait_go` is set, then sleeps `delay_ms`.
fn child_wait_go_and_delay() {
    if param_or("wait_go", false) {
        assert_eq!(command().as_deref(), Some("go"), "expected \"go\" on stdin");
    }
    let delay = param_or("delay_ms", 0u64);
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
}

/// What a child does once its work is done, per parameter `after`: `exit` (drop its handle
/// and exit), `hang` (report `done` and keep its handle until killed), `wait` (keep its
/// handle until the parent closes stdin).
fn child_finish() {
    let after: String = param_or("after", "exit".to_owned());
    match after.as_str() {
        "exit" => {}
        "hang" => {
            report("done", "");
            sleep_forever();
        }
        "wait" => wait_for_parent(),
        other => panic!("after {other:?}"),
    }
}

/// Sends `count` ticks from `start` (reports `attached`, `full` with `fill_first`,
/// `sending`, `sent`).
fn child_sender() {
    let tx = child_sender_handle::<Tick>();
    report("attached", tx.capacity());
    child_wait_go_and_delay();
    let start = param_or("start", 0u64);
    let end = start.saturating_add(param_or("count", 0u64));
    let mut seq = start;
    if param_or("fill_first", false) {
        // Fill the ring without blocking, then report how many fit.
        loop {
            match tx.try_send(tick(seq)) {
                Ok(()) => seq += 1,
                Err(TrySendError::Full(back)) => {
                    assert_eq!(back, tick(seq), "try_send hands a refused message back");
                    break;
                }
                Err(e) => panic!("try_send {seq}: {e}"),
            }
        }
        report("full", seq - start);
    }
    report("sending", seq);
    while seq < end {
        if let Err(e) = tx.send(tick(seq)) {
            panic!("send {seq}: {e}");
        }
        seq += 1;
    }
    report("sent", seq - start);
    child_finish();
}

/// Receives ticks, checking each against `tick(expected)` from `start` on, until `take`
/// messages or `Disconnected`; reports `ready`, `reading`, then `count`, `errors`, `first`,
/// `last`, `digest`, `end`. With `hold`, then takes one more message and keeps it borrowed
/// (reporting `holding`) until killed.
fn child_receiver() {
    let rx = child_receiver_handle::<Tick>();
    report("ready", rx.capacity());
    child_wait_go_and_delay();
    report("reading", "");
    let take = param_or("take", u64::MAX);
    let mut expected = param_or("start", 0u64);
    let (mut count, mut errors, mut acc) = (0u64, 0u64, 0u64);
    let (mut first, mut last) = (None, None);
    let mut end = "took";
    while count < take {
        match rx.recv() {
            Ok(sample) => {
                if *sample != tick(expected) {
                    errors += 1;
                    eprintln!("expected {:?}, received {:?}", tick(expected), *sample);
                }
                first.get_or_insert(sample.seq);
                last = Some(sample.seq);
                acc = digest(acc, &sample);
                expected = sample.seq.wrapping_add(1);
                count += 1;
            }
            Err(RecvError::Disconnected) => {
                end = "disconnected";
                break;
            }
            Err(e) => panic!("recv after {count} messages: {e}"),
        }
    }
    let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    report("count", count);
    report("errors", errors);
    report("first", show(first));
    report("last", show(last));
    report("digest", acc);
    report("end", end);
    if param_or("hold", false) {
        let held = rx.recv().expect("receiving the message to hold");
        report("holding", held.seq);
        sleep_forever();
    }
    child_finish();
}

/// Sends `count` ticks through loans, written in place field by field, using `loan`,
/// `try_loan` and `loan_timeout` in turn; drops the loans that `dropped_loan` picks without
/// sending them. Reports `committed`.
fn child_loaner() {
    let tx = child_sender_handle::<Tick>();
    let count: u64 = param("count");
    let mut committed = 0u64;
    for seq in 0..count {
        let mut loan = match seq % 3 {
            0 => tx.loan().expect("loan"),
            1 => loop {
                match tx.try_loan() {
                    Ok(loan) => break loan,
                    Err(TrySendError::Full(())) => std::thread::yield_now(),
                    Err(e) => panic!("try_loan: {e}"),
                }
            },
            _ => tx.loan_timeout(common::PATIENCE).expect("loan_timeout"),
        };
        loan.seq = seq;
        loan.price = seq as f64 * 0.5;
        loan.venue = venue(seq);
        if dropped_loan(seq) {
            drop(loan);
        } else {
            loan.send();
            committed += 1;
        }
    }
    report("committed", committed);
}

/// Sends `order(0..5)`, a too-large order, `order(5..8)`. Reports `max_message_size`,
/// `oversize` and `oversize_try` (what `send` and `try_send` said about the large one).
fn child_order_sender() {
    let tx = child_sender_handle::<Order>();
    report("max_message_size", tx.max_message_size());
    let verdict = |back: &Order, err: &EncodeError| match err {
        EncodeError::TooLarge { max } => {
            format!("TooLarge max={max} intact={}", *back == huge_order())
        }
        other => format!("{other:?}"),
    };
    for id in 0..5 {
        tx.send(order(id)).expect("send order");
    }
    let sent = match tx.send(huge_order()) {
        Err(SendError::Encode(back, err)) => verdict(&back, &err),
        other => format!("{:?}", other.err()),
    };
    report("oversize", sent);
    let mut huge = huge_order();
    let tried = loop {
        match tx.try_send(huge) {
            // No free slot: the size is checked once there is one.
            Err(TrySendError::Full(back)) => {
                huge = back;
                std::thread::yield_now();
            }
            Err(TrySendError::Encode(back, err)) => break verdict(&back, &err),
            other => break format!("{:?}", other.err()),
        }
    };
    report("oversize_try", tried);
    for id in 5..8 {
        tx.send(order(id)).expect("send order");
    }
    report("sent", 8);
}

/// Takes a loan, writes `tick(seq)` into it and keeps it, unsent, until killed.
fn child_loan_holder() {
    let tx = child_sender_handle::<Tick>();
    let mut loan = tx.loan().expect("loan");
    *loan = tick(param("seq"));
    report("loaned", loan.seq);
    sleep_forever();
}

/// Keeps a `Sender<Tick>` open until the parent closes stdin.
fn child_holder() {
    let tx = child_sender_handle::<Tick>();
    report("ready", tx.capacity());
    wait_for_parent();
}

/// Tries to open end `end` (`sender` or `receiver`) of the channel; reports `result`.
fn child_try_open() {
    let name = common::channel();
    let o = Options::new();
    let end: String = param("end");
    let result = match end.as_str() {
        "sender" => Sender::<Tick>::open(&name, &o).map(drop),
        "receiver" => Receiver::<Tick>::open(&name, &o).map(drop),
        other => panic!("end {other:?}"),
    };
    report(
        "result",
        match result {
            Ok(()) => "ok".to_owned(),
            Err(OpenError::TooManyParticipants { role, max, .. }) => {
                format!("TooManyParticipants {role} {max}")
            }
            Err(e) => format!("{e:?}"),
        },
    );
}

/// The summary a `receiver` child reports.
#[derive(Debug, PartialEq)]
struct Received {
    count: u64,
    errors: u64,
    first: String,
    last: String,
    digest: u64,
    end: String,
}

impl Received {
    fn from_child(child: &mut Child) -> Received {
        Received {
            count: child.expect_parse("count"),
            errors: child.expect_parse("errors"),
            first: child.expect("first"),
            last: child.expect("last"),
            digest: child.expect_parse("digest"),
            end: child.expect("end"),
        }
    }

    /// What a receiver that got exactly `seqs`, then `end`, reports.
    fn expected(seqs: std::ops::Range<u64>, end: &str) -> Received {
        let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        Received {
            count: seqs.end - seqs.start,
            errors: 0,
            first: show((!seqs.is_empty()).then_some(seqs.start)),
            last: show((!seqs.is_empty()).then(|| seqs.end - 1)),
            digest: digest_of(seqs),
            end: end.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Streams

const MILLION: u64 = 1_000_000;

fn million_ticks_child_to_parent(limits: Limits) {
    let h = Harness::new(&limits.test_name("million_c2p"));
    let rx = Receiver::<Tick>::create(h.name(), &limits.options(1024)).unwrap();
    let mut child = h.spawn("sender", &[("count", &MILLION)]);
    let start = Instant::now();
    receive_ticks(&rx, 0..MILLION);
    let elapsed = start.elapsed();
    assert_disconnected(&rx);
    child.wait_success();
    assert_eq!(child.expect_parse::<u64>("sent"), MILLION);
    eprintln!("million_ticks_child_to_parent ({limits:?}): {MILLION} ticks in {elapsed:?}");
    drop(rx);
    h.assert_no_segment();
}

fn million_ticks_parent_to_child(limits: Limits) {
    let h = Harness::new(&limits.test_name("million_p2c"));
    let tx = Sender::<Tick>::create(h.name(), &limits.options(1024)).unwrap();
    let mut child = h.spawn("receiver", &[]);
    let start = Instant::now();
    for seq in 0..MILLION {
        tx.send(tick(seq)).unwrap();
    }
    drop(tx);
    child.wait_success();
    let elapsed = start.elapsed();
    assert_eq!(
        Received::from_child(&mut child),
        Received::expected(0..MILLION, "disconnected")
    );
    eprintln!("million_ticks_parent_to_child ({limits:?}): {MILLION} ticks in {elapsed:?}");
    h.assert_no_segment();
}

#[test]
fn receiver_first_then_sender() {
    let h = Harness::new("receiver_first");
    let rx = Receiver::<Tick>::create(h.name(), &opts(8)).unwrap();
    // No sender has attached yet: receiving waits for one, it does not report a disconnection.
    assert!(!rx.is_connected());
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    ));
    let mut child = h.spawn("sender", &[("count", &100u64)]);
    receive_ticks(&rx, 0..100);
    assert_disconnected(&rx);
    child.wait_success();
    drop(rx);
    h.assert_no_segment();
}

#[test]
fn sender_first_in_child_blocks_until_receiver_opens() {
    let h = Harness::new("sender_first_child");
    let mut child = h.spawn(
        "sender",
        &[
            ("mode", &"create"),
            ("capacity", &8),
            ("fill_first", &true),
            ("count", &100u64),
        ],
    );
    // The child filled the ring with no receiver anywhere and now blocks in `send`.
    assert_eq!(child.expect_parse::<u64>("full"), 8);
    let rx = Receiver::<Tick>::open(h.name(), &Options::new()).unwrap();
    assert_eq!(rx.capacity(), 8);
    receive_ticks(&rx, 0..100);
    assert_disconnected(&rx);
    child.wait_success();
    drop(rx);
    h.assert_no_segment();
}

#[test]
fn sender_first_in_parent_blocks_until_receiver_opens() {
    let h = Harness::new("sender_first_parent");
    let tx = Sender::<Tick>::create(h.name(), &opts(8)).unwrap();
    assert!(!tx.is_connected());
    let mut seq = 0;
    loop {
        match tx.try_send(tick(seq)) {
            Ok(()) => seq += 1,
            Err(TrySendError::Full(back)) => {
                assert_eq!(back, tick(seq));
                break;
            }
            Err(e) => panic!("try_send {seq}: {e}"),
        }
    }
    assert_eq!(seq, 8);
    let mut child = h.spawn("receiver", &[]);
    // Blocks until the child has opened the channel and frees slots.
    for seq in seq..100 {
        tx.send(tick(seq)).unwrap();
    }
    drop(tx);
    child.wait_success();
    assert_eq!(
        Received::from_child(&mut child),
        Received::expected(0..100, "disconnected")
    );
    h.assert_no_segment();
}

// ---------------------------------------------------------------------------------------
// Blocking and timeouts

fn send_blocks_while_full_until_the_receiver_reads(limits: Limits) {
    let h = Harness::new(&limits.test_name("block_full"));
    let tx = Sender::<Tick>::create(h.name(), &limits.options(4)).unwrap();
    assert_eq!(tx.capacity(), 4);
    let mut child = h.spawn("receiver", &[("wait_go", &true), ("delay_ms", &300u64)]);
    child.expect("ready");
    for seq in 0..4 {
        tx.try_send(tick(seq)).unwrap();
    }
    match tx.try_send(tick(4)) {
        Err(TrySendError::Full(back)) => assert_eq!(back, tick(4)),
        other => panic!("expected Full, got {other:?}"),
    }
    child.tell("go");
    // Returns only once the child has taken a message, which it does after reporting
    // "reading" (300 ms after "go"): so that report must be there when `send` returns.
    tx.send(tick(4)).unwrap();
    assert!(
        child.try_take("reading").is_some(),
        "send on a full channel returned before the receiver started reading"
    );
    for seq in 5..10 {
        tx.send(tick(seq)).unwrap();
    }
    drop(tx);
    child.wait_success();
    assert_eq!(
        Received::from_child(&mut child),
        Received::expected(0..10, "disconnected")
    );
    h.assert_no_segment();
}

#[test]
fn recv_blocks_while_empty_until_the_sender_sends() {
    let h = Harness::new("block_empty");
    let rx = Receiver::<Tick>::create(h.name(), &opts(4)).unwrap();
    let mut child = h.spawn(
        "sender",
        &[("wait_go", &true), ("delay_ms", &300u64), ("count", &1u64)],
    );
    child.expect("attached");
    assert!(rx.is_connected());
    // Empty with a live sender: "empty" and "timed out", never "disconnected".
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    match rx.recv_timeout(Duration::from_millis(50)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    match rx.recv_deadline(Instant::now() + Duration::from_millis(20)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    child.tell("go");
    let sample = rx.recv().unwrap();
    assert_eq!(*sample, tick(0));
    // The child reported "sending" before it sent.
    assert!(child.try_take("sending").is_some());
    drop(sample);
    assert_disconnected(&rx);
    child.wait_success();
    drop(rx);
    h.assert_no_segment();
}

#[test]
fn send_timeout_on_a_full_channel_hands_the_message_back() {
    let h = Harness::new("send_timeout");
    let tx = Sender::<Tick>::create(h.name(), &opts(4)).unwrap();
    // A receiver that attaches, reads nothing, and leaves when told.
    let mut child = h.spawn("receiver", &[("wait_go", &true), ("take", &0u64)]);
    child.expect("ready");
    for seq in 0..4 {
        tx.send(tick(seq)).unwrap();
    }
    match tx.send_timeout(tick(4), Duration::from_millis(50)) {
        Err(SendTimeoutError::Timeout(back)) => assert_eq!(back, tick(4)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(matches!(
        tx.loan_timeout(Duration::from_millis(20)),
        Err(SendTimeoutError::Timeout(()))
    ));
    assert!(matches!(tx.try_loan(), Err(TrySendError::Full(()))));
    // The receiver leaves without reading: the blocked send gives up, handing the message
    // back.
    child.tell("go");
    match tx.send(tick(4)) {
        Err(SendError::Disconnected(back)) => assert_eq!(back, tick(4)),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(!tx.is_connected());
    child.wait_success();
    assert_eq!(
        Received::from_child(&mut child),
        Received::expected(0..0, "took")
    );
    drop(tx);
    h.assert_no_segment();
}

// ---------------------------------------------------------------------------------------
// Crashes

fn sigkill_of_the_sender_mid_stream(limits: Limits) {
    kill_the_sender_mid_stream(limits, None);
}

/// The receiver busy-polls for an hour before it would sleep: the sender's death is still
/// noticed within a liveness slice (a killed process never updates the shared state that
/// the spin loop looks at).
fn sigkill_of_the_sender_while_the_receiver_spins(limits: Limits) {
    kill_the_sender_mid_stream(limits, Some(Duration::from_secs(3600)));
}

fn kill_the_sender_mid_stream(limits: Limits, spin: Option<Duration>) {
    const BEFORE_KILL: u64 = 20_000;
    const CAPACITY: usize = 64;
    let test = if spin.is_some() {
        "kill_sender_spin"
    } else {
        "kill_sender"
    };
    let h = Harness::new(&limits.test_name(test));
    let mut o = limits.options(CAPACITY);
    if let Some(spin) = spin {
        o.spin(spin);
    }
    let rx = Receiver::<Tick>::create(h.name(), &o).unwrap();
    // Sends until killed.
    let mut child = h.spawn("sender", &[("count", &u64::MAX)]);
    receive_ticks(&rx, 0..BEFORE_KILL);
    let killed_at = Instant::now();
    child.kill();
    // What was committed before the kill arrives intact and in order; then the channel
    // reports the disconnection instead of waiting forever (a minute is the bound that
    // fails the test instead of hanging it).
    let mut next = BEFORE_KILL;
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(sample) => {
                if *sample != tick(next) {
                    panic!(
                        "after the kill: expected {:?}, got {:?}",
                        tick(next),
                        *sample
                    );
                }
                next += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("after the kill: {e}"),
        }
    }
    eprintln!(
        "{test} ({limits:?}): {} messages after SIGKILL, Disconnected {:?} after it",
        next - BEFORE_KILL,
        killed_at.elapsed()
    );
    // The child was reaped before we went on: nothing can have been committed since, so
    // at most a ring's worth was waiting.
    assert!(next - BEFORE_KILL <= CAPACITY as u64);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    assert!(!rx.is_connected());
    drop(rx);
    h.assert_no_segment();
}

fn sigkill_of_the_receiver_unblocks_a_full_sender(limits: Limits) {
    let h = Harness::new(&limits.test_name("kill_receiver"));
    let tx = Sender::<Tick>::create(h.name(), &limits.options(8)).unwrap();
    let mut child = h.spawn("receiver", &[("take", &3u64), ("after", &"hang")]);
    child.expect("ready");
    for seq in 0..3 {
        tx.send(tick(seq)).unwrap();
    }
    assert_eq!(child.expect_parse::<u64>("count"), 3);
    assert_eq!(child.expect_parse::<u64>("errors"), 0);
    child.expect("done");
    // Fill the ring; the child reads no more.
    let mut seq = 3;
    while tx.try_send(tick(seq)).is_ok() {
        seq += 1;
    }
    assert_eq!(seq, 3 + 8);
    // Kill the child while (most likely) we are blocked in `send` below; either way the
    // send must end with Disconnected, not wait forever.
    let pid = child.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        common::sigkill(pid);
    });
    match tx.send(tick(seq)) {
        Err(SendError::Disconnected(back)) => assert_eq!(back, tick(seq)),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    killer.join().unwrap();
    child.wait_killed();
    assert!(!tx.is_connected());
    assert!(matches!(
        tx.try_send(tick(seq)),
        Err(TrySendError::Disconnected(_))
    ));
    drop(tx);
    h.assert_no_segment();
}

fn restarted_receiver_gets_what_the_killed_one_left(limits: Limits) {
    let h = Harness::new(&limits.test_name("restart_receiver"));
    let tx = Sender::<Tick>::create(h.name(), &limits.options(16)).unwrap();
    for seq in 0..10 {
        tx.send(tick(seq)).unwrap();
    }
    // The first receiver takes 0, 1, 2, then holds 3 borrowed in place when it is killed.
    let mut first = h.spawn("receiver", &[("take", &3u64), ("hold", &true)]);
    assert_eq!(
        Received::from_child(&mut first),
        Received::expected(0..3, "took")
    );
    assert_eq!(first.expect_parse::<u64>("holding"), 3);
    first.kill();
    // A new receiver reattaches. The message the dead one held was taken (the documented
    // policy: never redelivered, which would break the order); the rest follows, and so do
    // messages sent after the restart.
    let mut second = h.spawn("receiver", &[("start", &4u64)]);
    second.expect("ready");
    for seq in 10..20 {
        tx.send(tick(seq)).unwrap();
    }
    drop(tx);
    second.wait_success();
    assert_eq!(
        Received::from_child(&mut second),
        Received::expected(4..20, "disconnected")
    );
    h.assert_no_segment();
}

fn stale_segment_of_a_killed_sender_keeps_its_messages(limits: Limits) {
    let h = Harness::new(&limits.test_name("stale"));
    let mut child = h.spawn(
        "sender",
        &[
            ("mode", &"create"),
            ("limits", &limits.param()),
            ("capacity", &16),
            ("count", &10u64),
            ("after", &"hang"),
        ],
    );
    assert_eq!(child.expect_parse::<u64>("sent"), 10);
    child.expect("done");
    child.kill();
    // Nobody was left to remove the file.
    assert!(
        h.segment_path().exists(),
        "the killed sender's segment is gone"
    );
    let rx = Receiver::<Tick>::open(h.name(), &Options::new()).unwrap();
    assert_eq!(rx.capacity(), 16);
    receive_ticks(&rx, 0..10);
    // The recovered channel starts afresh: it waits for a new sender instead of reporting
    // the dead one...
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    // ...which continues where the dead one stopped.
    let mut second = h.spawn("sender", &[("start", &10u64), ("count", &5u64)]);
    receive_ticks(&rx, 10..15);
    assert_disconnected(&rx);
    second.wait_success();
    drop(rx);
    h.assert_no_segment();
}

/// With several receivers allowed (the default), one killed while it holds a message in
/// place must not stall the others: the slot it held is reclaimed, not waited for forever.
#[test]
fn sigkill_of_a_receiver_holding_a_sample_does_not_stall_another() {
    let h = Harness::new("kill_one_of_two_receivers");
    let tx = Sender::<Tick>::create(h.name(), &Limits::Default.options(4)).unwrap();
    let mut doomed = h.spawn("receiver", &[("take", &1u64), ("hold", &true)]);
    doomed.expect("ready");
    tx.send(tick(0)).unwrap();
    tx.send(tick(1)).unwrap();
    assert_eq!(
        Received::from_child(&mut doomed),
        Received::expected(0..1, "took")
    );
    assert_eq!(doomed.expect_parse::<u64>("holding"), 1);
    // The survivor attaches while the doomed one is alive (so nobody reattaches in its place).
    let mut survivor = h.spawn("receiver", &[("start", &2u64)]);
    survivor.expect("ready");
    doomed.kill();
    // Several laps of the ring go through the slot the dead receiver held.
    for seq in 2..40 {
        tx.send(tick(seq)).unwrap();
    }
    drop(tx);
    survivor.wait_success();
    assert_eq!(
        Received::from_child(&mut survivor),
        Received::expected(2..40, "disconnected")
    );
    h.assert_no_segment();
}

/// With several senders allowed (the default), a sender killed while it holds a loan must
/// not stall the others: while it lives, the receiver keeps FIFO order and waits behind the
/// loan; once it is dead, the loan is skipped.
#[test]
fn sigkill_of_a_sender_holding_a_loan_does_not_stall_another() {
    let h = Harness::new("kill_one_of_two_senders");
    let rx = Receiver::<Tick>::create(h.name(), &Limits::Default.options(8)).unwrap();
    let mut doomed = h.spawn("loan_holder", &[("seq", &999u64)]);
    assert_eq!(doomed.expect_parse::<u64>("loaned"), 999);
    let mut survivor = h.spawn("sender", &[("start", &100u64), ("count", &5u64)]);
    assert_eq!(survivor.expect_parse::<u64>("sent"), 5);
    // The survivor's messages are committed, but behind the doomed sender's open loan.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    doomed.kill();
    receive_ticks(&rx, 100..105);
    assert_disconnected(&rx);
    survivor.wait_success();
    drop(rx);
    h.assert_no_segment();
}

// ---------------------------------------------------------------------------------------
// Message kinds

fn loans_across_processes(limits: Limits) {
    const COUNT: u64 = 40;
    let h = Harness::new(&limits.test_name("loans"));
    let rx = Receiver::<Tick>::create(h.name(), &limits.options(4)).unwrap();
    let mut child = h.spawn("loaner", &[("count", &COUNT)]);
    // Exactly the committed loans arrive, in order; the dropped ones leave no trace.
    let committed: Vec<u64> = (0..COUNT).filter(|&seq| !dropped_loan(seq)).collect();
    receive_ticks(&rx, committed.iter().copied());
    assert_disconnected(&rx);
    child.wait_success();
    assert_eq!(
        child.expect_parse::<usize>("committed"),
        committed.len(),
        "the child's count of sent loans"
    );
    drop(rx);
    h.assert_no_segment();
}

#[test]
fn serde_messages_across_processes() {
    let h = Harness::new("serde");
    let mut o = Options::new();
    o.capacity(4).max_message_size(256);
    let rx = Receiver::<Order>::create(h.name(), &o).unwrap();
    let mut child = h.spawn("order_sender", &[]);
    // The too-large order in the middle is not delivered; the ones after it are.
    for id in 0..8 {
        let sample = rx.recv().unwrap_or_else(|e| panic!("order {id}: {e}"));
        assert!(!sample.is_in_place());
        assert_eq!(*sample, order(id));
    }
    assert_disconnected(&rx);
    child.wait_success();
    assert_eq!(child.expect_parse::<usize>("max_message_size"), 256);
    assert_eq!(child.expect("oversize"), "TooLarge max=256 intact=true");
    assert_eq!(child.expect("oversize_try"), "TooLarge max=256 intact=true");
    drop(rx);
    h.assert_no_segment();
}

// ---------------------------------------------------------------------------------------
// Opening

#[test]
fn type_mismatch_across_processes() {
    let h = Harness::new("mismatch");
    let mut child = h.spawn("holder", &[("mode", &"create")]);
    child.expect("ready");

    let err = Receiver::<Quote>::open(h.name(), &Options::new()).unwrap_err();
    match &err {
        OpenError::TypeMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected.name, "Quote");
            assert_eq!(found.name, "Tick");
            assert_eq!(found.encoding, "zero-copy");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("Tick") && text.contains("Quote"), "{text}");

    // A channel in use is never replaced, whatever the mode or the end.
    assert!(matches!(
        Receiver::<Quote>::open_or_create(h.name(), &Options::new()),
        Err(OpenError::TypeMismatch { .. })
    ));
    assert!(matches!(
        Sender::<Quote>::open_or_create(h.name(), &Options::new()),
        Err(OpenError::TypeMismatch { .. })
    ));

    // A serialized type against a zero-copy one.
    let err = Receiver::<Order>::open(h.name(), &Options::new()).unwrap_err();
    match &err {
        OpenError::TypeMismatch {
            expected, found, ..
        } => {
            assert_eq!(
                (expected.name.as_str(), expected.encoding),
                ("Order", "postcard")
            );
            assert_eq!((found.name.as_str(), found.encoding), ("Tick", "zero-copy"));
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("Tick") && text.contains("Order"), "{text}");

    // The right type still opens.
    drop(Receiver::<Tick>::open(h.name(), &Options::new()).unwrap());
    child.wait_success();
    h.assert_no_segment();
}

/// Header offsets (src/segment/layout.rs).
const MAGIC_AT: u64 = 0;
const VERSION_AT: u64 = 8;
const READY_AT: usize = 12;
const CAPACITY_AT: u64 = 48;
const HEADER_SIZE: usize = 256;
/// The `ready` word's value once a segment is initialised.
const READY: u32 = 0x5245_4459;

#[test]
fn corrupt_header_of_a_live_channel() {
    let h = Harness::new("corrupt_live");
    // The child keeps the channel live: it is never treated as left behind and replaced.
    let mut child = h.spawn("holder", &[("mode", &"create"), ("capacity", &8)]);
    child.expect("ready");
    let path = h.segment_path();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let inode = file.metadata().unwrap().ino();
    let mut original = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut original, 0).unwrap();

    let cases: [(&str, u64, Vec<u8>); 4] = [
        ("magic", MAGIC_AT, b"NOTSHMBS".to_vec()),
        ("version", VERSION_AT, 99u32.to_ne_bytes().to_vec()),
        ("capacity 3", CAPACITY_AT, 3u64.to_ne_bytes().to_vec()),
        (
            "capacity 2^20",
            CAPACITY_AT,
            (1u64 << 20).to_ne_bytes().to_vec(),
        ),
    ];
    for (what, offset, bytes) in &cases {
        file.write_all_at(bytes, *offset).unwrap();
        for (mode, result) in [
            ("open", Receiver::<Tick>::open(h.name(), &Options::new())),
            (
                "open_or_create",
                Receiver::<Tick>::open_or_create(h.name(), &Options::new()),
            ),
        ] {
            match result {
                Err(OpenError::Corrupt { reason, .. }) => {
                    assert!(!reason.is_empty());
                    if *what == "magic" {
                        assert!(reason.contains("magic"), "{reason}");
                    }
                }
                other => panic!("{what}, {mode}: expected Corrupt, got {other:?}"),
            }
        }
        file.write_all_at(&original, 0).unwrap();
    }
    // Still the same file: a channel in use is never replaced.
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    drop(file);
    // Restored, it opens again.
    drop(Receiver::<Tick>::open(h.name(), &Options::new()).unwrap());
    child.wait_success();
    h.assert_no_segment();
}

#[test]
fn garbage_file_nobody_holds() {
    let h = Harness::new("garbage");

    // A header that says "ready" but is not a shmbus segment, in a file nobody holds.
    let path = h.segment_path();
    let mut bytes = vec![0xEE; 8192];
    bytes[..8].copy_from_slice(b"GARBAGE!");
    bytes[READY_AT..READY_AT + 4].copy_from_slice(&READY.to_ne_bytes());
    std::fs::write(&path, &bytes).unwrap();
    // `open` reports it and leaves it alone...
    match Receiver::<Tick>::open(h.name(), &Options::new()) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("magic"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(path.exists());
    // ...`open_or_create` replaces it with a working channel.
    let rx = Receiver::<Tick>::open_or_create(h.name(), &opts(8)).unwrap();
    let mut child = h.spawn("sender", &[("count", &3u64)]);
    receive_ticks(&rx, 0..3);
    assert_disconnected(&rx);
    child.wait_success();
    drop(rx);
    h.assert_no_segment();

    // A file too short for a header (a creator that died before initialising it).
    let short = h.sub_name("short");
    std::fs::write(common::segment_path(&short), [0xEEu8; 100]).unwrap();
    let rx = Receiver::<Tick>::open_or_create(&short, &opts(8)).unwrap();
    let mut child = h.spawn_on(&short, "sender", &[("count", &3u64)]);
    receive_ticks(&rx, 0..3);
    assert_disconnected(&rx);
    child.wait_success();
    drop(rx);
    assert_no_segment(&short);

    // `open` never succeeds on such a file.
    std::fs::write(common::segment_path(&short), [0xEEu8; 100]).unwrap();
    match Receiver::<Tick>::open(&short, &Options::new()) {
        Err(e @ (OpenError::NotFound { .. } | OpenError::Corrupt { .. })) => {
            eprintln!("garbage_file_nobody_holds: open on a 100-byte file: {e}");
        }
        other => panic!("expected NotFound or Corrupt, got {other:?}"),
    }
}

#[test]
fn bad_names() {
    let h = Harness::new("bad_names");
    let long = "x".repeat(300);
    for bad in ["", "a/b", "..", ".x", "a..b", "sp ace", long.as_str()] {
        let o = Options::new();
        for (what, result) in [
            (
                "Sender::open_or_create",
                Sender::<Tick>::open_or_create(bad, &o).map(drop),
            ),
            ("Sender::create", Sender::<Tick>::create(bad, &o).map(drop)),
            ("Receiver::open", Receiver::<Tick>::open(bad, &o).map(drop)),
            (
                "Receiver::open_or_create",
                Receiver::<Tick>::open_or_create(bad, &o).map(drop),
            ),
        ] {
            match result {
                Err(OpenError::InvalidName { .. }) => {}
                other => panic!("{what}({bad:?}): expected InvalidName, got {other:?}"),
            }
        }
    }
    let mut o = Options::new();
    o.prefix("bad/");
    assert!(matches!(
        Sender::<Tick>::open_or_create(h.name(), &o),
        Err(OpenError::InvalidName { .. })
    ));

    // The longest name (prefix included) works, one more byte does not.
    let mut name = h.sub_name("");
    while "shmbus.".len() + name.len() < MAX_NAME_LEN {
        name.push('x');
    }
    let rx = Receiver::<Tick>::create(&name, &opts(8)).unwrap();
    let mut child = h.spawn_on(&name, "sender", &[("count", &3u64)]);
    receive_ticks(&rx, 0..3);
    assert_disconnected(&rx);
    child.wait_success();
    drop(rx);
    assert_no_segment(&name);
    name.push('x');
    assert!(matches!(
        Receiver::<Tick>::create(&name, &opts(8)),
        Err(OpenError::InvalidName { .. })
    ));
}

#[test]
fn participant_limits_across_processes() {
    let h = Harness::new("participants");
    // A channel for one sender and one receiver; the child holds the sender.
    let mut holder = h.spawn("holder", &[("mode", &"create"), ("limits", &"single")]);
    holder.expect("ready");
    for result in [
        Sender::<Tick>::open(h.name(), &Options::new()),
        Sender::<Tick>::open_or_create(h.name(), &Options::new()),
    ] {
        match result {
            Err(OpenError::TooManyParticipants { role, max, .. }) => {
                assert_eq!((role, max), ("sender", 1));
            }
            other => panic!("expected TooManyParticipants, got {other:?}"),
        }
    }
    assert!(matches!(
        Sender::<Tick>::create(h.name(), &Options::new()),
        Err(OpenError::AlreadyExists { .. })
    ));
    // We hold the receiver: a second one, in another process, is refused...
    let rx = Receiver::<Tick>::open(h.name(), &Options::new()).unwrap();
    let mut second = h.spawn("try_open", &[("end", &"receiver")]);
    assert_eq!(second.expect("result"), "TooManyParticipants receiver 1");
    second.wait_success();
    // ...until ours leaves.
    drop(rx);
    let mut third = h.spawn("try_open", &[("end", &"receiver")]);
    assert_eq!(third.expect("result"), "ok");
    third.wait_success();
    holder.wait_success();
    h.assert_no_segment();
}
