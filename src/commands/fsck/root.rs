//! Checks outside the tree: the protector's key reference, and what is in the backing
//! root.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use super::{Kind, Run, LOST_FOUND};
use crate::commands::upgrade::UPGRADE_TMP;
use crate::error::Error;
use crate::fs::backing::{self, DIR_FLAGS};
use crate::keys::KeyRef;
use crate::volume::{HEADER_FILE, HEADER_LOCK, HEADER_TMP, TREE_DIR};

impl Run<'_> {
    /// The recorded key reference must find a key of the recorded kind again.
    pub(super) fn check_protector(&mut self, key_given: bool) {
        let key = &self.volume.header.protector.key;
        let problem = match KeyRef::parse(&key.key_ref) {
            Err(e) => Some(format!(
                "the protector's key reference '{}' does not parse: {e}",
                key.key_ref
            )),
            Ok(parsed) => {
                let kind = match parsed {
                    KeyRef::Mmk { .. } => "mmk",
                    KeyRef::Pem { .. } => "pem",
                    KeyRef::Pkcs11 { .. } => "pkcs11",
                    KeyRef::Command { .. } => "command",
                };
                (kind != key.kind.to_string()).then(|| {
                    format!(
                        "the protector is a {} key but its key reference '{}' names a {kind} key",
                        key.kind, key.key_ref
                    )
                })
            }
        };
        if let Some(mut detail) = problem {
            if key_given {
                detail.push_str("; the volume opens only with --key");
            }
            let header = self.backing.join(HEADER_FILE);
            self.note_root(Kind::BadProtector, &header, &detail);
        }
    }

    /// Everything in the backing root must be xtsfs's.
    pub(super) fn check_root(&mut self, root: BorrowedFd<'_>) -> Result<(), Error> {
        let entries = backing::read_dir(root)
            .map_err(Error::io("cannot list backing directory", &self.backing))?;
        for entry in entries {
            let name = entry.name;
            let path = self.backing.join(&name);
            let is_dir = || {
                backing::stat_at(root, &name)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            };
            let bytes = name.as_bytes();
            if bytes == HEADER_FILE.as_bytes() || bytes == HEADER_LOCK.as_bytes() {
                continue;
            }
            if bytes == TREE_DIR.as_bytes() && is_dir() {
                continue;
            }
            if bytes == HEADER_TMP.as_bytes() || bytes == UPGRADE_TMP.as_bytes() {
                let detail = if bytes == HEADER_TMP.as_bytes() {
                    "left by a header rewrite (rewrap) that was interrupted; the header in \
                     use is xtsfs.header, this file can be deleted"
                } else {
                    "left by an interrupted xtsfs upgrade; the next upgrade removes it, or \
                     delete it"
                };
                self.note_root(Kind::LeftoverTempFile, &path, detail);
                continue;
            }
            if bytes == LOST_FOUND.as_bytes() && is_dir() {
                let count = backing::open_at(root, &name, DIR_FLAGS, 0)
                    .and_then(|dir| backing::read_dir(dir.as_fd()))
                    .map(|entries| entries.len())
                    .unwrap_or(0);
                if count > 0 {
                    let detail = format!(
                        "{count} entries moved here by fsck --repair: the mount cannot show \
                         them; look at them and delete them"
                    );
                    self.note_root(Kind::LostFound, &path, &detail);
                }
                continue;
            }
            self.note_root(
                Kind::UnknownRootEntry,
                &path,
                "xtsfs puts nothing by this name in the backing root (only xtsfs.header, \
                 xtsfs.lock, tree/ and lost+found/)",
            );
        }
        Ok(())
    }
}
