#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Status {
    code: u8,
    up: bool,
}

fn main() {}
