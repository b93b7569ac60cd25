//! Mount options: one plan, made from the mount configuration, for both ways of
//! mounting: mount(2) as root, so that the mount is `fuse.xtsfs` with the backing
//! directory as its source, and fusermount3 (through fuser) for other users.

use std::path::Path;

use fuser::MountOption;

use crate::config::MountConfig;

/// The mount(2) flag a generic mount option sets; `None` for an option that is not one.
/// xtsfs mounts are always nodev and nosuid: `dev` and `suid`, which mount(8) adds for
/// `defaults`, change nothing.
pub fn mount_flag(option: &str) -> Option<libc::c_ulong> {
    Some(match option {
        "ro" => libc::MS_RDONLY,
        "noatime" => libc::MS_NOATIME,
        "nodiratime" => libc::MS_NODIRATIME,
        "strictatime" => libc::MS_STRICTATIME,
        "noexec" => libc::MS_NOEXEC,
        "sync" => libc::MS_SYNCHRONOUS,
        "dirsync" => libc::MS_DIRSYNC,
        "rw" | "atime" | "relatime" | "diratime" | "exec" | "async" | "nosuid" | "nodev"
        | "dev" | "suid" => 0,
        _ => return None,
    })
}

/// What a mount is mounted with.
pub struct MountPlan {
    allow_other: bool,
    read_only: bool,
    /// Generic mount options (noatime, noexec, ...), each one [`mount_flag`] knows.
    options: Vec<String>,
}

impl MountPlan {
    pub fn new(config: &MountConfig) -> Self {
        MountPlan {
            allow_other: config.allow_other,
            read_only: config.read_only,
            options: config.options.clone(),
        }
    }

    /// mount(2)'s flags and data for a FUSE connection on `/dev/fuse` fd `dev_fd`.
    pub fn mount2(
        &self,
        dev_fd: i32,
        root_mode: u32,
        uid: u32,
        gid: u32,
    ) -> (libc::c_ulong, String) {
        let mut data = format!(
            "fd={dev_fd},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions"
        );
        if self.allow_other {
            data.push_str(",allow_other");
        }
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if self.read_only {
            flags |= libc::MS_RDONLY;
        }
        for option in &self.options {
            flags |= mount_flag(option).unwrap_or(0);
        }
        (flags, data)
    }

    /// The same for fusermount3, as fuser's options.
    pub fn fuser_options(&self, backing: &Path) -> Vec<MountOption> {
        let mut options = vec![
            MountOption::FSName(backing.display().to_string()),
            MountOption::Subtype("xtsfs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        if self.read_only {
            options.push(MountOption::RO);
        }
        // fusermount3 takes the generic options by name; allow_other goes through the
        // session's ACL.
        options.extend(self.options.iter().map(|o| MountOption::CUSTOM(o.clone())));
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(options: &[&str], read_only: bool, allow_other: bool) -> MountConfig {
        MountConfig {
            backing: "/b".into(),
            mountpoint: "/m".into(),
            foreground: false,
            allow_other,
            read_only,
            options: options.iter().map(|o| o.to_string()).collect(),
            key: None,
            threads: 1,
            log_file: None,
            key_check_interval: Duration::from_secs(60),
            key_check_timeout: None,
            key_unavailable_grace: Duration::from_secs(300),
            on_key_loss: crate::config::OnKeyLoss::Lock,
            ephemeral: false,
            direct_io: false,
        }
    }

    #[test]
    fn one_plan_gives_both_mount_forms() {
        let plan = MountPlan::new(&config(&["noatime", "noexec", "dev"], true, true));
        let (flags, data) = plan.mount2(7, 0o40755, 0, 0);
        let expected =
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY | libc::MS_NOATIME | libc::MS_NOEXEC;
        assert_eq!(flags, expected, "dev changes nothing: always nodev");
        assert_eq!(
            data,
            "fd=7,rootmode=40755,user_id=0,group_id=0,default_permissions,allow_other"
        );
        let fuser = plan.fuser_options(Path::new("/b"));
        assert!(fuser.contains(&MountOption::RO));
        assert!(fuser.contains(&MountOption::NoDev));
        assert!(fuser.contains(&MountOption::CUSTOM("noatime".into())));
    }
}
