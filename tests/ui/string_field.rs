#[derive(shmbus::Message)]
#[repr(C)]
struct Greeting {
    id: u64,
    text: String,
}

fn main() {}
