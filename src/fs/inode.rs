//! The inode table: FUSE node ids mapped to O_PATH fds on backing objects.
//!
//! Node ids are the backing inode numbers, so `st_ino` is stable across mounts and hard
//! links share one; the tree root is node 1, and an object whose number would clash
//! (inode 1, or another device mounted inside the backing tree) gets an id from a
//! synthetic range. A node holds an fd, not a path, so renames of it or of any parent need no
//! bookkeeping, and a planted symlink can never redirect it. Nodes are keyed by the
//! backing (dev, ino), so hard links share one node; the fd keeps the backing inode alive,
//! so its number cannot be reused while the node exists.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::behind::{Behind, Windows};
use super::contents::{self, Contents, HeaderProblem};
use super::errno::{corrupt, lock, recover, FsError, FsResult};
use crate::crypto::xts::Xts256;
use crate::crypto::VolumeKey;
use crate::volume::file_header::{FileFormat, FileHeader, FILE_HEADER_LEN};
use crate::volume::header::VolumeFormat;

pub const ROOT_ID: u64 = 1;
const SYNTHETIC_IDS: u64 = 1 << 63;

pub struct Node {
    pub id: u64,
    fd: OwnedFd,
    backing_key: (u64, u64),
    lookups: AtomicU64,
    /// Shared for reads and in-place whole-unit writes; exclusive for anything that
    /// reads-modifies-writes a unit or changes the length.
    pub content_lock: RwLock<()>,
    /// The file's contents key, derived once from its header.
    key: Mutex<Option<Arc<FileKey>>>,
    /// The file's format once its header has been read (format 1 volumes, where it
    /// varies by file); forgotten with the key, as truncating a file to zero starts it
    /// over in the volume's format.
    format: Mutex<Option<FileFormat>>,
    /// The mode the backing object had when last stat'ed: a write checks it for set-id
    /// bits to clear without a stat of its own.
    mode: AtomicU32,
    /// The backing pages that requests used since the last full window was dropped or
    /// written out ([`super::behind`]).
    behind: Mutex<Windows>,
    /// Whether the file is known to have no file capability (security.capability): set
    /// when a look found none, cleared when one is set through the mount.
    no_capability: AtomicBool,
    /// The process that last removed the file's capability through the mount (0: none
    /// since it was taken): the kernel does that right before it asks, with a setattr of
    /// nothing, that a write's privileges go (see [`XtsFs::setattr`](super::XtsFs)).
    capability_removed_by: AtomicU32,
}

/// What a file's header says: its format and its contents cipher.
pub struct FileKey {
    pub cipher: Xts256,
    pub format: FileFormat,
}

impl FileKey {
    /// The contents of `file` under this key.
    pub fn contents<'a>(&'a self, file: &'a File) -> Contents<'a> {
        Contents {
            file,
            cipher: &self.cipher,
            format: self.format,
        }
    }
}

impl Node {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Records the mode a stat of the backing object returned.
    pub fn note_mode(&self, mode: u32) {
        self.mode.store(mode, Ordering::Relaxed);
    }

    /// Notes that a request used `range` of the backing file `file`, and once a window
    /// of such pages is full, does `behind` to it ([`super::behind`]). The state is a
    /// hint: a poisoned lock is taken over.
    pub fn note_use(&self, file: &File, range: std::ops::Range<u64>, behind: Behind) {
        let full = recover(self.behind.lock()).note(range);
        if let Some(range) = full {
            match behind {
                Behind::Drop => super::backing::drop_cached(file, range),
                Behind::WriteOut => super::backing::start_writeback(file, range),
            }
        }
    }

    /// Whether the file is known to have no file capability.
    pub fn has_no_capability(&self) -> bool {
        self.no_capability.load(Ordering::Acquire)
    }

    /// Records whether the file is known to have no file capability.
    pub fn note_no_capability(&self, none: bool) {
        self.no_capability.store(none, Ordering::Release);
    }

    /// Records that process `pid` removed the file's capability.
    pub fn note_capability_removed_by(&self, pid: u32) {
        self.capability_removed_by.store(pid, Ordering::Relaxed);
    }

    /// Whether process `pid` was the last to remove the file's capability; forgets it.
    pub fn take_capability_removal(&self, pid: u32) -> bool {
        pid != 0
            && self
                .capability_removed_by
                .compare_exchange(pid, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The last known mode. Every change of the mode through the mount is stat'ed, so
    /// this can only miss a chmod made in the backing directory.
    pub fn last_mode(&self) -> u32 {
        self.mode.load(Ordering::Relaxed)
    }

    /// The file's format: the volume's, or in a format 1 volume the one its header says.
    /// An empty or unreadable file counts as the volume's (reads report the damage).
    pub fn format(&self, volume: VolumeFormat) -> FsResult<FileFormat> {
        if volume == VolumeFormat::V2 {
            return Ok(FileFormat::V2);
        }
        if let Some(format) = *lock(&self.format)? {
            return Ok(format);
        }
        let mut bytes = [0u8; FILE_HEADER_LEN];
        let header = super::backing::reopen_quiet(self.fd(), libc::O_RDONLY | libc::O_NONBLOCK)
            .and_then(|file| file.read_exact_at(&mut bytes, 0))
            .ok()
            .and_then(|()| FileHeader::decode(&bytes).ok());
        match header {
            Some(header) => {
                self.remember_format(header.format)?;
                Ok(header.format)
            }
            None => Ok(volume.new_files()),
        }
    }

    /// The file's contents key, reading its header on first use. `None` while the file
    /// has no header: it is empty, or (format 2) a crash kept its length but not its
    /// header, which was never synced, so it reads as zeros.
    pub fn key(
        &self,
        file: &File,
        dek: &VolumeKey,
        volume: VolumeFormat,
    ) -> FsResult<Option<Arc<FileKey>>> {
        let mut cached = lock(&self.key)?;
        if let Some(key) = cached.as_ref() {
            return Ok(Some(key.clone()));
        }
        let header = match contents::read_header(file, volume) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(HeaderProblem::Io(e)) => return Err(FsError::from(e)),
            Err(e) => return Err(corrupt(self.fd(), &e)),
        };
        let key = Arc::new(FileKey {
            cipher: dek.file_cipher(&header.nonce),
            format: header.format,
        });
        self.remember_format(header.format)?;
        *cached = Some(key.clone());
        Ok(Some(key))
    }

    /// The key, writing a fresh file header first if the file has none. Callers hold
    /// the content lock exclusively, so two writers cannot both create a header.
    pub fn key_or_create(
        &self,
        file: &File,
        dek: &VolumeKey,
        volume: VolumeFormat,
    ) -> FsResult<Arc<FileKey>> {
        if let Some(key) = self.key(file, dek, volume)? {
            return Ok(key);
        }
        let format = volume.new_files();
        let header = FileHeader::generate(format).map_err(|_| FsError::NoRandomness)?;
        contents::start_file(file, &header)?;
        self.remember_format(format)?;
        let key = Arc::new(FileKey {
            cipher: dek.file_cipher(&header.nonce),
            format,
        });
        *lock(&self.key)? = Some(key.clone());
        Ok(key)
    }

    fn remember_format(&self, format: FileFormat) -> FsResult<()> {
        *lock(&self.format)? = Some(format);
        Ok(())
    }

    /// Drops the cached contents key (it zeroizes when the last user is done) and the
    /// format that came with it.
    pub fn forget_key(&self) {
        // Recovered from poisoning: a key must go whatever happened before.
        *recover(self.key.lock()) = None;
        *recover(self.format.lock()) = None;
    }
}

struct Tables {
    nodes: HashMap<u64, Arc<Node>>,
    by_backing: HashMap<(u64, u64), u64>,
    root_dev: u64,
    next_synthetic: u64,
}

pub struct InodeTable {
    tables: Mutex<Tables>,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root: &libc::stat) -> Self {
        let mut tables = Tables {
            nodes: HashMap::new(),
            by_backing: HashMap::new(),
            root_dev: root.st_dev,
            next_synthetic: SYNTHETIC_IDS,
        };
        let key = (root.st_dev, root.st_ino);
        tables
            .nodes
            .insert(ROOT_ID, Arc::new(new_node(ROOT_ID, root_fd, key)));
        tables.by_backing.insert(key, ROOT_ID);
        InodeTable {
            tables: Mutex::new(tables),
        }
    }

    pub fn get(&self, id: u64) -> FsResult<Arc<Node>> {
        lock(&self.tables)?
            .nodes
            .get(&id)
            .cloned()
            .ok_or(FsError::UnknownNode)
    }

    /// Registers one kernel lookup of the object `fd` names (stat'ed as `st`).
    pub fn intern(&self, fd: OwnedFd, st: &libc::stat) -> FsResult<Arc<Node>> {
        let key = (st.st_dev, st.st_ino);
        let mut tables = lock(&self.tables)?;
        if let Some(node) = tables
            .by_backing
            .get(&key)
            .and_then(|id| tables.nodes.get(id))
        {
            node.lookups.fetch_add(1, Ordering::Relaxed);
            return Ok(node.clone());
        }
        let id =
            if st.st_dev == tables.root_dev && st.st_ino != ROOT_ID && st.st_ino < SYNTHETIC_IDS {
                st.st_ino
            } else {
                tables.next_synthetic += 1;
                tables.next_synthetic
            };
        let node = Arc::new(new_node(id, fd, key));
        tables.nodes.insert(id, node.clone());
        tables.by_backing.insert(key, id);
        Ok(node)
    }

    /// The kernel dropped `count` lookups of node `id`; at zero the node and its fd go.
    pub fn forget(&self, id: u64, count: u64) {
        if id == ROOT_ID {
            return;
        }
        // Recovered from poisoning: the kernel has dropped its references, and the node
        // and its fd must go with them.
        let mut tables = recover(self.tables.lock());
        let Some(node) = tables.nodes.get(&id) else {
            return;
        };
        // Lookups only change under the tables lock, so load-then-store cannot race.
        let remaining = node.lookups.load(Ordering::Relaxed).saturating_sub(count);
        node.lookups.store(remaining, Ordering::Relaxed);
        if remaining == 0 {
            let key = node.backing_key;
            tables.nodes.remove(&id);
            tables.by_backing.remove(&key);
        }
    }

    /// Ids of every node the kernel may hold.
    pub fn ids(&self) -> Vec<u64> {
        // Recovered from poisoning: at a lock, every node must be invalidated.
        recover(self.tables.lock()).nodes.keys().copied().collect()
    }

    /// Drops every cached contents key.
    pub fn forget_keys(&self) {
        // Recovered from poisoning: at a lock, every key must go.
        let tables = recover(self.tables.lock());
        tables.nodes.values().for_each(|node| node.forget_key());
    }
}

fn new_node(id: u64, fd: OwnedFd, backing_key: (u64, u64)) -> Node {
    Node {
        id,
        fd,
        backing_key,
        lookups: AtomicU64::new(1),
        content_lock: RwLock::new(()),
        key: Mutex::new(None),
        format: Mutex::new(None),
        mode: AtomicU32::new(0),
        behind: Mutex::new(Windows::default()),
        no_capability: AtomicBool::new(false),
        capability_removed_by: AtomicU32::new(0),
    }
}
