//! File I/O: open, read, write, truncate, fallocate, fsync and release, and the two
//! accessors every access to a file's contents goes through, [`XtsFs::read_contents`]
//! (the shared content lock) and [`XtsFs::write_contents`] (exclusive).

use std::fs::{File, Metadata};
use std::ops::Range;

use super::behind::Behind;
use super::contents::Contents;
use super::errno::{corrupt, read, write, FsError, FsResult};
use super::handle::Handle;
use super::inode::Node;
use super::{backing, CallerIds, Opened, VolumeSecrets, XtsFs};
use crate::volume::file_header::FileFormat;

impl XtsFs {
    pub fn open(&self, id: u64, flags: i32, caller: CallerIds) -> FsResult<Opened> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        // With FUSE_ATOMIC_O_TRUNC the kernel leaves O_TRUNC to us even on an O_RDONLY open,
        // which truncates on Linux (the kernel has already checked write permission).
        let trunc = flags & libc::O_TRUNC != 0;
        if write || trunc {
            self.writable()?;
        }
        // Partial-unit writes read before they write, so a writable handle is O_RDWR.
        // O_APPEND is the kernel's business (it sends the offset), and O_DIRECT cannot
        // apply to a backing file whose units sit after a header.
        let access = if write || trunc {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let file = backing::reopen_quiet(node.fd(), access)?;
        // A damaged file fails to open: its size may read as 0, so the kernel would never
        // send the read that reports the damage.
        self.read_contents(&node, &file, &secrets, |_, _| Ok(()))?;
        if trunc {
            // The kernel leaves an atomic O_TRUNC entirely to the file system.
            self.drop_setid(&node, caller)?;
            self.truncate(&node, &file, 0, &secrets)?;
        }
        let direct_io = self.bypasses_page_cache(flags);
        Ok(Opened {
            fh: self
                .handles
                .insert(Handle::for_file(node, file, write, !direct_io))?,
            direct_io,
        })
    }

    /// Reads into `buf` (the caller's, reused); returns the range of it to reply with.
    pub fn read(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> FsResult<Range<usize>> {
        let secrets = self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let (node, file) = (handle.node(), handle.readable_file()?);
        let ((range, format), meta) =
            self.read_contents_with_meta(node, file, &secrets, |contents, len| match contents {
                Some(c) => Ok((c.read(offset, size as usize, len, buf)?, Some(c.format))),
                None => {
                    let n = len.saturating_sub(offset).min(size.into()) as usize;
                    buf.clear();
                    buf.resize(n, 0);
                    Ok((0..n, None))
                }
            })?;
        if let Some(format) = format {
            self.note_use(&handle, format, offset, range.len(), false);
        }
        self.mark_accessed(node, &meta);
        Ok(range)
    }

    /// Notes the backing bytes that a request at plaintext `offset` used, so that a
    /// stream of them does not leave its ciphertext behind in the backing file's cache:
    /// a second copy beside the plaintext that the kernel caches for the handle, or a
    /// pile of dirty pages behind writes that bypass that cache ([`super::behind`]).
    fn note_use(&self, handle: &Handle, format: FileFormat, offset: u64, len: usize, write: bool) {
        let behind = match (handle.is_cached(), write) {
            (true, _) => Behind::Drop,
            (false, true) => Behind::WriteOut,
            (false, false) => return,
        };
        if self.acts_behind {
            if let Some(file) = handle.file() {
                let start = format.data_offset() + offset;
                handle
                    .node()
                    .note_use(file, start..start + len as u64, behind);
            }
        }
    }

    /// A read through the mount marks the file accessed, as a read of a local file does;
    /// the daemon's own reads of the backing file do not (they go through O_NOATIME
    /// handles, [`backing::reopen_quiet`]). Only when relatime would update the access time
    /// (it is not after the last change, or a day old), by a one-byte read through a
    /// handle without O_NOATIME, so the backing mount's own atime policy decides. Best
    /// effort: a failure leaves the access time as it was, and the read succeeds.
    /// `meta` is the backing file's status from the read itself.
    fn mark_accessed(&self, node: &Node, meta: &Metadata) {
        use std::os::unix::fs::{FileExt, MetadataExt};
        if self.options.read_only {
            return;
        }
        let atime = (meta.atime(), meta.atime_nsec());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let stale = atime <= (meta.mtime(), meta.mtime_nsec())
            || atime <= (meta.ctime(), meta.ctime_nsec())
            || now - atime.0 >= 24 * 60 * 60;
        if stale {
            if let Ok(plain) = backing::reopen(node.fd(), libc::O_RDONLY | libc::O_NONBLOCK) {
                let _ = plain.read_at(&mut [0u8; 1], 0);
            }
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8], caller: CallerIds) -> FsResult<u32> {
        let secrets = self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let (node, file) = (handle.node(), handle.writable_file()?);
        if !data.is_empty() {
            self.drop_setid(node, caller)?;
            if !handle.is_cached() {
                self.drop_capability(node, &secrets)?;
            }
        }
        let written = u32::try_from(data.len()).map_err(|_| FsError::Invalid)?;
        // Writes that rewrite only their own bytes and keep the length go in parallel.
        let in_place =
            self.read_contents(node, file, &secrets, |contents, len| match contents {
                Some(c) if Contents::<File>::writes_in_place(c.format, offset, data.len(), len) => {
                    c.write(offset, data, len)?;
                    Ok(Some(c.format))
                }
                _ => Ok(None),
            })?;
        let format = match in_place {
            Some(format) => format,
            None => self.write_contents(node, file, &secrets, |contents, len| {
                contents.write(offset, data, len)?;
                Ok(contents.format)
            })?,
        };
        self.note_use(&handle, format, offset, data.len(), true);
        Ok(written)
    }

    pub(super) fn truncate(
        &self,
        node: &Node,
        file: &File,
        size: u64,
        secrets: &VolumeSecrets,
    ) -> FsResult<()> {
        // An empty file truncated to zero stays without a header.
        if self.read_contents(node, file, secrets, |_, len| Ok(len))? == size {
            return Ok(());
        }
        let cleared = self.write_contents(node, file, secrets, |contents, len| {
            if size == len {
                return Ok(false);
            }
            contents.resize(len, size)?;
            Ok(size == 0 && contents.format == FileFormat::V2)
        })?;
        if cleared {
            // The header went with the data: the next write starts over with a new nonce.
            node.forget_key();
        }
        Ok(())
    }

    /// Runs `f` on a file's contents and plaintext length under the shared content lock:
    /// for reads, and for writes that rewrite whole units in place (they cannot overlap
    /// one another's units). `None` for a file without a header, which reads as zeros;
    /// none is made.
    fn read_contents<R>(
        &self,
        node: &Node,
        file: &File,
        secrets: &VolumeSecrets,
        f: impl FnOnce(Option<&Contents<'_>>, u64) -> FsResult<R>,
    ) -> FsResult<R> {
        self.read_contents_with_meta(node, file, secrets, f)
            .map(|(result, _)| result)
    }

    /// [`Self::read_contents`], also returning the backing file's status that the
    /// plaintext length came from.
    fn read_contents_with_meta<R>(
        &self,
        node: &Node,
        file: &File,
        secrets: &VolumeSecrets,
        f: impl FnOnce(Option<&Contents<'_>>, u64) -> FsResult<R>,
    ) -> FsResult<(R, Metadata)> {
        let _shared = read(&node.content_lock)?;
        let key = node.key(file, &secrets.dek, self.options.format)?;
        let format = key
            .as_ref()
            .map_or(self.options.format.new_files(), |k| k.format);
        let meta = file.metadata()?;
        let len = plain_len(format, node, &meta)?;
        let contents = key.as_ref().map(|key| key.contents(file));
        Ok((f(contents.as_ref(), len)?, meta))
    }

    /// Runs `f` on a file's contents and plaintext length under the exclusive content
    /// lock, for anything that reads-modifies-writes a unit or changes the length; writes
    /// a file header first if the file has none, so there are always contents.
    fn write_contents<R>(
        &self,
        node: &Node,
        file: &File,
        secrets: &VolumeSecrets,
        f: impl FnOnce(&Contents<'_>, u64) -> FsResult<R>,
    ) -> FsResult<R> {
        let _exclusive = write(&node.content_lock)?;
        let key = node.key_or_create(file, &secrets.dek, self.options.format)?;
        let len = plain_len(key.format, node, &file.metadata()?)?;
        f(&key.contents(file), len)
    }

    /// Whether a handle opened with `flags` bypasses the kernel page cache. A write-only
    /// handle does by default: in the page cache its writes would be copied once more, into
    /// pages nobody reads through it (a Redis AOF or RDB file being written), and every
    /// write reaches the daemon anyway, as there is no writeback cache.
    pub(super) fn bypasses_page_cache(&self, flags: i32) -> bool {
        self.options.direct_io
            || flags & libc::O_DIRECT != 0
            || flags & libc::O_ACCMODE == libc::O_WRONLY
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let secrets = self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let (node, file) = (handle.node(), handle.writable_file()?);
        let end = offset.checked_add(length).ok_or(FsError::TooLarge)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zeroing = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE);
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => {}
            _ => return Err(FsError::Unsupported),
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size {
            return Err(FsError::Unsupported);
        }
        self.write_contents(node, file, &secrets, |contents, len| {
            if zeroing != 0 {
                contents.zero(offset..end, len)?;
            }
            if !keep_size && end > len {
                contents.resize(len, end)?;
            }
            if zeroing == 0 {
                // Allocated backing blocks read as zeros, i.e. as holes: contents unchanged.
                let at = contents.format.data_offset() + offset;
                backing::fallocate(file, libc::FALLOC_FL_KEEP_SIZE, at, length)?;
            }
            Ok(())
        })
    }

    /// fsync and fsyncdir.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let file = handle.sync_target();
        Ok(if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }?)
    }

    /// release and releasedir; served while locked too, so handles close.
    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }
}

/// The plaintext length of an open backing file of `format`.
fn plain_len(format: FileFormat, node: &Node, meta: &Metadata) -> FsResult<u64> {
    let backing_len = meta.len();
    format.plaintext_len(backing_len).ok_or_else(|| {
        corrupt(
            node.fd(),
            &format_args!(
                "{backing_len} bytes is no length of a format {} file",
                format.version()
            ),
        )
    })
}
