//! A segment on the heap of one process: the same control block, participant table and slots
//! as a shared segment, built from typed values so that loom's atomics can stand in. The
//! ring code runs on it unchanged; loom models and in-process tests use it.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use super::layout::{Control, Counters, Geometry, Participant, SlotHeader, PAGE};
use super::{Memory, Role};
use crate::sync::{AtomicU32, Ordering};

pub(crate) struct HeapSegment {
    geometry: Geometry,
    control: Box<Control>,
    participants: Box<[Participant]>,
    counters: Box<[Counters]>,
    owners: Box<[AtomicU32]>,
    slots: Box<[SlotHeader]>,
    payload: NonNull<u8>,
    payload_layout: Layout,
}

// SAFETY: the payload buffer is owned by this value and only reached through `payload()`,
// whose users follow the ring's slot ownership protocol (a slot's bytes are written only by
// the side that owns the slot); every other field is `Send + Sync`.
unsafe impl Send for HeapSegment {}
// SAFETY: as above: shared access to the payload is coordinated by the slot sequence numbers.
unsafe impl Sync for HeapSegment {}

impl HeapSegment {
    pub(crate) fn new(geometry: Geometry) -> HeapSegment {
        let participants = (geometry.max_senders + geometry.max_receivers) as usize;
        let bytes = (geometry.stride * geometry.capacity) as usize;
        let payload_layout =
            Layout::from_size_align(bytes.max(1), PAGE).expect("geometry was validated");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(payload_layout) };
        let payload =
            NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(payload_layout));
        HeapSegment {
            geometry,
            control: Box::new(Control::new()),
            participants: (0..participants).map(|_| Participant::new()).collect(),
            counters: (0..participants).map(|_| Counters::new()).collect(),
            owners: (0..participants).map(|_| AtomicU32::new(0)).collect(),
            slots: (0..geometry.capacity).map(SlotHeader::new).collect(),
            payload,
            payload_layout,
        }
    }

    fn entry(&self, role: Role, index: u32) -> usize {
        let g = &self.geometry;
        match role {
            Role::Sender => {
                assert!(index < g.max_senders);
                index as usize
            }
            Role::Receiver => {
                assert!(index < g.max_receivers);
                (g.max_senders + index) as usize
            }
        }
    }
}

impl Drop for HeapSegment {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { dealloc(self.payload.as_ptr(), self.payload_layout) }
    }
}

impl Memory for HeapSegment {
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn control(&self) -> &Control {
        &self.control
    }

    fn participant(&self, role: Role, index: u32) -> &Participant {
        &self.participants[self.entry(role, index)]
    }

    fn counters(&self, role: Role, index: u32) -> &Counters {
        &self.counters[self.entry(role, index)]
    }

    fn slot(&self, pos: u64) -> &SlotHeader {
        &self.slots[(pos & (self.geometry.capacity - 1)) as usize]
    }

    fn payload(&self, pos: u64) -> *mut u8 {
        let index = pos & (self.geometry.capacity - 1);
        let offset = index * self.geometry.stride + self.geometry.payload_offset as u64;
        // SAFETY: index < capacity, so `offset + max_message <= capacity * stride`, the size
        // of the allocation.
        unsafe { self.payload.as_ptr().add(offset as usize) }
    }

    fn try_own(&self, role: Role, index: u32) -> std::io::Result<bool> {
        Ok(self.owners[self.entry(role, index)]
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok())
    }

    fn disown(&self, role: Role, index: u32) {
        self.owners[self.entry(role, index)].store(0, Ordering::Release);
    }

    fn owned_by_other(&self, role: Role, index: u32) -> bool {
        self.owners[self.entry(role, index)].load(Ordering::Acquire) != 0
    }
}
