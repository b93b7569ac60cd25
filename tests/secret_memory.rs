//! Secrets stay mlocked for as long as they live, even when other secrets on the same page
//! come and go. One test only: it reads the process-wide locked-memory counter, which
//! other tests running in parallel threads would disturb.

use xtsfs::crypto::secret::SecretBytes;

/// Locked memory of this process in kB (VmLck in /proc/self/status).
fn locked_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmLck:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse().ok())
        .expect("VmLck line")
}

/// Page numbers of a secret's first and last byte.
fn pages_of(secret: &SecretBytes<64>) -> (usize, usize) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let start = secret.expose().as_ptr() as usize;
    (start / page, (start + 63) / page)
}

#[test]
fn dropping_a_neighbour_on_the_same_page_keeps_a_live_secret_locked() {
    let baseline = locked_kb();
    let mut secrets: Vec<SecretBytes<64>> =
        (0..256).map(|_| SecretBytes::random().unwrap()).collect();
    assert!(
        locked_kb() > baseline,
        "secrets are mlocked (tests run as root)"
    );

    // Keep one secret that lies on a single page shared with another secret; drop the rest.
    let shares_a_page = |i: usize| {
        let (first, last) = pages_of(&secrets[i]);
        first == last && (0..secrets.len()).any(|j| j != i && pages_of(&secrets[j]).0 == first)
    };
    let kept = (0..secrets.len())
        .find(|&i| shares_a_page(i))
        .expect("256 small secrets share pages");
    let kept = secrets.swap_remove(kept);
    drop(secrets);
    assert!(
        locked_kb() > baseline,
        "the kept secret's page was unlocked when a neighbour was dropped"
    );

    drop(kept);
    assert_eq!(
        locked_kb(),
        baseline,
        "pages are unlocked with their last secret"
    );
}
