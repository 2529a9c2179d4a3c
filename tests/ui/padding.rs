// `u8` then `u64`: 7 padding bytes after `flag`, which a zero-copy message cannot carry.
#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Tick {
    flag: u8,
    seq: u64,
}

fn main() {}
