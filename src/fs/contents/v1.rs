//! Format 1 contents: positional reads and writes in whole 4 KiB data units.
//!
//! The plaintext length is the backing length minus the file header, so a unit's XTS
//! length depends on the file length: when a file grows past a partial last unit, that
//! unit is re-encrypted at its new length. A unit whose ciphertext is all zeros is a
//! hole and reads as zeros, which is what ftruncate, fallocate and hole punching leave
//! in the backing file. A last unit shorter than an AES block is the exception: its
//! ciphertext is all zeros for 1 in 256^n unit indices, so it is always decrypted, and
//! growing or zeroing never leaves one as a hole.

use std::io;
use std::ops::Range;

use super::{read_full, with_thread_buffer, BackingFile, UNIT};
use crate::crypto::xts::{Xts256, BLOCK};
use crate::crypto::DATA_UNIT;
use crate::volume::file_header::FileFormat;

const HEADER: u64 = FileFormat::V1.data_offset();

/// Format 1 contents; see [`super::Contents`] for the locking rules.
pub(super) struct V1<'a, F: ?Sized> {
    pub file: &'a F,
    pub cipher: &'a Xts256,
}

impl<F: BackingFile + ?Sized> V1<'_, F> {
    /// Reads plaintext `range` (inside the file) into `buf`; returns where it is in `buf`.
    pub fn read(&self, range: Range<u64>, len: u64, buf: &mut Vec<u8>) -> io::Result<Range<usize>> {
        let (offset, end) = (range.start, range.end);
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
        let end = offset + data.len() as u64;
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
        if new_len > len {
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
        let reserved = self.file.fallocate(
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
        let restored = self.file.size().and_then(|backing_len| {
            let now = backing_len.saturating_sub(HEADER);
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
        // Units wholly inside the range; the last unit counts as whole when the range runs to
        // the end of the file, unless it is too short to be a hole.
        let whole_end = if range.end == len && len % UNIT >= BLOCK as u64 {
            len
        } else {
            range.end / UNIT * UNIT
        };
        let whole = range.start.div_ceil(UNIT) * UNIT..whole_end;
        if whole.start < whole.end {
            self.file.fallocate(
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
