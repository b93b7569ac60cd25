//! Encrypted file contents over a backing file: positional reads and writes in whole
//! 4 KiB data units, coalesced into one backing pread/pwrite per request.
//!
//! The plaintext length is the backing length minus the file header, so a unit's XTS
//! length depends on the file length: when a file grows past a partial last unit, that
//! unit is re-encrypted at its new length. A unit whose ciphertext is all zeros is a
//! hole and reads as zeros, which is what ftruncate, fallocate and hole punching leave
//! in the backing file. A last unit shorter than an AES block is the exception: its
//! ciphertext is all zeros for 1 in 256^n unit indices, so it is always decrypted, and
//! growing or zeroing never leaves one as a hole.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::crypto::xts::{Xts256, BLOCK};
use crate::crypto::DATA_UNIT;
use crate::volume::file_header::FILE_HEADER_LEN;

pub const UNIT: u64 = DATA_UNIT as u64;
pub const HEADER: u64 = FILE_HEADER_LEN as u64;

/// The contents of one backing file, seen through its XTS cipher. Callers hold the file's
/// content lock: shared for reads and for writes of whole units that don't change the
/// last unit, exclusive otherwise.
pub struct Contents<'a> {
    pub file: &'a File,
    pub cipher: &'a Xts256,
}

impl Contents<'_> {
    /// Reads `size` bytes at `offset` into `buf` (reused across calls); returns the range
    /// of `buf` to reply with.
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
        let first = offset / UNIT;
        let run = first * UNIT..len.min(end.div_ceil(UNIT) * UNIT);
        // Every byte is overwritten by read_full, so a reused buffer needs no clearing.
        buf.resize((run.end - run.start) as usize, 0);
        read_full(self.file, buf, HEADER + run.start)?;
        self.decrypt_run(first, buf)?;
        let start = (offset - run.start) as usize;
        Ok(start..start + (end - offset) as usize)
    }

    /// Writes `data` at `offset` into a file of plaintext length `len`.
    pub fn write(&self, offset: u64, data: &[u8], len: u64) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| fits(*end))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let new_len = len.max(end);
        let first = offset / UNIT;
        // A partial last unit before the written range grows to its new length.
        let grows_tail = new_len > len && !len.is_multiple_of(UNIT) && len / UNIT < first;
        let last = (end - 1) / UNIT;
        let run = first * UNIT..new_len.min((last + 1) * UNIT);
        if grows_tail {
            self.reserve(unit_range(len / UNIT, new_len))?;
        }
        if new_len > len {
            self.reserve(run.clone())?;
        }
        if grows_tail {
            self.reencrypt_unit(len / UNIT, len, new_len, None)?;
        }
        let written = with_thread_buffer(|buf| {
            let run_len = (run.end - run.start) as usize;
            if buf.len() < run_len {
                buf.resize(run_len, 0);
            }
            let buf = &mut buf[..run_len];
            for (unit, unit_buf) in (first..).zip(buf.chunks_mut(DATA_UNIT)) {
                let unit_start = unit * UNIT;
                let covered = offset.max(unit_start)..end.min(unit_start + unit_buf.len() as u64);
                let source =
                    &data[(covered.start - offset) as usize..(covered.end - offset) as usize];
                if source.len() == unit_buf.len() {
                    self.cipher.encrypt_unit_from(unit, source, unit_buf)
                } else {
                    // Only the first and last units can be partly covered. A reused buffer
                    // holds an earlier request's bytes, so the unit starts as zeros (for
                    // gaps past the old end), then takes its old bytes and the new ones.
                    unit_buf.fill(0);
                    self.read_unit_into(unit, len, unit_buf)?;
                    let at = (covered.start - unit_start) as usize;
                    unit_buf[at..at + source.len()].copy_from_slice(source);
                    self.cipher.encrypt_unit(unit, unit_buf)
                }
                .map_err(io::Error::other)?;
            }
            self.file.write_all_at(buf, HEADER + run.start)
        });
        // A failed write leaves the length as it was, the old last unit included.
        if written.is_err() && grows_tail {
            self.restore_len(len);
        }
        written
    }

    /// Changes the plaintext length from `len` to `new_len`.
    pub fn resize(&self, len: u64, new_len: u64) -> io::Result<()> {
        if new_len == len {
            return Ok(());
        }
        if new_len > len {
            if !fits(new_len) {
                return Err(io::Error::from_raw_os_error(libc::EFBIG));
            }
            let grown = self.grow(len, new_len);
            if grown.is_err() {
                self.restore_len(len);
            }
            return grown;
        }
        // Shrinking: a new partial last unit is re-encrypted at its shorter length.
        let tail = (!new_len.is_multiple_of(UNIT))
            .then(|| self.read_unit(new_len / UNIT, len))
            .transpose()?;
        self.file.set_len(HEADER + new_len)?;
        if let Some(mut unit) = tail {
            unit.truncate((new_len % UNIT) as usize);
            self.cipher
                .encrypt_unit(new_len / UNIT, &mut unit)
                .map_err(io::Error::other)?;
            self.file
                .write_all_at(&unit, HEADER + (new_len / UNIT) * UNIT)?;
        }
        Ok(())
    }

    fn grow(&self, len: u64, new_len: u64) -> io::Result<()> {
        let last = new_len / UNIT;
        // The old partial last unit grows; a new last unit too short to be a hole is
        // written as encrypted zeros. Space for both is reserved before either is written.
        let old_tail = (!len.is_multiple_of(UNIT)).then_some(len / UNIT);
        let short_last =
            ((1..BLOCK as u64).contains(&(new_len % UNIT)) && len <= last * UNIT).then_some(last);
        let rewritten = || old_tail.into_iter().chain(short_last);
        for unit in rewritten() {
            self.reserve(unit_range(unit, new_len))?;
        }
        for unit in rewritten() {
            self.reencrypt_unit(unit, len, new_len, None)?;
        }
        self.file.set_len(HEADER + new_len)
    }

    /// Allocates the backing blocks of plaintext `range` before a write that grows the
    /// file. A write that ran out of space part-way would leave a unit half new and half old
    /// ciphertext, unreadable, and with it bytes acknowledged long ago (the old last unit is
    /// rewritten at its new length). Reserved first, a full disk is ENOSPC before anything
    /// changes. File systems without fallocate get the plain write.
    fn reserve(&self, range: Range<u64>) -> io::Result<()> {
        if range.start >= range.end {
            return Ok(());
        }
        let reserved = super::backing::fallocate(
            self.file,
            libc::FALLOC_FL_KEEP_SIZE,
            HEADER + range.start,
            range.end - range.start,
        );
        match reserved {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    /// After growing failed (a backing limit, no space), puts the file back to plaintext
    /// length `len`, its last unit re-encrypted at that length again: a failed call leaves
    /// the file as it was.
    fn restore_len(&self, len: u64) {
        let restored = self.file.metadata().and_then(|meta| {
            let now = meta.len().saturating_sub(HEADER);
            if now > len {
                self.resize(now, len)
            } else {
                Ok(())
            }
        });
        if let Err(e) = restored {
            tracing::error!("could not undo a failed extension to {len} bytes: {e}");
        }
    }

    /// Makes `range` (clamped to the file) read as zeros without changing the length:
    /// whole units become backing holes, partly covered units are rewritten.
    pub fn zero(&self, range: Range<u64>, len: u64) -> io::Result<()> {
        let range = range.start..range.end.min(len);
        if range.start >= range.end {
            return Ok(());
        }
        // Units wholly inside the range; the last unit counts as whole when the range runs to
        // the end of the file, unless it is too short to be a hole.
        let whole_end = if range.end == len && len % UNIT >= BLOCK as u64 {
            len
        } else {
            range.end / UNIT * UNIT
        };
        let whole = range.start.div_ceil(UNIT) * UNIT..whole_end;
        if whole.start < whole.end {
            super::backing::fallocate(
                self.file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                HEADER + whole.start,
                whole.end - whole.start,
            )?;
        }
        for unit in edge_units(range.start / UNIT, (range.end - 1) / UNIT) {
            let unit_range = unit_range(unit, len);
            let covered = unit_range.start.max(range.start)..unit_range.end.min(range.end);
            if covered.start >= covered.end
                || (whole.start <= covered.start && covered.end <= whole.end)
            {
                continue;
            }
            let zero_at = (covered.start - unit_range.start) as usize
                ..(covered.end - unit_range.start) as usize;
            self.reencrypt_unit(unit, len, len, Some(zero_at))?;
        }
        Ok(())
    }

    /// Rewrites one unit at its length in a file growing from `len` to `new_len`,
    /// optionally zeroing part of it.
    fn reencrypt_unit(
        &self,
        unit: u64,
        len: u64,
        new_len: u64,
        zero: Option<Range<usize>>,
    ) -> io::Result<()> {
        let mut plain = self.read_unit(unit, len)?;
        plain.resize((new_len.min((unit + 1) * UNIT) - unit * UNIT) as usize, 0);
        if let Some(zero) = zero {
            plain[zero].fill(0);
        }
        self.cipher
            .encrypt_unit(unit, &mut plain)
            .map_err(io::Error::other)?;
        self.file.write_all_at(&plain, HEADER + unit * UNIT)
    }

    /// The plaintext of one unit of a file of length `len` (empty past the end).
    fn read_unit(&self, unit: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; unit_len(unit, len)];
        self.read_unit_into(unit, len, &mut buf)?;
        Ok(buf)
    }

    /// Decrypts one unit of a file of length `len` into the start of `out`, which must
    /// hold it; leaves `out` alone past the end of the file.
    fn read_unit_into(&self, unit: u64, len: u64, out: &mut [u8]) -> io::Result<()> {
        let Some(out) = out.get_mut(..unit_len(unit, len)) else {
            return Err(io::Error::other("unit buffer too short"));
        };
        if out.is_empty() {
            return Ok(());
        }
        read_full(self.file, out, HEADER + unit * UNIT)?;
        self.decrypt_run(unit, out)
    }

    fn decrypt_run(&self, first: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, unit) in buf.chunks_mut(DATA_UNIT).enumerate() {
            if unit.len() < BLOCK || unit.iter().any(|b| *b != 0) {
                self.cipher
                    .decrypt_unit(first + i as u64, unit)
                    .map_err(io::Error::other)?;
            }
        }
        Ok(())
    }
}

/// Whether a plaintext length, with the header before it, is a representable file offset.
fn fits(len: u64) -> bool {
    len <= i64::MAX as u64 - HEADER
}

thread_local! {
    static THREAD_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` over this thread's buffer for a run of units, which holds an earlier request's
/// bytes. A FUSE thread serves one read or write at a time, so one buffer per thread
/// serves both, and a 1 MiB request does not allocate and page-fault in a fresh one.
pub fn with_thread_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    THREAD_BUFFER.with(|cell| {
        // Taken out, not borrowed: a nested call gets an empty buffer instead of a panic.
        let mut buf = cell.take();
        let result = f(&mut buf);
        cell.replace(buf);
        result
    })
}

/// The plaintext bytes of `unit` in a file of length `len`.
fn unit_range(unit: u64, len: u64) -> Range<u64> {
    unit * UNIT..len.min((unit + 1) * UNIT)
}

/// How many plaintext bytes `unit` holds in a file of length `len` (0 past the end).
fn unit_len(unit: u64, len: u64) -> usize {
    let range = unit_range(unit, len);
    range.end.saturating_sub(range.start) as usize
}

/// The first and last unit of a run, once each.
fn edge_units(first: u64, last: u64) -> impl Iterator<Item = u64> {
    std::iter::once(first).chain((last != first).then_some(last))
}

/// Reads until `buf` is full; bytes past the backing end stay zero (a concurrent shrink
/// by another handle reads as a hole, never as stale plaintext).
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
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
mod tests {
    use super::*;
    use crate::crypto::VolumeKey;
    use crate::volume::file_header::FileHeader;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write { offset: u64, len: usize, seed: u8 },
        Resize { len: u64 },
        Zero { offset: u64, len: u64 },
    }

    /// Offsets cluster around unit boundaries and short tails, where the arithmetic is.
    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..3 * UNIT + 40,
            (0..5u64).prop_flat_map(|u| (u * UNIT).saturating_sub(17)..u * UNIT + 17)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (offset(), 1..2 * DATA_UNIT + 20, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
            1 => offset().prop_map(|len| Op::Resize { len }),
            1 => (offset(), 0..2 * UNIT + 20).prop_map(|(offset, len)| Op::Zero { offset, len }),
        ]
    }

    fn apply(contents: &Contents<'_>, model: &mut Vec<u8>, op: &Op) {
        let len = model.len() as u64;
        match *op {
            Op::Write {
                offset,
                len: n,
                seed,
            } => {
                let data: Vec<u8> = (0..n).map(|i| seed.wrapping_add(i as u8) | 1).collect();
                contents.write(offset, &data, len).unwrap();
                let end = offset as usize + n;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
            }
            Op::Resize { len: new_len } => {
                contents.resize(len, new_len).unwrap();
                model.resize(new_len as usize, 0);
            }
            Op::Zero { offset, len: n } => {
                contents.zero(offset..offset + n, len).unwrap();
                let end = ((offset + n) as usize).min(model.len());
                if (offset as usize) < end {
                    model[offset as usize..end].fill(0);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn contents_match_a_plain_byte_model(ops in prop::collection::vec(op(), 1..24)) {
            let dek = VolumeKey::generate().unwrap();
            let header = FileHeader::generate().unwrap();
            let cipher = dek.file_cipher(&header.nonce);
            let file = tempfile::tempfile().unwrap();
            file.write_all_at(&header.encode(), 0).unwrap();
            let contents = Contents { file: &file, cipher: &cipher };
            let mut model = Vec::new();
            for op in &ops {
                // Every write starts from a buffer full of another request's bytes.
                with_thread_buffer(|buf| {
                    buf.clear();
                    buf.resize(3 * DATA_UNIT, 0xa5);
                });
                apply(&contents, &mut model, op);
                let backing_len = file.metadata().unwrap().len();
                prop_assert_eq!(backing_len, HEADER + model.len() as u64, "length after {:?}", op);
                let mut buf = Vec::new();
                let range = contents.read(0, model.len() + 10, model.len() as u64, &mut buf).unwrap();
                prop_assert!(&buf[range] == model.as_slice(), "contents after {:?}", op);
            }
            // Reads at every unit-straddling offset agree with the model too.
            let len = model.len() as u64;
            for start in (0..len).step_by(1361) {
                let mut buf = vec![0xee; 3];
                let range = contents.read(start, 5000, len, &mut buf).unwrap();
                let end = (start as usize + 5000).min(model.len());
                prop_assert!(buf[range] == model[start as usize..end]);
            }
        }
    }
}
