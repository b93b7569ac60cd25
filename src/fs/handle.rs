//! Open file and directory handles.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use zeroize::Zeroize;

use fuser::FileType;

use super::errno::{read, recover, write, FsError, FsResult};
use super::inode::Node;

/// One entry of a directory listing, decrypted at opendir.
pub struct DirEntry {
    pub name: OsString,
    pub backing: OsString,
    pub ino: u64,
    pub kind: FileType,
}

pub struct Handle {
    node: Arc<Node>,
    /// The backing file (read-only or read-write), or the backing directory.
    file: File,
    kind: HandleKind,
}

enum HandleKind {
    /// `cached`: the kernel keeps this handle's plaintext in its page cache.
    File {
        writable: bool,
        cached: bool,
    },
    Dir {
        entries: Vec<DirEntry>,
    },
}

impl Handle {
    pub fn for_file(node: Arc<Node>, file: File, writable: bool, cached: bool) -> Self {
        Handle {
            node,
            file,
            kind: HandleKind::File { writable, cached },
        }
    }

    pub fn for_dir(node: Arc<Node>, dir: File, entries: Vec<DirEntry>) -> Self {
        Handle {
            node,
            file: dir,
            kind: HandleKind::Dir { entries },
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The backing file of a file handle.
    pub fn file(&self) -> Option<&File> {
        matches!(self.kind, HandleKind::File { .. }).then_some(&self.file)
    }

    /// The backing file of a file handle; EISDIR for a directory handle.
    pub fn readable_file(&self) -> FsResult<&File> {
        self.file().ok_or(FsError::IsDirectory)
    }

    pub fn writable_file(&self) -> FsResult<&File> {
        match self.kind {
            HandleKind::File { writable: true, .. } => Ok(&self.file),
            _ => Err(FsError::BadHandle),
        }
    }

    /// Whether the kernel keeps this handle's plaintext in its page cache.
    pub fn is_cached(&self) -> bool {
        matches!(self.kind, HandleKind::File { cached: true, .. })
    }

    /// What fsync (or fsyncdir) flushes.
    pub fn sync_target(&self) -> &File {
        &self.file
    }

    pub fn entries(&self) -> &[DirEntry] {
        match &self.kind {
            HandleKind::Dir { entries } => entries,
            HandleKind::File { .. } => &[],
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, HandleKind::Dir { .. })
    }
}

/// A directory listing holds decrypted names: they are zeroed when the handle goes.
impl Drop for Handle {
    fn drop(&mut self) {
        if let HandleKind::Dir { entries } = &mut self.kind {
            for entry in entries.iter_mut() {
                std::mem::take(&mut entry.name).into_vec().zeroize();
            }
        }
    }
}

struct Table {
    handles: HashMap<u64, Arc<Handle>>,
    /// Directory handles whose listing was dropped at a lock: they answer EACCES until
    /// released (the listing is gone; reopening the directory lists it afresh).
    withdrawn: HashSet<u64>,
}

/// The open handles of one mount.
pub struct HandleTable {
    table: RwLock<Table>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            table: RwLock::new(Table {
                handles: HashMap::new(),
                withdrawn: HashSet::new(),
            }),
            next: AtomicU64::new(0),
        }
    }
}

impl HandleTable {
    /// Stores a handle and returns its number.
    pub fn insert(&self, handle: Handle) -> FsResult<u64> {
        let mut table = write(&self.table)?;
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        table.handles.insert(fh, Arc::new(handle));
        Ok(fh)
    }

    pub fn get(&self, fh: u64) -> FsResult<Arc<Handle>> {
        let table = read(&self.table)?;
        if table.withdrawn.contains(&fh) {
            return Err(FsError::ListingDropped);
        }
        table.handles.get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    pub fn remove(&self, fh: u64) {
        // Recovered from poisoning: a released handle must close its backing file.
        let mut table = recover(self.table.write());
        table.handles.remove(&fh);
        table.withdrawn.remove(&fh);
    }

    /// Drops the decrypted listing of every open directory handle (at a lock). A readdir
    /// in flight finishes with the listing it holds, which is zeroed when it is done.
    pub fn drop_listings(&self) {
        let dropped: Vec<Arc<Handle>> = {
            // Recovered from poisoning: the listings must go whatever happened before.
            let mut table = recover(self.table.write());
            let dirs: Vec<u64> = table
                .handles
                .iter()
                .filter(|(_, h)| h.is_dir())
                .map(|(fh, _)| *fh)
                .collect();
            let mut dropped = Vec::with_capacity(dirs.len());
            for fh in dirs {
                dropped.extend(table.handles.remove(&fh));
                table.withdrawn.insert(fh);
            }
            dropped
        };
        // Zeroed here, outside the table's lock, unless a readdir still holds one.
        drop(dropped);
    }
}
