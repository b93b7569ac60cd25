//! Step 3 of an upgrade: each format 1 inode converted, its copy renamed over every
//! name, or an empty one truncated in place; owner, mode and times kept.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::index::{FileEntry, FileState, Index};
use super::{parent, FileOutcome, Run, UpgradeEvent, CHUNK, UPGRADE_TMP};
use crate::crypto::DATA_UNIT;
use crate::error::{Error, UpgradeError};
use crate::fs::backing;
use crate::fs::contents::{self, Contents};
use crate::keys::KeyError;
use crate::volume::file_header::{FileFormat, FileHeader};
use crate::volume::header::VolumeFormat;
use crate::volume::is_zero;

impl Run<'_> {
    /// Upgrades one inode; `Break` when the callback stopped the run.
    pub(super) fn upgrade_file(
        &mut self,
        tree: BorrowedFd<'_>,
        index: &Index,
        file: &FileEntry,
        progress: &mut dyn FnMut(UpgradeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let (dir_index, name) = &file.names[0];
        let path = self.path_of(index, *dir_index, name);
        let (outcome, bytes) = match file.state {
            FileState::Empty => {
                self.report.empty += 1;
                (FileOutcome::Empty, 0)
            }
            FileState::V2 { len } => {
                self.report.already += 1;
                (FileOutcome::AlreadyFormat2, len)
            }
            FileState::V1 { len } => {
                let dir = backing::open_dir_in(tree, &index.dirs[*dir_index])
                    .map_err(Error::io("cannot open directory", parent(&path)))?;
                let converted = if len == 0 {
                    truncate_empty(dir.as_fd(), name, file.ino)
                        .map_err(Error::io("cannot upgrade", &path))?;
                    ControlFlow::Continue(())
                } else {
                    let dir_times = &index.dir_times[*dir_index];
                    self.convert(dir.as_fd(), dir_times, name, &path, file, len, progress)?
                };
                if converted.is_break() {
                    return Ok(converted);
                }
                if file.names.len() > 1 && len > 0 {
                    let flow = self.relink(tree, index, file, dir.as_fd(), progress)?;
                    if flow.is_break() {
                        return Ok(flow);
                    }
                }
                self.report.converted += 1;
                self.report.bytes += len;
                (FileOutcome::Converted, len)
            }
        };
        Ok(progress(UpgradeEvent::File {
            path: &path,
            outcome,
            bytes,
        }))
    }

    /// Writes the format 2 copy of a format 1 file of plaintext length `len` and renames
    /// it over the file's first name.
    #[allow(clippy::too_many_arguments)]
    fn convert(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_times: &Times,
        name: &OsStr,
        path: &Path,
        file: &FileEntry,
        len: u64,
        progress: &mut dyn FnMut(UpgradeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let failed = || Error::io("cannot upgrade", path);
        let source = File::from(backing::open_read(dir, name).map_err(failed())?);
        let st = backing::stat(source.as_fd()).map_err(failed())?;
        let old_len = FileFormat::V1.backing_len(len);
        if (st.st_dev, st.st_ino) != file.ino || st.st_size as u64 != old_len {
            return Err(UpgradeError::Changed(path.into()).into());
        }
        let old_header = match contents::read_header(&source, VolumeFormat::V1) {
            Ok(Some(header)) if header.format == FileFormat::V1 => header,
            _ => return Err(UpgradeError::Changed(path.into()).into()),
        };
        let old_cipher = self.volume.dek.file_cipher(&old_header.nonce);
        let old = Contents {
            file: &source,
            cipher: &old_cipher,
            format: FileFormat::V1,
        };

        let tmp_path = self.tree_path.with_file_name(UPGRADE_TMP);
        let tmp_failed = || Error::io("cannot write the upgraded copy", &tmp_path);
        let tmp_name = OsStr::new(UPGRADE_TMP);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let tmp = File::from(
            backing::open_at(self.backing_dir, tmp_name, flags, 0o600).map_err(tmp_failed())?,
        );
        let header = FileHeader::generate(FileFormat::V2).map_err(KeyError::from)?;
        contents::start_file(&tmp, &header).map_err(tmp_failed())?;
        let new_cipher = self.volume.dek.file_cipher(&header.nonce);
        let new = Contents {
            file: &tmp,
            cipher: &new_cipher,
            format: FileFormat::V2,
        };

        let mut new_len = 0;
        let mut offset = 0;
        while offset < len {
            let range = old
                .read(offset, CHUNK, len, &mut self.buf)
                .map_err(failed())?;
            let data = &self.buf[range];
            // Runs of units with data; all-zero units are left as holes.
            let mut at = 0;
            while at < data.len() {
                let zero = |i: usize| is_zero(&data[i..(i + DATA_UNIT).min(data.len())]);
                if zero(at) {
                    at += DATA_UNIT;
                    continue;
                }
                let start = at;
                while at < data.len() && !zero(at) {
                    at += DATA_UNIT;
                }
                let run = &data[start..at.min(data.len())];
                let run_offset = offset + start as u64;
                new.write(run_offset, run, new_len).map_err(tmp_failed())?;
                new_len = new_len.max(run_offset + run.len() as u64);
            }
            let chunk = data.len() as u64;
            offset += chunk;
            let report = UpgradeEvent::Bytes { path, bytes: chunk };
            if progress(report).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        new.resize(new_len, len).map_err(tmp_failed())?;
        copy_attributes(tmp.as_fd(), &st).map_err(tmp_failed())?;
        tmp.sync_all().map_err(tmp_failed())?;
        drop(tmp);
        backing::rename_at(self.backing_dir, tmp_name, dir, name, 0)
            .map_err(Error::io("cannot replace", path))?;
        backing::futimens(dir, dir_times)
            .and_then(|()| backing::fsync(dir))
            .map_err(Error::io("cannot sync directory", parent(path)))?;
        Ok(ControlFlow::Continue(()))
    }

    /// Moves the other names of a hard-linked file to its new inode, which holds the
    /// first name: a link in `BACKING`, renamed over each name.
    fn relink(
        &mut self,
        tree: BorrowedFd<'_>,
        index: &Index,
        file: &FileEntry,
        first_dir: BorrowedFd<'_>,
        progress: &mut dyn FnMut(UpgradeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let names = file.names.len();
        let (first_dir_index, first) = &file.names[0];
        let first_path = self.path_of(index, *first_dir_index, first);
        let event = UpgradeEvent::Named {
            path: &first_path,
            name: 1,
            names,
        };
        if progress(event).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        let tmp_name = OsStr::new(UPGRADE_TMP);
        for (i, (dir_index, name)) in file.names.iter().enumerate().skip(1) {
            let path = self.path_of(index, *dir_index, name);
            let failed = || Error::io("cannot link the upgraded file to", &path);
            let dir = backing::open_dir_in(tree, &index.dirs[*dir_index]).map_err(failed())?;
            let st = backing::stat_at(dir.as_fd(), name).map_err(failed())?;
            if (st.st_dev, st.st_ino) != file.ino {
                return Err(UpgradeError::Changed(path).into());
            }
            backing::link_name_at(first_dir, first, self.backing_dir, tmp_name).map_err(failed())?;
            backing::rename_at(self.backing_dir, tmp_name, dir.as_fd(), name, 0)
                .map_err(failed())?;
            backing::futimens(dir.as_fd(), &index.dir_times[*dir_index])
                .and_then(|()| backing::fsync(dir.as_fd()))
                .map_err(Error::io("cannot sync directory", parent(&path)))?;
            let event = UpgradeEvent::Named {
                path: &path,
                name: i + 1,
                names,
            };
            if progress(event).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Makes a format 1 file with a header and no data the 0-byte file it is in both
/// formats, in place (see the module documentation for why a crash cannot hurt).
/// Truncating sets the mtime, so the old times are put back.
fn truncate_empty(dir: BorrowedFd<'_>, name: &OsStr, ino: (u64, u64)) -> io::Result<()> {
    let file = File::from(backing::open_at(dir, name, libc::O_WRONLY, 0)?);
    let st = backing::stat(file.as_fd())?;
    if (st.st_dev, st.st_ino) != ino || st.st_size as u64 != FileFormat::V1.backing_len(0) {
        return Err(io::Error::other("the file changed while the upgrade ran"));
    }
    file.set_len(0)?;
    backing::futimens(file.as_fd(), &times(&st))?;
    file.sync_all()
}

/// Owner, mode (after the owner: chown clears set-id bits), then the times, last.
fn copy_attributes(fd: BorrowedFd<'_>, st: &libc::stat) -> io::Result<()> {
    let own = backing::stat(fd)?;
    if (own.st_uid, own.st_gid) != (st.st_uid, st.st_gid) {
        backing::chown(fd, Some(st.st_uid), Some(st.st_gid))?;
    }
    backing::chmod(fd, st.st_mode & 0o7777)?;
    backing::futimens(fd, &times(st))
}

/// An inode's atime and mtime, as futimens takes them.
pub(super) type Times = [libc::timespec; 2];

pub(super) fn times(st: &libc::stat) -> Times {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}
