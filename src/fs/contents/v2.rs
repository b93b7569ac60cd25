//! Format 2 contents: whole 16-byte XTS blocks after a 4 KiB header page.
//!
//! Block `b` holds plaintext bytes `16·b .. 16·b + 16` at backing offset `4096 + 16·b`.
//! The last block is zero-padded, and a length that is not a whole number of blocks is
//! closed by `len mod 16` zero marker bytes after the padded block, which is how the
//! backing length encodes the plaintext length ([`FileFormat::backing_len`]). A block
//! whose ciphertext is all zeros is a hole and reads as zeros.
//!
//! Crash states. Every change here is one of: a pwrite of whole blocks (plus the marker),
//! an ftruncate, a hole punch. A block is 16-byte aligned, so it never straddles a
//! 512-byte sector: after a crash it holds its old ciphertext, its new one or (past the
//! old end) zeros, and each decrypts on its own to its old bytes, its new bytes or zeros.
//! Bytes past the length in the last block (its pad) are zero on every path that makes
//! them part of the file again, and the marker bytes are only ever written as zeros or
//! exposed by extending the file, so the length a crash leaves always reads correctly.
//! Shrinks are made durable at once, so no crash state has a longer length than the file
//! has now, and nothing written past the end can land inside a block a crash keeps.

use std::io;
use std::ops::Range;

use super::{read_full, with_thread_buffer, BackingFile};
use crate::crypto::xts::{Xts256, BLOCK};
use crate::volume::file_header::FileFormat;

const DATA: u64 = FileFormat::V2.data_offset();
const B: u64 = BLOCK as u64;

pub(super) struct V2<'a, F: ?Sized> {
    pub file: &'a F,
    pub cipher: &'a Xts256,
}

/// Aligned to blocks and inside the file: no block is read-modify-written and the
/// length stays.
pub(super) fn writes_in_place(offset: u64, end: u64, len: u64) -> bool {
    offset.is_multiple_of(B) && end.is_multiple_of(B) && end <= len
}

/// The blocks that hold plaintext `range`, as a byte range.
fn blocks_of(range: &Range<u64>) -> Range<u64> {
    range.start / B * B..range.end.next_multiple_of(B)
}

impl<F: BackingFile + ?Sized> V2<'_, F> {
    /// Reads plaintext `range` (inside the file) into `buf`; returns where it is in `buf`.
    pub fn read(&self, range: Range<u64>, buf: &mut Vec<u8>) -> io::Result<Range<usize>> {
        let run = blocks_of(&range);
        // Every byte is overwritten by read_full, so a reused buffer needs no clearing.
        buf.resize((run.end - run.start) as usize, 0);
        read_full(self.file, buf, DATA + run.start)?;
        self.decrypt(run.start / B, buf)?;
        let start = (range.start - run.start) as usize;
        Ok(start..start + (range.end - range.start) as usize)
    }

    /// Writes `data` at plaintext `range` into a file of length `len`: the blocks the
    /// range touches, and when the file grows, the marker of its new length, all in one
    /// pwrite. Only a partly covered first or last block is read first.
    pub fn write(&self, range: Range<u64>, data: &[u8], len: u64) -> io::Result<()> {
        let run = blocks_of(&range);
        let grows = range.end > len;
        if grows && run.start > len / B * B {
            // The old last block is not rewritten here, and becomes part of the file.
            self.settle_tail(len)?;
        }
        let marker = if grows { (range.end % B) as usize } else { 0 };
        let run_len = (run.end - run.start) as usize;
        let written = with_thread_buffer(|buf| {
            if buf.len() < run_len + marker {
                buf.resize(run_len + marker, 0);
            }
            let (blocks, rest) = buf.split_at_mut(run_len);
            rest[..marker].fill(0);
            let at = (range.start - run.start) as usize;
            let first = run.start / B;
            if at == 0 && data.len() == run_len {
                self.cipher
                    .encrypt_blocks_from(first, data, blocks)
                    .map_err(io::Error::other)?;
            } else {
                // A reused buffer holds an earlier request's bytes: the edge blocks are
                // filled whole from the file (zeros past its end), the rest from `data`.
                self.read_block(first, len, first_block(blocks))?;
                let last = run.end / B - 1;
                self.read_block(last, len, last_block(blocks))?;
                blocks[at..at + data.len()].copy_from_slice(data);
                self.cipher
                    .encrypt_blocks(first, blocks)
                    .map_err(io::Error::other)?;
            }
            self.file
                .write_all_at(&buf[..run_len + marker], DATA + run.start)?;
            // Growing to the end of the old last block leaves the old marker past the
            // new end: cut it off, or the old length would still be read.
            let backing_len = FileFormat::V2.backing_len(range.end);
            if grows && FileFormat::V2.backing_len(len) > backing_len {
                self.file.set_len(backing_len)?;
            }
            Ok(())
        });
        if written.is_err() && grows {
            // A failed write leaves the length as it was.
            let restored = self
                .file
                .set_len(FileFormat::V2.backing_len(len))
                .and_then(|()| self.make_shrink_durable());
            if let Err(e) = restored {
                tracing::error!("could not undo a failed extension to {len} bytes: {e}");
            }
        }
        written
    }

    pub fn resize(&self, len: u64, new_len: u64) -> io::Result<()> {
        if new_len > len {
            self.settle_tail(len)?;
            return self.file.set_len(FileFormat::V2.backing_len(new_len));
        }
        if new_len == 0 {
            // The header goes too, and the next write starts the file over under a fresh
            // nonce. The truncation is made durable first: a crash must never leave the
            // new header in front of the old blocks, which it would decrypt to garbage.
            self.file.set_len(0)?;
            return self.file.sync_data();
        }
        if !new_len.is_multiple_of(B) {
            // The new last block keeps its bytes before the new end and zeros after.
            let last = new_len / B;
            let mut block = [0u8; BLOCK];
            self.read_block(last, new_len, &mut block)?;
            self.write_block(last, &mut block)?;
        }
        // Cut at the padded end, then extend over the marker: the file system zero-fills
        // the marker bytes, whatever ciphertext stood there before.
        self.file.set_len(DATA + new_len.next_multiple_of(B))?;
        if !new_len.is_multiple_of(B) {
            self.file.set_len(FileFormat::V2.backing_len(new_len))?;
        }
        self.make_shrink_durable()
    }

    /// A shrink is made durable before anything else is written. Writers put zero marker
    /// bytes past the end of the file; were the old, longer length still to come back in
    /// a crash, those zeros would sit inside one of its blocks and tear it.
    fn make_shrink_durable(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Makes `range` (inside the file) read as zeros without changing the length: whole
    /// blocks become backing holes, a partly covered edge block is rewritten.
    pub fn zero(&self, range: Range<u64>, len: u64) -> io::Result<()> {
        // A range to the end covers the last block whole: its pad is zeros anyway.
        let whole_end = if range.end == len {
            len.next_multiple_of(B)
        } else {
            range.end / B * B
        };
        let whole = range.start.next_multiple_of(B)..whole_end;
        if whole.start < whole.end {
            self.file.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                DATA + whole.start,
                whole.end - whole.start,
            )?;
        }
        let run = blocks_of(&range);
        let edges = [run.start / B, run.end / B - 1];
        for (i, &block) in edges.iter().enumerate() {
            let start = block * B;
            if (i == 1 && block == edges[0]) || (whole.start <= start && start + B <= whole.end) {
                continue;
            }
            let mut plain = [0u8; BLOCK];
            self.read_block(block, len, &mut plain)?;
            let from = range.start.max(start) - start;
            let to = range.end.min(start + B) - start;
            plain[from as usize..to as usize].fill(0);
            self.write_block(block, &mut plain)?;
        }
        Ok(())
    }

    /// Makes the pad of the last block and the marker after it zero before the length
    /// grows past them. Every writer leaves them zero; only a crash that kept a block's new
    /// ciphertext but not the new length can leave bytes there, and those must not appear
    /// inside the grown file.
    fn settle_tail(&self, len: u64) -> io::Result<()> {
        if len.is_multiple_of(B) {
            return Ok(());
        }
        let last = len / B;
        let keep = (len % B) as usize;
        let mut stored = [0u8; 2 * BLOCK];
        let stored = &mut stored[..BLOCK + keep];
        read_full(self.file, stored, DATA + last * B)?;
        let (block, marker) = stored.split_at_mut(BLOCK);
        let block: &mut [u8; BLOCK] = block.try_into().map_err(io::Error::other)?;
        if marker.iter().any(|b| *b != 0) {
            marker.fill(0);
            self.file.write_all_at(marker, DATA + (last + 1) * B)?;
        }
        if !is_hole(block) {
            self.decrypt(last, block)?;
            if block[keep..].iter().any(|b| *b != 0) {
                block[keep..].fill(0);
                self.write_block(last, block)?;
            }
        }
        Ok(())
    }

    /// The plaintext of `block` in a file of length `len` into `out`: zeros for a hole,
    /// and zeros from the end of the file on.
    fn read_block(&self, block: u64, len: u64, out: &mut [u8]) -> io::Result<()> {
        let start = block * B;
        if start >= len {
            out.fill(0);
            return Ok(());
        }
        read_full(self.file, out, DATA + start)?;
        self.decrypt(block, out)?;
        if len - start < B {
            out[(len - start) as usize..].fill(0);
        }
        Ok(())
    }

    fn write_block(&self, block: u64, plain: &mut [u8; BLOCK]) -> io::Result<()> {
        self.cipher
            .encrypt_blocks(block, plain)
            .map_err(io::Error::other)?;
        self.file.write_all_at(plain, DATA + block * B)
    }

    /// Decrypts whole blocks in place, starting at block `first`; runs of holes stay
    /// zeros and the blocks between them are decrypted together.
    fn decrypt(&self, first: u64, buf: &mut [u8]) -> io::Result<()> {
        let (blocks, _) = buf.as_chunks_mut::<BLOCK>();
        let mut i = 0;
        while i < blocks.len() {
            if is_hole(&blocks[i]) {
                i += 1;
                continue;
            }
            let end = (i..blocks.len())
                .find(|&j| is_hole(&blocks[j]))
                .unwrap_or(blocks.len());
            self.cipher
                .decrypt_blocks(first + i as u64, blocks[i..end].as_flattened_mut())
                .map_err(io::Error::other)?;
            i = end;
        }
        Ok(())
    }
}

fn is_hole(block: &[u8; BLOCK]) -> bool {
    u128::from_ne_bytes(*block) == 0
}

fn first_block(blocks: &mut [u8]) -> &mut [u8] {
    &mut blocks[..BLOCK]
}

fn last_block(blocks: &mut [u8]) -> &mut [u8] {
    let at = blocks.len() - BLOCK;
    &mut blocks[at..]
}
