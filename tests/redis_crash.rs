//! Crash consistency with a real redis-server (appendonly yes, appendfsync always) on a
//! mount: every increment Redis acknowledged is in its AOF after the xtsfs daemon is
//! killed with SIGKILL in the middle of the stream, and after Redis itself is killed in the
//! middle of a BGREWRITEAOF. Both times redis-check-aof judges the multi-part AOF (through
//! the mount, after a remount) and a fresh redis-server loads it.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::mount::wait_for_state;
use common::redis::{
    pid_alive, resp, wait_exit, wait_until_gone, Client, RedisServer, Reply, WAIT,
};
use common::sys::cpath;
use common::{hex, pseudo_random_bytes, TestEnv};

/// Redis 7's multi-part AOF: `appendonlydir/` with a manifest naming the base and
/// incremental files; redis-check-aof takes the manifest.
const MANIFEST: &str = "appendonlydir/appendonly.aof.manifest";

// ---------------------------------------------------------------------------------------
// The xtsfs daemon.

/// The pid of the daemon serving the mount at `mountpoint`, from its live status (which
/// it publishes just after the mount answers), checked to be an xtsfs process.
fn daemon_pid(env: &TestEnv, mountpoint: &Path) -> i32 {
    let status = wait_for_state(env, mountpoint, "serving");
    let pid = status["live"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no daemon pid in {status}")) as i32;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("the daemon runs");
    assert_eq!(
        exe,
        Path::new(env!("CARGO_BIN_EXE_xtsfs"))
            .canonicalize()
            .unwrap(),
        "pid {pid} is not the xtsfs daemon"
    );
    pid
}

fn kill_daemon(pid: i32) {
    // SAFETY: killing the daemon this test mounted.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill daemon {pid}");
    wait_until_gone("the xtsfs daemon", || pid_alive(pid));
}

/// The file system type at `path`, from statfs(2), which always asks a FUSE daemon: unlike
/// stat, it is never answered from the kernel's attribute cache.
fn fs_type(path: &Path) -> io::Result<i64> {
    let path = cpath(path);
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a NUL-terminated path and room for the result.
    common::sys::cvt(unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs succeeded.
    Ok(unsafe { st.assume_init() }.f_type)
}

fn is_dead_mount(mountpoint: &Path) -> bool {
    fs_type(mountpoint).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Detaches the FUSE mount left at `mountpoint` by a killed daemon. Every request to it
/// fails with ENOTCONN, `xtsfs unmount` (which resolves the path first) included, unless
/// the kernel happens to answer from its attribute cache, so this calls umount2 itself.
fn detach_dead_mount(mountpoint: &Path) {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    assert!(
        is_dead_mount(mountpoint),
        "the mount of a killed daemon answers ENOTCONN: {:?}",
        fs_type(mountpoint)
    );
    let path = cpath(mountpoint);
    // SAFETY: a NUL-terminated path.
    let detached = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(detached, 0, "umount -l: {}", io::Error::last_os_error());
    let now = fs_type(mountpoint).expect("statfs the bare mount point");
    assert_ne!(
        now, FUSE_SUPER_MAGIC,
        "the mount point is a plain directory again"
    );
}

/// Detaches a dead mount when the test ends, also when it fails.
struct DeadMountGuard(PathBuf);

impl Drop for DeadMountGuard {
    fn drop(&mut self) {
        if is_dead_mount(&self.0) {
            let path = cpath(&self.0);
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// A stream of INCRs that a kill interrupts.

struct Stream {
    /// The counter's value in Redis's last reply.
    last_acked: u64,
    /// Increments acknowledged in this stream when the kill was issued.
    acked_at_kill: u64,
    /// What ended the stream.
    end: String,
}

/// Sends `INCR counter`, one at a time, from `start` on, while another thread waits until
/// `min` increments are acknowledged, then until `max` are or `soft_limit` has passed,
/// runs `before_kill` and then `kill`. The stream ends at the first failed request.
/// Returns the stream and what `before_kill` returned.
fn incr_until_killed<R: Send>(
    client: &mut Client,
    start: u64,
    (min, max, soft_limit): (u64, u64, Duration),
    before_kill: impl FnOnce() -> R + Send,
    kill: impl FnOnce() + Send,
) -> (Stream, R) {
    let acked = AtomicU64::new(0);
    let killed = AtomicBool::new(false);
    let ended = AtomicBool::new(false);
    let give_up = AtomicBool::new(false);
    let (result, killer) = thread::scope(|s| {
        let killer = s.spawn(|| {
            let begin = Instant::now();
            while acked.load(Ordering::SeqCst) < min {
                if ended.load(Ordering::SeqCst) || begin.elapsed() > Duration::from_secs(60) {
                    give_up.store(true, Ordering::SeqCst);
                    return None;
                }
                thread::sleep(Duration::from_millis(1));
            }
            while acked.load(Ordering::SeqCst) < max && begin.elapsed() < soft_limit {
                if ended.load(Ordering::SeqCst) {
                    return None;
                }
                thread::sleep(Duration::from_millis(1));
            }
            let before = before_kill();
            let at = acked.load(Ordering::SeqCst);
            killed.store(true, Ordering::SeqCst);
            kill();
            Some((at, before))
        });
        let mut last = start;
        let mut after_kill = 0u64;
        let result = loop {
            if give_up.load(Ordering::SeqCst) {
                break Err(format!("only {} increments in 60 s", last - start));
            }
            match client.call(&["INCR", "counter"]) {
                Ok(Reply::Int(v)) if v as u64 == last + 1 => {
                    last += 1;
                    acked.store(last - start, Ordering::SeqCst);
                    if killed.load(Ordering::SeqCst) {
                        after_kill += 1;
                        if after_kill > 10_000 {
                            break Err("still acknowledged 10000 increments after the kill".into());
                        }
                    }
                }
                Ok(Reply::Int(v)) => break Err(format!("INCR answered {v} after {last}")),
                reply if killed.load(Ordering::SeqCst) => break Ok(format!("{reply:?}")),
                reply => break Err(format!("the stream failed before the kill: {reply:?}")),
            }
        };
        ended.store(true, Ordering::SeqCst);
        (
            result.map(|end| (last, end)),
            killer.join().expect("killer thread"),
        )
    });
    let (last_acked, end) = result.unwrap_or_else(|e| panic!("{e}"));
    let (acked_at_kill, before) = killer.expect("the killer killed");
    let stream = Stream {
        last_acked,
        acked_at_kill,
        end,
    };
    (stream, before)
}

// ---------------------------------------------------------------------------------------
// redis-check-aof.

/// Runs redis-check-aof on `manifest`: its output, and whether it found every file valid
/// (exit status 0 and its closing verdict).
fn check_aof(manifest: &Path) -> (bool, String) {
    let output = Command::new("redis-check-aof")
        .arg(manifest)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-check-aof (apt-get install redis-tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let valid = output.status.success()
        && text
            .lines()
            .any(|l| l.trim() == "All AOF files and manifest are valid");
    (valid, text)
}

#[track_caller]
fn assert_aof_valid(manifest: &Path) -> String {
    let (valid, text) = check_aof(manifest);
    assert!(valid, "redis-check-aof found the AOF damaged:\n{text}");
    text
}

/// The files the manifest names, with their type (`b` base, `i` incremental), in order.
fn manifest_files(manifest: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(manifest).expect("read the AOF manifest");
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let field = |key: &str| {
                let at = fields.iter().position(|f| *f == key);
                let value = at.and_then(|i| fields.get(i + 1));
                value.unwrap_or_else(|| panic!("manifest line without {key}: {line}"))
            };
            (field("file").to_string(), field("type").to_string())
        })
        .collect()
}

/// redis-check-aof's verdict after the file system under Redis crashed: the AOF must be
/// valid, with one exception POSIX allows: the last write Redis made, which was never
/// fsynced and so never acknowledged, may be torn at the end of the last incremental file
/// (redis-check-aof then reports it invalid from at most `max_torn` bytes before its end).
/// Such a tail is cut with `redis-check-aof --fix`, as an operator would, and the AOF must
/// then be valid. Returns redis-check-aof's first report.
fn assert_aof_valid_but_for_a_torn_last_write(manifest: &Path, max_torn: u64) -> String {
    let (valid, text) = check_aof(manifest);
    if valid {
        return text;
    }
    let files = manifest_files(manifest);
    let (last_incr, _) = files
        .iter()
        .rev()
        .find(|(_, kind)| kind == "i")
        .unwrap_or_else(|| panic!("no incremental file in the manifest: {files:?}\n{text}"));
    let invalid: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("is not valid"))
        .collect();
    assert_eq!(
        invalid,
        [format!(
            "AOF {last_incr} is not valid. Use the --fix option to try fixing it."
        )],
        "redis-check-aof found damage before the last write:\n{text}"
    );
    let diff: u64 = text
        .lines()
        .find(|l| l.starts_with(&format!("AOF analyzed: filename={last_incr},")))
        .and_then(|l| l.rsplit_once("diff="))
        .and_then(|(_, d)| d.trim().parse().ok())
        .unwrap_or_else(|| panic!("no analysis of {last_incr}:\n{text}"));
    assert!(
        diff <= max_torn,
        "{diff} bytes of {last_incr} are damaged, more than the last write ({max_torn}):\n{text}"
    );
    eprintln!("note: the unacknowledged last write ({diff} bytes) was torn; cutting it");
    let mut fix = Command::new("redis-check-aof")
        .arg("--fix")
        .arg(manifest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run redis-check-aof --fix");
    fix.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let mut fixed = String::new();
    fix.stdout
        .take()
        .unwrap()
        .read_to_string(&mut fixed)
        .unwrap();
    let status = wait_exit(&mut fix, WAIT);
    assert!(status.success(), "redis-check-aof --fix: {status}\n{fixed}");
    assert_aof_valid(manifest);
    text
}

/// A line per file from redis-check-aof's report, for the test log.
fn summary(report: &str) -> String {
    report
        .lines()
        .filter(|l| l.starts_with("AOF analyzed") || l.contains("valid"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------

#[test]
fn acknowledged_increments_survive_sigkill_of_the_daemon() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let _dead_mount = DeadMountGuard(m.mountpoint.clone());
    let daemon = daemon_pid(&env, &m.mountpoint);

    let mut redis = RedisServer::start(&env, &m.mountpoint, "redis-before-crash");
    let mut client = redis.client();
    // Kill after 2000 acknowledged increments, or 2 s into the stream if that comes first
    // (but not before 100), from another thread while the stream runs: the kill lands
    // anywhere in a request.
    let (stream, ()) = incr_until_killed(
        &mut client,
        0,
        (100, 2000, Duration::from_secs(2)),
        || (),
        || kill_daemon(daemon),
    );
    eprintln!(
        "daemon killed after {} acknowledged increments; {} acknowledged in all; the stream \
         ended with {}",
        stream.acked_at_kill, stream.last_acked, stream.end
    );
    assert!(stream.last_acked >= 100);
    drop(client);
    let status = redis.kill();
    eprintln!("redis-server on the dead mount: {status}");
    let first_log = redis.log();

    detach_dead_mount(&m.mountpoint);
    m.mount(&[]);
    let manifest = m.path(MANIFEST);
    // One write of Redis's: the database selection it prefixes to the first command of a
    // file, and the command.
    let max_torn = (resp(&["SELECT", "0"]).len() + resp(&["INCR", "counter"]).len()) as u64;
    let report = assert_aof_valid_but_for_a_torn_last_write(&manifest, max_torn);
    eprintln!("redis-check-aof:\n{}", summary(&report));

    let redis = RedisServer::start(&env, &m.mountpoint, "redis-after-crash");
    let counter = redis.client().get_counter();
    assert!(
        (stream.last_acked..=stream.last_acked + 1).contains(&counter),
        "counter {counter} after the crash; acknowledged {}, at most one more was in flight\n\
         redis before the crash:\n{first_log}\nredis after:\n{}",
        stream.last_acked,
        redis.log()
    );
    eprintln!("counter after remount: {counter}");
    redis.shutdown();
    m.unmount_settled();
}

#[test]
fn aof_survives_redis_sigkill_during_bgrewriteaof() {
    const KEYS: usize = 2000;
    const BEFORE_REWRITE: u64 = 500;
    let value = |i: usize| hex(&pseudo_random_bytes(i as u64, 2048));

    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let mut redis = RedisServer::start(&env, &m.mountpoint, "redis-before-crash");
    let mut client = redis.client();

    // 2000 keys of 4 KiB that do not compress: 8 MiB for the rewrite to write.
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        for &i in chunk {
            client
                .send(&["SET", &format!("key:{i}"), &value(i)])
                .unwrap();
        }
        for &i in chunk {
            assert_eq!(
                client.reply().unwrap(),
                Reply::Status("OK".into()),
                "SET key:{i}"
            );
        }
    }
    for i in 1..=BEFORE_REWRITE {
        assert_eq!(client.must(&["INCR", "counter"]), Reply::Int(i as i64));
    }

    // 5 ms per key: the rewrite takes at least 10 s, and is killed about a second in.
    assert_eq!(
        client.must(&["CONFIG", "SET", "rdb-key-save-delay", "5000"]),
        Reply::Status("OK".into())
    );
    match client.must(&["BGREWRITEAOF"]) {
        Reply::Status(s) if s.starts_with("Background append only file rewriting") => {}
        other => panic!("BGREWRITEAOF: {other:?}"),
    }
    assert_eq!(client.info_field("aof_rewrite_in_progress"), "1");
    // Wait until the rewrite child's output is landing on the mount.
    let deadline = Instant::now() + WAIT;
    let temp_file = loop {
        let written = fs::read_dir(&m.mountpoint).unwrap().flatten().find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("temp-rewriteaof-")
                && e.metadata().is_ok_and(|meta| meta.len() > 0)
        });
        if let Some(entry) = written {
            break entry.file_name();
        }
        assert!(Instant::now() < deadline, "the rewrite wrote nothing");
        thread::sleep(Duration::from_millis(5));
    };

    // Increments go to the new incremental file the rewrite opened. Redis (and its rewrite
    // child) is killed after 1000 of them, or 1 s into the stream if that comes first (but
    // not before 20).
    let mut probe = redis.client();
    let (stream, in_progress) = incr_until_killed(
        &mut client,
        BEFORE_REWRITE,
        (20, 1000, Duration::from_secs(1)),
        || probe.info_field("aof_rewrite_in_progress"),
        || {
            redis.kill();
        },
    );
    eprintln!(
        "redis-server killed after {} + {} acknowledged increments; {} acknowledged in all; \
         the stream ended with {}",
        BEFORE_REWRITE, stream.acked_at_kill, stream.last_acked, stream.end
    );
    assert_eq!(in_progress, "1", "the kill landed while the rewrite ran");
    drop((client, probe));
    let first_log = redis.log();

    m.remount();
    let manifest = m.path(MANIFEST);
    let files = manifest_files(&manifest);
    let kinds: Vec<&str> = files.iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["b", "i", "i"],
        "an unfinished rewrite leaves the old base and increments and the new increments: \
         {files:?}"
    );
    assert!(
        m.mountpoint.join(&temp_file).is_file(),
        "the unfinished rewrite's output stays behind"
    );
    let report = assert_aof_valid(&manifest);
    eprintln!("redis-check-aof:\n{}", summary(&report));

    let redis = RedisServer::start(&env, &m.mountpoint, "redis-after-crash");
    let mut client = redis.client();
    let counter = client.get_counter();
    assert!(
        (stream.last_acked..=stream.last_acked + 1).contains(&counter),
        "counter {counter} after the crash; acknowledged {}, at most one more was in flight\n\
         redis before the crash:\n{first_log}\nredis after:\n{}",
        stream.last_acked,
        redis.log()
    );
    assert_eq!(client.must(&["DBSIZE"]), Reply::Int(KEYS as i64 + 1));
    client.assert_keys(KEYS, value);

    // The volume takes a complete rewrite now, and the AOF stays valid.
    match client.must(&["BGREWRITEAOF"]) {
        Reply::Status(s) if s.starts_with("Background append only file rewriting") => {}
        other => panic!("BGREWRITEAOF: {other:?}"),
    }
    client.wait_for_info("aof_rewrite_in_progress", "0");
    assert_eq!(client.info_field("aof_last_bgrewrite_status"), "ok");
    drop(client);
    redis.shutdown();
    assert_aof_valid(&manifest);
    m.unmount_settled();
}
