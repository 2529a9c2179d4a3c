//! A channel's memory footprint is the documented formula (README, "Segment"):
//!
//! ```text
//! size        = ring_offset + capacity × stride
//! ring_offset = round_up(256 + 640 + 128 × (max_senders + max_receivers) + schema_len, 4096)
//! stride      = round_up(24 + message size, 64)     (message alignment ≤ 8)
//! ```
//!
//! (256: header; 640: control block; 128 per participant: its entry and its counters line;
//! `schema_len`: the stored schema, recorded in the header's last four bytes.)
//!
//! where the message size is `size_of::<T>()` for zero-copy messages and
//! `Options::max_message_size` for serialized ones, and the capacity is rounded up to a
//! power of two. Checked against the real size of the file in `/dev/shm`.

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn formula(capacity: u64, message: u64, senders: u64, receivers: u64, schema: u64) -> u64 {
    let ring_offset = round_up(256 + 640 + 128 * (senders + receivers) + schema, 4096);
    let stride = round_up(24 + message, 64);
    ring_offset + capacity.next_power_of_two().max(2) * stride
}

#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Three {
    a: [u64; 3],
}

#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Line {
    a: [u64; 8],
}

#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Odd {
    a: [u8; 1000],
}

#[derive(shmbus::Message, serde::Serialize, serde::Deserialize)]
struct Text {
    s: String,
}

/// The schema length recorded in the header (its last four bytes).
fn schema_len(name: &str) -> u64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(format!("/dev/shm/shmbus.{name}")).expect("segment file");
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, 252).expect("header");
    u32::from_le_bytes(b) as u64
}

fn file_size(name: &str) -> u64 {
    std::fs::metadata(format!("/dev/shm/shmbus.{name}"))
        .expect("segment file")
        .len()
}

fn check<T: shmbus::Message>(tag: &str, capacity: usize, max_message: usize, s: u32, r: u32) {
    let name = format!("footprint-{}-{tag}", std::process::id());
    let mut o = shmbus::Options::new();
    o.capacity(capacity)
        .max_message_size(max_message)
        .max_senders(s)
        .max_receivers(r);
    let tx = shmbus::Sender::<T>::create(&name, &o).unwrap();
    let message = match T::INFO.encoding {
        shmbus::Encoding::ZeroCopy => T::INFO.size,
        _ => max_message,
    } as u64;
    let want = formula(
        capacity as u64,
        message,
        s as u64,
        r as u64,
        schema_len(&name),
    );
    assert_eq!(
        file_size(&name),
        want,
        "{tag}: capacity {capacity}, message {message} B, {s} senders, {r} receivers"
    );
    drop(tx);
}

#[test]
fn footprint_is_header_plus_capacity_times_slot() {
    check::<Three>("three-1x1", 1024, 4096, 1, 1); // 4096 + 1024 × 64
    check::<Line>("line-8x8", 1024, 4096, 8, 8); // 4096 + 1024 × 128
    check::<Line>("line-64x64", 16, 4096, 64, 64); // 12288 + 16 × 128
    check::<Odd>("odd-cap1000", 1000, 4096, 2, 3); // capacity rounds up to 1024
    check::<Text>("text-4k", 8, 4096, 8, 8); // serialized: 4096 + 8 × 4160
    check::<Text>("text-100", 3, 100, 1, 1); // 4096 + 4 × 128
}
