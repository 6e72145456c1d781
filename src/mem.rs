//! Handing freed memory back to the OS: a leaf module below the shards'
//! I/O, the Redis bridge and the runtime, which all call it.

/// Return memory the calling thread freed to the OS. mimalloc purges freed
/// pages only when the thread that freed them allocates again, so a shard
/// that goes quiet after a connection storm would keep the storm's pages
/// resident; each shard calls this from its timer after connections came or
/// went. Without the `mimalloc` feature it does nothing (the system
/// allocator trims on its own).
///
/// Also trims the C allocator: aws-lc (TLS handshakes and record keys)
/// allocates through `malloc`, and glibc keeps freed chunks between live
/// ones resident until asked.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: `mi_collect` may be called from any thread at any time; it
    // frees only memory no live allocation uses (exercised by
    // `mem::tests::release_free_memory_keeps_live_allocations`).
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` is thread-safe and only returns free memory
    // (exercised by the same test).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Give back what a storm left in an emptied-out queue: a `VecDeque`
/// keeps its capacity once drained. Shrinks it to twice what it holds (at
/// least 64 entries) once it is at most a quarter full; returns whether it
/// shrank. Used by the shards' queues and the Redis subscriber's.
pub fn shrink_queue<T>(q: &mut std::collections::VecDeque<T>) -> bool {
    const KEEP: usize = 64;
    let shrinks = q.capacity() > KEEP && q.len() * 4 <= q.capacity();
    if shrinks {
        q.shrink_to((q.len() * 2).max(KEEP));
    }
    shrinks
}

#[cfg(test)]
mod tests {
    #[test]
    fn release_free_memory_keeps_live_allocations() {
        let keep: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 100 + i % 300]).collect();
        let freed: Vec<Vec<u8>> = (0..10_000).map(|i| vec![1; 64 + i % 700]).collect();
        drop(freed);
        super::release_free_memory();
        for (i, v) in keep.iter().enumerate() {
            assert_eq!(v.len(), 100 + i % 300);
            assert!(v.iter().all(|&b| b == i as u8));
        }
    }
}
