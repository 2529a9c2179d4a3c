#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
#[shmbus(foo)]
struct Tick {
    seq: u64,
}

#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
#[shmbus(name = "a", name = "b")]
struct Twice {
    seq: u64,
}

#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
#[shmbus(name = 5)]
struct NotAString {
    seq: u64,
}

// All errors of one type are reported together.
#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
#[shmbus(name = "")]
#[shmbus(zero_copy)]
struct Several {
    #[shmbus(name = "s")]
    seq: u64,
}

fn main() {}
