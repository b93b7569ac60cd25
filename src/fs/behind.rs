//! What a stream of requests leaves behind it in the backing file system's page cache.
//!
//! One page-cache copy per byte. A read or write through a handle whose plaintext the
//! kernel caches would otherwise leave every byte cached twice: the plaintext in the
//! mount's page cache and the ciphertext in the backing file system's. The backing pages
//! such requests used are advised away (`POSIX_FADV_DONTNEED`) a window at a time: clean
//! pages go at once, dirty ones are queued for writeback (which the kernel would do
//! anyway) and go when the next window is dropped, which covers the previous one again.
//! Pages a request has not used yet, the backing file's readahead past the last read,
//! stay, and so do the pages of scattered (random) requests, which the workload is
//! likely to use again ([`Windows::note`]).
//!
//! Writes that bypass the mount's page cache (write-only and O_DIRECT handles,
//! `--direct-io`) leave their ciphertext as the one cached copy, which stays; but its
//! writeback is started a window at a time (`sync_file_range(SYNC_FILE_RANGE_WRITE)`).
//! A writer on a local file system paces its dirty pages itself: Redis calls
//! `sync_file_range` every 4 MiB of an RDB or AOF rewrite. On a FUSE mount that call
//! reaches only the mount's own page cache, which these writes do not use, so without
//! this the ciphertext of a whole 1 GiB BGSAVE stayed dirty until the final fsync, and a
//! concurrent AOF fdatasync on the same volume waited up to 425 ms behind it (10 ms with
//! it; docs/PERFORMANCE.md, step 19).
//!
//! Neither applies on a backing file system that keeps its files in memory (tmpfs),
//! whose pages are its storage. Durability does not depend on any of this: writeback
//! that starts earlier writes what would have been written later, so a crash can leave
//! the same states as before (any write not yet covered by fsync on disk or not, in
//! part), and fsync still syncs the backing file.

use std::ops::Range;

/// Backing bytes that requests use between two drops, per file: at most about two
/// windows of a file's ciphertext stay cached on top of its plaintext.
const WINDOW: u64 = 8 << 20;

/// What to do with a full window of backing pages.
#[derive(Clone, Copy)]
pub enum Behind {
    /// Drop them: the mount's page cache holds their plaintext.
    Drop,
    /// Start their writeback: they are the only cached copy.
    WriteOut,
}

/// The backing ranges a file's requests used since the last full window.
#[derive(Default)]
pub struct Windows {
    used: u64,
    current: Option<Range<u64>>,
    previous: Option<Range<u64>>,
}

impl Windows {
    /// Notes that a request used backing bytes `range`; once a window is full, returns
    /// the range to act on: the span of this window's requests and the previous window's.
    /// Only a dense window counts, one whose requests span at most twice the bytes they
    /// used (a stream, sequential or nearly so): the span of scattered requests is most
    /// of the file, whose pages a random workload keeps coming back to. Dropping them
    /// would send its next reads, and a format 1 file's partial-page writes, to the
    /// disk, and writing them out would write pages the workload is about to dirty again.
    pub fn note(&mut self, range: Range<u64>) -> Option<Range<u64>> {
        self.used += range.end.saturating_sub(range.start);
        self.current = Some(span(self.current.take(), range));
        if self.used < WINDOW {
            return None;
        }
        let used = std::mem::take(&mut self.used);
        let current = self.current.take()?;
        if current.end - current.start > 2 * used {
            self.previous = None;
            return None;
        }
        let previous = self.previous.replace(current.clone());
        Some(span(previous, current))
    }
}

fn span(a: Option<Range<u64>>, b: Range<u64>) -> Range<u64> {
    match a {
        Some(a) => a.start.min(b.start)..a.end.max(b.end),
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn nothing_is_dropped_before_a_window_is_used() {
        let mut d = Windows::default();
        assert_eq!(d.note(0..WINDOW - 1), None);
        assert_eq!(d.note(WINDOW - 1..WINDOW), Some(0..WINDOW));
    }

    #[test]
    fn sequential_use_drops_each_window_with_the_one_before() {
        let mut d = Windows::default();
        let mut drops = Vec::new();
        for mib in 0..24 {
            drops.extend(d.note(mib * MIB..(mib + 1) * MIB));
        }
        assert_eq!(drops, vec![0..8 * MIB, 0..16 * MIB, 8 * MIB..24 * MIB]);
    }

    #[test]
    fn scattered_use_drops_nothing() {
        let mut d = Windows::default();
        assert_eq!(d.note(100 * MIB..100 * MIB + 4096), None);
        assert_eq!(d.note(3 * MIB..3 * MIB + 4096), None);
        assert_eq!(d.note(50 * MIB..58 * MIB), None);
        // Nor does the dense window after it reach back to the scattered one.
        assert_eq!(d.note(60 * MIB..68 * MIB), Some(60 * MIB..68 * MIB));
    }

    #[test]
    fn nearly_sequential_use_is_dropped() {
        let mut d = Windows::default();
        // 4 KiB requests every 8 KiB: a span of twice the bytes used.
        let mut dropped = None;
        for i in 0..2048 {
            dropped = dropped.or(d.note(i * 8192..i * 8192 + 4096));
        }
        assert_eq!(dropped, Some(0..16 * MIB - 4096));
    }
}
