#[derive(Clone, Copy)]
#[repr(u8)]
enum Side {
    Buy = 1,
    Sell = 2,
}

#[derive(shmbus::Message, Clone, Copy)]
#[repr(C)]
struct Order {
    qty: u32,
    side: Side,
    _pad: [u8; 3],
}

fn main() {}
