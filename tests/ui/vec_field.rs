#[derive(shmbus::Message)]
#[repr(C)]
struct Samples {
    count: u64,
    values: Vec<f32>,
}

fn main() {}
