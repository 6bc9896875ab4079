//! The module's allocator: a region it hands out by bumping an offset, then the system allocator.
//!
//! The operator gives every evaluation a fresh instance and discards it after one call, so
//! what a call frees is never needed again. A call of a typical request makes about 550
//! allocations (60–70 KB in all); wasi-libc's malloc spent more time keeping their books than
//! the mutation spent using them. Inside the region an allocation is an offset bumped; a block
//! that ends at the offset (the latest) is given back when freed and grows in place, and any
//! other is left where it is.
//! Past the region, and for what was allocated past it, the system allocator serves: a large
//! request costs what it did before, and a host that calls one instance many times (kwctl, an
//! older policy-server) leaves at most the region unused, once.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[repr(C, align(16))]
struct Region<const BYTES: usize>(UnsafeCell<[u8; BYTES]>);

/// `BYTES` of bump allocation in front of `A`.
pub struct CallArena<const BYTES: usize, A> {
    region: Region<BYTES>,
    /// Offset of the first free byte of the region: everything below it may be in use.
    next: AtomicUsize,
    fallback: A,
}

// SAFETY: the region is only written through the blocks `alloc` hands out, each to one owner;
// the offset is an atomic (a wasm instance has one thread anyway).
unsafe impl<const BYTES: usize, A: Sync> Sync for CallArena<BYTES, A> {}

impl<const BYTES: usize, A> CallArena<BYTES, A> {
    pub const fn new(fallback: A) -> Self {
        CallArena {
            region: Region(UnsafeCell::new([0; BYTES])),
            next: AtomicUsize::new(0),
            fallback,
        }
    }

    fn base(&self) -> usize {
        self.region.0.get() as usize
    }

    /// Whether the block of `size` bytes at `start` is the latest: nothing lies above it.
    fn is_latest(&self, start: usize, size: usize) -> bool {
        start + size == self.next.load(Relaxed)
    }

    /// The block's offset in the region, if the region holds it.
    fn offset_of(&self, block: *mut u8) -> Option<usize> {
        (block as usize)
            .checked_sub(self.base())
            .filter(|offset| *offset < BYTES)
    }

    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base();
        let start =
            (base + self.next.load(Relaxed)).checked_next_multiple_of(layout.align())? - base;
        let end = start.checked_add(layout.size())?;
        if end > BYTES {
            return None;
        }
        self.next.store(end, Relaxed);
        Some((base + start) as *mut u8)
    }
}

// SAFETY: a block from the region lies inside it, aligned as asked, and is never handed out
// again while its owner holds it: the offset only moves back to the start of a block that ends
// at it, when its owner gives it back or resizes it, and no block in use lies above that one.
// Every other block is the fallback's, and is freed or resized by it.
unsafe impl<const BYTES: usize, A: GlobalAlloc> GlobalAlloc for CallArena<BYTES, A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(block) => block,
            // SAFETY: the caller's layout is passed on as it came.
            None => unsafe { self.fallback.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match self.offset_of(block) {
            Some(start) => {
                if self.is_latest(start, layout.size()) {
                    self.next.store(start, Relaxed);
                }
            }
            // SAFETY: not the region's, so the fallback's, with the layout it was made with.
            None => unsafe { self.fallback.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(start) = self.offset_of(block) else {
            // SAFETY: the fallback's block, passed on as it came.
            return unsafe { self.fallback.realloc(block, layout, new_size) };
        };
        if self.is_latest(start, layout.size()) && start + new_size <= BYTES {
            self.next.store(start + new_size, Relaxed);
            return block;
        }
        // SAFETY: `GlobalAlloc::realloc` guarantees the new layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks hold at least the smaller size, and the new one is fresh.
            unsafe { ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size)) };
            // SAFETY: the old block is the caller's to give back, with its layout.
            unsafe { self.dealloc(block, layout) };
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::System;

    use super::*;

    fn arena() -> &'static CallArena<256, System> {
        Box::leak(Box::new(CallArena::new(System)))
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn in_region(arena: &CallArena<256, System>, block: *mut u8) -> bool {
        arena.offset_of(block).is_some()
    }

    #[test]
    fn blocks_are_aligned_and_do_not_overlap() {
        let arena = arena();
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(8, 8));
            let c = arena.alloc(layout(16, 16));
            assert!(in_region(arena, a) && in_region(arena, b) && in_region(arena, c));
            assert_eq!(b as usize % 8, 0);
            assert_eq!(c as usize % 16, 0);
            assert!(b as usize >= a as usize + 3);
            assert!(c as usize >= b as usize + 8);
        }
    }

    #[test]
    fn only_the_latest_block_is_given_back_to_the_region() {
        let arena = arena();
        unsafe {
            let a = arena.alloc(layout(32, 8));
            let b = arena.alloc(layout(32, 8));
            arena.dealloc(a, layout(32, 8));
            let c = arena.alloc(layout(32, 8));
            assert!(
                c as usize >= b as usize + 32,
                "a freed block below the latest is not reused"
            );
            arena.dealloc(c, layout(32, 8));
            let d = arena.alloc(layout(32, 8));
            assert_eq!(d, c, "the latest block, given back, is handed out again");
            arena.dealloc(d, layout(32, 8));
            arena.dealloc(b, layout(32, 8));
            let e = arena.alloc(layout(64, 8));
            assert_eq!(
                e, b,
                "blocks given back from the top down free the region below them"
            );
        }
    }

    #[test]
    fn the_latest_block_grows_in_place_and_others_move_with_their_contents() {
        let arena = arena();
        unsafe {
            let a = arena.alloc(layout(8, 8));
            a.write_bytes(7, 8);
            let grown = arena.realloc(a, layout(8, 8), 40);
            assert_eq!(grown, a);
            let b = arena.alloc(layout(8, 8));
            let moved = arena.realloc(grown, layout(40, 8), 64);
            assert_ne!(moved, grown);
            assert!(moved as usize > b as usize);
            assert_eq!(std::slice::from_raw_parts(moved, 8), &[7; 8]);
        }
    }

    #[test]
    fn past_the_region_the_fallback_serves_and_frees() {
        let arena = arena();
        unsafe {
            let inside = arena.alloc(layout(200, 8));
            assert!(in_region(arena, inside));
            let outside = arena.alloc(layout(100, 8));
            assert!(!outside.is_null() && !in_region(arena, outside));
            outside.write_bytes(1, 100);
            let grown = arena.realloc(outside, layout(100, 8), 4096);
            assert!(!in_region(arena, grown));
            assert_eq!(std::slice::from_raw_parts(grown, 100), &[1; 100]);
            arena.dealloc(grown, layout(4096, 8));
            let moved_out = arena.realloc(inside, layout(200, 8), 300);
            assert!(
                !in_region(arena, moved_out),
                "a block too large for the region moves out"
            );
            arena.dealloc(moved_out, layout(300, 8));
        }
    }
}
