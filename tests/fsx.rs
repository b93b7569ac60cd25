//! fsx-style exerciser: one file, thousands of random reads, writes, truncates, hole
//! punches, zero ranges, mmap reads and writes, fsyncs, reopens and remounts through a
//! mount, each checked at once against a plain byte buffer. Offsets crowd around the
//! edges that the formats care about: 16-byte blocks, 512-byte sectors, 4 KiB units and
//! the end of the file.
//!
//! It runs on a new format 2 volume (default and `--direct-io`), on a format 1 volume,
//! and on a file of the committed golden format 1 volume.
//! `XTSFS_FSX_OPS=N` sets the operations per run (default 1500), `XTSFS_FSX_SEED=S`
//! the seed.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::mount::Mounted;
use common::sys::fallocate;
use common::{env_number, pseudo_random_bytes, Rng, TestEnv};

const MAX_LEN: u64 = 300_000;

struct Fsx<'m, 'e> {
    m: &'m mut Mounted<'e>,
    name: &'static str,
    file: File,
    model: Vec<u8>,
    rng: Rng,
    direct_io: bool,
    log: Vec<String>,
}

impl<'m, 'e> Fsx<'m, 'e> {
    fn new(m: &'m mut Mounted<'e>, name: &'static str, seed: u64, direct_io: bool) -> Self {
        let path = m.path(name);
        let model = std::fs::read(&path).unwrap_or_default();
        let file = open(&path);
        Fsx {
            m,
            name,
            file,
            model,
            rng: Rng(seed),
            direct_io,
            log: Vec::new(),
        }
    }

    /// An offset near an edge, or anywhere up to a little past the end.
    fn offset(&mut self) -> u64 {
        let len = self.model.len() as u64;
        match self.rng.below(4) {
            0 => self.rng.below(len + 100),
            1 => len.saturating_sub(self.rng.below(40)) + self.rng.below(40),
            _ => {
                let edge = [16, 512, 4096][self.rng.below(3) as usize];
                let at = self.rng.below(len / edge + 2) * edge;
                (at + self.rng.below(40)).saturating_sub(20)
            }
        }
        .min(MAX_LEN)
    }

    fn length(&mut self) -> u64 {
        match self.rng.below(5) {
            0 => 1 + self.rng.below(16),
            1 => 1 + self.rng.below(600),
            2 => 4096 * (1 + self.rng.below(3)),
            _ => 1 + self.rng.below(9000),
        }
    }

    fn step(&mut self, i: usize) {
        let op = self.rng.below(100);
        let len = self.model.len() as u64;
        match op {
            0..=29 => {
                let offset = self.offset();
                let n = self.length().min(MAX_LEN - offset.min(MAX_LEN)).max(1);
                let data = pseudo_random_bytes(self.rng.next(), n as usize);
                self.log.push(format!("{i}: write {offset}+{n}"));
                self.file.write_all_at(&data, offset).unwrap();
                let end = (offset + n) as usize;
                if self.model.len() < end {
                    self.model.resize(end, 0);
                }
                self.model[offset as usize..end].copy_from_slice(&data);
            }
            30..=34 => {
                let n = self.length();
                let data = pseudo_random_bytes(self.rng.next(), n as usize);
                self.log.push(format!("{i}: append {n}"));
                self.file.write_all_at(&data, len).unwrap();
                self.model.extend_from_slice(&data);
            }
            35..=59 => {
                let offset = self.offset();
                let n = self.length();
                self.log.push(format!("{i}: read {offset}+{n}"));
                self.check_read(offset, n);
            }
            60..=66 => {
                let new_len = if self.rng.percent(10) {
                    0
                } else {
                    self.offset()
                };
                self.log.push(format!("{i}: truncate {new_len}"));
                self.file.set_len(new_len).unwrap();
                self.model.resize(new_len as usize, 0);
            }
            67..=72 => {
                let offset = self.offset();
                let n = self.length();
                let punch = self.rng.percent(50);
                let mode = if punch {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
                self.log.push(format!(
                    "{i}: {} {offset}+{n}",
                    if punch { "punch" } else { "zero" }
                ));
                fallocate(&self.file, mode, offset, n).unwrap();
                let end = (offset + n) as usize;
                if !punch && self.model.len() < end {
                    self.model.resize(end, 0);
                }
                let end = end.min(self.model.len());
                if (offset as usize) < end {
                    self.model[offset as usize..end].fill(0);
                }
            }
            73..=77 if !self.direct_io && len > 0 => self.mapped(i),
            78..=82 => {
                self.log.push(format!("{i}: fsync"));
                self.file.sync_all().unwrap();
            }
            83..=90 => {
                self.log.push(format!("{i}: reopen"));
                self.file = open(&self.m.path(self.name));
            }
            91 => {
                self.log.push(format!("{i}: remount"));
                self.file.sync_all().unwrap();
                let path = self.m.path(self.name);
                let placeholder = open(&self.m.backing.join("xtsfs.header"));
                drop(std::mem::replace(&mut self.file, placeholder));
                let args: &[&str] = if self.direct_io {
                    &["--direct-io"]
                } else {
                    &[]
                };
                self.m.remount_with(args);
                self.file = open(&path);
            }
            _ => {
                self.log.push(format!("{i}: read all"));
                self.check_read(0, len + 10);
            }
        }
        let size = self.file.metadata().unwrap().len();
        assert_eq!(size, self.model.len() as u64, "size after {}", self.tail());
    }

    /// Reads and writes through a shared mapping: a page-cache path of its own.
    fn mapped(&mut self, i: usize) {
        let len = self.model.len();
        let offset = self.rng.below(len as u64) as usize;
        let n = (self.length() as usize).min(len - offset);
        let data = pseudo_random_bytes(self.rng.next(), n);
        self.log.push(format!("{i}: mmap write {offset}+{n}"));
        // SAFETY: a fresh shared mapping of the whole file, unmapped below; the file is not
        // resized while it exists.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED, "mmap");
            let bytes = std::slice::from_raw_parts_mut(map.cast::<u8>(), len);
            assert!(
                bytes == self.model.as_slice(),
                "mapped contents, {}",
                self.tail()
            );
            bytes[offset..offset + n].copy_from_slice(&data);
            assert_eq!(libc::msync(map, len, libc::MS_SYNC), 0, "msync");
            libc::munmap(map, len);
        }
        self.model[offset..offset + n].copy_from_slice(&data);
    }

    fn check_read(&mut self, offset: u64, n: u64) {
        let mut buf = vec![0xeeu8; n as usize];
        let mut got = 0;
        while got < buf.len() {
            match self
                .file
                .read_at(&mut buf[got..], offset + got as u64)
                .unwrap()
            {
                0 => break,
                k => got += k,
            }
        }
        let start = (offset as usize).min(self.model.len());
        let end = (offset + n).min(self.model.len() as u64) as usize;
        let expected = &self.model[start..end];
        if &buf[..got] != expected {
            let first = buf[..got]
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(got.min(expected.len()));
            panic!(
                "read {offset}+{n}: {got} bytes, expected {}; first difference at file offset {}\n{}",
                expected.len(),
                offset as usize + first,
                self.tail()
            );
        }
    }

    fn tail(&self) -> String {
        let from = self.log.len().saturating_sub(25);
        self.log[from..].join("\n")
    }
}

fn open(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

fn run(m: &mut Mounted<'_>, name: &'static str, seed: u64, direct_io: bool) {
    let ops = env_number("XTSFS_FSX_OPS").unwrap_or(1500) as usize;
    let seed = env_number("XTSFS_FSX_SEED").unwrap_or(seed);
    let mut fsx = Fsx::new(m, name, seed, direct_io);
    for i in 0..ops {
        fsx.step(i);
    }
    let all = fsx.model.len() as u64;
    fsx.check_read(0, all);
    drop(fsx.file);
    fsx.m
        .remount_with(if direct_io { &["--direct-io"] } else { &[] });
    assert_eq!(
        std::fs::read(fsx.m.path(name)).unwrap(),
        fsx.model,
        "after the final remount (seed {seed:#x})"
    );
}

#[test]
fn format_2() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    run(&mut m, "f", 0xf5_0002, false);
}

#[test]
fn format_2_direct_io() {
    let env = TestEnv::new();
    let mut m = env.initialized(&[]);
    m.mount(&["--direct-io"]);
    run(&mut m, "f", 0xf5_d10, true);
}

#[test]
fn format_1() {
    let env = TestEnv::new();
    let mut m = env.mounted(&["--format", "1"]);
    run(&mut m, "f", 0xf5_0001, false);
}

#[test]
fn golden_format_1_file() {
    let env = TestEnv::new();
    common::golden_copy(&env, "mmk");
    let mut m = env.existing();
    m.mount(&[]);
    run(&mut m, "ten-thousand.bin", 0xf5_601d, false);
}
