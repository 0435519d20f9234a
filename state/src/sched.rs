//! Thread scheduling: which of the process's threads the kernel runs first when the cores are
//! busy. The feature server answers lookups while the dataflow ingests on the same cores; the
//! dataflow's threads are made "nicer" (lower weight) and the server's threads ask for short
//! time slices, so that a lookup preempts ingest instead of waiting for a slice to end.
//!
//! Both are tunings, not promises: failure is logged and otherwise ignored.

/// Sets the nice level of the calling thread (Linux: per thread). 0 leaves it as it is; raising
/// it needs no privilege.
#[allow(unsafe_code)]
pub fn set_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if result != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot set the thread's nice level");
    }
}

/// `struct sched_attr` of sched_setattr(2).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Asks for time slices of `slice_us` for the calling thread (`SCHED_OTHER`, nice kept). On
/// Linux 6.12 and later (EEVDF with custom slices) a thread with a short slice gets an early
/// deadline when it wakes and preempts threads with long ones; older kernels ignore the value.
#[allow(unsafe_code)]
pub fn set_thread_slice(slice_us: u64) {
    let nice = {
        // SAFETY: getpriority takes plain integers; errno is only read on -1.
        let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) };
        n.clamp(-20, 19)
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: slice_us * 1000,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr reads `attr`, which lives until the call returns and has the
    // layout and size the kernel expects (`size` names it).
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if result != 0 {
        tracing::debug!(slice_us, error = %std::io::Error::last_os_error(), "cannot set the thread's time slice");
    }
}

#[cfg(test)]
mod tests {
    /// Field 19 of /proc/thread-self/stat: the thread's nice level.
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn nice_applies_to_the_calling_thread_only() {
        let before = own_nice();
        let inside = std::thread::spawn(|| {
            super::set_thread_nice(7);
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!((before, inside, own_nice()), (before, (before + 7).min(19), before));
    }
}
