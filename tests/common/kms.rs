//! A KMS for `--key command:` tests: tests/support/openssl-kms.sh over a key directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{path_str, set_mode, TestEnv};

/// A KMS command for one test: a wrapper script that runs tests/support/openssl-kms.sh on
/// a key directory of its own (see that script for the control files).
pub struct Kms {
    pub dir: PathBuf,
    pub program: PathBuf,
}

impl Kms {
    pub fn new(env: &TestEnv, name: &str) -> Self {
        let dir = env.path(&format!("{name}-keys"));
        fs::create_dir(&dir).expect("create KMS key dir");
        set_mode(&dir, 0o700);
        let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/openssl-kms.sh");
        let program = env.path(&format!("{name}.sh"));
        let script = format!(
            "#!/bin/sh\nexec bash '{}' '{}'\n",
            support.display(),
            dir.display()
        );
        fs::write(&program, script).expect("write KMS wrapper");
        set_mode(&program, 0o755);
        Kms { dir, program }
    }

    pub fn add_version(&self, env: &TestEnv, version: u32) {
        let dir = self.dir.strip_prefix(env.root()).expect("in the test dir");
        env.rsa_key(path_str(&dir.join(format!("v{version}.pem"))), 2048);
    }

    /// Sets one of the script's behaviour files (deny, unavailable, reply, ...).
    pub fn set(&self, file: &str, contents: &str) {
        fs::write(self.dir.join(file), contents).expect("write KMS control file");
    }

    pub fn unset(&self, file: &str) {
        fs::remove_file(self.dir.join(file)).expect("remove KMS control file");
    }

    pub fn key(&self) -> String {
        format!("command:{}", self.program.display())
    }

    /// Waits up to `within` for a run of the script to write its pid before sleeping
    /// (the `sleep` control file); whether one did.
    pub fn started_sleeping(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.dir.join("pid").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.dir.join("pid").exists()
    }

    /// Whether the run of the script that wrote its pid is still running after up to
    /// `within` (a zombie, waiting to be reaped, has ended).
    pub fn sleeper_still_running_after(&self, within: Duration) -> bool {
        let pid = fs::read_to_string(self.dir.join("pid")).expect("the script wrote its pid");
        let running = || {
            fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                // The state follows the command name, which is in parentheses.
                .is_ok_and(|stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
                })
        };
        let deadline = Instant::now() + within;
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        running()
    }
}
