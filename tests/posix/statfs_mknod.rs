//! statfs and mknod (extended attributes: xattrs.rs).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::Duration;

use crate::common::sys::{cpath, cvt, mkfifo, statvfs};
use crate::common::TestEnv;
use crate::{contents, data, within, Bytes};

#[test]
fn statfs_matches_the_backing_file_system() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let (mounted, backing) = (statvfs(&m.mountpoint), statvfs(&m.tree()));
    assert_eq!(mounted.f_bsize, backing.f_bsize);
    assert_eq!(mounted.f_frsize, backing.f_frsize);
    assert_eq!(mounted.f_blocks, backing.f_blocks);
    assert_eq!(mounted.f_files, backing.f_files);
    assert_eq!(mounted.f_namemax, 255);
}

#[test]
fn mknod_makes_fifos_sockets_and_regular_files() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let fifo = m.path("fifo");
    mkfifo(&fifo, 0o640).unwrap();
    let meta = fs::symlink_metadata(&fifo).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.mode() & 0o777, 0o640);
    let message = data(9, 256 * 1024);
    let received = within(Duration::from_secs(20), {
        let (fifo, message) = (fifo.clone(), message.clone());
        move || {
            let writer_fifo = fifo.clone();
            let writer = thread::spawn(move || {
                File::options()
                    .write(true)
                    .open(&writer_fifo)
                    .unwrap()
                    .write_all(&message)
                    .unwrap()
            });
            let mut received = Vec::new();
            File::open(&fifo)
                .unwrap()
                .read_to_end(&mut received)
                .unwrap();
            writer.join().unwrap();
            received
        }
    });
    assert_eq!(Bytes(received), Bytes(message));

    let socket = m.path("socket");
    let listener = UnixListener::bind(&socket).unwrap();
    assert!(fs::symlink_metadata(&socket)
        .unwrap()
        .file_type()
        .is_socket());
    let mut client = UnixStream::connect(&socket).unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    listener.accept().unwrap().0.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    let regular = m.path("regular");
    let c = cpath(&regular);
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::mknod(c.as_ptr(), libc::S_IFREG | 0o600, 0) }).unwrap();
    assert!(fs::metadata(&regular).unwrap().is_file());
    assert_eq!(contents(&regular), Ok(Bytes(Vec::new())));
    fs::write(&regular, b"written after mknod").unwrap();
    drop(listener);
    m.remount();
    assert_eq!(
        contents(&m.path("regular")),
        Ok(Bytes(b"written after mknod".to_vec()))
    );
    assert!(fs::symlink_metadata(m.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}
