//! Process-wide setup: logging, and keeping key material out of core dumps.

use tracing_subscriber::EnvFilter;

pub fn init_logging(verbosity: u8) {
    let default = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// No core dumps (they would hold the DEK) and no ptrace attach by other non-root users.
/// Secret buffers are mlocked individually (see `crypto::secret`).
pub fn harden() {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
            tracing::debug!("could not disable core dumps");
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::debug!("could not clear the dumpable flag");
        }
    }
}
