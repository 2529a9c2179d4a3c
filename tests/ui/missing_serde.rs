// No `#[repr(C)]`, so this travels with postcard, which needs serde's derives.
#[derive(shmbus::Message)]
struct Note {
    text: String,
}

fn main() {}
