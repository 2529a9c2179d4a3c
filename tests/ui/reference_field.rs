#[derive(shmbus::Message)]
#[repr(C)]
struct Named {
    id: u64,
    name: &'static str,
}

fn main() {}
