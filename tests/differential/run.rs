//! The run: both sides with their mount, applying operations, comparing, reporting a
//! mismatch and minimizing the sequence that led to it.

use std::collections::BTreeMap;
use std::fs::{self};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use crate::common::mount::{find_plaintext, Mounted};
use crate::common::users::User;
use crate::common::{contains, set_mode, TestEnv, LONGEST_DIRECT_NAME, UNIT};
use crate::generator::{canary, Generator};
use crate::model::{
    bytes_difference, list, lstat, lstat_after_ttl, shown_xattrs, snapshot, times_of,
    tree_differences,
};
use crate::op::{Fill, Op, RelPath, Shown, TimeSpec, XattrFlags, XattrName};
use crate::side::{from_wire, open, read_data, to_wire, xattrs, Errno, Outcome, Side, Value};
use crate::{
    Start, CLOCK_SLACK, COMPARE_EVERY, KERNEL_CACHE_TTL, LOG_TAIL, MAX_XATTR_VALUE, MINIMIZE_VAR,
    MOUNT_ARGS_VAR, REFERENCE, SLOTS, XTSFS,
};

/// A divergence between the two sides.
struct Mismatch {
    /// The failing op's kind and what diverged, to recognise the same failure while
    /// minimizing.
    class: String,
    what: String,
}

fn op_kind(op: &Op) -> String {
    if let Op::AsOther { op, .. } = op {
        return format!("{} as other user", op_kind(op));
    }
    let shown = format!("{op:?}");
    shown
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The two sides with their mount, applying operations and comparing.
struct Run<'a> {
    // Before `mount`: fields drop in order, and open handles would keep it busy.
    sides: [Side; 2],
    mount: Mounted<'a>,
    canary: Vec<u8>,
    mount_args: Vec<String>,
    /// Per operation kind: how many succeeded, and how many failed with which errno.
    tally: BTreeMap<String, (usize, BTreeMap<String, usize>)>,
}

impl<'a> Run<'a> {
    pub(crate) fn new(env: &'a TestEnv, seed: u64, start: Start) -> Self {
        // --allow-other: the second user must reach the mount.
        let mut mount_args = vec!["--allow-other".to_string()];
        mount_args.extend(
            std::env::var(MOUNT_ARGS_VAR)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string),
        );
        let mut mount = match start {
            Start::Init(args) => env.initialized(args),
            Start::Golden(kind) => {
                crate::common::golden_copy(env, kind);
                env.existing()
            }
        };
        mount.mount(&mount_args.iter().map(String::as_str).collect::<Vec<_>>());
        // The reference lives on the same file system as the backing directory, so both
        // sides' errors come from the same kind of file system.
        let reference = env.path("reference");
        fs::create_dir(&reference).expect("create reference dir");
        // The second user reaches both roots, and may create in them.
        set_mode(env.root(), 0o755);
        set_mode(&reference, 0o777);
        set_mode(&mount.mountpoint, 0o777);
        if let Start::Golden(_) = start {
            let copied = std::process::Command::new("cp")
                .arg("-a")
                .arg(mount.mountpoint.join("."))
                .arg(&reference)
                .status()
                .expect("run cp");
            assert!(
                copied.success(),
                "copy the golden plaintext to the reference"
            );
        }
        Run {
            sides: [Side::new(mount.mountpoint.clone()), Side::new(reference)],
            mount,
            canary: canary(seed),
            mount_args,
            tally: BTreeMap::new(),
        }
    }

    /// Open handle slots with the size of the file each holds.
    fn open_slots(&self) -> Vec<(usize, u64)> {
        (0..SLOTS)
            .filter_map(|slot| {
                let file = self.sides[REFERENCE].handles[slot].as_ref()?;
                Some((slot, file.metadata().map_or(0, |m| m.len())))
            })
            .collect()
    }

    /// Applies `op` to both sides: here as root, or for [`Op::AsOther`] in a child
    /// process as the second user.
    fn apply_both(&mut self, op: &Op) -> [Outcome; 2] {
        let Op::AsOther { umask, op } = op else {
            let canary = &self.canary;
            return self.sides.each_mut().map(|side| side.apply(op, canary));
        };
        let (sides, canary) = (&mut self.sides, &self.canary);
        let wire = User::alice().run(|| {
            // SAFETY: cannot fail; the child's own umask.
            unsafe { libc::umask(umask.0) };
            sides.each_mut().map(|side| to_wire(side.apply(op, canary)))
        });
        wire.map(from_wire)
    }

    fn step(&mut self, op: &Op) -> Result<(), Mismatch> {
        if let Op::Remount = op {
            self.remount()?;
            return self.compare_trees("comparison after remount");
        }
        let times_before = match op.inner() {
            Op::Utimens { path, follow, .. } => Some(
                self.sides
                    .each_ref()
                    .map(|side| times_of(&side.path(path), *follow)),
            ),
            _ => None,
        };
        let started = SystemTime::now();
        let [ours, theirs] = self.apply_both(op);
        let ended = SystemTime::now();
        let counts = self.tally.entry(op_kind(op)).or_default();
        match &theirs {
            Ok(_) => counts.0 += 1,
            Err(e) => *counts.1.entry(format!("{e:?}")).or_default() += 1,
        }
        if ours != theirs {
            let detail = match (&ours, &theirs) {
                (Ok(Value::Data(a)), Ok(Value::Data(b))) => bytes_difference(a, b),
                _ => String::new(),
            };
            return Err(Mismatch {
                class: format!("{}: result", op_kind(op)),
                what: format!("results differ: xtsfs {ours:?}, reference {theirs:?} {detail}"),
            });
        }
        if let (Some(before), Op::Utimens { .. }) = (times_before, op.inner()) {
            self.check_times(op, &before, theirs.is_ok(), (started, ended))?;
        }
        self.spot_check(op)
    }

    /// After a utimensat, each side's times are what was asked for: a given time exactly,
    /// UTIME_OMIT's unchanged, UTIME_NOW's within the op's wall-clock window, and after
    /// a failure both unchanged. The sides' own times differ (files were not made at the
    /// same instant), so what is compared is whether each side did as asked.
    fn check_times(
        &self,
        op: &Op,
        before: &[Result<[(i64, i64); 2], Errno>; 2],
        succeeded: bool,
        (started, ended): (SystemTime, SystemTime),
    ) -> Result<(), Mismatch> {
        let Op::Utimens {
            path,
            atime,
            mtime,
            follow,
        } = op.inner()
        else {
            return Ok(());
        };
        let since_epoch = |t: SystemTime| {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            (d.as_secs() as i64, i64::from(d.subsec_nanos()))
        };
        let window = (
            since_epoch(started - CLOCK_SLACK),
            since_epoch(ended + CLOCK_SLACK),
        );
        let after = self
            .sides
            .each_ref()
            .map(|side| times_of(&side.path(path), *follow));
        let verdicts: Vec<_> = (0..2)
            .map(|side| {
                let (Ok(before), Ok(after)) = (&before[side], &after[side]) else {
                    return None;
                };
                let specs = [*atime, *mtime];
                Some([0, 1].map(|i| match specs[i] {
                    _ if !succeeded => after[i] == before[i],
                    TimeSpec::Omit => after[i] == before[i],
                    TimeSpec::At(sec, nsec) => after[i] == (sec, nsec),
                    TimeSpec::Now => window.0 <= after[i] && after[i] <= window.1,
                }))
            })
            .collect();
        if verdicts[XTSFS] == verdicts[REFERENCE] {
            return Ok(());
        }
        Err(Mismatch {
            class: format!("{}: times", op_kind(op)),
            what: format!(
                "after the op, whether (atime, mtime) are as asked: xtsfs {:?}, reference {:?}; \
                 times before: {before:?}, after: {after:?}, window {window:?}",
                verdicts[XTSFS], verdicts[REFERENCE]
            ),
        })
    }

    /// Right after an op, the paths it named and the bytes it changed must agree, so a
    /// divergence is reported at the op that caused it rather than at the next comparison.
    fn spot_check(&self, op: &Op) -> Result<(), Mismatch> {
        for path in op.touched() {
            let stats = self.sides.each_ref().map(|side| lstat(&side.path(path)));
            if stats[XTSFS] != stats[REFERENCE] {
                let again = lstat_after_ttl(&self.sides[XTSFS].path(path));
                return Err(Mismatch {
                    class: format!("{}: stat", op_kind(op)),
                    what: format!(
                        "after the op, {path:?} is xtsfs {:?}, reference {:?}; \
                         on xtsfs {} s later: {again:?}",
                        stats[XTSFS],
                        stats[REFERENCE],
                        KERNEL_CACHE_TTL.as_secs_f32()
                    ),
                });
            }
        }
        if let Op::SetXattr { path, .. } | Op::RemoveXattr { path, .. } = op.inner() {
            let found = self.sides.each_ref().map(|side| xattrs(&side.path(path)));
            if found[XTSFS] != found[REFERENCE] {
                let shown = found.each_ref().map(|f| match f {
                    Ok(xattrs) => shown_xattrs(xattrs),
                    Err(e) => format!("{e:?}"),
                });
                return Err(Mismatch {
                    class: format!("{}: xattrs", op_kind(op)),
                    what: format!(
                        "after the op, the attributes of {path:?} are xtsfs {}, reference {}",
                        shown[XTSFS], shown[REFERENCE]
                    ),
                });
            }
        }
        let Some((offset, len)) = op.changed_range() else {
            return Ok(());
        };
        let opened = match (op.touched().first(), op.slot()) {
            (Some(path), _) => self
                .sides
                .each_ref()
                .map(|side| open(&side.path(path), libc::O_RDONLY)),
            // A handle may be write-only: reopen what it names through /proc.
            (None, Some(slot)) => self.sides.each_ref().map(|side| {
                let fd = side.handle(slot)?.as_raw_fd();
                open(Path::new(&format!("/proc/self/fd/{fd}")), libc::O_RDONLY)
            }),
            (None, None) => return Ok(()),
        };
        let [Ok(ours), Ok(theirs)] = opened else {
            return Ok(());
        };
        let files = [ours, theirs];
        let contents_mismatch = |what: String| Mismatch {
            class: format!("{}: contents", op_kind(op)),
            what,
        };
        let sizes = files
            .each_ref()
            .map(|f| f.metadata().map(|m| m.len()).map_err(Errno::from));
        if sizes[XTSFS] != sizes[REFERENCE] {
            return Err(contents_mismatch(format!(
                "after the op, sizes differ: xtsfs {:?}, reference {:?}",
                sizes[XTSFS], sizes[REFERENCE]
            )));
        }
        let size = sizes[REFERENCE].unwrap_or(0);
        // Around both ends of the change and the end of the file, a unit either side.
        let mut windows = vec![
            (offset.saturating_sub(UNIT), 2 * UNIT),
            ((offset + len).saturating_sub(UNIT), 2 * UNIT),
            (size.saturating_sub(2 * UNIT), 2 * UNIT),
        ];
        if len <= 4 * UNIT {
            windows.push((offset.saturating_sub(UNIT), len + 2 * UNIT));
        }
        for (at, n) in windows {
            let read = files.each_ref().map(|f| read_data(f, at, n));
            if read[XTSFS] != read[REFERENCE] {
                let detail = match (&read[XTSFS], &read[REFERENCE]) {
                    (Ok(Value::Data(a)), Ok(Value::Data(b))) => bytes_difference(a, b),
                    (a, b) => format!("xtsfs {a:?}, reference {b:?}"),
                };
                return Err(contents_mismatch(format!(
                    "after the op, reading {n} bytes at {at}: {detail}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the xtsfs tree reads cleanly again once the kernel cache has expired.
    fn after_ttl(&self) -> String {
        std::thread::sleep(KERNEL_CACHE_TTL);
        match snapshot(&self.sides[XTSFS].root) {
            Ok(tree) => format!(
                "; {} s later it reads without errors ({} entries)",
                KERNEL_CACHE_TTL.as_secs_f32(),
                tree.len()
            ),
            Err(e) => format!("; {} s later: {e}", KERNEL_CACHE_TTL.as_secs_f32()),
        }
    }

    fn remount(&mut self) -> Result<(), Mismatch> {
        self.sides.iter_mut().for_each(Side::close_handles);
        let unmounted = self.mount.unmount_retrying();
        if !unmounted.status.success() {
            return Err(Mismatch {
                class: "unmount".into(),
                what: format!("unmount failed: {}", crate::common::stderr(&unmounted)),
            });
        }
        let args: Vec<&str> = self.mount_args.iter().map(String::as_str).collect();
        self.mount.mount(&args);
        Ok(())
    }

    fn compare_trees(&self, what: &str) -> Result<(), Mismatch> {
        let trees = self.sides.each_ref().map(|side| snapshot(&side.root));
        let [ours, theirs] = trees.map(|tree| {
            tree.map_err(|e| Mismatch {
                class: "trees".into(),
                what: format!("{what}: {e}"),
            })
        });
        let ours = ours.map_err(|mut m| {
            m.what = format!("{} (on xtsfs){}", m.what, self.after_ttl());
            m
        });
        let theirs = theirs.map_err(|mut m| {
            m.what.push_str(" (on the reference)");
            m
        });
        let diffs = tree_differences(&ours?, &theirs?);
        if diffs.is_empty() {
            return Ok(());
        }
        let shown: Vec<_> = diffs.iter().take(12).map(|d| format!("  {d}")).collect();
        Err(Mismatch {
            class: "trees".into(),
            what: format!(
                "{what}: the trees differ in {} entries:\n{}",
                diffs.len(),
                shown.join("\n")
            ),
        })
    }

    /// The end of a run: with every handle closed the trees must match, and still match
    /// once the volume has been unmounted and mounted again.
    fn finish(&mut self) -> Result<(), Mismatch> {
        self.sides.iter_mut().for_each(Side::close_handles);
        self.compare_trees("final comparison")?;
        self.remount()?;
        self.compare_trees("final comparison after remount")
    }
}

/// Generates and applies `ops` operations from `seed`, comparing as it goes.
pub(crate) fn run_seed(seed: u64, ops: usize, start: Start) {
    let env = TestEnv::new();
    let mut run = Run::new(&env, seed, start);
    let mut generator = Generator::new(seed);
    let mut applied = Vec::with_capacity(ops);
    let mut result = Ok(());
    for i in 0..ops {
        let listing = list(&run.sides[REFERENCE].root);
        let op = generator.op(&listing, &run.open_slots());
        applied.push(op.clone());
        result = run.step(&op);
        if result.is_ok() && (i + 1) % COMPARE_EVERY == 0 {
            result = run.compare_trees("periodic comparison");
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        // Random ops may have removed every trace of the canary: leave some for sure.
        for op in final_canary_ops(&run.canary) {
            applied.push(op.clone());
            result = run.step(&op);
            if result.is_err() {
                break;
            }
        }
    }
    if let Err(mut mismatch) = result.and_then(|()| run.finish()) {
        if let Some(note) = mount_gone(&run.mount.mountpoint) {
            mismatch.what = format!("{} [{note}]", mismatch.what);
        }
        drop(run);
        report(seed, ops, &applied, &mismatch);
    }
    let tally: Vec<String> = run
        .tally
        .iter()
        .map(|(kind, (ok, errors))| format!("  {kind}: {ok} ok, errors {errors:?}"))
        .collect();
    eprintln!(
        "differential: seed {seed:#x} results:\n{}",
        tally.join("\n")
    );
    assert!(
        !find_plaintext(&run.sides[REFERENCE].root, &run.canary).is_empty(),
        "the canary is in the clear on the reference side, so the search can find it"
    );
    assert!(
        !find_plaintext_xattrs(&run.sides[REFERENCE].root, &run.canary).is_empty(),
        "the canary is in the reference's attributes, so the search can find it"
    );
    let leaks = find_plaintext_xattrs(&run.mount.backing, &run.canary);
    assert!(
        leaks.is_empty(),
        "seed {seed:#x}: the canary is in the clear in backing attributes: {leaks:?}"
    );
    let leaks = find_plaintext(&run.mount.backing, &run.canary);
    assert!(
        leaks.is_empty(),
        "seed {seed:#x}: the canary {:?} is in the clear in the backing dir: {leaks:?}",
        String::from_utf8_lossy(&run.canary)
    );
}

/// Contents, a short name, a long name (whose side file holds its encryption) and a
/// symlink target, all carrying the canary, under names the generator never uses.
fn final_canary_ops(canary: &[u8]) -> Vec<Op> {
    let short = RelPath([b"final-".as_slice(), canary].concat());
    let mut long = short.0.clone();
    long.resize(LONGEST_DIRECT_NAME + 60, b'-');
    vec![
        Op::Write {
            path: short.clone(),
            create: true,
            offset: 0,
            len: 3 * UNIT + 7,
            fill: Fill::Canary,
        },
        Op::Write {
            path: RelPath(long),
            create: true,
            offset: UNIT - 5,
            len: 100,
            fill: Fill::Canary,
        },
        Op::Symlink {
            target: RelPath(canary.to_vec()),
            path: RelPath([short.0.as_slice(), b"-link"].concat()),
        },
        Op::SetXattr {
            path: short,
            name: XattrName([b"user.".as_slice(), canary].concat()),
            len: MAX_XATTR_VALUE,
            fill: Fill::Canary,
            flags: XattrFlags(0),
        },
    ]
}

/// Every place under `dir` where `needle` occurs in an extended attribute's name or value.
fn find_plaintext_xattrs(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for (name, value) in xattrs(&path).unwrap_or_default() {
            if contains(&name, needle) || contains(&value, needle) {
                hits.push(format!("{}: {}", path.display(), Shown(&name)));
            }
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            for entry in fs::read_dir(&path).expect("list backing dir") {
                stack.push(entry.expect("backing entry").path());
            }
        }
    }
    hits
}

/// Whether the xtsfs side diverged because its mount went away: a daemon that died, or
/// an unmount from outside (a test script sweeping up "leaked" mounts on a shared machine
/// detaches a running test's mount too, and every path under it then reads ENOENT).
fn mount_gone(mountpoint: &Path) -> Option<String> {
    let parent = mountpoint.parent()?;
    match (fs::metadata(mountpoint), fs::metadata(parent)) {
        (Ok(mount), Ok(parent)) if mount.dev() == parent.dev() => {
            Some("the xtsfs mount is gone: unmounted from outside the test?".into())
        }
        (Err(e), _) => Some(format!("the xtsfs mount does not answer: {e}")),
        _ => None,
    }
}

/// Panics with everything needed to replay the failure, and with a minimized op sequence
/// when asked for one.
fn report(seed: u64, ops: usize, applied: &[Op], mismatch: &Mismatch) -> ! {
    let at = if applied.len() < ops {
        format!("op #{}", applied.len() - 1)
    } else {
        format!("the end, after {ops} ops")
    };
    let first = applied.len().saturating_sub(LOG_TAIL);
    let tail: Vec<String> = applied[first..]
        .iter()
        .enumerate()
        .map(|(i, op)| format!("#{}: {op:?}", first + i))
        .collect();
    let minimized = if std::env::var_os(MINIMIZE_VAR).is_some() {
        let ops = minimize(seed, applied, &mismatch.class);
        let shown: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
        format!(
            "minimized to {} ops, failing the same way ({}):\n  {}",
            ops.len(),
            mismatch.class,
            shown.join("\n  ")
        )
    } else {
        format!("({MINIMIZE_VAR}=1 shrinks the sequence)")
    };
    panic!(
        "differential mismatch, seed {seed:#x}, at {at}: {what}\n\
         replay: XTSFS_SOAK_SEED={seed:#x} XTSFS_SOAK_OPS={replay_ops} cargo test --test differential\n\
         last {n} ops:\n  {tail}\n{minimized}",
        what = mismatch.what,
        replay_ops = applied.len().min(ops),
        n = tail.len(),
        tail = tail.join("\n  "),
    );
}

/// Applies a fixed op sequence to a fresh volume and reference, then finishes as a run does.
fn replay(seed: u64, ops: &[Op]) -> Result<(), Mismatch> {
    let env = TestEnv::new();
    let mut run = Run::new(&env, seed, Start::Init(&[]));
    for op in ops {
        run.step(op)?;
    }
    run.finish()
}

/// Delta debugging (ddmin): drops chunks of the sequence while it still fails the same
/// way, down to a sequence where removing any single op makes the failure go away.
fn minimize(seed: u64, ops: &[Op], class: &str) -> Vec<Op> {
    let trials = std::cell::Cell::new(0);
    let fails = |candidate: &[Op]| {
        trials.set(trials.get() + 1);
        matches!(replay(seed, candidate), Err(m) if m.class == class)
    };
    let mut ops = ops.to_vec();
    if !fails(&ops) {
        eprintln!("differential: the failure does not replay from the op sequence alone");
        return ops;
    }
    let mut chunks = 2;
    while ops.len() >= 2 {
        let size = ops.len().div_ceil(chunks);
        let reduced = (0..chunks).find_map(|i| {
            let start = (i * size).min(ops.len());
            let end = ((i + 1) * size).min(ops.len());
            let candidate: Vec<Op> = [&ops[..start], &ops[end..]].concat();
            (start < end && fails(&candidate)).then_some(candidate)
        });
        match reduced {
            Some(candidate) => {
                ops = candidate;
                chunks = (chunks - 1).max(2);
            }
            None if chunks >= ops.len() => break,
            None => chunks = (chunks * 2).min(ops.len()),
        }
        eprintln!(
            "differential: minimizing: {} ops ({} trials)",
            ops.len(),
            trials.get()
        );
    }
    ops
}
