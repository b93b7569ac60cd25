//! Fixed-size secret buffers: heap-pinned, mlocked where the OS allows, zeroized on drop,
//! and never printed.

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use zeroize::Zeroize;

/// Live locked secrets per page. mlock works on whole pages and does not nest: one munlock
/// unlocks a page for every secret on it, so a page is unlocked only with its last secret.
static LOCKED_PAGES: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Start addresses of the pages under `bytes`.
fn pages_of(bytes: &[u8]) -> impl Iterator<Item = usize> {
    let size = page_size();
    let start = bytes.as_ptr() as usize / size * size;
    (start..bytes.as_ptr() as usize + bytes.len()).step_by(size)
}

/// Locks the pages under `bytes` out of swap; false if the OS refused.
fn lock_pages(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let mut pages = LOCKED_PAGES.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: the pointer and length describe a live allocation.
    if unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) } != 0 {
        return false;
    }
    for page in pages_of(bytes) {
        *pages.entry(page).or_insert(0) += 1;
    }
    true
}

/// Undoes [`lock_pages`]: unlocks each page no other live secret is on.
fn unlock_pages(bytes: &[u8]) {
    let mut pages = LOCKED_PAGES.lock().unwrap_or_else(PoisonError::into_inner);
    for page in pages_of(bytes) {
        if let Entry::Occupied(mut live) = pages.entry(page) {
            *live.get_mut() -= 1;
            if *live.get() == 0 {
                live.remove();
                // SAFETY: a whole mapped page (it holds `bytes`) with no live secret left.
                unsafe { libc::munlock(page as *const libc::c_void, page_size()) };
            }
        }
    }
}

/// `N` secret bytes. The bytes live in their own heap allocation so they never move (and
/// leave copies behind) and so the pages can be locked out of swap.
pub struct SecretBytes<const N: usize> {
    bytes: Box<[u8; N]>,
    locked: bool,
}

impl<const N: usize> SecretBytes<N> {
    /// A zero-filled secret, to be written in place.
    pub fn zeroed() -> Self {
        let bytes = Box::new([0u8; N]);
        let locked = lock_pages(bytes.as_slice());
        SecretBytes { bytes, locked }
    }

    /// A secret filled from the OS CSPRNG.
    pub fn random() -> Result<Self, super::RandomError> {
        let mut secret = Self::zeroed();
        getrandom::fill(secret.bytes.as_mut_slice())?;
        Ok(secret)
    }

    /// Copies `src`, which must be exactly `N` bytes long.
    pub fn from_slice(src: &[u8]) -> Option<Self> {
        if src.len() != N {
            return None;
        }
        let mut secret = Self::zeroed();
        secret.bytes.copy_from_slice(src);
        Some(secret)
    }

    pub fn expose(&self) -> &[u8; N] {
        &self.bytes
    }

    pub fn expose_mut(&mut self) -> &mut [u8; N] {
        &mut self.bytes
    }
}

impl<const N: usize> Drop for SecretBytes<N> {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked {
            unlock_pages(self.bytes.as_slice());
        }
    }
}

impl<const N: usize> Clone for SecretBytes<N> {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed();
        copy.bytes.copy_from_slice(self.bytes.as_slice());
        copy
    }
}

impl<const N: usize> fmt::Debug for SecretBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes<{N}>([redacted])")
    }
}

/// Variable-length secret (a wrapped or unwrapped key crossing a provider boundary).
pub type SecretVec = zeroize::Zeroizing<Vec<u8>>;
