use serde::{Deserialize, Serialize};

// A postcard message: fine on its own...
#[derive(shmbus::Message, Serialize, Deserialize)]
struct Meta {
    source: u32,
    tag: u32,
}

// ...but not plain data, so not a field of a zero-copy one.
#[derive(shmbus::Message)]
#[repr(C)]
struct Frame {
    seq: u64,
    meta: Meta,
}

fn main() {}
