//! A global allocator that counts the heap allocations of each thread, for
//! the tests that pin how much a path allocates (the journal's appends,
//! the engine's submits). A test includes this file as a module (the
//! engine's by `#[path]`: the journal's library forbids `unsafe`, so it
//! cannot export it), installs [`Counting`] as its global allocator and
//! reads its thread's [`allocations`] before and after the work.
//! Allocations, zeroed allocations and reallocations count; frees do not.
//!
//! A thread can leave out what a caller allocates ([`exclude_callers`]):
//! glommio's reactor allocates its timers each time it parks, and how
//! often it parks follows the machine's load, not the code under test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Forwards to [`System`], counting per thread.
pub struct Counting;

/// Frames walked per allocation when callers are excluded: deep enough to
/// reach the executor's loop from glommio's reactor.
const FRAMES_WALKED_MAX: usize = 64;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Function names (substrings) whose allocations are not counted.
    static EXCLUDED: Cell<&'static [&'static str]> = const { Cell::new(&[]) };
    /// Set while this thread is inside the allocator's own bookkeeping,
    /// whose allocations go straight to `System` uncounted.
    static IN_BOOKKEEPING: Cell<bool> = const { Cell::new(false) };
    /// Whether a frame's instruction pointer lies in an excluded function.
    static EXCLUDED_FRAMES: RefCell<HashMap<usize, bool>> = RefCell::new(HashMap::new());
}

/// Leaves out of this thread's count every allocation made while a
/// function whose name contains one of `names` is on the stack. Each
/// allocation then walks the stack (resolving each new frame's symbol
/// once), so only a test that needs it turns it on.
// The engine's test counts on the in-memory disk and needs no exclusion.
#[allow(dead_code)]
pub fn exclude_callers(names: &'static [&'static str]) {
    EXCLUDED.with(|excluded| excluded.set(names));
}

fn count() {
    // `try_with`: a thread being torn down has no count left to bump.
    let excluded = EXCLUDED.try_with(Cell::get).unwrap_or(&[]);
    if !excluded.is_empty() {
        match IN_BOOKKEEPING.try_with(|inside| inside.replace(true)) {
            Ok(false) => {
                let skip = called_from(excluded);
                let _ = IN_BOOKKEEPING.try_with(|inside| inside.set(false));
                if skip != Some(false) {
                    return;
                }
            }
            // The bookkeeping's own allocations, or a thread torn down.
            _ => return,
        }
    }
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Whether one of the current stack's frames lies in a function named in
/// `excluded`; `None` when that cannot be told (the thread is torn down).
fn called_from(excluded: &[&str]) -> Option<bool> {
    let mut frames = [0usize; FRAMES_WALKED_MAX];
    let mut walked = 0;
    // SAFETY: `trace_unsynchronized` needs no other thread to trace at the
    // same time; only this thread's allocator walks, and only its own stack.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            frames[walked] = frame.ip() as usize;
            walked += 1;
            walked < FRAMES_WALKED_MAX
        });
    }
    EXCLUDED_FRAMES
        .try_with(|known| {
            let mut known = known.borrow_mut();
            frames[..walked].iter().any(|&ip| {
                *known.entry(ip).or_insert_with(|| {
                    let mut in_excluded = false;
                    // SAFETY: as above, this thread alone resolves.
                    unsafe {
                        backtrace::resolve_unsynchronized(ip as *mut _, |symbol| {
                            if let Some(name) = symbol.name() {
                                let name = format!("{name:#}");
                                in_excluded |= excluded.iter().any(|e| name.contains(e));
                            }
                        });
                    }
                    in_excluded
                })
            })
        })
        .ok()
}

// SAFETY: every call goes to `System` unchanged; the count is a plain
// thread-local cell, which needs no allocation (const-initialized), and
// the bookkeeping behind `exclude_callers` allocates only under a guard
// that sends its own allocations straight to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations this thread has made since it started (while [`Counting`]
/// is the global allocator; 0 otherwise), less those left out by
/// [`exclude_callers`].
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}
