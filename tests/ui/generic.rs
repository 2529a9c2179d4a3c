#[derive(shmbus::Message)]
#[repr(C)]
struct Sample<T> {
    value: T,
}

#[derive(shmbus::Message)]
#[repr(C)]
struct Window<const N: usize> {
    values: [u32; N],
}

#[derive(shmbus::Message)]
struct Borrowed<'a> {
    text: &'a str,
}

fn main() {}
