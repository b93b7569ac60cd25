//! A read-only mount serves reads and refuses writes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::common::sys::{mkfifo, timespec, truncate, utimensat};
use crate::common::TestEnv;
use crate::{assert_errno, contents, names, Bytes};

#[test]
fn read_only_mount_serves_reads_and_refuses_writes() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/file"), b"readable").unwrap();
    symlink("dir/file", m.path("link")).unwrap();
    m.remount_with(&["--read-only"]);
    let backing_before = names(&m.tree());

    assert_eq!(
        contents(&m.path("dir/file")),
        Ok(Bytes(b"readable".to_vec()))
    );
    assert_eq!(contents(&m.path("link")), Ok(Bytes(b"readable".to_vec())));
    assert_eq!(
        fs::read_link(m.path("link")).unwrap(),
        Path::new("dir/file")
    );
    assert_eq!(names(&m.path("dir")), ["file"]);

    let file = m.path("dir/file");
    let erofs = libc::EROFS;
    assert_errno(OpenOptions::new().write(true).open(&file), erofs);
    assert_errno(OpenOptions::new().append(true).open(&file), erofs);
    assert_errno(File::create(m.path("new")), erofs);
    assert_errno(fs::create_dir(m.path("newdir")), erofs);
    assert_errno(fs::remove_file(&file), erofs);
    assert_errno(fs::remove_dir(m.path("dir")), erofs);
    assert_errno(fs::rename(&file, m.path("moved")), erofs);
    assert_errno(symlink("x", m.path("newlink")), erofs);
    assert_errno(fs::hard_link(&file, m.path("hard")), erofs);
    assert_errno(
        fs::set_permissions(&file, fs::Permissions::from_mode(0o777)),
        erofs,
    );
    assert_errno(std::os::unix::fs::chown(&file, Some(1), Some(1)), erofs);
    assert_errno(truncate(&file, 0), erofs);
    assert_errno(mkfifo(&m.path("fifo"), 0o600), erofs);
    assert_errno(utimensat(&file, timespec(1, 0), timespec(1, 0), 0), erofs);

    assert_eq!(contents(&file), Ok(Bytes(b"readable".to_vec())));
    assert_eq!(names(&m.tree()), backing_before);
}
