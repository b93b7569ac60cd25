//! Which mounts exist: /proc/self/mountinfo, and the checks on a mount point.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::Error;

pub struct MountEntry {
    pub fs_type: String,
    pub source: String,
}

/// The mount whose mount point is `path`, from /proc/self/mountinfo.
pub fn find_mount(path: &Path) -> Option<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let mount_point = unescape_mountinfo(fields.get(4)?);
        if Path::new(&mount_point) != path {
            return None;
        }
        Some(MountEntry {
            fs_type: fields.get(separator + 1)?.to_string(),
            source: unescape_mountinfo(fields.get(separator + 2)?)
                .to_string_lossy()
                .into_owned(),
        })
    })
}

/// The backing directory of the xtsfs mount at `path`, if `path` is one.
pub fn backing_of_mount(path: &Path) -> Option<PathBuf> {
    let entry = find_mount(&path.canonicalize().ok()?)?;
    (entry.fs_type == "fuse.xtsfs").then(|| PathBuf::from(entry.source))
}

/// Where the xtsfs mount of `backing` is, if it is mounted.
pub fn mount_point_of(backing: &Path) -> Option<PathBuf> {
    let backing = backing.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let is_ours = *fields.get(separator + 1)? == "fuse.xtsfs"
            && unescape_mountinfo(fields.get(separator + 2)?) == backing.as_os_str();
        let mountpoint = fields.get(4)?;
        is_ours.then(|| PathBuf::from(unescape_mountinfo(mountpoint)))
    })
}

/// `path`, canonical, if it is a directory that nothing is mounted on yet.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, Error> {
    let canonical = path.canonicalize().map_err(|e| {
        Error::Mount(format!(
            "mount point '{}' cannot be used: {e}",
            path.display()
        ))
    })?;
    if !canonical.is_dir() {
        return Err(Error::Mount(format!(
            "mount point '{}' is not a directory",
            path.display()
        )));
    }
    if let Some(existing) = find_mount(&canonical) {
        return Err(Error::Mount(format!(
            "'{}' is already a mount point ({} from {}): unmount it first or pick another directory",
            canonical.display(),
            existing.fs_type,
            existing.source
        )));
    }
    Ok(canonical)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_octal_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b\134c"), "/mnt/a b\\c");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }
}
