//! Running test code as another user: a closure or a program in a child process whose
//! credentials are switched before it does anything else.
//!
//! The child drops root in the order that works: supplementary groups first
//! (`setgroups`, which needs CAP_SETGID), then the group ids (`setresgid`), then the user
//! ids (`setresuid`), after which it has no capabilities left. Results come back through a
//! pipe as JSON, so a scenario returns plain data (errnos, modes) to compare.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A set of credentials for a child process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Two unprivileged users with their own primary groups and one shared group, none of
/// which need to exist in /etc/passwd.
pub const ALICE: u32 = 41_001;
pub const BOB: u32 = 41_002;
pub const SHARED_GROUP: u32 = 41_100;

impl User {
    pub fn new(uid: u32, gid: u32, groups: &[u32]) -> Self {
        User {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    /// Alice: uid 41001, group 41001, also in the shared group.
    pub fn alice() -> Self {
        User::new(ALICE, ALICE, &[ALICE, SHARED_GROUP])
    }

    /// Bob: uid 41002, group 41002, also in the shared group.
    pub fn bob() -> Self {
        User::new(BOB, BOB, &[BOB, SHARED_GROUP])
    }

    /// Root, in a child process like the others (for symmetric scenarios).
    pub fn root() -> Self {
        User::new(0, 0, &[0])
    }

    /// Switches the calling process to these credentials. Only for a child: it is
    /// irreversible and affects every thread's view of the process.
    fn become_(&self) -> std::io::Result<()> {
        // SAFETY: a valid array of `groups.len()` gids; plain integer arguments.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setresgid(self.gid, self.gid, self.gid) != 0
                || libc::setresuid(self.uid, self.uid, self.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Runs `work` in a forked child with these credentials and returns its result.
    /// A panic in the child fails the caller with the child's message. The child is
    /// killed by SIGALRM after 60 s, so a scenario that blocks fails instead of hanging.
    pub fn run<T: Serialize + DeserializeOwned>(&self, work: impl FnOnce() -> T) -> T {
        let mut fds = [0; 2];
        // SAFETY: a two-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned here.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only switches credentials, runs `work` and exits; glibc makes
        // malloc usable in a child of a multithreaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            drop(read_end);
            let mut out = std::fs::File::from(write_end);
            // SAFETY: plain integer argument.
            unsafe { libc::alarm(60) };
            let result = self
                .become_()
                .map_err(|e| format!("switching to {self:?}: {e}"));
            let result = result.and_then(|()| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into())
                })
            });
            let message = match result {
                Ok(value) => serde_json::to_vec(&Ok::<T, String>(value)),
                Err(e) => serde_json::to_vec(&Err::<T, String>(e)),
            };
            let code = match message.map(|m| out.write_all(&m)) {
                Ok(Ok(())) => 0,
                _ => 1,
            };
            // SAFETY: leaves the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        drop(write_end);
        let mut message = Vec::new();
        std::fs::File::from(read_end)
            .read_to_end(&mut message)
            .expect("read the child's result");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child as {self:?} died (status {status:#x})"
        );
        match serde_json::from_slice::<Result<T, String>>(&message).expect("child result") {
            Ok(value) => value,
            Err(panic) => panic!("as uid {}: {panic}", self.uid),
        }
    }

    /// Runs a program with these credentials (switched before exec) and returns its output.
    pub fn command(&self, program: &str, args: &[&str]) -> Output {
        let user = self.clone();
        let mut command = Command::new(program);
        command.args(args).env_clear().env("PATH", "/usr/bin:/bin");
        // SAFETY: pre_exec only makes system calls.
        unsafe {
            command.pre_exec(move || user.become_());
        }
        command.output().expect("run a program as another user")
    }
}
