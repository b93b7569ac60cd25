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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fuser::Errno;

use super::errno::{corrupt, lock};
use crate::crypto::xts::Xts256;
use crate::crypto::VolumeKey;
use crate::volume::file_header::{FileHeader, FILE_HEADER_LEN};

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
    /// The file's contents cipher, derived once from its header nonce.
    cipher: Mutex<Option<Arc<Xts256>>>,
}

impl Node {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The cipher for this file's contents, reading the file header on first use.
    /// `None` while the file is empty and has no header yet.
    pub fn cipher(&self, file: &File, dek: &VolumeKey) -> Result<Option<Arc<Xts256>>, Errno> {
        let mut cached = lock(&self.cipher)?;
        if let Some(cipher) = cached.as_ref() {
            return Ok(Some(cipher.clone()));
        }
        let mut bytes = [0u8; FILE_HEADER_LEN];
        let n = file.read_at(&mut bytes, 0).map_err(Errno::from)?;
        if n == 0 {
            return Ok(None);
        }
        let header = FileHeader::decode(&bytes[..n]).map_err(|e| corrupt(self.fd(), &e))?;
        let cipher = Arc::new(dek.file_cipher(&header.nonce));
        *cached = Some(cipher.clone());
        Ok(Some(cipher))
    }

    /// The cipher, writing a fresh file header first if the file has none. Callers hold
    /// the content lock exclusively, so two writers cannot both create a header.
    pub fn cipher_or_create(&self, file: &File, dek: &VolumeKey) -> Result<Arc<Xts256>, Errno> {
        if let Some(cipher) = self.cipher(file, dek)? {
            return Ok(cipher);
        }
        let header = FileHeader::generate().map_err(|_| Errno::EIO)?;
        file.write_all_at(&header.encode(), 0)
            .map_err(Errno::from)?;
        let cipher = Arc::new(dek.file_cipher(&header.nonce));
        *lock(&self.cipher)? = Some(cipher.clone());
        Ok(cipher)
    }

    /// Drops the cached contents key (it zeroizes when the last user is done).
    pub fn forget_cipher(&self) {
        if let Ok(mut cached) = self.cipher.lock() {
            *cached = None;
        }
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

    pub fn get(&self, id: u64) -> Result<Arc<Node>, Errno> {
        lock(&self.tables)?
            .nodes
            .get(&id)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    /// Registers one kernel lookup of the object `fd` names (stat'ed as `st`).
    pub fn intern(&self, fd: OwnedFd, st: &libc::stat) -> Result<Arc<Node>, Errno> {
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
        let Ok(mut tables) = self.tables.lock() else {
            return;
        };
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
        self.tables
            .lock()
            .map(|t| t.nodes.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Drops every cached contents key.
    pub fn forget_ciphers(&self) {
        if let Ok(tables) = self.tables.lock() {
            tables.nodes.values().for_each(|node| node.forget_cipher());
        }
    }
}

fn new_node(id: u64, fd: OwnedFd, backing_key: (u64, u64)) -> Node {
    Node {
        id,
        fd,
        backing_key,
        lookups: AtomicU64::new(1),
        content_lock: RwLock::new(()),
        cipher: Mutex::new(None),
    }
}
