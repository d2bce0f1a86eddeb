//! The open-file limit: with `--request-rate inf` and no `--max-concurrency` every request holds
//! a socket at once, so the soft limit (often 1024) is raised toward the hard limit first.

/// Raises this process's soft RLIMIT_NOFILE to at least `wanted` (capped by the hard limit);
/// returns the soft limit in effect afterwards.
pub fn raise_open_file_limit(wanted: u64) -> u64 {
    // SAFETY: a zeroed rlimit is a valid value; getrlimit only writes into it.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource constant and pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let current = limit.rlim_cur as u64;
    let target = (wanted as libc::rlim_t).min(limit.rlim_max);
    if (target as u64) <= current {
        return current;
    }
    limit.rlim_cur = target;
    // SAFETY: valid resource constant and pointer; failure leaves the limit unchanged.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        target as u64
    } else {
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_lowers_the_limit() {
        let before = raise_open_file_limit(0);
        assert!(before > 0);
        assert_eq!(raise_open_file_limit(1), before);
        assert!(raise_open_file_limit(before + 1) >= before);
    }
}
