//! `--repair`: only actions that lose nothing. Orphan side files are removed; entries
//! the mount cannot show are moved into `BACKING/lost+found/`, never overwriting.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{Kind, Run, LOST_FOUND};
use crate::commands::offline::parent;
use crate::crypto::names::{long_name_entry_of, long_name_side_file};
use crate::error::Error;
use crate::fs::backing::{self, DIR_FLAGS};

impl Run<'_> {
    /// Takes the repair actions; marks each finding it repaired.
    pub(super) fn repair(
        &mut self,
        root: BorrowedFd<'_>,
        tree: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let mut lost_found: Option<OwnedFd> = None;
        let mut touched: HashSet<usize> = HashSet::new();
        for i in 0..self.findings.len() {
            let Some(target) = self.findings[i].target.clone() else {
                continue;
            };
            let path = self.findings[i].backing_path.clone();
            let dir = backing::open_dir_in(tree, &self.dirs[target.dir].relative)
                .map_err(Error::io("cannot open directory", parent(&path)))?;
            let action = if self.findings[i].kind == Kind::OrphanSideFile {
                // Still an orphan? (its entry's name is the side file's without ".name")
                let entry = long_name_entry_of(&target.name).unwrap_or(&target.name);
                if backing::stat_at(dir.as_fd(), entry).is_ok() {
                    continue;
                }
                backing::unlink_at(dir.as_fd(), &target.name, 0)
                    .map_err(Error::io("cannot remove orphan side file", &path))?;
                "removed".to_string()
            } else {
                let lf = match lost_found {
                    Some(ref fd) => fd,
                    None => lost_found.insert(open_lost_found(root, &self.backing)?),
                }
                .as_fd();
                let moved = move_unique(dir.as_fd(), &target.name, lf, &target.name)
                    .map_err(Error::io("cannot move to lost+found", &path))?;
                let moved_path = self.backing.join(LOST_FOUND).join(&moved);
                let mut action = format!("moved to {}", moved_path.display());
                if let Some(side) = &target.side_file {
                    let side_to = long_name_side_file(&moved);
                    let side_path = parent(&path).join(side);
                    let side_moved = move_unique(dir.as_fd(), side, lf, &side_to)
                        .map_err(Error::io("cannot move to lost+found", &side_path))?;
                    let _ = write!(
                        action,
                        ", its side file to {}",
                        self.backing.join(LOST_FOUND).join(side_moved).display()
                    );
                }
                action
            };
            touched.insert(target.dir);
            self.findings[i].repaired = Some(action);
        }
        for dir in touched {
            let path = self.tree_path.join(&self.dirs[dir].relative);
            backing::open_dir_in(tree, &self.dirs[dir].relative)
                .and_then(|fd| backing::fsync(fd.as_fd()))
                .map_err(Error::io("cannot sync directory", &path))?;
        }
        if let Some(lf) = lost_found {
            backing::fsync(lf.as_fd()).map_err(Error::io(
                "cannot sync directory",
                self.backing.join(LOST_FOUND),
            ))?;
        }
        Ok(())
    }
}

/// `BACKING/lost+found`, made (mode 0700, and durable) if absent.
fn open_lost_found(root: BorrowedFd<'_>, backing: &Path) -> Result<OwnedFd, Error> {
    let path = backing.join(LOST_FOUND);
    let name = OsStr::new(LOST_FOUND);
    match backing::mkdir_at(root, name, 0o700) {
        Ok(()) => backing::fsync(root).map_err(Error::io("cannot sync directory", backing))?,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::io("cannot create", &path)(e)),
    }
    backing::open_at(root, name, DIR_FLAGS, 0).map_err(Error::io("cannot open", &path))
}

/// Renames `name` in `from` to `to` (or `to.1`, `to.2`, ... if taken) in `into`, never
/// replacing anything; returns the name it got.
fn move_unique(
    from: BorrowedFd<'_>,
    name: &OsStr,
    into: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<OsString> {
    for n in 0..=u32::MAX {
        let candidate = match n {
            0 => to.to_owned(),
            n => {
                // Room for the suffix within NAME_MAX.
                let keep = &to.as_bytes()[..to.len().min(240)];
                let mut candidate = OsStr::from_bytes(keep).to_owned();
                candidate.push(format!(".{n}"));
                candidate
            }
        };
        match backing::rename_at(from, name, into, &candidate, libc::RENAME_NOREPLACE) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    // Every suffix is taken.
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}
