#[derive(shmbus::Message)]
#[repr(C)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
