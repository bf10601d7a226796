//! Keeping the master's memory bounded whatever the core count (issue 11 item 6).
//!
//! glibc's malloc gives each thread that contends for the heap an arena of its own, up
//! to 8 per core, and an arena keeps what it once held. With many worker threads and
//! bursts of connections the process then keeps tens of MiB it no longer uses. Two
//! arenas serve a master that spends its time waiting on the network and one writer.

/// Caps glibc's malloc arenas; call before any thread starts. A no-op elsewhere.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ARENAS: libc::c_int = 2;
        // SAFETY: mallopt only sets an allocator parameter; called before other threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Hands the free pages of every arena back to the kernel (`malloc_trim`), so the
/// resident size falls once a burst is over. A no-op outside glibc.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; no memory of ours is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often free memory goes back to the kernel.
const TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// [`return_free_memory`] every few seconds until `stop`: after a burst the resident
/// size falls back within [`TRIM_PERIOD`] instead of staying at its peak. A trim of two
/// arenas takes well under a millisecond.
pub async fn trim_periodically(stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TRIM_PERIOD) => return_free_memory(),
            () = stop.cancelled() => return,
        }
    }
}
