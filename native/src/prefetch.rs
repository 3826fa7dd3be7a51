//! A hint to the CPU to load memory a step will read a little later. The join's tables are far larger
//! than the CPU's caches (500,000 entries in memory by default), so each entry a step touches is a
//! cache miss of hundreds of nanoseconds; asked for several steps ahead, those misses overlap instead
//! of coming one after the other. A prefetch never faults and reads nothing the program sees, so an
//! address that is wrong or stale costs a wasted load, never a wrong result.

/// Asks for the cache line holding `p`.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing the program sees, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
