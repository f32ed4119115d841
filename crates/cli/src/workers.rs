//! Scheduling of the hashing workers.
//!
//! While Bazel streams the query, its serializer needs the CPU more than we do: on a 2-core
//! machine workers at normal priority slowed the query itself by ~15%. So workers start in
//! the SCHED_IDLE class and hash only on otherwise idle cores; once the stream has ended
//! they return to normal scheduling, or a busy machine would starve them.

#[derive(Clone, Copy)]
pub enum Priority {
    YieldToBazel,
    Normal,
}

/// Sets the scheduling class of the calling thread (best effort: failure keeps the current one).
pub fn set_current_thread(priority: Priority) {
    let policy = match priority {
        Priority::YieldToBazel => libc::SCHED_IDLE,
        Priority::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscalls on the calling thread with a valid parameter struct.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        libc::sched_setscheduler(tid, policy, &param);
    }
}

/// Returns every worker of the global pool to normal scheduling.
pub fn full_speed() {
    rayon::broadcast(|_| set_current_thread(Priority::Normal));
}
