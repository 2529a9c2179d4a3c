#[derive(shmbus::Message)]
#[repr(C)]
struct Buffer {
    len: usize,
    data: *const u8,
}

fn main() {}
