//! Keeping the operator's resident memory close to what it uses. glibc's malloc keeps one arena
//! per thread and holds on to freed memory; a sweep over thousands of workloads, or compiling the
//! policy module, would otherwise leave tens of megabytes resident for good. (The static musl
//! build of the image returns freed memory by itself.)

/// Caps glibc's malloc arenas; call before the runtime starts its threads.
pub fn limit_allocator_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands freed heap memory back to the kernel, after work that allocated a lot and is done.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
