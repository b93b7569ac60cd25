//! Fixed-size secret buffers: heap-pinned, mlocked where the OS allows, zeroized on drop,
//! and never printed.

use std::fmt;

use zeroize::Zeroize;

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
        // SAFETY: the pointer and length describe the boxed array, which outlives the lock.
        let locked = unsafe { libc::mlock(bytes.as_ptr().cast(), N) } == 0;
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
            // SAFETY: same allocation that was locked in `zeroed`.
            unsafe { libc::munlock(self.bytes.as_ptr().cast(), N) };
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
