//! The checks of regular files, once per inode, on several threads: header, format,
//! length and, with `contents`, every unit decrypted and all-zero units found.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use super::{Checker, FileJob, Finding, FsckEvent, Kind, Run};
use crate::crypto::DATA_UNIT;
use crate::error::Error;
use crate::fs::backing;
use crate::fs::contents::{self, Contents, HeaderProblem};
use crate::volume::file_header::FileFormat;
use crate::volume::header::VolumeFormat;
use crate::volume::is_zero;

/// Reads of `--contents`, in plaintext bytes.
const CHUNK: usize = 1 << 20;
/// Threads that check files: the work is mostly waiting for the backing disk (an inode
/// and a page per file when nothing is cached), so more threads than cores help.
const FILE_THREADS: usize = 8;

/// One file checked, for the thread that gathers the results.
enum FileMessage {
    /// `contents`: bytes of the current file decrypted.
    Bytes(u64),
    Done(FileOutcome),
}

#[derive(Default)]
struct FileOutcome {
    /// A regular file seen for the first time (not under another name).
    counted: bool,
    /// Plaintext length.
    len: u64,
    /// A format 2 file in a format 1 volume.
    upgraded: bool,
    finding: Option<Finding>,
}

impl Run<'_> {
    /// Checks every queued regular file, once per inode, on [`FILE_THREADS`] threads.
    pub(super) fn check_files(
        &mut self,
        tree: BorrowedFd<'_>,
        progress: &mut dyn FnMut(FsckEvent),
    ) -> Result<(), Error> {
        let jobs = std::mem::take(&mut self.files);
        let bytes = self
            .options
            .contents
            .then(|| jobs.iter().map(|job| job.size).sum());
        progress(FsckEvent::Planned {
            files: jobs.len() as u64,
            bytes,
        });
        let checker = Checker {
            volume: self.volume,
            options: self.options,
            tree_path: &self.tree_path,
            dirs: &self.dirs,
        };
        let linked: Mutex<HashSet<(u64, u64)>> = Mutex::new(HashSet::new());
        let next = AtomicUsize::new(0);
        let (sender, receiver) = mpsc::channel();
        let threads = FILE_THREADS.min(jobs.len()).max(1);
        std::thread::scope(|s| {
            for _ in 0..threads {
                let sender = sender.clone();
                let (checker, jobs, linked, next) = (&checker, &jobs, &linked, &next);
                s.spawn(move || checker.file_worker(tree, jobs, next, linked, &sender));
            }
            drop(sender);
            for message in receiver {
                match message {
                    FileMessage::Bytes(bytes) => progress(FsckEvent::Bytes { bytes }),
                    FileMessage::Done(outcome) => {
                        if outcome.counted {
                            self.report.files += 1;
                            self.report.bytes += outcome.len;
                        }
                        if outcome.upgraded {
                            self.upgraded_files += 1;
                        }
                        self.findings.extend(outcome.finding);
                        progress(FsckEvent::File { bytes: outcome.len });
                    }
                }
            }
        });
        Ok(())
    }
}

impl Checker<'_> {
    /// One thread of [`Run::check_files`]: takes jobs until none are left.
    fn file_worker(
        &self,
        tree: BorrowedFd<'_>,
        jobs: &[FileJob],
        next: &AtomicUsize,
        linked: &Mutex<HashSet<(u64, u64)>>,
        sender: &mpsc::Sender<FileMessage>,
    ) {
        // The open directory of the last file: files come directory by directory.
        let mut open: Option<(usize, OwnedFd)> = None;
        let mut buffers = (Vec::new(), Vec::new());
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else {
                return;
            };
            let dir = match open {
                Some((dir, ref fd)) if dir == job.dir => fd,
                _ => match backing::open_dir_in(tree, &self.dirs[job.dir].relative) {
                    Ok(fd) => &open.insert((job.dir, fd)).1,
                    Err(e) => {
                        let detail = format!("cannot open its directory: {e}");
                        let outcome = FileOutcome {
                            finding: Some(self.file_finding(Kind::ReadError, job, detail)),
                            ..FileOutcome::default()
                        };
                        let _ = sender.send(FileMessage::Done(outcome));
                        continue;
                    }
                },
            }
            .as_fd();
            let outcome = self.check_file(dir, job, linked, &mut buffers, &mut |bytes| {
                let _ = sender.send(FileMessage::Bytes(bytes));
            });
            let _ = sender.send(FileMessage::Done(outcome));
        }
    }

    fn file_finding(&self, kind: Kind, job: &FileJob, detail: String) -> Finding {
        let backing_path = self
            .tree_path
            .join(&self.dirs[job.dir].relative)
            .join(&job.name);
        let plaintext_dir = match job.plaintext {
            Some(_) => None,
            None => self.dirs[job.dir].plaintext.clone(),
        };
        Finding {
            severity: kind.severity(),
            kind,
            backing_path,
            plaintext_path: job.plaintext.clone(),
            plaintext_dir,
            detail,
            repaired: None,
            target: None,
        }
    }

    /// Checks one file.
    fn check_file(
        &self,
        dir: BorrowedFd<'_>,
        job: &FileJob,
        linked: &Mutex<HashSet<(u64, u64)>>,
        buffers: &mut (Vec<u8>, Vec<u8>),
        progress: &mut dyn FnMut(u64),
    ) -> FileOutcome {
        let mut outcome = FileOutcome::default();
        let found = |kind, detail| FileOutcome {
            finding: Some(self.file_finding(kind, job, detail)),
            ..FileOutcome::default()
        };
        let opened = backing::open_read(dir, &job.name)
            .map(File::from)
            .and_then(|file| Ok((backing::stat(file.as_fd())?, file)));
        let (st, file) = match opened {
            Ok(opened) => opened,
            Err(e) => return found(Kind::ReadError, format!("cannot open: {e}")),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return outcome; // replaced meanwhile (a forced run on a mounted volume)
        }
        if st.st_nlink > 1
            && !linked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((st.st_dev, st.st_ino))
        {
            return outcome; // checked under another name
        }
        let backing_len = st.st_size as u64;
        let volume_format = self.volume.header.format;
        let header = match contents::read_header(&file, volume_format) {
            Ok(header) => header,
            Err(HeaderProblem::WrongFormat { file, volume }) => {
                let detail = format!(
                    "a format {file} file in a format {volume} volume (the mount reads it \
                     as EIO); only xtsfs upgrade writes format 2 copies of format 1 files"
                );
                return counted(found(Kind::WrongFileFormat, detail));
            }
            Err(HeaderProblem::Io(e)) => {
                return counted(found(Kind::ReadError, format!("cannot read: {e}")));
            }
            Err(problem) => {
                let detail = format!("{problem} (the mount reads it as EIO)");
                return counted(found(Kind::BadFileHeader, detail));
            }
        };
        outcome.counted = true;
        let format = match header {
            Some(header) => header.format,
            None if backing_len == 0 => return outcome,
            // No header, and a length: a format 2 file whose header a crash lost.
            None => FileFormat::V2,
        };
        let Some(len) = format.plaintext_len(backing_len) else {
            let detail = format!(
                "{backing_len} bytes is no length of a format {} file (the mount reads it \
                 as EIO)",
                format.version()
            );
            return counted(found(Kind::BadFileLength, detail));
        };
        outcome.len = len;
        let Some(header) = header else {
            let detail = format!(
                "its 32 header bytes are zero: a crash lost the header before it was synced, \
                 so none of its data was synced either; it reads as {len} zero bytes, and \
                 the next write starts it over"
            );
            outcome.finding = Some(self.file_finding(Kind::LostFileHeader, job, detail));
            return outcome;
        };
        outcome.upgraded = format == FileFormat::V2 && volume_format == VolumeFormat::V1;
        if self.options.contents {
            outcome.finding = self.check_contents(
                &file,
                job,
                header.format,
                &header.nonce,
                len,
                buffers,
                progress,
            );
        }
        outcome
    }

    /// Decrypts the whole file; a finding if it cannot be read or has units stored as
    /// zeros.
    #[allow(clippy::too_many_arguments)]
    fn check_contents(
        &self,
        file: &File,
        job: &FileJob,
        format: FileFormat,
        nonce: &[u8; crate::crypto::FILE_NONCE_LEN],
        len: u64,
        (raw, buf): &mut (Vec<u8>, Vec<u8>),
        progress: &mut dyn FnMut(u64),
    ) -> Option<Finding> {
        let cipher = self.volume.dek.file_cipher(nonce);
        let contents = Contents {
            file,
            cipher: &cipher,
            format,
        };
        let unit = DATA_UNIT as u64;
        let mut zero_units: Vec<u64> = Vec::new();
        let mut offset = 0;
        while offset < len {
            let end = len.min(offset + CHUNK as u64);
            // The stored bytes of units offset/unit .. end/unit, to tell holes.
            let stored_start = format.data_offset() + offset;
            let stored_end = match format {
                FileFormat::V1 => format.data_offset() + end,
                FileFormat::V2 => format.data_offset() + end.next_multiple_of(16),
            };
            raw.resize((stored_end - stored_start) as usize, 0);
            let read = crate::fs::contents::read_full(file, raw, stored_start)
                .and_then(|()| contents.read(offset, (end - offset) as usize, len, buf));
            if let Err(e) = read {
                let detail = format!("cannot read at plaintext offset {offset}: {e}");
                return Some(self.file_finding(Kind::ReadError, job, detail));
            }
            for (i, stored) in raw.chunks(DATA_UNIT).enumerate() {
                // A format 1 short tail (under 16 bytes) is never a hole.
                let hole_able = format == FileFormat::V2 || stored.len() >= 16;
                if hole_able && is_zero(stored) {
                    zero_units.push(offset / unit + i as u64);
                }
            }
            progress(end - offset);
            offset = end;
        }
        if zero_units.is_empty() {
            return None;
        }
        let detail = format!(
            "{} of its {} 4 KiB units are stored as zeros and read as holes (units {}): a \
             sparse file has them legitimately, but zeroed ciphertext is also how data is \
             erased without the key",
            zero_units.len(),
            len.div_ceil(unit),
            unit_ranges(&zero_units)
        );
        Some(self.file_finding(Kind::ZeroUnits, job, detail))
    }
}

/// A damaged file still counts as a file checked.
fn counted(mut outcome: FileOutcome) -> FileOutcome {
    outcome.counted = true;
    outcome
}

/// "0, 3-5, 9" from sorted unit numbers (at most 20 ranges, then "...").
fn unit_ranges(units: &[u64]) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &u in units {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == u => *end = u,
            _ => ranges.push((u, u)),
        }
    }
    let mut out: Vec<String> = ranges
        .iter()
        .take(20)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > 20 {
        out.push("...".into());
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges_are_compact() {
        assert_eq!(unit_ranges(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(unit_ranges(&[]), "");
    }
}
