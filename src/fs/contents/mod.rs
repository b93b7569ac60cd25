//! Encrypted file contents over a backing file: positional reads and writes, coalesced
//! into one backing pread/pwrite per request, in the layout of the file's format.
//!
//! - [`v2`], format 2: whole 16-byte XTS blocks, the last one zero-padded, the length in
//!   the backing length. A byte's ciphertext never depends on the bytes after it, so no
//!   write ever re-encrypts bytes that are already on disk at another length: every crash
//!   state the backing file system can produce reads back each block as its old value,
//!   its new value or a hole (docs/FORMAT.md, "Crash safety").
//! - [`v1`], format 1: 4 KiB units whose ciphertext depends on their length. Kept to read
//!   and write volumes that have not been upgraded.
//!
//! Indexing here is allowed (src/fs warns on it elsewhere): every index and range is unit
//! and block arithmetic bounded by the buffer it was sized for, and the data path is
//! proven by tests/crash_states.rs, tests/fsx.rs and the property tests rather than
//! padded with error paths that cannot be taken.
#![allow(clippy::indexing_slicing)]

mod v1;
mod v2;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use zeroize::Zeroize;

use super::errno::{recover, try_recover};
use crate::crypto::xts::Xts256;
use crate::crypto::DATA_UNIT;
use crate::volume::file_header::{FileFormat, FileHeader, FileHeaderError, FILE_HEADER_LEN};
use crate::volume::header::VolumeFormat;

pub const UNIT: u64 = DATA_UNIT as u64;

/// What the contents layer needs of a backing file. [`File`] is the real one; the
/// crash-state tests record every call on a simulated one.
pub trait BackingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The backing length in bytes.
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fallocate(2)`; `EOPNOTSUPP` where the file system has no such mode.
    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
}

impl BackingFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let to_off = |v: u64| {
            libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
        };
        let (offset, len) = (to_off(offset)?, to_off(len)?);
        // SAFETY: a valid fd; fallocate reads no memory of ours.
        if unsafe { libc::fallocate(self.as_raw_fd(), mode, offset, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// The contents of one backing file that has a header, seen through its XTS cipher.
/// Callers hold the file's content lock: shared for reads and for writes that
/// [`Contents::writes_in_place`] allows, exclusive otherwise.
pub struct Contents<'a, F: BackingFile + ?Sized = File> {
    pub file: &'a F,
    pub cipher: &'a Xts256,
    pub format: FileFormat,
}

impl<F: BackingFile + ?Sized> Contents<'_, F> {
    /// Reads `size` bytes at `offset` of a file of plaintext length `len` into `buf`
    /// (reused across calls); returns the range of `buf` to reply with.
    pub fn read(
        &self,
        offset: u64,
        size: usize,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> io::Result<Range<usize>> {
        if offset >= len || size == 0 {
            return Ok(0..0);
        }
        let end = len.min(offset.saturating_add(size as u64));
        match self.format {
            FileFormat::V1 => self.v1().read(offset..end, len, buf),
            FileFormat::V2 => self.v2().read(offset..end, buf),
        }
    }

    /// Writes `data` at `offset` into a file of plaintext length `len`.
    pub fn write(&self, offset: u64, data: &[u8], len: u64) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| self.format.fits(*end))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        match self.format {
            FileFormat::V1 => self.v1().write(offset, data, len),
            FileFormat::V2 => self.v2().write(offset..end, data, len),
        }
    }

    /// Changes the plaintext length from `len` to `new_len`. Format 2 files truncated to
    /// zero lose their header: the next write starts them over under a fresh nonce.
    pub fn resize(&self, len: u64, new_len: u64) -> io::Result<()> {
        if new_len == len {
            return Ok(());
        }
        if new_len > len && !self.format.fits(new_len) {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        match self.format {
            FileFormat::V1 => self.v1().resize(len, new_len),
            FileFormat::V2 => self.v2().resize(len, new_len),
        }
    }

    /// Makes `range` (clamped to the file) read as zeros without changing the length.
    pub fn zero(&self, range: Range<u64>, len: u64) -> io::Result<()> {
        let range = range.start..range.end.min(len);
        if range.start >= range.end {
            return Ok(());
        }
        match self.format {
            FileFormat::V1 => self.v1().zero(range, len),
            FileFormat::V2 => self.v2().zero(range, len),
        }
    }

    /// Whether a write of `size` bytes at `offset` into a file of length `len` rewrites
    /// only its own bytes and leaves the length alone, so writes like it may run in
    /// parallel under the shared content lock.
    pub fn writes_in_place(format: FileFormat, offset: u64, size: usize, len: u64) -> bool {
        let end = offset.saturating_add(size as u64);
        match format {
            // Whole units that leave a partial last unit alone.
            FileFormat::V1 => {
                offset.is_multiple_of(UNIT)
                    && end.is_multiple_of(UNIT)
                    && (len.is_multiple_of(UNIT) || end <= len / UNIT * UNIT)
            }
            FileFormat::V2 => v2::writes_in_place(offset, end, len),
        }
    }

    fn v1(&self) -> v1::V1<'_, F> {
        v1::V1 {
            file: self.file,
            cipher: self.cipher,
        }
    }

    fn v2(&self) -> v2::V2<'_, F> {
        v2::V2 {
            file: self.file,
            cipher: self.cipher,
        }
    }
}

/// Why a backing file's header cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderProblem {
    #[error("cannot read the file header: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Damaged(#[from] FileHeaderError),
    #[error("a format {file} file in a format {volume} volume")]
    WrongFormat { file: u16, volume: u16 },
}

/// The header of a backing file in a volume of format `volume`; `None` while the file
/// has none: it is empty, or (format 2) a crash kept its length but not its header. That
/// header was never synced, so neither were the file's blocks, and the file reads as
/// zeros.
pub fn read_header<F: BackingFile + ?Sized>(
    file: &F,
    volume: VolumeFormat,
) -> Result<Option<FileHeader>, HeaderProblem> {
    let mut bytes = [0u8; FILE_HEADER_LEN];
    let n = file.read_at(&mut bytes, 0)?;
    if n == 0 || (volume == VolumeFormat::V2 && n == bytes.len() && bytes == [0; FILE_HEADER_LEN]) {
        return Ok(None);
    }
    let header = FileHeader::decode(&bytes[..n])?;
    if !volume.accepts(header.format) {
        return Err(HeaderProblem::WrongFormat {
            file: header.format.version(),
            volume: volume.version(),
        });
    }
    Ok(Some(header))
}

/// Gives a file without a header (see [`read_header`]) the fresh `header`. A file that
/// lost its header in a crash keeps its length and reads as zeros: its unsynced blocks
/// are dropped first, and that is made durable before the new header can sit in front
/// of them, which it would decrypt to garbage.
pub fn start_file<F: BackingFile + ?Sized>(file: &F, header: &FileHeader) -> io::Result<()> {
    let backing_len = file.size()?;
    let len = header.format.plaintext_len(backing_len).unwrap_or(0);
    if backing_len > 0 {
        file.set_len(0)?;
        file.sync_data()?;
    }
    file.write_all_at(&header.encode(), 0)?;
    if len > 0 {
        file.set_len(header.format.backing_len(len))?;
    }
    Ok(())
}

/// What a thread buffer is sized for up front: the largest request the mount accepts
/// (1 MiB) plus the partial units or blocks at either end, so it never reallocates and
/// leaves a copy of decrypted data in freed memory.
const THREAD_BUFFER_CAPACITY: usize = (1 << 20) + 4 * DATA_UNIT;

/// One thread's buffer. It sits in a process-wide registry, so that a lock can wipe the
/// buffers of every thread, including threads idle in the kernel waiting for requests.
struct ThreadBuffer {
    bytes: Mutex<Vec<u8>>,
    /// Set by [`wipe_thread_buffers`] when the buffer was in use: its thread wipes it as
    /// soon as the request in flight is done with it, before serving another.
    wipe: AtomicBool,
}

static THREAD_BUFFERS: Mutex<Vec<Weak<ThreadBuffer>>> = Mutex::new(Vec::new());

thread_local! {
    static THREAD_BUFFER: RefCell<Option<Arc<ThreadBuffer>>> = const { RefCell::new(None) };
}

fn this_thread_buffer() -> Arc<ThreadBuffer> {
    THREAD_BUFFER.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
                let buffer = Arc::new(ThreadBuffer {
                    bytes: Mutex::new(Vec::new()),
                    wipe: AtomicBool::new(false),
                });
                // Recovered from poisoning: a lock's wipe must reach every buffer.
                let mut all = recover(THREAD_BUFFERS.lock());
                all.retain(|b| b.strong_count() > 0);
                all.push(Arc::downgrade(&buffer));
                buffer
            })
            .clone()
    })
}

/// Zeroes a buffer's whole allocation, then frees it.
fn wipe(bytes: &mut Vec<u8>) {
    bytes.zeroize();
    *bytes = Vec::new();
}

/// Runs `f` over this thread's buffer for a run of units, which holds an earlier request's
/// bytes. A FUSE thread serves one read or write at a time, so one buffer per thread
/// serves both, and a 1 MiB request does not allocate and page-fault in a fresh one.
pub fn with_thread_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let buffer = this_thread_buffer();
    // A nested call (the buffer is this thread's and already held) gets a buffer of its
    // own, wiped when done, instead of a deadlock.
    // Recovered from poisoning (a panic in an earlier request): the buffer is only bytes,
    // and its wipe must still happen.
    let Some(mut bytes) = try_recover(buffer.bytes.try_lock()) else {
        let mut own = Vec::new();
        let result = f(&mut own);
        wipe(&mut own);
        return result;
    };
    if buffer.wipe.swap(false, Ordering::SeqCst) {
        wipe(&mut bytes);
    }
    if bytes.capacity() < THREAD_BUFFER_CAPACITY {
        wipe(&mut bytes);
        bytes.reserve_exact(THREAD_BUFFER_CAPACITY);
    }
    let result = f(&mut bytes);
    drop(bytes);
    // A wipe asked for while the request held the buffer happens now, before the thread
    // goes back to wait for requests (a wipe that found the buffer free did it itself).
    if buffer.wipe.load(Ordering::SeqCst) {
        if let Some(mut bytes) = try_recover(buffer.bytes.try_lock()) {
            wipe(&mut bytes);
            buffer.wipe.store(false, Ordering::SeqCst);
        }
    }
    result
}

/// Wipes every thread's buffer (at a lock, when the keys are withdrawn): each buffer not in
/// use now is zeroed and freed at once; one in use by a request in flight is wiped by its
/// thread as soon as that request is done with it, before the thread serves again.
pub fn wipe_thread_buffers() {
    // Recovered from poisoning: the wipe must reach every buffer.
    let all = recover(THREAD_BUFFERS.lock());
    for buffer in all.iter().filter_map(Weak::upgrade) {
        buffer.wipe.store(true, Ordering::SeqCst);
        if let Some(mut bytes) = try_recover(buffer.bytes.try_lock()) {
            wipe(&mut bytes);
            buffer.wipe.store(false, Ordering::SeqCst);
        }
    }
}

/// Reads until `buf` is full; bytes past the backing end stay zero (a concurrent shrink
/// by another handle reads as a hole, never as stale plaintext).
pub fn read_full<F: BackingFile + ?Sized>(file: &F, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests;
