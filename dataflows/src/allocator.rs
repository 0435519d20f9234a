//! The process allocator's tuning: mimalloc keeps freed memory for a while.
//!
//! An epoch's records, batches and output lines are allocated while it is processed and freed
//! once it is written; the next epoch allocates as much again. mimalloc returns freed memory to
//! the OS 10 ms after it is freed (100 ms for its arenas), so every epoch faulted in and zeroed
//! fresh pages: the kernel's `clear_page_erms` was a third of the worker thread's profile. With
//! the delay at a second, the next epoch reuses the same pages; memory the process no longer
//! needs still goes back to the OS, a second later (ten for arenas). `MIMALLOC_PURGE_DELAY` in
//! the environment wins over this.
//!
//! mimalloc is also built without transparent huge pages (`no_thp`, in the workspace's
//! Cargo.toml): it advised them on its arenas, so that each first touch of an arena's range, and
//! each touch after a purge, zeroed 2 MiB.

/// `mi_option_purge_delay` in mimalloc.h (its position in `mi_option_e`, the same in v2 and v3).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's default purge delay (ms): what the option reads when it is the one meant.
const DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Sets how long mimalloc keeps freed memory before returning it to the OS (ms). Does nothing
/// when `MIMALLOC_PURGE_DELAY` is set, or when the option does not read as mimalloc's default
/// (a mimalloc whose options are numbered otherwise): returns whether it was set.
#[allow(unsafe_code)]
pub fn keep_freed_memory_for(ms: i64) -> bool {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return false;
    }
    // SAFETY: mi_option_get and mi_option_set read and write one of mimalloc's global options;
    // any option index is accepted (an unknown one is ignored), and they are thread-safe.
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) != DEFAULT_PURGE_DELAY_MS {
            return false;
        }
        libmimalloc_sys::mi_option_set(PURGE_DELAY, ms as std::ffi::c_long);
    }
    true
}
