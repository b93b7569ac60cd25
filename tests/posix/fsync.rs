//! flush and fsync on files and directories.

use std::fs::{self, File};
use std::io::Write;

use crate::common::sys::cvt;
use crate::common::TestEnv;
use crate::{contents, data, Bytes};

#[test]
fn flush_and_fsync_succeed_on_files_and_directories() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::create_dir(m.path("dir")).unwrap();
    let mut file = File::create(m.path("dir/file")).unwrap();
    file.write_all(&data(1, 10_000)).unwrap();
    file.flush().unwrap();
    file.sync_data().unwrap();
    file.write_all(b"more").unwrap();
    file.sync_all().unwrap();
    // close(2) sends FLUSH; its result is the close's.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: fd was just released by its File, so it is closed once.
    cvt(unsafe { libc::close(fd) }).expect("close");
    // fsync is allowed on a read-only handle.
    File::open(m.path("dir/file")).unwrap().sync_all().unwrap();
    for dir in [m.path("dir"), m.mountpoint.clone()] {
        let handle = File::open(&dir).unwrap();
        handle.sync_all().unwrap();
        handle.sync_data().unwrap();
    }
    m.remount();
    let mut expected = data(1, 10_000);
    expected.extend_from_slice(b"more");
    assert_eq!(contents(&m.path("dir/file")), Ok(Bytes(expected)));
}
