//! create and open: O_EXCL, O_TRUNC, O_APPEND.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::common::TestEnv;
use crate::{contents, data, os, same_as_local, Bytes};

#[test]
fn open_create_exclusive_refuses_an_existing_name() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let seen = same_as_local(&env, &m, |dir| {
        let create_new = |path: &Path| {
            os(OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(path)
                .map(drop))
        };
        let path = dir.join("file");
        let first = create_new(&path);
        let mode = fs::metadata(&path).unwrap().mode();
        fs::write(&path, b"kept").unwrap();
        let again = create_new(&path);
        let without_excl = os(OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map(drop));
        fs::create_dir(dir.join("dir")).unwrap();
        let on_dir = create_new(&dir.join("dir"));
        // O_EXCL never follows a symlink, even a dangling one; plain O_CREAT does.
        symlink("created-through-link", dir.join("dangling")).unwrap();
        let on_dangling = create_new(&dir.join("dangling"));
        let target_after_excl = dir.join("created-through-link").exists();
        let through_link = os(OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("dangling"))
            .map(drop));
        let target_after_creat = dir.join("created-through-link").exists();
        format!(
            "first {first:?} mode {mode:o} again {again:?} without excl {without_excl:?} \
             contents {:?} on dir {on_dir:?} on dangling {on_dangling:?} \
             target {target_after_excl} through link {through_link:?} target {target_after_creat}",
            contents(&path)
        )
    });
    assert!(
        seen.contains(&format!("again Err({})", libc::EEXIST)),
        "{seen}"
    );
}

#[test]
fn open_trunc_empties_the_file() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        fs::write(&path, data(1, 10_000)).unwrap();
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len_on_open = file.metadata().unwrap().len();
        file.write_all(b"new").unwrap();
        drop(file);
        let after_write = contents(&path);
        // Linux truncates on O_RDONLY|O_TRUNC too (POSIX leaves it unspecified).
        fs::write(&path, data(2, 5000)).unwrap();
        let read_only = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&path)
            .unwrap();
        let len_read_only = read_only.metadata().unwrap().len();
        drop(read_only);
        format!(
            "on open {len_on_open} after write {after_write:?} read-only {len_read_only} \
             then {:?}",
            contents(&path)
        )
    });
}

#[test]
fn o_append_writers_interleave_without_overwriting() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let chunks: Vec<Vec<u8>> = (0..40).map(|i| data(i, 1 + (i * 997) % 5000)).collect();
    let seen = same_as_local(&env, &m, |dir| {
        let path = dir.join("log");
        let open = || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .unwrap()
        };
        let mut writers = [open(), open()];
        for (i, chunk) in chunks.iter().enumerate() {
            let writer = &mut writers[i % 2];
            // O_APPEND ignores the file position.
            writer.seek(SeekFrom::Start(0)).unwrap();
            writer.write_all(chunk).unwrap();
        }
        contents(&path)
    });
    assert_eq!(seen, Ok(Bytes(chunks.concat())));
}
