//! An allocator that remembers the largest single allocation each thread
//! asks for, so decoder tests can check that a hostile length field does not
//! make them allocate from it. A test binary installs it with
//! `#[global_allocator] static A: TrackingAllocator = TrackingAllocator;`;
//! walrep's own unit tests do.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, noting each request's size per thread.
pub struct TrackingAllocator;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: a thread being torn down may still allocate.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is passed on to `System` unchanged.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator;

/// Runs `f` and returns what it returned with the largest single
/// allocation it made on this thread, in bytes. Measures only where
/// [`TrackingAllocator`] is the global allocator (otherwise 0).
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let outer = LARGEST.with(|l| l.replace(0));
    let out = f();
    let largest = LARGEST.with(|l| l.replace(outer.max(l.get())));
    (out, largest)
}

#[cfg(test)]
#[test]
fn the_largest_allocation_is_seen() {
    let (v, largest) = largest_allocation(|| vec![7u8; 5000]);
    assert_eq!(largest, 5000);
    assert_eq!(largest_allocation(|| v.len()).1, 0);
}
