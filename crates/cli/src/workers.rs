//! Scheduling of the hashing workers.
//!
//! While Bazel streams the query, its serializer needs the CPU more than we do: on a 2-core
//! machine workers at normal priority slowed the query itself. So workers start at a lower
//! priority (nice 10) and return to normal once the stream has ended. Not SCHED_IDLE: an
//! idle-class worker preempted while holding an allocator or queue lock stalls the reader,
//! and with it Bazel's output (priority inversion; measured +40% at 15k targets).

#[derive(Clone, Copy)]
pub enum Priority {
    YieldToBazel,
    Normal,
}

/// Sets the scheduling class of the calling thread (best effort: failure keeps the current one).
pub fn set_current_thread(priority: Priority) {
    let nice = match priority {
        Priority::YieldToBazel => 10,
        Priority::Normal => 0,
    };
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

/// Returns every worker of the global pool to normal scheduling.
pub fn full_speed() {
    rayon::broadcast(|_| set_current_thread(Priority::Normal));
}
