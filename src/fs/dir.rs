//! Directory listings: opendir decrypts a directory's names once, into the handle;
//! readdir and readdirplus page through them by offset (offset n is the n-th entry,
//! counting "." and ".." first), and readdirplus keeps the kernel's lookup counts.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::BorrowedFd;

use fuser::{FileAttr, FileType};

use super::errno::{backing_path, FsResult};
use super::handle::{DirEntry, Handle};
use super::{attr, backing, XtsFs};
use crate::crypto::names::{long_name_side_file, BackingEntry, NameCipher, LONG_NAME_SIDE_MAX};

impl XtsFs {
    pub fn opendir(&self, id: u64) -> FsResult<u64> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let dir = backing::open_at(node.fd(), OsStr::new("."), backing::DIR_FLAGS, 0)?;
        let mut entries = Vec::new();
        for raw in backing::read_dir(node.fd())? {
            let name = match secrets.names.classify(&raw.name) {
                Ok(BackingEntry::Named(name)) => name,
                Ok(BackingEntry::Long) => {
                    match read_long_name(node.fd(), &raw.name, &secrets.names) {
                        Some(name) => name,
                        None => continue,
                    }
                }
                Ok(BackingEntry::Internal) => continue,
                Err(e) => {
                    tracing::warn!(dir = %backing_path(node.fd()), entry = ?raw.name, "skipping backing entry: {e}");
                    continue;
                }
            };
            entries.push(DirEntry {
                name,
                backing: raw.name,
                ino: raw.ino,
                kind: attr::kind_from_dtype(raw.d_type),
            });
        }
        self.handles
            .insert(Handle::for_dir(node, File::from(dir), entries))
    }

    /// Lists directory handle `fh` of node `id` from `offset`: `add(ino, offset of the
    /// next entry, kind, name)` for each entry until it answers that the reply is full.
    pub fn readdir(
        &self,
        id: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> FsResult<()> {
        self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let dots = [".", ".."].map(|name| (id, FileType::Directory, OsStr::new(name)));
        let listed = handle
            .entries()
            .iter()
            .map(|e| (e.ino, e.kind, e.name.as_os_str()));
        let entries = dots.into_iter().chain(listed).enumerate();
        for (i, (ino, kind, name)) in entries.skip(skip(offset)) {
            if add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        Ok(())
    }

    /// readdir with each entry's attributes: `add(name, offset of the next entry,
    /// attributes)` until it answers that the reply is full. Each entry sent is a kernel
    /// reference (a lookup), "." and ".." excepted; an entry that did not fit is not.
    pub fn readdirplus(
        &self,
        id: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&OsStr, u64, &FileAttr) -> bool,
    ) -> FsResult<()> {
        self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let dir_attr = self.getattr(id)?;
        let skip = skip(offset);
        for (i, name) in [".", ".."].into_iter().enumerate().skip(skip) {
            if add(OsStr::new(name), i as u64 + 1, &dir_attr) {
                return Ok(());
            }
        }
        let listed = handle.entries().iter().enumerate();
        for (i, entry) in listed.skip(skip.saturating_sub(2)) {
            // An entry that went since opendir, or a lock since: left out.
            let found = self
                .keyring
                .get()
                .and_then(|_| self.intern(handle.node().fd(), &entry.backing));
            let Ok(found) = found else {
                continue;
            };
            if add(&entry.name, i as u64 + 3, &found.attr) {
                // Not sent, so the kernel will not hold this reference.
                self.forget(found.attr.ino.0, 1);
                break;
            }
        }
        Ok(())
    }
}

/// How many entries an offset skips.
fn skip(offset: u64) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX)
}

/// The name a long-name entry stands for, from its side file; `None` (logged) if the
/// side file is missing or damaged, so the listing leaves the entry out.
fn read_long_name(dir: BorrowedFd<'_>, entry: &OsStr, names: &NameCipher) -> Option<OsString> {
    use std::io::Read;
    let side = long_name_side_file(entry);
    let mut encoded = Vec::new();
    // O_NONBLOCK: a FIFO planted in place of the side file must not stall the listing.
    let result = backing::open_at(dir, &side, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .and_then(|fd| {
            File::from(fd)
                .take(LONG_NAME_SIDE_MAX)
                .read_to_end(&mut encoded)
        })
        .map_err(|e| e.to_string())
        .and_then(|_| {
            names
                .decrypt_long(entry, &encoded)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(name) => Some(name),
        Err(e) => {
            tracing::warn!(dir = %backing_path(dir), entry = ?entry, "skipping long-name entry: {e}");
            None
        }
    }
}
