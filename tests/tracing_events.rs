//! The library's `tracing` events, captured by a subscriber installed in this test: attach,
//! detach, overflow (a broadcast subscriber lagging), peer death (a sender process
//! SIGKILLed) and stale clean-up (a segment left behind, recovered by the next opener, and
//! one removed by `inspect::remove_stale`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmbus::{Delivery, Options, Overflow, Receiver, RecvTimeoutError, Sender, TryRecvError};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use common::Harness;

#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Msg {
    seq: u64,
}

/// Records every event as `LEVEL message key=value ...`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(" {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    /// Takes the events recorded so far.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn has(events: &[String], level: &str, text: &str) -> bool {
    events
        .iter()
        .any(|e| e.starts_with(level) && e.contains(text))
}

/// Child: a sender that sends one message, reports and waits to be killed.
#[test]
fn child_main() {
    let Some(role) = common::role() else {
        return;
    };
    common::exit_with_parent();
    assert_eq!(role, "sender");
    let tx = Sender::<Msg>::open_or_create(&common::channel(), &Options::new()).unwrap();
    tx.send(Msg { seq: 1 }).unwrap();
    common::report("sent", 1);
    common::sleep_forever();
}

#[test]
fn events_for_attach_detach_overflow_death_and_clean_up() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new("tracing");

    // Attach and detach.
    let tx = Sender::<Msg>::create(h.name(), &Options::new()).unwrap();
    let ev = capture.take();
    assert!(has(&ev, "DEBUG", "DEBUG attached"), "{ev:?}");
    assert!(has(&ev, "DEBUG", "role=\"sender\""), "{ev:?}");
    drop(tx);
    let ev = capture.take();
    assert!(has(&ev, "DEBUG", " detached "), "{ev:?}");
    h.assert_no_segment();

    // Overflow: a broadcast subscriber that fell behind a drop-oldest ring.
    let mut o = Options::new();
    o.delivery(Delivery::Broadcast)
        .overflow(Overflow::DropOldest)
        .capacity(4);
    let name = h.sub_name("overflow");
    let tx = Sender::<Msg>::create(&name, &o).unwrap();
    let rx = Receiver::<Msg>::open(&name, &o).unwrap();
    for seq in 0..10 {
        tx.send(Msg { seq }).unwrap();
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(6))));
    let ev = capture.take();
    assert!(has(&ev, "DEBUG", "subscriber lagged"), "{ev:?}");
    assert!(has(&ev, "DEBUG", "missed=6"), "{ev:?}");
    drop((tx, rx));

    // Peer death: the receiver finds its SIGKILLed sender's entry unlocked.
    let rx = Receiver::<Msg>::create(h.name(), &Options::new()).unwrap();
    let mut child = h.spawn("sender", &[]);
    child.expect("sent");
    let pid = child.pid();
    child.kill();
    child.wait_killed();
    assert_eq!(rx.recv().unwrap().seq, 1);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(60)),
        Err(RecvTimeoutError::Disconnected)
    ));
    let ev = capture.take();
    assert!(
        has(&ev, "INFO", "peer died; reclaiming its slots"),
        "{ev:?}"
    );
    assert!(has(&ev, "INFO", &format!("pid={pid}")), "{ev:?}");
    drop(rx);
    h.assert_no_segment();

    // Stale clean-up: a channel whose every process died is recovered by the next opener...
    let mut child = h.spawn("sender", &[]);
    child.expect("sent");
    child.kill();
    child.wait_killed();
    let rx = Receiver::<Msg>::open(h.name(), &Options::new()).unwrap();
    let ev = capture.take();
    assert!(has(&ev, "INFO", "left behind"), "{ev:?}");
    assert_eq!(
        rx.recv().unwrap().seq,
        1,
        "the recovered message is delivered"
    );
    drop(rx);
    capture.take();

    // ... or removed by `shmbus clean` (inspect::remove_stale).
    let mut child = h.spawn("sender", &[]);
    child.expect("sent");
    child.kill();
    child.wait_killed();
    assert!(shmbus::inspect::remove_stale(shmbus::DEFAULT_PREFIX, h.name()).unwrap());
    let ev = capture.take();
    assert!(has(&ev, "INFO", "removed a stale segment"), "{ev:?}");
    h.assert_no_segment();
}
