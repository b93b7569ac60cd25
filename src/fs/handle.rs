//! Open file and directory handles.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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
}

#[derive(Default)]
pub struct HandleTable {
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

impl HandleTable {
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut handles) = self.handles.write() {
            handles.insert(fh, Arc::new(handle));
        }
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        self.handles
            .read()
            .map_err(|_| Errno::EIO)?
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    pub fn remove(&self, fh: u64) {
        if let Ok(mut handles) = self.handles.write() {
            handles.remove(&fh);
        }
    }
}
