//! A crash-state simulator, in the spirit of ALICE (OSDI '14), CrashMonkey (OSDI '18) and
//! turso's `UnreliableIo`: the contents layer and the namespace operations Redis uses run
//! over a backing store that records every change not yet covered by an fsync, and then
//! every crash state a journaling file system may legally leave is built from the record:
//!
//! - each pwrite not covered by an fsync is applied, not applied, or applied in part, one
//!   512-byte backing sector at a time (a sector is the unit a disk writes atomically);
//! - a file's size changes (ftruncate, or a pwrite past the end) persist in the order they
//!   were made, and independently of its data: any prefix of them;
//! - namespace operations (create, rename, unlink) persist in order, independently of
//!   file data, until the directory is fsynced.
//!
//! After a crash, every file is reopened the way a mount opens it (its header read again)
//! and checked against a byte model: every byte covered by a completed fsync reads back
//! exactly; a byte changed since reads back as its old value, one of its new values or
//! zero; reading never fails. Format 2 must hold this in every state; format 1 must not
//! (`format_1_loses_fsynced_bytes`), which shows the simulator can see the loss.
//!
//! Small cases are enumerated exhaustively; larger ones are sampled. The randomized runs
//! take `XTSFS_CRASH_CASES` proptest cases (default 64; the soak runs thousands).

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use common::Rng;
use proptest::prelude::*;
use xtsfs::crypto::VolumeKey;
use xtsfs::fs::contents::{read_header, start_file, BackingFile, Contents};
use xtsfs::volume::file_header::FileHeader;
use xtsfs::volume::header::VolumeFormat;

const SECTOR: u64 = 512;

// --- the recording backing file ----------------------------------------------------------

/// A change to a backing file that no fsync covers yet.
#[derive(Clone, Debug)]
enum Pending {
    /// A pwrite; `grows_to` is the new length when it extended the file.
    Write {
        offset: u64,
        data: Vec<u8>,
        grows_to: Option<u64>,
    },
    SetLen(u64),
}

#[derive(Clone, Default)]
struct FileState {
    /// Contents (and length) as of the last fsync.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    pending: Vec<Pending>,
}

/// A backing file that records what is not yet durable.
#[derive(Default)]
struct SimFile(RefCell<FileState>);

impl SimFile {
    fn with_contents(bytes: Vec<u8>) -> Self {
        SimFile(RefCell::new(FileState {
            durable: bytes.clone(),
            current: bytes,
            pending: Vec::new(),
        }))
    }

    /// How many independent choices a crash of this file makes: one per sector piece of
    /// each pending write, and how many size changes persisted.
    fn crash_shape(&self) -> (usize, usize) {
        let state = self.0.borrow();
        let mut pieces = 0;
        let mut sizes = 0;
        for op in &state.pending {
            match op {
                Pending::Write {
                    offset,
                    data,
                    grows_to,
                } => {
                    pieces += sector_pieces(*offset, data.len()).count();
                    sizes += usize::from(grows_to.is_some());
                }
                Pending::SetLen(_) => sizes += 1,
            }
        }
        (pieces, sizes)
    }

    /// The backing file after a crash: the last fsync's contents, the first `sizes` size
    /// changes, and each pending sector piece for which `applied` says yes.
    fn crashed(&self, sizes: usize, applied: &mut dyn FnMut() -> bool) -> Vec<u8> {
        let state = self.0.borrow();
        let mut image = state.durable.clone();
        let mut len = image.len() as u64;
        let mut seen = 0;
        for op in &state.pending {
            match op {
                Pending::Write {
                    offset,
                    data,
                    grows_to,
                } => {
                    for piece in sector_pieces(*offset, data.len()) {
                        if applied() {
                            let at = piece.start as usize;
                            let n = (piece.end - piece.start) as usize;
                            let end = at + n;
                            if image.len() < end {
                                image.resize(end, 0);
                            }
                            let from = (piece.start - offset) as usize;
                            image[at..end].copy_from_slice(&data[from..from + n]);
                        }
                    }
                    if let Some(new_len) = grows_to {
                        if seen < sizes {
                            len = *new_len;
                        }
                        seen += 1;
                    }
                }
                Pending::SetLen(new_len) => {
                    if seen < sizes {
                        // A persisted shrink discards what was past it: re-extending the
                        // file later reads zeros there, as every Linux file system does.
                        image.resize(*new_len as usize, 0);
                        len = *new_len;
                    }
                    seen += 1;
                }
            }
        }
        image.resize(len as usize, 0);
        image
    }
}

/// The parts of a write at `offset` that fall in distinct backing sectors.
fn sector_pieces(offset: u64, len: usize) -> impl Iterator<Item = std::ops::Range<u64>> {
    let end = offset + len as u64;
    let mut at = offset;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let piece = at..end.min((at / SECTOR + 1) * SECTOR);
            at = piece.end;
            piece
        })
    })
}

impl BackingFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.0.borrow();
        let start = (offset as usize).min(state.current.len());
        let n = buf.len().min(state.current.len() - start);
        buf[..n].copy_from_slice(&state.current[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        let end = offset as usize + buf.len();
        let grows_to = (end > state.current.len()).then_some(end as u64);
        if let Some(new_len) = grows_to {
            state.current.resize(new_len as usize, 0);
        }
        state.current[offset as usize..end].copy_from_slice(buf);
        state.pending.push(Pending::Write {
            offset,
            data: buf.to_vec(),
            grows_to,
        });
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.borrow().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.current.resize(len as usize, 0);
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        if mode == libc::FALLOC_FL_KEEP_SIZE {
            return Ok(());
        }
        if mode != libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        // A punched hole is zeros written in place, within the length.
        let file_len = self.size()?;
        let end = (offset + len).min(file_len);
        if offset < end {
            self.write_all_at(&vec![0; (end - offset) as usize], offset)?;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.durable = state.current.clone();
        state.pending.clear();
        Ok(())
    }
}

// --- the file layer: what a mount does with a backing file ---------------------------------

/// A volume's data key and format; opens files the way the mount does, with the same
/// library calls (`read_header`, `start_file`, `Contents`), but with no cache, as a
/// fresh mount after a crash has none.
struct Volume {
    dek: VolumeKey,
    format: VolumeFormat,
}

impl Volume {
    fn new(format: VolumeFormat) -> Self {
        Volume {
            dek: VolumeKey::generate().unwrap(),
            format,
        }
    }

    fn header(&self, file: &SimFile) -> Result<Option<FileHeader>, String> {
        read_header(file, self.format).map_err(|e| e.to_string())
    }

    /// Runs `f` on the contents and length, giving the file a header if it has none.
    fn change(&self, file: &SimFile, f: impl FnOnce(&Contents<'_, SimFile>, u64)) {
        let header = match self.header(file).unwrap() {
            Some(header) => header,
            None => {
                let header = FileHeader::generate(self.format.new_files()).unwrap();
                start_file(file, &header).unwrap();
                header
            }
        };
        let cipher = self.dek.file_cipher(&header.nonce);
        let len = header.format.plaintext_len(file.size().unwrap()).unwrap();
        f(
            &Contents {
                file,
                cipher: &cipher,
                format: header.format,
            },
            len,
        );
    }

    fn write(&self, file: &SimFile, offset: u64, data: &[u8]) {
        self.change(file, |c, len| c.write(offset, data, len).unwrap());
    }

    fn truncate(&self, file: &SimFile, new_len: u64) {
        self.change(file, |c, len| c.resize(len, new_len).unwrap());
    }

    fn zero(&self, file: &SimFile, offset: u64, n: u64) {
        self.change(file, |c, len| c.zero(offset..offset + n, len).unwrap());
    }

    /// Every plaintext byte, read as a mount would after a crash.
    fn read_all(&self, file: &SimFile) -> Result<Vec<u8>, String> {
        let backing_len = file.size().unwrap();
        let header = self.header(file)?;
        let format = header.map_or(self.format.new_files(), |h| h.format);
        let len = format
            .plaintext_len(backing_len)
            .ok_or_else(|| format!("backing length {backing_len} is no plaintext length"))?;
        let Some(header) = header else {
            return Ok(vec![0; len as usize]);
        };
        let cipher = self.dek.file_cipher(&header.nonce);
        let contents = Contents {
            file,
            cipher: &cipher,
            format: header.format,
        };
        let mut buf = Vec::new();
        let range = contents
            .read(0, len as usize, len, &mut buf)
            .map_err(|e| e.to_string())?;
        Ok(buf[range].to_vec())
    }
}

// --- the byte model ------------------------------------------------------------------------

/// What each byte of a file may read as after a crash.
#[derive(Clone, Default)]
struct Model {
    /// The plaintext now.
    now: Vec<u8>,
    /// Per byte: the values it may hold after a crash (its synced value first).
    allowed: Vec<Vec<u8>>,
    /// The least and greatest length since the last fsync.
    min_len: usize,
    max_len: usize,
}

impl Model {
    fn allow(&mut self, at: usize, value: u8) {
        if self.allowed.len() <= at {
            self.allowed.resize(at + 1, vec![0]);
        }
        if !self.allowed[at].contains(&value) {
            self.allowed[at].push(value);
        }
    }

    fn sync(&mut self) {
        self.allowed = self.now.iter().map(|b| vec![*b]).collect();
        self.min_len = self.now.len();
        self.max_len = self.now.len();
    }

    fn set_len(&mut self, len: usize) {
        for at in len..self.now.len() {
            self.allow(at, 0);
        }
        self.now.resize(len, 0);
        self.min_len = self.min_len.min(len);
        self.max_len = self.max_len.max(len);
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        if self.now.len() < offset + data.len() {
            self.set_len(offset + data.len());
        }
        for (i, b) in data.iter().enumerate() {
            self.now[offset + i] = *b;
            self.allow(offset + i, *b);
        }
    }

    fn zero(&mut self, offset: usize, n: usize) {
        for at in offset..(offset + n).min(self.now.len()) {
            self.now[at] = 0;
            self.allow(at, 0);
        }
    }

    /// Why `read` cannot be what a crash left, if it cannot.
    fn violation(&self, read: &[u8]) -> Option<String> {
        if read.len() < self.min_len || read.len() > self.max_len {
            return Some(format!(
                "length {} outside {}..={} since the last fsync",
                read.len(),
                self.min_len,
                self.max_len
            ));
        }
        read.iter().enumerate().find_map(|(at, b)| {
            let allowed = self.allowed.get(at).map_or(&[0u8][..], |v| v.as_slice());
            (!allowed.contains(b))
                .then(|| format!("byte {at} reads {b:#04x}, allowed only {allowed:02x?}"))
        })
    }
}

// --- operations ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Append { len: usize, seed: u8 },
    Write { offset: u64, len: usize, seed: u8 },
    Truncate { len: u64 },
    Zero { offset: u64, len: u64 },
    Fsync,
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    // Never zero, so a zero in the wrong place is always seen.
    (0..len)
        .map(|i| seed.wrapping_add(i as u8) | 0x80)
        .collect()
}

fn apply(volume: &Volume, file: &SimFile, model: &mut Model, op: &Op) {
    match *op {
        Op::Append { len, seed } => {
            let offset = model.now.len();
            let data = data(len, seed);
            volume.write(file, offset as u64, &data);
            model.write(offset, &data);
        }
        Op::Write { offset, len, seed } => {
            let data = data(len, seed);
            volume.write(file, offset, &data);
            model.write(offset as usize, &data);
        }
        Op::Truncate { len } => {
            volume.truncate(file, len);
            model.set_len(len as usize);
        }
        Op::Zero { offset, len } => {
            volume.zero(file, offset, len);
            model.zero(offset as usize, len as usize);
        }
        Op::Fsync => {
            file.sync_data().unwrap();
            model.sync();
        }
    }
}

/// Offsets near block, sector and unit edges, where the arithmetic is.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..9000u64,
        (0..4u64, 0..3u64).prop_flat_map(|(unit, edge)| {
            let at = unit * 4096 + [0, 16, 512][edge as usize];
            at.saturating_sub(20)..at + 20
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..40usize, any::<u8>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        1 => (1..5000usize, any::<u8>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        3 => (offset(), 1..700usize, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        1 => offset().prop_map(|len| Op::Truncate { len }),
        1 => Just(Op::Truncate { len: 0 }),
        1 => (offset(), 1..600u64).prop_map(|(offset, len)| Op::Zero { offset, len }),
        3 => Just(Op::Fsync),
    ]
}

// --- checking crash states -------------------------------------------------------------------

/// Every crash state when there are few, else `samples` random ones plus the two extremes.
fn crash_states(file: &SimFile, samples: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let (pieces, sizes) = file.crash_shape();
    let mut states = Vec::new();
    if pieces <= 6 {
        for mask in 0u32..1 << pieces {
            for k in 0..=sizes {
                let mut bit = 0;
                states.push(file.crashed(k, &mut || {
                    bit += 1;
                    mask >> (bit - 1) & 1 == 1
                }));
            }
        }
    } else {
        states.push(file.crashed(0, &mut || false));
        states.push(file.crashed(sizes, &mut || true));
        for _ in 0..samples {
            let k = rng.below(sizes as u64 + 1) as usize;
            // Sometimes most pieces land, sometimes few: torn writes of every shape.
            let p = rng.below(101);
            states.push(file.crashed(k, &mut || rng.percent(p)));
        }
    }
    states
}

/// Checks every crash state of `file` against `model`, then goes on using one of them
/// the way an application would after a restart; returns the first violation.
fn check_crashes(volume: &Volume, file: &SimFile, model: &Model, rng: &mut Rng) -> Option<String> {
    for (i, image) in crash_states(file, 24, rng).into_iter().enumerate() {
        let recovered = SimFile::with_contents(image);
        let read = match volume.read_all(&recovered) {
            Ok(read) => read,
            Err(e) => return Some(format!("reading after the crash failed: {e}")),
        };
        if let Some(violation) = model.violation(&read) {
            return Some(violation);
        }
        if i % 4 != 0 {
            continue;
        }
        // After the restart the file must behave like any other: grow it past a gap and
        // append, and the gap reads as zeros (no byte of an unsynced write comes back).
        let mut after = Model {
            now: read.clone(),
            ..Model::default()
        };
        after.sync();
        let gap_to = read.len() as u64 + 40;
        volume.truncate(&recovered, gap_to);
        after.set_len(gap_to as usize);
        let tail = data(9, 0x33);
        volume.write(&recovered, gap_to + 100, &tail);
        after.write(gap_to as usize + 100, &tail);
        match volume.read_all(&recovered) {
            Ok(again) if again == after.now => {}
            Ok(_) => return Some("the file reads wrong after growing it past a crash".into()),
            Err(e) => return Some(format!("reading after growing it failed: {e}")),
        }
    }
    None
}

/// Runs `ops` and checks every crash state after each one.
fn run(format: VolumeFormat, ops: &[Op], seed: u64) -> Option<String> {
    let volume = Volume::new(format);
    let file = SimFile::default();
    let mut model = Model::default();
    let mut rng = Rng(seed | 1);
    for (i, op) in ops.iter().enumerate() {
        apply(&volume, &file, &mut model, op);
        if let Some(violation) = check_crashes(&volume, &file, &model, &mut rng) {
            return Some(format!("after op {i} of {ops:?}: {violation}"));
        }
    }
    None
}

fn cases() -> u32 {
    std::env::var("XTSFS_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn format_2_keeps_every_fsynced_byte_in_every_crash_state(
        ops in prop::collection::vec(op(), 1..16),
        seed in any::<u64>(),
    ) {
        if let Some(violation) = run(VolumeFormat::V2, &ops, seed) {
            prop_assert!(false, "{}", violation);
        }
    }
}

/// The measurement that opened the format 2 work: a file of L bytes is synced, 7 bytes
/// are appended, and the power fails inside the fdatasync. Format 1 rewrites the last
/// unit at its new length, so the state "new unit on disk, old size" decrypts the synced
/// tail as garbage; format 2 survives every state.
#[test]
fn format_1_loses_fsynced_bytes() {
    for len in [5usize, 100, 4000, 4100] {
        let ops = [
            Op::Append { len, seed: 1 },
            Op::Fsync,
            Op::Append { len: 7, seed: 2 },
        ];
        let v1 = run(VolumeFormat::V1, &ops, 7);
        assert!(
            v1.is_some(),
            "length {len}: the simulator found no lost byte in format 1"
        );
        assert_eq!(run(VolumeFormat::V2, &ops, 7), None, "length {len}");
    }
}

/// Format 1 fails the randomized check too, so the generator reaches the states that
/// matter; this is how the check was shown to fail on the old format.
#[test]
fn format_1_fails_the_randomized_check() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &(prop::collection::vec(op(), 1..16), any::<u64>()),
        |(ops, seed)| {
            prop_assert!(run(VolumeFormat::V1, &ops, seed).is_none());
            Ok(())
        },
    );
    assert!(
        result.is_err(),
        "256 random cases found no loss in format 1"
    );
}

// --- namespace: the Redis persistence pattern --------------------------------------------------

/// A directory whose entries persist in order until it is fsynced.
#[derive(Default)]
struct SimDir {
    durable: BTreeMap<String, Rc<SimFile>>,
    current: BTreeMap<String, Rc<SimFile>>,
    pending: Vec<NameOp>,
}

#[derive(Clone)]
enum NameOp {
    Create(String, Rc<SimFile>),
    Rename(String, String),
    Unlink(String),
}

impl SimDir {
    fn apply(map: &mut BTreeMap<String, Rc<SimFile>>, op: &NameOp) {
        match op {
            NameOp::Create(name, file) => {
                map.insert(name.clone(), file.clone());
            }
            NameOp::Rename(from, to) => {
                if let Some(file) = map.remove(from) {
                    map.insert(to.clone(), file);
                }
            }
            NameOp::Unlink(name) => {
                map.remove(name);
            }
        }
    }

    fn op(&mut self, op: NameOp) {
        Self::apply(&mut self.current, &op);
        self.pending.push(op);
    }

    fn create(&mut self, name: &str) -> Rc<SimFile> {
        let file = Rc::new(SimFile::default());
        self.op(NameOp::Create(name.into(), file.clone()));
        file
    }

    fn fsync(&mut self) {
        self.durable = self.current.clone();
        self.pending.clear();
    }

    /// The entries after a crash that kept the first `kept` pending operations.
    fn crashed(&self, kept: usize) -> BTreeMap<String, Rc<SimFile>> {
        let mut map = self.durable.clone();
        for op in &self.pending[..kept] {
            Self::apply(&mut map, op);
        }
        map
    }
}

/// Redis with `appendfsync always`: every acknowledged command was fdatasynced into the
/// AOF; BGREWRITEAOF writes a new AOF, fsyncs it, renames it over the old one and
/// fsyncs the directory; BGSAVE does the same for dump.rdb. A crash at any point — with
/// the last append's fdatasync not yet returned — keeps every acknowledged command, and
/// dump.rdb is always one complete snapshot.
fn redis_workload(format: VolumeFormat, seed: u64, steps: usize) -> Option<String> {
    let volume = Volume::new(format);
    let mut rng = Rng(seed | 1);
    let mut dir = SimDir::default();
    let mut aof = dir.create("appendonly.aof");
    dir.fsync();
    let mut acknowledged = Vec::new();
    let mut snapshots: Vec<Vec<u8>> = Vec::new();
    for step in 0..steps {
        match rng.below(10) {
            0 => {
                // BGREWRITEAOF: the acknowledged state, compacted, in a new file.
                let temp = dir.create("temp-rewriteaof-bg.aof");
                let mut written = 0;
                while written < acknowledged.len() {
                    let n = (1 + rng.below(3000) as usize).min(acknowledged.len() - written);
                    volume.write(&temp, written as u64, &acknowledged[written..written + n]);
                    written += n;
                }
                temp.sync_data().unwrap();
                dir.op(NameOp::Rename(
                    "temp-rewriteaof-bg.aof".into(),
                    "appendonly.aof".into(),
                ));
                dir.fsync();
                aof = temp;
            }
            1 => {
                // BGSAVE.
                let snapshot = data(1 + rng.below(9000) as usize, step as u8);
                let temp = dir.create("temp-1.rdb");
                volume.write(&temp, 0, &snapshot);
                temp.sync_data().unwrap();
                dir.op(NameOp::Rename("temp-1.rdb".into(), "dump.rdb".into()));
                dir.fsync();
                snapshots.push(snapshot);
            }
            _ => {
                let command = data(20 + rng.below(200) as usize, step as u8);
                volume.write(&aof, acknowledged.len() as u64, &command);
                aof.sync_data().unwrap();
                acknowledged.extend_from_slice(&command);
            }
        }
    }
    // The next command is written, and the power fails inside its fdatasync.
    let command = data(1 + rng.below(300) as usize, 0x55);
    volume.write(&aof, acknowledged.len() as u64, &command);
    dir.op(NameOp::Unlink("temp-1.rdb".into()));

    for kept in 0..=dir.pending.len() {
        let entries = dir.crashed(kept);
        let Some(aof) = entries.get("appendonly.aof") else {
            return Some("appendonly.aof is gone".into());
        };
        let mut model = Model {
            now: acknowledged.clone(),
            ..Model::default()
        };
        model.sync();
        model.write(acknowledged.len(), &command);
        for image in crash_states(aof, 32, &mut rng) {
            let read = match volume.read_all(&SimFile::with_contents(image)) {
                Ok(read) => read,
                Err(e) => return Some(format!("appendonly.aof does not read: {e}")),
            };
            if !read.starts_with(&acknowledged) {
                return Some(format!(
                    "an acknowledged command is lost: {}",
                    model.violation(&read).unwrap_or_default()
                ));
            }
            if let Some(violation) = model.violation(&read) {
                return Some(format!("appendonly.aof: {violation}"));
            }
        }
        if let Some(rdb) = entries.get("dump.rdb") {
            let read = volume.read_all(rdb).map_err(|e| format!("dump.rdb: {e}"));
            match read {
                Ok(read) if snapshots.contains(&read) => {}
                Ok(_) => return Some("dump.rdb is no complete snapshot".into()),
                Err(e) => return Some(e),
            }
        }
    }
    None
}

#[test]
fn redis_persistence_survives_every_crash_state() {
    for seed in 0..cases() as u64 / 4 + 4 {
        if let Some(violation) = redis_workload(VolumeFormat::V2, seed, 40) {
            panic!("seed {seed}: {violation}");
        }
    }
}

#[test]
fn redis_persistence_loses_acknowledged_commands_on_format_1() {
    let lost = (0..16).any(|seed| redis_workload(VolumeFormat::V1, seed, 40).is_some());
    assert!(
        lost,
        "format 1 kept every acknowledged command in 16 workloads"
    );
}
