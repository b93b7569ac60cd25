//! Step 2 of an upgrade: the tree indexed, regular files by inode with all their names
//! and each one's state, before anything is changed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::convert::{times, Times};
use super::{Plan, Run};
use crate::crypto::names::{BackingEntry, NameCipher};
use crate::error::Error;
use crate::fs::backing;
use crate::fs::contents::{self, HeaderProblem};
use crate::volume::file_header::FileFormat;
use crate::volume::header::VolumeFormat;

/// The tree, indexed: regular files by inode with all their names.
pub(super) struct Index {
    /// Directories relative to the tree; 0 is the tree itself.
    pub(super) dirs: Vec<PathBuf>,
    /// Their atime and mtime before the run, put back after each rename in them.
    pub(super) dir_times: Vec<Times>,
    pub(super) files: Vec<FileEntry>,
    pub(super) damaged: Vec<(PathBuf, String)>,
}

pub(super) struct FileEntry {
    /// Every name of the inode: (index into `dirs`, name).
    pub(super) names: Vec<(usize, OsString)>,
    pub(super) ino: (u64, u64),
    pub(super) state: FileState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FileState {
    Empty,
    V2 { len: u64 },
    V1 { len: u64 },
}

impl Index {
    pub(super) fn plan(&self) -> Plan {
        let mut plan = Plan {
            files: self.files.len() as u64,
            ..Plan::default()
        };
        for file in &self.files {
            if let FileState::V1 { len } = file.state {
                plan.to_convert += 1;
                plan.bytes += len;
            }
        }
        plan
    }
}

impl Run<'_> {
    pub(super) fn index(&self, tree: BorrowedFd<'_>) -> Result<Index, Error> {
        let names = match self.volume.header.names_encrypted() {
            true => NameCipher::Encrypted(self.volume.dek.names_key()),
            false => NameCipher::Plaintext,
        };
        let mut index = Index {
            dirs: vec![PathBuf::new()],
            dir_times: vec![times(
                &backing::stat(tree).map_err(Error::io("cannot stat", &self.tree_path))?,
            )],
            files: Vec::new(),
            damaged: Vec::new(),
        };
        // Inodes with several names seen so far: their file, or `None` if damaged.
        let mut by_inode: HashMap<(u64, u64), Option<usize>> = HashMap::new();
        let mut pending = vec![0];
        while let Some(dir_index) = pending.pop() {
            let dir_path = self.tree_path.join(&index.dirs[dir_index]);
            let dir = backing::open_dir_in(tree, &index.dirs[dir_index])
                .map_err(Error::io("cannot open directory", &dir_path))?;
            let entries =
                backing::read_dir(dir.as_fd()).map_err(Error::io("cannot list", &dir_path))?;
            for backing::RawDirEntry { name, .. } in entries {
                let path = dir_path.join(&name);
                let st = backing::stat_at(dir.as_fd(), &name)
                    .map_err(Error::io("cannot stat", &path))?;
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => {
                        index.dirs.push(index.dirs[dir_index].join(&name));
                        index.dir_times.push(times(&st));
                        pending.push(index.dirs.len() - 1);
                    }
                    libc::S_IFREG => {
                        // A long name's side file holds the encoded name, not contents.
                        if matches!(names.classify(&name), Ok(BackingEntry::Internal)) {
                            continue;
                        }
                        let ino = (st.st_dev, st.st_ino);
                        match by_inode.get(&ino) {
                            Some(Some(file)) => index.files[*file].names.push((dir_index, name)),
                            Some(None) => {} // damaged, and reported under its first name
                            None => {
                                let file = match file_state(dir.as_fd(), &name, &path)? {
                                    Ok(state) => {
                                        index.files.push(FileEntry {
                                            names: vec![(dir_index, name)],
                                            ino,
                                            state,
                                        });
                                        Some(index.files.len() - 1)
                                    }
                                    Err(problem) => {
                                        index.damaged.push((path, problem));
                                        None
                                    }
                                };
                                if st.st_nlink > 1 {
                                    by_inode.insert(ino, file);
                                }
                            }
                        }
                    }
                    // Symlinks, FIFOs, sockets and devices have no contents.
                    _ => {}
                }
            }
        }
        Ok(index)
    }
}

/// What a regular file in a format 1 volume holds; `Err` with the problem when it is
/// damaged (an I/O error is the outer error).
fn file_state(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
) -> Result<Result<FileState, String>, Error> {
    let failed = || Error::io("cannot read", path);
    let file = File::from(backing::open_read(dir, name).map_err(failed())?);
    let backing_len = backing::stat(file.as_fd()).map_err(failed())?.st_size as u64;
    let header = match contents::read_header(&file, VolumeFormat::V1) {
        Ok(header) => header,
        Err(HeaderProblem::Io(e)) => return Err(failed()(e)),
        Err(problem) => return Ok(Err(problem.to_string())),
    };
    let Some(header) = header else {
        return Ok(Ok(FileState::Empty));
    };
    Ok(match header.format.plaintext_len(backing_len) {
        Some(len) if header.format == FileFormat::V1 => Ok(FileState::V1 { len }),
        Some(len) => Ok(FileState::V2 { len }),
        None => Err(format!(
            "{backing_len} bytes is no length of a format {} file",
            header.format.version()
        )),
    })
}
