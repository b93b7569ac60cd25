//! Looking at a tree: the kinds, stats and snapshots both sides are compared by, and
//! the listing the generator draws paths from.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::common::UNIT;
use crate::op::{Mode, RelPath, Shown};
use crate::side::{xattrs, Errno, Value};
use crate::KERNEL_CACHE_TTL;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Every kind of entry.
pub(crate) const ANY_KIND: [Kind; 7] = [
    Kind::Dir,
    Kind::File,
    Kind::Symlink,
    Kind::Fifo,
    Kind::Socket,
    Kind::CharDevice,
    Kind::BlockDevice,
];
/// Every kind that unlink removes.
pub(crate) const NOT_DIR: [Kind; 6] = [
    Kind::File,
    Kind::Symlink,
    Kind::Fifo,
    Kind::Socket,
    Kind::CharDevice,
    Kind::BlockDevice,
];

fn kind_of(meta: &fs::Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_fifo() {
        Kind::Fifo
    } else if t.is_socket() {
        Kind::Socket
    } else if t.is_char_device() {
        Kind::CharDevice
    } else {
        Kind::BlockDevice
    }
}

/// lstat, reduced to what must match: kind, size (not for directories, whose sizes are
/// the file system's business), link count, permission bits (set-id and sticky
/// included), owner and group, and a device node's device number.
#[derive(PartialEq, Eq, Debug)]
pub(crate) struct Stat {
    kind: Kind,
    size: Option<u64>,
    nlink: u64,
    mode: Mode,
    owner: (u32, u32),
    rdev: Option<(u32, u32)>,
}

fn stat_of(meta: &fs::Metadata) -> Stat {
    let kind = kind_of(meta);
    let device = matches!(kind, Kind::CharDevice | Kind::BlockDevice);
    Stat {
        kind,
        size: (kind != Kind::Dir).then_some(meta.len()),
        nlink: meta.nlink(),
        mode: Mode(meta.mode() & 0o7777),
        owner: (meta.uid(), meta.gid()),
        rdev: device.then(|| (libc::major(meta.rdev()), libc::minor(meta.rdev()))),
    }
}

/// (atime, mtime) as (seconds, nanoseconds), of a final symlink itself unless `follow`.
pub(crate) fn times_of(path: &Path, follow: bool) -> Result<[(i64, i64); 2], Errno> {
    let meta = if follow {
        fs::metadata(path)?
    } else {
        fs::symlink_metadata(path)?
    };
    Ok([
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    ])
}

pub(crate) fn lstat(path: &Path) -> Result<Stat, Errno> {
    Ok(stat_of(&fs::symlink_metadata(path)?))
}

/// lstat once the kernel's cached entries and attributes have expired: whether a
/// divergence outlives the kernel cache tells a stale kernel view from daemon state.
pub(crate) fn lstat_after_ttl(path: &Path) -> Result<Stat, Errno> {
    std::thread::sleep(KERNEL_CACHE_TTL);
    lstat(path)
}

/// One entry of a tree snapshot.
#[derive(PartialEq, Eq)]
pub(crate) struct Snapshot {
    stat: Stat,
    /// File bytes, or a symlink's target.
    bytes: Vec<u8>,
    /// Extended attributes, names and values (as root sees them: `trusted.` included).
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every entry under `root`, without following symlinks; an error names what failed.
pub(crate) fn snapshot(root: &Path) -> Result<BTreeMap<RelPath, Snapshot>, String> {
    let mut tree = BTreeMap::new();
    let mut stack = vec![RelPath(Vec::new())];
    while let Some(dir) = stack.pop() {
        let failed = |what: &str, rel: &RelPath, e: io::Error| format!("{what} {rel:?}: {e}");
        for entry in fs::read_dir(join(root, &dir)).map_err(|e| failed("list", &dir, e))? {
            let entry = entry.map_err(|e| failed("list", &dir, e))?;
            let rel = dir.join(entry.file_name().as_bytes());
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| failed("lstat", &rel, e))?;
            let stat = stat_of(&meta);
            let bytes = match stat.kind {
                Kind::Dir => {
                    stack.push(rel.clone());
                    Vec::new()
                }
                Kind::File => fs::read(&path).map_err(|e| failed("read", &rel, e))?,
                Kind::Symlink => fs::read_link(&path)
                    .map_err(|e| failed("readlink", &rel, e))?
                    .into_os_string()
                    .into_encoded_bytes(),
                _ => Vec::new(),
            };
            let xattrs = xattrs(&path).map_err(|e| format!("xattrs of {rel:?}: {e:?}"))?;
            tree.insert(
                rel,
                Snapshot {
                    stat,
                    bytes,
                    xattrs,
                },
            );
        }
    }
    Ok(tree)
}

pub(crate) fn join(root: &Path, rel: &RelPath) -> PathBuf {
    if rel.0.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(&rel.0))
    }
}

/// Human-readable differences between two snapshots (empty when they match).
pub(crate) fn tree_differences(
    xtsfs: &BTreeMap<RelPath, Snapshot>,
    reference: &BTreeMap<RelPath, Snapshot>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, theirs) in reference {
        match xtsfs.get(path) {
            None => diffs.push(format!("{path:?}: missing on xtsfs ({:?})", theirs.stat)),
            Some(ours) if ours.stat != theirs.stat => diffs.push(format!(
                "{path:?}: xtsfs {:?}, reference {:?}",
                ours.stat, theirs.stat
            )),
            Some(ours) if ours.bytes != theirs.bytes => diffs.push(format!(
                "{path:?}: {}",
                bytes_difference(&ours.bytes, &theirs.bytes)
            )),
            Some(ours) if ours.xattrs != theirs.xattrs => diffs.push(format!(
                "{path:?}: extended attributes: xtsfs {}, reference {}",
                shown_xattrs(&ours.xattrs),
                shown_xattrs(&theirs.xattrs)
            )),
            Some(_) => {}
        }
    }
    for (path, ours) in xtsfs {
        if !reference.contains_key(path) {
            diffs.push(format!("{path:?}: only on xtsfs ({:?})", ours.stat));
        }
    }
    diffs
}

pub(crate) fn shown_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let shown: Vec<String> = xattrs
        .iter()
        .map(|(name, value)| format!("{}={:?}", Shown(name), Value::Data(value.clone())))
        .collect();
    format!("{{{}}}", shown.join(", "))
}

/// Where two byte strings first differ, with a little context.
pub(crate) fn bytes_difference(ours: &[u8], theirs: &[u8]) -> String {
    let at = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    let last = ours
        .iter()
        .zip(theirs)
        .rposition(|(a, b)| a != b)
        .map_or(String::new(), |p| format!(", last at byte {p}"));
    let around = |bytes: &[u8]| -> String {
        let window = &bytes[at.min(bytes.len())..bytes.len().min(at + 16)];
        format!("{} bytes, from {at}: {window:02x?}", bytes.len())
    };
    format!(
        "contents differ from byte {at} (unit {}, +{}){last}: xtsfs {}; reference {}",
        at as u64 / UNIT,
        at as u64 % UNIT,
        around(ours),
        around(theirs)
    )
}

/// The reference tree as generation needs it: entries with kinds and file sizes.
pub(crate) struct Listing {
    pub(crate) entries: Vec<(RelPath, Kind, u64)>,
    /// Directories, the root ("") included.
    pub(crate) dirs: Vec<RelPath>,
}

pub(crate) fn list(root: &Path) -> Listing {
    let mut listing = Listing {
        entries: Vec::new(),
        dirs: vec![RelPath(Vec::new())],
    };
    let mut stack = vec![RelPath(Vec::new())];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(join(root, &dir))
            .expect("list reference dir")
            .map(|e| e.expect("reference entry").file_name())
            .collect();
        // read_dir order is the file system's; sorting keeps generation deterministic.
        names.sort();
        for name in names {
            let rel = dir.join(name.as_bytes());
            let meta = fs::symlink_metadata(join(root, &rel)).expect("lstat reference entry");
            let kind = kind_of(&meta);
            if kind == Kind::Dir {
                listing.dirs.push(rel.clone());
                stack.push(rel.clone());
            }
            listing.entries.push((rel, kind, meta.len()));
        }
    }
    listing
}
