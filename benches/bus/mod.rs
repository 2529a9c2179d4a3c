//! shmbus as a [`Link`](crate::harness::Link): one channel each way, zero-copy loans written
//! in place and samples read in place. Shared by `benches/compare.rs` and `peers/`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::harness::{self, Link, Spec};
use shmbus::{Options, Receiver, Sender, ZeroCopy};

/// Payload access for the benchmark message types.
pub trait Words: ZeroCopy {
    fn words(&self) -> &[u64];
    fn words_mut(&mut self) -> &mut [u64];
}

macro_rules! message {
    ($name:ident, $words:expr) => {
        #[derive(shmbus::Message, Clone, Copy)]
        #[repr(C)]
        pub struct $name {
            pub data: [u64; $words],
        }
        impl Words for $name {
            fn words(&self) -> &[u64] {
                &self.data
            }
            fn words_mut(&mut self) -> &mut [u64] {
                &mut self.data
            }
        }
    };
}

message!(Small, 8);
message!(Page, 512);
message!(Big, 131_072);

/// shmbus as a [`Link`]: a channel each way, zero-copy loans and in-place samples.
pub struct Bus<M: Words> {
    tx: Sender<M>,
    rx: Receiver<M>,
}

/// Options of a shmbus variant.
pub fn options(spec: &Spec) -> Options {
    let mut o = Options::new();
    o.capacity(spec.capacity);
    if spec.variant.starts_with("busy") {
        // Effectively never sleeps.
        o.spin(Duration::from_secs(3600));
    }
    if spec.variant.ends_with("1x1") {
        o.max_senders(1).max_receivers(1);
    }
    o
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

impl<M: Words> Link for Bus<M> {
    fn create(spec: &Spec) -> (Self, Vec<String>) {
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench-{}-{serial}", std::process::id());
        let o = options(spec);
        let tx = Sender::open_or_create(&format!("{name}.d"), &o).expect("open sender");
        let rx = Receiver::open_or_create(&format!("{name}.u"), &o).expect("open receiver");
        (Bus { tx, rx }, vec![name])
    }

    fn attach(spec: &Spec, args: &[String]) -> Self {
        let o = options(spec);
        let name = &args[0];
        let rx = Receiver::open_or_create(&format!("{name}.d"), &o).expect("open receiver");
        let tx = Sender::open_or_create(&format!("{name}.u"), &o).expect("open sender");
        Bus { tx, rx }
    }

    #[inline]
    fn send(&mut self, fill: impl FnOnce(&mut [u64])) {
        let mut loan = self.tx.loan().expect("loan");
        fill(loan.words_mut());
        loan.send();
    }

    #[inline]
    fn recv(&mut self, read: impl FnOnce(&[u64])) {
        let sample = self.rx.recv().expect("recv");
        read(sample.words());
    }
}

pub fn child(args: &[String]) {
    match args[1].as_str() {
        "64" => harness::child_main::<Bus<Small>>(args),
        "4096" => harness::child_main::<Bus<Page>>(args),
        _ => harness::child_main::<Bus<Big>>(args),
    }
}
