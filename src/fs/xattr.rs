//! Extended attributes. `user.`, `trusted.` and `security.` attributes are stored in the
//! backing object's attribute of the same namespace, with name and value encrypted under
//! the names key (docs/FORMAT.md, "Extended attributes"); the kernel has checked the
//! caller's right to each namespace. POSIX ACLs (`system.posix_acl_access`,
//! `system.posix_acl_default`) are passed through: the backing file system applies them
//! (to the mode, and to new objects in a directory with a default ACL) and the kernel
//! enforces them. Each operation is one backing call, so atomic per attribute.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::errno::{corrupt, FsError, FsResult};
use super::inode::Node;
use super::{backing, CallerIds, VolumeSecrets, XattrReply, XtsFs};
use crate::crypto::names::{NameCipher, NameError};

impl XtsFs {
    pub fn getxattr(&self, id: u64, name: &OsStr, size: u32) -> FsResult<XattrReply> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let name = name.as_bytes();
        let names = &secrets.names;
        if is_posix_acl(name) {
            return backing_xattr_reply(backing::getxattr(node.fd(), name, size as usize), size);
        }
        let stored_name = xattr_backing_name(names, name)?;
        let max = match size {
            0 => 0,
            size => size as usize + names.xattr_value_overhead(),
        };
        let (stored, len) = backing::getxattr(node.fd(), &stored_name, max)?;
        if size == 0 {
            return Ok(XattrReply::Size(
                u32::try_from(names.xattr_value_len(len)).map_err(|_| FsError::ReplyTooLong)?,
            ));
        }
        let value = names
            .decrypt_xattr_value(name, &stored)
            .map_err(|e| corrupt(node.fd(), &format_args!("extended attribute: {e}")))?;
        Ok(XattrReply::Data(value))
    }

    /// The names, as the backing file system lists them to the caller: `trusted.` ones
    /// only to a caller with CAP_SYS_ADMIN (the daemon itself always sees them).
    pub fn listxattr(&self, id: u64, size: u32, caller: CallerIds) -> FsResult<XattrReply> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let mut list = Vec::new();
        let mut sees_trusted = None;
        for stored in backing::listxattr(node.fd())? {
            let name = if is_posix_acl(&stored) {
                Some(stored)
            } else {
                secrets.names.decrypt_xattr_name(&stored)
            };
            let mut hidden = |name: &[u8]| {
                name.starts_with(b"trusted.")
                    && !*sees_trusted.get_or_insert_with(|| caller.sees_trusted())
            };
            if let Some(name) = name.filter(|name| !hidden(name)) {
                list.extend_from_slice(&name);
                list.push(0);
            }
        }
        let len = u32::try_from(list.len()).map_err(|_| FsError::ReplyTooLong)?;
        match size {
            0 => Ok(XattrReply::Size(len)),
            _ if len > size => Err(FsError::Range),
            _ => Ok(XattrReply::Data(list)),
        }
    }

    pub fn setxattr(
        &self,
        id: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: CallerIds,
    ) -> FsResult<()> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let node = self.inodes.get(id)?;
        let name = name.as_bytes();
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(FsError::Invalid);
        }
        if is_posix_acl(name) {
            self.may_set_acl(&node, caller)?;
            backing::setxattr(node.fd(), name, value, flags)?;
            // Setting an access ACL may change the mode.
            return self.attr_of(&node).map(drop);
        }
        let stored_name = xattr_backing_name(&secrets.names, name)?;
        let stored = secrets.names.encrypt_xattr_value(name, value)?;
        backing::setxattr(node.fd(), &stored_name, &stored, flags)?;
        if name == CAPABILITY {
            node.note_no_capability(false);
        }
        Ok(())
    }

    /// Removes the file's capability before a write through a handle that bypasses the
    /// page cache, as a local file system removes it on every write, whoever writes: for
    /// page-cached writes the kernel does this itself (it asks for the attribute, and
    /// removes it), for direct writes it does not. One look per file until a capability
    /// is set through the mount again.
    pub(super) fn drop_capability(&self, node: &Node, secrets: &VolumeSecrets) -> FsResult<()> {
        if node.has_no_capability() {
            return Ok(());
        }
        let stored_name = xattr_backing_name(&secrets.names, CAPABILITY)?;
        match backing::removexattr(node.fd(), &stored_name) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e.into()),
            _ => node.note_no_capability(true),
        }
        Ok(())
    }

    pub fn removexattr(&self, id: u64, name: &OsStr, caller: CallerIds) -> FsResult<()> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let node = self.inodes.get(id)?;
        let name = name.as_bytes();
        if is_posix_acl(name) {
            self.may_set_acl(&node, caller)?;
            backing::removexattr(node.fd(), name)?;
            return self.attr_of(&node).map(drop);
        }
        let stored_name = xattr_backing_name(&secrets.names, name)?;
        backing::removexattr(node.fd(), &stored_name)?;
        if name == CAPABILITY {
            node.note_capability_removed_by(caller.pid);
        }
        Ok(())
    }

    /// Only the owner (or root) may set or remove a POSIX ACL, as on a local file
    /// system; the daemon's own call in the backing directory would always be allowed.
    fn may_set_acl(&self, node: &Node, caller: CallerIds) -> FsResult<()> {
        let st = backing::stat(node.fd())?;
        if caller.uid == 0 || caller.uid == st.st_uid {
            Ok(())
        } else {
            Err(FsError::NotOwner)
        }
    }
}

/// The attribute that holds a file capability.
const CAPABILITY: &[u8] = b"security.capability";

fn is_posix_acl(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// The backing name of an attribute xtsfs stores; EOPNOTSUPP for a namespace it does not
/// serve, ERANGE for a name too long to encrypt within the backing limit.
fn xattr_backing_name(names: &NameCipher, name: &[u8]) -> FsResult<Vec<u8>> {
    if !NameCipher::stores_xattr(name) {
        return Err(FsError::Unsupported);
    }
    names.encrypt_xattr_name(name).map_err(|e| match e {
        NameError::TooLong => FsError::Range,
        e => FsError::from(e),
    })
}

/// A getxattr answer from a passed-through backing attribute.
fn backing_xattr_reply(
    result: std::io::Result<(Vec<u8>, usize)>,
    size: u32,
) -> FsResult<XattrReply> {
    let (value, len) = result?;
    if size == 0 {
        Ok(XattrReply::Size(
            u32::try_from(len).map_err(|_| FsError::ReplyTooLong)?,
        ))
    } else {
        Ok(XattrReply::Data(value))
    }
}
