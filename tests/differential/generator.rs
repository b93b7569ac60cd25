//! Generating operations from a seed.

use crate::common::users::{ALICE, BOB, SHARED_GROUP};
use crate::common::{Rng, MIB, UNIT};
use crate::model::{Kind, Listing, ANY_KIND, NOT_DIR};
use crate::op::{
    FallocMode, Fill, Mode, NodeKind, Op, OpenFlags, RelPath, RenameFlags, TimeSpec, XattrFlags,
    XattrName,
};
use crate::{
    AS_OTHER_ONE_IN, MAX_DIR_DEPTH, MAX_ENTRIES, MAX_FILE, MAX_XATTR_VALUE, POSIX_OPS_PERCENT,
    REMOUNT_ONE_IN, SLOTS,
};

/// Entry names: short, non-UTF-8, multibyte UTF-8, long enough to be stored under a hash
/// with a side file (plaintext over 175 bytes), and names carrying the canary.
fn name_pool(canary: &[u8]) -> Vec<Vec<u8>> {
    let mut long_binary: Vec<u8> = (0..255u32).map(|i| (0x80 + i % 0x7f) as u8).collect();
    long_binary[..4].copy_from_slice(b"bin-");
    let mut long_canary = b"long-".to_vec();
    long_canary.extend_from_slice(canary);
    long_canary.resize(230, b'c');
    vec![
        b"a".to_vec(),
        b"b".to_vec(),
        b"dir".to_vec(),
        b"file.txt".to_vec(),
        b"caf\xe9".to_vec(),
        b"\xff\xfe\x80-raw".to_vec(),
        "ünïcödé ✓".as_bytes().to_vec(),
        b"new\nline and space".to_vec(),
        vec![b'x'; 200],
        long_binary,
        [b"n-".as_slice(), canary].concat(),
        long_canary,
    ]
}

/// A string that must never appear in the clear in the backing directory.
pub(crate) fn canary(seed: u64) -> Vec<u8> {
    format!("xtsfs-canary-{seed:016x}").into_bytes()
}

/// Extended attribute names: `user.` and `trusted.` ones, one at the longest `user.`
/// name xtsfs stores (README, "POSIX behaviour": 172 bytes; longer ones give ERANGE where
/// the local file system takes up to 255, so none is generated), names carrying the
/// canary, and names both sides must refuse alike: an empty `user.` suffix, an
/// unsupported `system.` one and one without a namespace.
fn xattr_name_pool(canary: &[u8]) -> Vec<Vec<u8>> {
    let mut longest = b"user.".to_vec();
    longest.resize(172, b'n');
    vec![
        b"user.a".to_vec(),
        b"user.a".to_vec(),
        b"user.b".to_vec(),
        b"user.mime_type".to_vec(),
        b"user.caf\xe9.\xff".to_vec(),
        [b"user.".as_slice(), canary].concat(),
        longest,
        b"trusted.t".to_vec(),
        b"trusted.overlay.opaque".to_vec(),
        [b"trusted.".as_slice(), canary].concat(),
        b"user.".to_vec(),
        b"system.nonesuch".to_vec(),
        b"nonamespace".to_vec(),
    ]
}

pub(crate) struct Generator {
    rng: Rng,
    names: Vec<Vec<u8>>,
    xattr_names: Vec<Vec<u8>>,
    canary: Vec<u8>,
}

impl Generator {
    pub(crate) fn new(seed: u64) -> Self {
        let canary = canary(seed);
        Generator {
            rng: Rng(seed),
            names: name_pool(&canary),
            xattr_names: xattr_name_pool(&canary),
            canary,
        }
    }

    /// An op, run as the second user one time in AS_OTHER_ONE_IN when it names paths
    /// only (an op on a handle slot runs as root, who opened it).
    pub(crate) fn op(&mut self, listing: &Listing, open_slots: &[(usize, u64)]) -> Op {
        let op = if self.rng.percent(POSIX_OPS_PERCENT) {
            self.posix_op(listing)
        } else {
            self.contents_op(listing, open_slots)
        };
        let by_path =
            op.slot().is_none() && !matches!(op, Op::Open { .. } | Op::Close { .. } | Op::Remount);
        if by_path && self.rng.below(AS_OTHER_ONE_IN) == 0 {
            Op::AsOther {
                umask: Mode(*self.rng.pick(&[0o022, 0o022, 0, 0o077, 0o002, 0o027])),
                op: Box::new(op),
            }
        } else {
            op
        }
    }

    /// Owners and groups: root's, the second user's (whose groups are its own and
    /// SHARED_GROUP), and a user and group it is not.
    fn owner(&mut self) -> (Option<u32>, Option<u32>) {
        let uid = *self
            .rng
            .pick(&[Some(ALICE), Some(ALICE), Some(0), Some(BOB), None]);
        let gid = *self.rng.pick(&[
            Some(ALICE),
            Some(SHARED_GROUP),
            Some(SHARED_GROUP),
            Some(0),
            Some(BOB),
            None,
        ]);
        (uid, gid)
    }

    pub(crate) fn mode(&mut self) -> Mode {
        if self.rng.percent(15) {
            return Mode(self.rng.below(0o10000) as u32);
        }
        Mode(*self.rng.pick(&[
            0o644, 0o600, 0o755, 0o777, 0o666, 0o640, 0o4755, 0o2755, 0o6755, 0o2644, 0o4644,
            0o1777, 0o1755, 0o2775, 0o3777, 0o000, 0o4777, 0o6777, 0o2745,
        ]))
    }

    fn time(&mut self) -> TimeSpec {
        match self.rng.below(10) {
            0..=2 => TimeSpec::Now,
            3..=5 => TimeSpec::Omit,
            _ => {
                let (sec, nsec) = *self.rng.pick(&[
                    (0, 0),
                    (1_700_000_000, 123_456_789),
                    (1_000_000_000, 999_999_999),
                    // Past 2038, and before 1970.
                    (4_000_000_000, 1),
                    (-1_000_000, 500_000_000),
                ]);
                TimeSpec::At(sec, nsec)
            }
        }
    }

    /// chmod, chown, mknod, extended attributes and utimensat.
    fn posix_op(&mut self, listing: &Listing) -> Op {
        match self.rng.below(100) {
            0..=19 => Op::Chmod {
                path: self.any_path(listing),
                mode: self.mode(),
            },
            20..=33 => {
                let (uid, gid) = self.owner();
                Op::Chown {
                    path: self.any_path(listing),
                    uid,
                    gid,
                    follow: self.rng.percent(40),
                }
            }
            34..=45 => {
                let dev = *self
                    .rng
                    .pick(&[(1, 3), (7, 200), (259, 0x12345), (4095, 0xfffff)]);
                let kind = match self.rng.below(10) {
                    0..=2 => NodeKind::Fifo,
                    3 | 4 => NodeKind::Socket,
                    5 | 6 => NodeKind::Char(dev.0, dev.1),
                    7 | 8 => NodeKind::Block(dev.0, dev.1),
                    _ => NodeKind::Regular,
                };
                Op::Mknod {
                    path: self.new_path(listing),
                    kind,
                    mode: self.mode(),
                }
            }
            46..=61 => Op::SetXattr {
                path: self.any_path(listing),
                name: XattrName(self.rng.pick(&self.xattr_names).clone()),
                len: *self.rng.pick(&[0, 1, 15, 16, 17, 100, MAX_XATTR_VALUE]),
                fill: self.fill(),
                flags: XattrFlags(*self.rng.pick(&[
                    0,
                    0,
                    0,
                    libc::XATTR_CREATE,
                    libc::XATTR_REPLACE,
                ])),
            },
            62..=71 => Op::GetXattr {
                path: self.any_path(listing),
                name: XattrName(self.rng.pick(&self.xattr_names).clone()),
                size: *self
                    .rng
                    .pick(&[None, None, None, Some(0), Some(1), Some(16), Some(200)]),
            },
            72..=77 => Op::ListXattr {
                path: self.any_path(listing),
            },
            78..=85 => Op::RemoveXattr {
                path: self.any_path(listing),
                name: XattrName(self.rng.pick(&self.xattr_names).clone()),
            },
            _ => Op::Utimens {
                path: self.any_path(listing),
                atime: self.time(),
                mtime: self.time(),
                follow: self.rng.percent(40),
            },
        }
    }

    fn name(&mut self) -> Vec<u8> {
        // Rarely one byte over NAME_MAX: both sides must refuse it the same way.
        if self.rng.percent(1) {
            return vec![b'L'; 256];
        }
        self.rng.pick(&self.names).clone()
    }

    /// A path that may or may not exist, in an existing directory.
    fn new_path(&mut self, listing: &Listing) -> RelPath {
        let dir = self.rng.pick(&listing.dirs).clone();
        dir.join(&self.name())
    }

    pub(crate) fn existing(&mut self, listing: &Listing, kinds: &[Kind]) -> Option<(RelPath, u64)> {
        let matching: Vec<_> = listing
            .entries
            .iter()
            .filter(|(_, kind, _)| kinds.contains(kind))
            .collect();
        if matching.is_empty() {
            return None;
        }
        let (path, _, size) = self.rng.pick(&matching);
        Some((path.clone(), *size))
    }

    /// Mostly an existing file; sometimes anything, or a new path.
    fn file_path(&mut self, listing: &Listing) -> (RelPath, u64) {
        let found = match self.rng.below(20) {
            0..=15 => self.existing(listing, &[Kind::File]),
            16 | 17 => self.existing(listing, &ANY_KIND),
            _ => None,
        };
        found.unwrap_or_else(|| (self.new_path(listing), 0))
    }

    /// Any existing entry most of the time, else a path that may not exist.
    fn any_path(&mut self, listing: &Listing) -> RelPath {
        let found = if self.rng.percent(80) {
            self.existing(listing, &ANY_KIND)
        } else {
            None
        };
        found.map_or_else(|| self.new_path(listing), |(path, _)| path)
    }

    /// Offsets cluster where the unit arithmetic is: unit boundaries ±17, the end of the
    /// file and its short tail, and far past the end (a hole).
    fn offset(&mut self, size: u64) -> u64 {
        match self.rng.below(10) {
            0..=2 => {
                let unit = self.rng.below(size / UNIT + 3);
                (unit * UNIT + self.rng.below(35)).saturating_sub(17)
            }
            3 => size,
            4 => size.saturating_sub(1 + self.rng.below(15)),
            5 => size + 1 + self.rng.below(2 * MIB),
            6 => self.rng.below(size / UNIT + 2) * UNIT,
            _ => self.rng.below(size + 100),
        }
    }

    fn length(&mut self) -> u64 {
        match self.rng.below(20) {
            0..=3 => 1 + self.rng.below(15),
            4..=6 => ((1 + self.rng.below(3)) * UNIT + self.rng.below(35)).saturating_sub(17),
            7 | 8 => (1 + self.rng.below(4)) * UNIT,
            9 => MIB,
            10 => MIB + self.rng.below(35) - 17,
            _ => 1 + self.rng.below(10_000),
        }
    }

    /// An offset and length for a write into a file of `size` bytes, kept under MAX_FILE.
    fn extent(&mut self, size: u64) -> (u64, u64) {
        let len = self.length();
        // Whole units at a unit boundary take the daemon's parallel write path.
        let mut offset = if self.rng.percent(10) && len.is_multiple_of(UNIT) {
            self.rng.below(size / UNIT + 2) * UNIT
        } else {
            self.offset(size)
        };
        if offset + len > MAX_FILE {
            offset = self.rng.below(MAX_FILE - len);
        }
        (offset, len)
    }

    fn new_size(&mut self, size: u64) -> u64 {
        let new = match self.rng.below(10) {
            0 => 0,
            1..=3 => {
                let unit = self.rng.below(size / UNIT + 3);
                (unit * UNIT + self.rng.below(35)).saturating_sub(17)
            }
            4 => size.saturating_sub(1 + self.rng.below(15)),
            5 => self.rng.below(size + 1),
            6 => size + 1 + self.rng.below(3 * UNIT),
            7 => size + self.rng.below(MIB),
            8 => size,
            _ => size + 1 + self.rng.below(15),
        };
        new.min(MAX_FILE)
    }

    fn fill(&mut self) -> Fill {
        match self.rng.below(10) {
            0 => Fill::Zeros,
            1 => Fill::Canary,
            _ => Fill::Random(self.rng.next()),
        }
    }

    fn falloc_mode(&mut self) -> FallocMode {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        FallocMode(*self.rng.pick(&[
            0,
            keep,
            libc::FALLOC_FL_PUNCH_HOLE | keep,
            libc::FALLOC_FL_PUNCH_HOLE | keep,
            libc::FALLOC_FL_ZERO_RANGE,
            libc::FALLOC_FL_ZERO_RANGE | keep,
        ]))
    }

    fn falloc_extent(&mut self, size: u64) -> (u64, u64) {
        let (offset, len) = self.extent(size);
        // A zero length is EINVAL on both sides; keep it rare.
        (offset, if self.rng.percent(2) { 0 } else { len })
    }

    /// Symlink targets stay inside the tree (no "..", not absolute) so following one on
    /// either side never leaves its root.
    fn target(&mut self) -> RelPath {
        match self.rng.below(10) {
            0 => RelPath(Vec::new()),
            1 => RelPath(self.canary.clone()),
            2 => {
                let part = self.rng.pick(&self.names).clone();
                let repeat = 1 + self.rng.below(8) as usize;
                RelPath(vec![part; repeat].join(&b'/'))
            }
            3 | 4 => RelPath(self.rng.pick(&self.names).clone()).join(&self.name()),
            _ => RelPath(self.name()),
        }
    }

    fn open_flags(&mut self) -> OpenFlags {
        let mut flags =
            *self
                .rng
                .pick(&[libc::O_RDWR, libc::O_RDWR, libc::O_WRONLY, libc::O_RDONLY]);
        for (bit, percent) in [
            (libc::O_CREAT, 30),
            (libc::O_APPEND, 25),
            (libc::O_TRUNC, 8),
            (libc::O_EXCL, 5),
        ] {
            if self.rng.percent(percent) {
                flags |= bit;
            }
        }
        OpenFlags(flags)
    }

    /// `open_slots` pairs each open handle slot with the size of the file it holds.
    fn contents_op(&mut self, listing: &Listing, open_slots: &[(usize, u64)]) -> Op {
        if self.rng.below(REMOUNT_ONE_IN) == 0 {
            return Op::Remount;
        }
        let crowded = listing.entries.len() > MAX_ENTRIES;
        let mut choice = self.rng.below(100);
        if crowded && choice >= 50 {
            // Remove until the tree is small again: unlink or rmdir.
            choice = if self.rng.percent(70) { 58 } else { 67 };
        }
        if choice >= 79 && open_slots.is_empty() {
            // Nothing open yet for a handle op: open something instead.
            choice = 75;
        }
        match choice {
            0..=17 => {
                let (path, size) = self.file_path(listing);
                let (offset, len) = self.extent(size);
                Op::Write {
                    path,
                    create: self.rng.percent(85),
                    offset,
                    len,
                    fill: self.fill(),
                }
            }
            18..=22 => {
                let (path, size) = self.file_path(listing);
                let len = if size + MIB > MAX_FILE {
                    1 + self.rng.below(100)
                } else {
                    self.length()
                };
                Op::Append {
                    path,
                    create: self.rng.percent(60),
                    len,
                    fill: self.fill(),
                }
            }
            23..=30 => {
                let (path, size) = self.file_path(listing);
                Op::Truncate {
                    path,
                    size: self.new_size(size),
                }
            }
            31..=37 => {
                let (path, size) = self.file_path(listing);
                let (offset, len) = self.falloc_extent(size);
                Op::Fallocate {
                    path,
                    mode: self.falloc_mode(),
                    offset,
                    len,
                }
            }
            38..=42 => {
                let (path, size) = self.file_path(listing);
                Op::Read {
                    path,
                    offset: self.offset(size),
                    len: self.length(),
                }
            }
            43..=45 => Op::Fsync {
                path: self.any_path(listing),
                data_only: self.rng.percent(50),
            },
            46..=54 => {
                let from = self.any_path(listing);
                let to = if self.rng.percent(40) {
                    self.any_path(listing)
                } else {
                    self.new_path(listing)
                };
                let flags = RenameFlags(match self.rng.below(10) {
                    0 | 1 => libc::RENAME_NOREPLACE,
                    2 | 3 => libc::RENAME_EXCHANGE,
                    _ => 0,
                });
                Op::Rename { from, to, flags }
            }
            55..=57 => Op::Link {
                from: match self.existing(listing, &NOT_DIR) {
                    Some((path, _)) if self.rng.percent(85) => path,
                    _ => self.any_path(listing),
                },
                to: if self.rng.percent(15) {
                    self.any_path(listing)
                } else {
                    self.new_path(listing)
                },
            },
            58..=63 => {
                let found = if self.rng.percent(85) {
                    self.existing(listing, &NOT_DIR)
                } else {
                    None
                };
                Op::Unlink {
                    path: found.map_or_else(|| self.any_path(listing), |(path, _)| path),
                }
            }
            64..=66 => {
                let shallow: Vec<_> = listing
                    .dirs
                    .iter()
                    .filter(|d| d.depth() < MAX_DIR_DEPTH)
                    .cloned()
                    .collect();
                let dir = self.rng.pick(&shallow).clone();
                Op::Mkdir {
                    path: dir.join(&self.name()),
                    mode: Mode(*self.rng.pick(&[
                        0o777, 0o777, 0o777, 0o755, 0o700, 0o1777, 0o2775, 0o3777, 0o555,
                    ])),
                }
            }
            67..=70 => {
                let found = if self.rng.percent(80) {
                    self.existing(listing, &[Kind::Dir])
                } else {
                    None
                };
                Op::Rmdir {
                    path: found.map_or_else(|| self.any_path(listing), |(path, _)| path),
                }
            }
            71..=73 => Op::Symlink {
                target: self.target(),
                path: self.new_path(listing),
            },
            74 => Op::Close {
                slot: self.rng.below(SLOTS as u64) as usize,
            },
            // From here on, operations need an open handle.
            75..=78 => Op::Open {
                slot: self.rng.below(SLOTS as u64) as usize,
                path: self.file_path(listing).0,
                flags: self.open_flags(),
            },
            79..=88 => {
                let (slot, size) = *self.rng.pick(open_slots);
                let (offset, len) = self.extent(size);
                Op::HandleWrite {
                    slot,
                    offset,
                    len,
                    fill: self.fill(),
                }
            }
            89..=91 => {
                let (slot, size) = *self.rng.pick(open_slots);
                Op::HandleRead {
                    slot,
                    offset: self.offset(size),
                    len: self.length(),
                }
            }
            92..=94 => {
                let (slot, size) = *self.rng.pick(open_slots);
                Op::HandleTruncate {
                    slot,
                    size: self.new_size(size),
                }
            }
            95..=97 => {
                let (slot, size) = *self.rng.pick(open_slots);
                let (offset, len) = self.falloc_extent(size);
                Op::HandleFallocate {
                    slot,
                    mode: self.falloc_mode(),
                    offset,
                    len,
                }
            }
            _ => Op::HandleSync {
                slot: self.rng.pick(open_slots).0,
                data_only: self.rng.percent(50),
            },
        }
    }
}
