#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Key {
    code: u32,
    letter: char,
}

fn main() {}
