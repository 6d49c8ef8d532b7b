//! The allocator's settings: large buffers go back to the system when freed.
//!
//! The binary (and the benches) allocate with mimalloc (`src/main.rs`). Left at its
//! defaults, mimalloc keeps freed memory for a while to reuse it: with events of 1 MiB
//! every body, entry and request is a large block, and what it kept pushed peak RSS at 16
//! pollers of 1 MB events to 147-171 MiB, over the deployment's request of 128 Mi, while
//! the blocks alive at once were far fewer. [`tune`] makes a block over
//! [`LARGE_BLOCK_KIB`] a mapping of its own, unmapped on free (as glibc's `malloc` does
//! above its mmap threshold), and has arenas commit their memory as they use it. Events of
//! a few KB never allocate such blocks: their CPU per event is unchanged.
//! docs/PERFORMANCE.md, "Large events", has the figures.
//!
//! Each setting is left to mimalloc's own environment variable when that is set
//! (`MIMALLOC_ARENA_MAX_OBJECT_SIZE`, `MIMALLOC_ARENA_EAGER_COMMIT`), so an operator can
//! still turn it back.

// mimalloc's options are set through its C API: the one module where `unsafe` is allowed.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_long};

// mimalloc's C library is linked through this crate.
use mimalloc as _;

/// Blocks above this size (KiB) are mapped for themselves and unmapped on free. Smaller
/// than a 1 MiB event's body, larger than anything an 8 KB event's path allocates (a
/// receive of ten is under 100 KiB). mimalloc's default is 2 GiB: every block in its
/// arenas.
pub const LARGE_BLOCK_KIB: c_long = 512;

/// The mimalloc release whose option numbers are below (`mi_version()`; its
/// `include/mimalloc.h`, `mi_option_e`). Another release may number them otherwise:
/// [`tune`] then leaves the defaults, and a test fails, to have them checked again.
const MIMALLOC_VERSION: c_int = 30302;
/// `mi_option_arena_eager_commit`: commit an arena's memory when it is reserved (2, on
/// Linux) or as pages are used (0).
const OPTION_ARENA_EAGER_COMMIT: c_int = 4;
/// `mi_option_arena_max_object_size` (KiB): larger blocks come from the OS directly.
const OPTION_ARENA_MAX_OBJECT_SIZE: c_int = 45;

unsafe extern "C" {
    fn mi_version() -> c_int;
    fn mi_option_set(option: c_int, value: c_long);
}

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuned {
    /// The settings are in force (those whose variable was not set).
    Yes,
    /// A mimalloc release other than [`MIMALLOC_VERSION`]: its defaults are kept.
    OtherRelease(c_int),
}

/// Sets the allocator's options, once, first thing in `main` (before the arena is
/// reserved, so that it commits as it goes).
pub fn tune() -> Tuned {
    // SAFETY: `mi_version` reads a constant; mimalloc is linked (the global allocator).
    let version = unsafe { mi_version() };
    if version != MIMALLOC_VERSION {
        return Tuned::OtherRelease(version);
    }
    for (variable, option, value) in [
        (
            "MIMALLOC_ARENA_MAX_OBJECT_SIZE",
            OPTION_ARENA_MAX_OBJECT_SIZE,
            LARGE_BLOCK_KIB,
        ),
        ("MIMALLOC_ARENA_EAGER_COMMIT", OPTION_ARENA_EAGER_COMMIT, 0),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: an option number of this release (checked above) and a value in
            // its range; mimalloc's options are plain integers it reads when it needs them.
            unsafe { mi_option_set(option, value) };
        }
    }
    Tuned::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_malloc(size: usize) -> *mut u8;
        fn mi_free(p: *mut u8);
    }

    /// A mimalloc update changes what the option numbers mean: check them against the new
    /// `mimalloc.h` and move [`MIMALLOC_VERSION`].
    #[test]
    fn the_option_numbers_are_those_of_the_linked_mimalloc() {
        assert_eq!(unsafe { mi_version() }, MIMALLOC_VERSION);
        assert_eq!(tune(), Tuned::Yes);
        assert_eq!(
            unsafe { mi_option_get(OPTION_ARENA_MAX_OBJECT_SIZE) },
            LARGE_BLOCK_KIB
        );
    }

    /// Resident pages of this process (`/proc/self/statm`), in KiB.
    fn resident_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4
    }

    /// What the setting is for: large blocks, written and freed, leave the process's
    /// resident memory at once (at mimalloc's defaults, it keeps their pages a second or
    /// more: run with `MIMALLOC_ARENA_MAX_OBJECT_SIZE=2097152` to see this fail).
    #[test]
    fn freed_large_blocks_leave_resident_memory_at_once() {
        assert_eq!(tune(), Tuned::Yes);
        const MIB: usize = 1 << 20;
        // SAFETY: fresh blocks of 2 MiB, written within their bounds, each freed once.
        let (with_blocks, after_free) = unsafe {
            let blocks: Vec<*mut u8> = (0..24).map(|_| mi_malloc(2 * MIB)).collect();
            for &p in &blocks {
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 1, 2 * MIB);
            }
            let with_blocks = resident_kib();
            for p in blocks {
                mi_free(p);
            }
            (with_blocks, resident_kib())
        };
        // 48 MiB freed; other tests of this binary may allocate meanwhile.
        assert!(
            with_blocks >= after_free + 32 * 1024,
            "resident {with_blocks} KiB with the blocks, {after_free} KiB after their free"
        );
    }
}
