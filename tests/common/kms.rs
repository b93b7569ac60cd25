//! A KMS for `--key command:` tests: tests/support/openssl-kms.sh over a key directory.

use std::fs;
use std::path::{Path, PathBuf};

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
}
