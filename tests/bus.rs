//! The bus across real processes: many senders and receivers in queue mode, broadcast to
//! many subscribers, history, `DropOldest` lag reports, SIGKILL of a receiver, of a sender
//! holding a loan and of a server with a request in flight, and request-response with many
//! clients.
//!
//! Children are this test binary re-run (`common::Harness`). No test asserts on a duration.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmbus::{
    Client, Delivery, Options, Overflow, Receiver, RecvError, RequestError, Sender, Server,
};

use common::{command, param, param_or, report, sleep_forever, wait_for_parent, Harness};

/// A message that names its sender and its place in that sender's stream.
#[derive(shmbus::Message, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Stamp {
    sender: u64,
    seq: u64,
}

#[derive(shmbus::Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Ask {
    client: u64,
    n: u64,
}

#[derive(shmbus::Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Reply {
    client: u64,
    n: u64,
    doubled: u64,
}

/// A 64-bit mix, so that a sum of mixed values identifies a set of messages.
fn mix(v: u64) -> u64 {
    let mut x = v.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn stamp_key(s: &Stamp) -> u64 {
    s.sender << 32 | s.seq
}

fn queue_options(capacity: usize) -> Options {
    let mut o = Options::new();
    o.delivery(Delivery::Queue)
        .capacity(capacity)
        .max_senders(8)
        .max_receivers(8);
    o
}

fn broadcast_options(capacity: usize, overflow: Overflow, history: usize) -> Options {
    let mut o = Options::new();
    o.delivery(Delivery::Broadcast)
        .capacity(capacity)
        .overflow(overflow)
        .history(history)
        .max_senders(4)
        .max_receivers(8);
    o
}

fn child_opts() -> Options {
    match param::<String>("kind").as_str() {
        "queue" => queue_options(param_or("capacity", 64)),
        "broadcast" => broadcast_options(
            param_or("capacity", 64),
            Overflow::Block,
            param_or("history", 0),
        ),
        "drop_oldest" => broadcast_options(param_or("capacity", 64), Overflow::DropOldest, 0),
        other => panic!("kind {other:?}"),
    }
}

#[test]
fn child_main() {
    let Some(role) = common::role() else {
        return;
    };
    common::exit_with_parent();
    match role.as_str() {
        "stamp_sender" => child_stamp_sender(),
        "stamp_receiver" => child_stamp_receiver(),
        "loan_holder" => child_loan_holder(),
        "sample_holder" => child_sample_holder(),
        "server" => child_server(),
        "client" => child_client(),
        other => panic!("unknown child role {other:?}"),
    }
    std::process::exit(0);
}

/// Sends `count` stamps as sender `id` (reports `attached`, then `sent`).
fn child_stamp_sender() {
    let tx = Sender::<Stamp>::open_or_create(&common::channel(), &child_opts()).unwrap();
    report("attached", "");
    if param_or("wait_go", false) {
        assert_eq!(command().as_deref(), Some("go"));
    }
    let id: u64 = param("id");
    let count: u64 = param("count");
    for seq in 0..count {
        tx.send(Stamp { sender: id, seq }).unwrap();
    }
    report("sent", count);
}

/// Receives stamps until `Disconnected`. Reports `ready`, then `count`, `set` (sum of mixed
/// keys), `ordered` (each sender's stamps arrived in increasing order; with `contiguous`,
/// also without gaps), `lagged` (total of `Lagged` results), `last`.
fn child_stamp_receiver() {
    let rx = Receiver::<Stamp>::open_or_create(&common::channel(), &child_opts()).unwrap();
    report("ready", "");
    if param_or("wait_go", false) {
        assert_eq!(command().as_deref(), Some("go"));
    }
    let contiguous = param_or("contiguous", false);
    let first_seq: u64 = param_or("first_seq", 0);
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut count, mut set, mut ordered, mut lagged, mut last) = (0u64, 0u64, true, 0u64, None);
    let mut seqs = Vec::new();
    loop {
        match rx.recv() {
            Ok(s) => {
                let expected = next.entry(s.sender).or_insert(first_seq);
                if contiguous {
                    ordered &= s.seq == *expected;
                } else {
                    ordered &= s.seq >= *expected;
                }
                *expected = s.seq + 1;
                count += 1;
                set = set.wrapping_add(mix(stamp_key(&s)));
                last = Some(s.seq);
                if param_or("list", false) {
                    seqs.push(s.seq.to_string());
                }
            }
            Err(RecvError::Lagged(n)) => lagged += n,
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    report("count", count);
    report("set", set);
    report("ordered", ordered);
    report("lagged", lagged);
    report("last", last.map_or("none".to_owned(), |l| l.to_string()));
    report("list", seqs.join(","));
}

/// Sends `count` stamps, then loans one more slot and keeps it (reports `loaned`) until
/// killed.
fn child_loan_holder() {
    let tx = Sender::<Stamp>::open_or_create(&common::channel(), &child_opts()).unwrap();
    let id: u64 = param("id");
    let count: u64 = param("count");
    for seq in 0..count {
        tx.send(Stamp { sender: id, seq }).unwrap();
    }
    let mut loan = tx.loan().unwrap();
    *loan = Stamp {
        sender: id,
        seq: count,
    };
    report("loaned", "");
    sleep_forever();
}

/// Receives `take` stamps (reporting their keys as `took`), then takes one more and keeps
/// it borrowed (reports `holding`) until killed.
fn child_sample_holder() {
    let rx = Receiver::<Stamp>::open_or_create(&common::channel(), &child_opts()).unwrap();
    report("ready", "");
    let take: u64 = param("take");
    let mut keys = Vec::new();
    for _ in 0..take {
        keys.push(stamp_key(&rx.recv().unwrap()).to_string());
    }
    report("took", keys.join(","));
    let held = rx.recv().unwrap();
    report("holding", stamp_key(&held));
    sleep_forever();
}

/// Serves `Ask` → `Reply`. With `stall`, receives one request, reports `got` and never
/// answers.
fn child_server() {
    let server = Server::<Ask, Reply>::open(&common::channel(), &Options::new()).unwrap();
    report("serving", "");
    if param_or("stall", false) {
        let req = server.recv().unwrap();
        report("got", req.body.n);
        sleep_forever();
    }
    while let Ok(req) = server.recv() {
        let reply = Reply {
            client: req.body.client,
            n: req.body.n,
            doubled: req.body.n * 2,
        };
        let _ = server.respond(&req, &reply);
    }
}

/// Makes `count` requests as client `id` and checks every reply is its own; reports `ok`.
fn child_client() {
    let client = Client::<Ask, Reply>::open(&common::channel(), &Options::new()).unwrap();
    let id: u64 = param("id");
    let count: u64 = param("count");
    for n in 0..count {
        let ask = Ask {
            client: id,
            n: id * 1_000_000 + n,
        };
        let reply = loop {
            match client.request(&ask, Duration::from_secs(30)) {
                Ok(r) => break r,
                Err(RequestError::ServerGone) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("request {n}: {e}"),
            }
        };
        assert_eq!(
            reply,
            Reply {
                client: id,
                n: ask.n,
                doubled: ask.n * 2
            },
            "routed to the right client"
        );
    }
    report("ok", count);
    wait_for_parent();
}

#[test]
fn queue_four_senders_four_receivers_deliver_every_message_exactly_once() {
    const PER_SENDER: u64 = 20_000;
    let h = Harness::new("bus_queue_4x4");
    let mut receivers: Vec<_> = (0..4)
        .map(|_| h.spawn("stamp_receiver", &[("kind", &"queue")]))
        .collect();
    for r in &mut receivers {
        r.expect("ready");
    }
    let mut senders: Vec<_> = (0..4u64)
        .map(|id| {
            h.spawn(
                "stamp_sender",
                &[("kind", &"queue"), ("id", &id), ("count", &PER_SENDER)],
            )
        })
        .collect();
    for s in &mut senders {
        assert_eq!(s.expect_parse::<u64>("sent"), PER_SENDER);
        s.wait_success();
    }
    let (mut count, mut set) = (0u64, 0u64);
    let mut shares = Vec::new();
    for r in &mut receivers {
        let n: u64 = r.expect_parse("count");
        count += n;
        shares.push(n);
        set = set.wrapping_add(r.expect_parse::<u64>("set"));
        assert_eq!(
            r.expect("ordered"),
            "true",
            "each sender's messages arrive in order"
        );
        r.wait_success();
    }
    let expected_set = (0..4u64)
        .flat_map(|s| (0..PER_SENDER).map(move |q| mix(s << 32 | q)))
        .fold(0u64, u64::wrapping_add);
    assert_eq!(count, 4 * PER_SENDER, "shares {shares:?}");
    assert_eq!(set, expected_set, "every message exactly once");
    eprintln!("queue 4x4: receivers took {shares:?}");
    h.assert_no_segment();
}

#[test]
fn broadcast_to_eight_subscribers_each_sees_every_message_in_order() {
    const N: u64 = 20_000;
    let h = Harness::new("bus_broadcast_8");
    let opts = broadcast_options(256, Overflow::Block, 0);
    let mut subs: Vec<_> = (0..8)
        .map(|_| {
            h.spawn(
                "stamp_receiver",
                &[
                    ("kind", &"broadcast"),
                    ("capacity", &256),
                    ("contiguous", &true),
                ],
            )
        })
        .collect();
    for s in &mut subs {
        s.expect("ready");
    }
    let tx = Sender::<Stamp>::open_or_create(h.name(), &opts).unwrap();
    for seq in 0..N {
        tx.send(Stamp { sender: 0, seq }).unwrap();
    }
    drop(tx);
    for s in &mut subs {
        assert_eq!(s.expect_parse::<u64>("count"), N);
        assert_eq!(s.expect("ordered"), "true");
        assert_eq!(s.expect_parse::<u64>("lagged"), 0);
        s.wait_success();
    }
    h.assert_no_segment();
}

#[test]
fn late_subscriber_gets_the_history_then_the_live_stream() {
    let h = Harness::new("bus_history");
    let opts = broadcast_options(16, Overflow::Block, 5);
    let tx = Sender::<Stamp>::open_or_create(h.name(), &opts).unwrap();
    for seq in 0..10 {
        tx.send(Stamp { sender: 0, seq }).unwrap();
    }
    let mut sub = h.spawn(
        "stamp_receiver",
        &[
            ("kind", &"broadcast"),
            ("capacity", &16),
            ("history", &5),
            ("list", &true),
            ("contiguous", &true),
            ("first_seq", &5),
        ],
    );
    sub.expect("ready");
    for seq in 10..20 {
        tx.send(Stamp { sender: 0, seq }).unwrap();
    }
    drop(tx);
    let expected: Vec<String> = (5..20).map(|s| s.to_string()).collect();
    assert_eq!(sub.expect("count"), "15");
    assert_eq!(sub.expect("ordered"), "true");
    assert_eq!(sub.expect("list"), expected.join(","));
    sub.wait_success();
    h.assert_no_segment();
}

#[test]
fn drop_oldest_tells_a_slow_subscriber_exactly_how_many_it_missed() {
    const N: u64 = 1000;
    let h = Harness::new("bus_drop_oldest");
    let opts = broadcast_options(8, Overflow::DropOldest, 0);
    let mut sub = h.spawn(
        "stamp_receiver",
        &[
            ("kind", &"drop_oldest"),
            ("capacity", &8),
            ("wait_go", &true),
            ("list", &true),
        ],
    );
    sub.expect("ready");
    let tx = Sender::<Stamp>::open_or_create(h.name(), &opts).unwrap();
    for seq in 0..N {
        // Never blocks, although the subscriber reads nothing yet.
        tx.try_send(Stamp { sender: 0, seq }).unwrap();
    }
    sub.tell("go");
    drop(tx);
    let count: u64 = sub.expect_parse("count");
    let lagged: u64 = sub.expect_parse("lagged");
    let list = sub.expect("list");
    assert_eq!(sub.expect("ordered"), "true");
    assert_eq!(
        sub.expect("last"),
        (N - 1).to_string(),
        "the newest message is delivered"
    );
    assert_eq!(
        count + lagged,
        N,
        "delivered {count} + missed {lagged}: {list}"
    );
    assert!(
        lagged > 0 && count <= 8,
        "at most a ring's worth is still there"
    );
    sub.wait_success();
    h.assert_no_segment();
}

#[test]
fn sigkill_of_a_queue_receiver_holding_a_message_loses_nothing_else() {
    const N: u64 = 5_000;
    let h = Harness::new("bus_kill_receiver");
    let opts = queue_options(16);
    let tx = Sender::<Stamp>::open_or_create(h.name(), &opts).unwrap();
    let mut victim = h.spawn(
        "sample_holder",
        &[("kind", &"queue"), ("capacity", &16), ("take", &3)],
    );
    victim.expect("ready");
    for seq in 0..10 {
        tx.send(Stamp { sender: 0, seq }).unwrap();
    }
    let took = victim.expect("took");
    let held = victim.expect("holding");
    victim.kill();
    let mut survivor = h.spawn(
        "stamp_receiver",
        &[("kind", &"queue"), ("capacity", &16), ("list", &true)],
    );
    survivor.expect("ready");
    // The ring has 16 slots: these sends lap it many times, so they complete only if the
    // killed receiver's borrowed slot was reclaimed.
    for seq in 10..N {
        tx.send(Stamp { sender: 0, seq }).unwrap();
    }
    drop(tx);
    let list = survivor.expect("list");
    survivor.wait_success();
    let mut seen: BTreeSet<u64> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let victim_keys: Vec<u64> = took
        .split(',')
        .chain([held.as_str()])
        .map(|s| s.parse().unwrap())
        .collect();
    for k in &victim_keys {
        assert!(seen.insert(*k), "{k} was delivered twice");
    }
    assert_eq!(
        seen,
        (0..N).collect(),
        "every message went to exactly one receiver"
    );
    h.assert_no_segment();
}

#[test]
fn sigkill_of_a_sender_holding_a_loan_does_not_block_the_others() {
    const N: u64 = 5_000;
    let h = Harness::new("bus_kill_loaner");
    let opts = queue_options(16);
    let rx = Receiver::<Stamp>::open_or_create(h.name(), &opts).unwrap();
    let mut loaner = h.spawn(
        "loan_holder",
        &[
            ("kind", &"queue"),
            ("capacity", &16),
            ("id", &1),
            ("count", &5),
        ],
    );
    loaner.expect("loaned");
    let mut other = h.spawn(
        "stamp_sender",
        &[
            ("kind", &"queue"),
            ("capacity", &16),
            ("id", &2),
            ("count", &N),
            ("wait_go", &true),
        ],
    );
    other.expect("attached");
    loaner.kill();
    other.tell("go");
    let (mut from_loaner, mut from_other) = (Vec::new(), Vec::new());
    loop {
        match rx.recv() {
            Ok(s) if s.sender == 1 => from_loaner.push(s.seq),
            Ok(s) => from_other.push(s.seq),
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    other.wait_success();
    assert_eq!(
        from_loaner,
        (0..5).collect::<Vec<_>>(),
        "what the killed sender committed arrives; its loan does not"
    );
    assert_eq!(from_other, (0..N).collect::<Vec<_>>());
    drop(rx);
    h.assert_no_segment();
}

#[test]
fn request_response_routes_each_reply_to_its_client() {
    let h = Harness::new("bus_rpc");
    let mut server = h.spawn("server", &[]);
    server.expect("serving");
    let mut clients: Vec<_> = (1..=3u64)
        .map(|id| h.spawn("client", &[("id", &id), ("count", &300)]))
        .collect();
    for c in &mut clients {
        assert_eq!(c.expect("ok"), "300");
        c.wait_success();
    }
    // With every client gone, the server's `recv` reports `Disconnected` and it exits.
    server.wait_success();
    assert_no_service_left(h.name());
}

#[test]
fn sigkill_of_a_server_with_a_request_in_flight_is_reported_and_a_new_server_takes_over() {
    let h = Harness::new("bus_rpc_kill");
    let mut stalled = h.spawn("server", &[("stall", &true)]);
    stalled.expect("serving");
    let client = Client::<Ask, Reply>::open(h.name(), &Options::new()).unwrap();
    let pending = std::thread::spawn(move || {
        let r = client.request(&Ask { client: 9, n: 1 }, Duration::from_secs(120));
        (client, r)
    });
    assert_eq!(stalled.expect("got"), "1");
    stalled.kill();
    let (client, result) = pending.join().unwrap();
    assert!(
        matches!(result, Err(RequestError::ServerGone)),
        "{result:?}"
    );
    let mut fresh = h.spawn("server", &[]);
    fresh.expect("serving");
    let reply = client
        .request(&Ask { client: 9, n: 21 }, Duration::from_secs(60))
        .unwrap();
    assert_eq!(reply.doubled, 42);
    drop(client);
    fresh.wait_success();
    assert_no_service_left(h.name());
}

/// The service's request channel and every client's response channel are gone.
fn assert_no_service_left(name: &str) {
    common::assert_no_segment(&format!("{name}.req"));
    let leftovers: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("shmbus.{name}.resp.")))
        .collect();
    assert!(
        leftovers.is_empty(),
        "response channels left: {leftovers:?}"
    );
}

/// A serialized (postcard) message of variable size, in every delivery mode.
#[derive(shmbus::Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Event {
    Hello { who: String },
    Data(Vec<u32>),
    Bye,
}

fn event(i: u32) -> Event {
    match i % 3 {
        0 => Event::Hello {
            who: "x".repeat(i as usize % 50),
        },
        1 => Event::Data((0..i % 200).collect()),
        _ => Event::Bye,
    }
}

#[test]
fn serialized_messages_of_variable_size_in_queue_and_broadcast_modes() {
    for kind in ["queue", "broadcast"] {
        let h = Harness::new(&format!("bus_serde_{kind}"));
        let mut o = if kind == "queue" {
            queue_options(16)
        } else {
            broadcast_options(16, Overflow::Block, 0)
        };
        o.max_message_size(1024);
        let subs: Vec<_> = (0..if kind == "queue" { 1 } else { 3 })
            .map(|_| Receiver::<Event>::open_or_create(h.name(), &o).unwrap())
            .collect();
        let tx = Sender::<Event>::open_or_create(h.name(), &o).unwrap();
        for i in 0..12 {
            tx.send(event(i)).unwrap();
        }
        // Too large for the 1 KiB slots: refused, not sent.
        let big = Event::Data((0..1000).collect());
        assert!(matches!(tx.send(big), Err(shmbus::SendError::Encode(..))));
        tx.send(event(12)).unwrap();
        drop(tx);
        for rx in &subs {
            let got: Vec<Event> = rx.iter().collect();
            assert_eq!(got, (0..13).map(event).collect::<Vec<_>>(), "{kind}");
        }
        drop(subs);
        h.assert_no_segment();
    }
}
