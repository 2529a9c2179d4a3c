#[derive(shmbus::Message)]
#[repr(C)]
struct Boxed {
    id: u64,
    value: Box<u64>,
}

fn main() {}
