//! Open file and directory handles.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use zeroize::Zeroize;

use fuser::{Errno, FileType};

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
    File { writable: bool },
    Dir { entries: Vec<DirEntry> },
}

impl Handle {
    pub fn for_file(node: Arc<Node>, file: File, writable: bool) -> Self {
        Handle {
            node,
            file,
            kind: HandleKind::File { writable },
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

    pub fn writable_file(&self) -> Result<&File, Errno> {
        match self.kind {
            HandleKind::File { writable: true } => Ok(&self.file),
            _ => Err(Errno::EBADF),
        }
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

/// Every handle table in the process, so that a lock can drop the decrypted listings of
/// open directory handles ([`drop_all_listings`]). A daemon serves one volume.
static TABLES: Mutex<Vec<Weak<RwLock<Table>>>> = Mutex::new(Vec::new());

pub struct HandleTable {
    table: Arc<RwLock<Table>>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        let table = Arc::new(RwLock::new(Table {
            handles: HashMap::new(),
            withdrawn: HashSet::new(),
        }));
        let mut tables = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
        tables.retain(|t| t.strong_count() > 0);
        tables.push(Arc::downgrade(&table));
        HandleTable {
            table,
            next: AtomicU64::new(0),
        }
    }
}

impl HandleTable {
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut table) = self.table.write() {
            table.handles.insert(fh, Arc::new(handle));
        }
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        let table = self.table.read().map_err(|_| Errno::EIO)?;
        if table.withdrawn.contains(&fh) {
            return Err(Errno::EACCES);
        }
        table.handles.get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn remove(&self, fh: u64) {
        if let Ok(mut table) = self.table.write() {
            table.handles.remove(&fh);
            table.withdrawn.remove(&fh);
        }
    }
}

/// Drops the decrypted listing of every open directory handle in `table` (at a lock). A
/// readdir in flight finishes with the listing it holds, which is zeroed when it is done.
fn drop_listings(table: &RwLock<Table>) {
    let dropped: Vec<Arc<Handle>> = {
        let mut table = table.write().unwrap_or_else(PoisonError::into_inner);
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

/// Drops the decrypted listings of every handle table in the process.
pub fn drop_all_listings() {
    let tables: Vec<Arc<RwLock<Table>>> = TABLES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for table in tables {
        drop_listings(&table);
    }
}
