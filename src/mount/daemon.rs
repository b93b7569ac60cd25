//! Going to the background: `xtsfs mount` re-runs itself as a detached daemon and waits
//! on a pipe until the daemon reports the mount usable, or reports why it is not.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{printable, Error, ExitCode};

/// Set in the environment of the background daemon: the fd it reports readiness on.
const READY_FD_ENV: &str = "XTSFS_READY_FD";

/// In the daemon: the pipe to report readiness on, if this process is one.
pub fn ready_pipe() -> Option<File> {
    let fd = std::env::var(READY_FD_ENV).ok()?.parse::<i32>().ok()?;
    // SAFETY: the parent passed us this pipe's write end and nothing else owns it.
    Some(unsafe { File::from_raw_fd(fd) })
}

/// Tells the waiting parent why the mount failed: its exit code, message and hint, one
/// line each (the parent reads the report line by line).
pub fn report_error(ready: &mut File, e: &Error) {
    let _ = write!(
        ready,
        "error {}\n{}\n{}\n",
        e.exit_code() as u8,
        printable(&e.to_string()),
        printable(&e.hint().unwrap_or_default())
    );
}

/// Detaches from the terminal, then tells the waiting parent the mount is usable.
pub fn report_ready(mut ready: File, log_file: Option<&Path>) -> Result<(), Error> {
    detach_stdio(log_file)?;
    let _ = ready.write_all(b"ready\n");
    Ok(())
}

/// Re-runs this command as a detached daemon and waits until it reports the mount usable
/// (or fails). Re-executing, rather than forking, keeps the daemon free of any state a
/// fork would copy mid-flight.
pub fn spawn() -> Result<(), Error> {
    let (read_end, write_end) = pipe().map_err(Error::io("cannot create a pipe", "mount"))?;
    let mut command = Command::new("/proc/self/exe");
    command
        .args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, write_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Errors come back through the pipe; later logs go to --log-file.
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no Rust state.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(Error::io("cannot start the mount daemon", "/proc/self/exe"))?;
    drop(write_end);
    let mut report = String::new();
    let _ = File::from(read_end).read_to_string(&mut report);
    match report.split_once('\n') {
        Some(("ready", _)) => Ok(()),
        Some((code, rest)) if code.starts_with("error ") => {
            let (message, hint) = rest.split_once('\n').unwrap_or((rest, ""));
            Err(Error::Rendered {
                code: code[6..]
                    .parse()
                    .ok()
                    .and_then(ExitCode::from_code)
                    .unwrap_or(ExitCode::Mount),
                message: message.into(),
                hint: (!hint.trim().is_empty()).then(|| hint.trim().into()),
            })
        }
        _ => {
            let status = child
                .wait()
                .map_err(Error::io("cannot wait for the mount daemon", "mount"))?;
            Err(Error::Mount(format!(
                "the mount daemon exited ({status}) before the mount was ready"
            )))
        }
    }
}

/// Points stdin at /dev/null and stdout/stderr at the log file or /dev/null, so the
/// daemon outlives the terminal that started it.
fn detach_stdio(log_file: Option<&Path>) -> Result<(), Error> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(Error::io("cannot open", "/dev/null"))?;
    let log = match log_file {
        Some(path) => File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io("cannot open log file", path))?,
        None => null
            .try_clone()
            .map_err(Error::io("cannot open", "/dev/null"))?,
    };
    // SAFETY: dup2 onto the standard fds with valid source fds.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds we own. The read end must not leak into the
    // daemon, so it is close-on-exec; the write end is inherited on purpose.
    unsafe {
        libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC);
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}
