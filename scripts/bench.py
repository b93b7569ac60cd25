#!/usr/bin/env python3
"""Side-by-side benchmark: the backing dir itself, xtsfs (format 2, and a format 1 volume
made with the hidden `init --format 1`) and gocryptfs, each on a tmpfs
and on a disk-backed directory, with fio and Redis workloads. fio also runs on the FUSE
floor (examples/fuse_floor/), a FUSE file system that does no work, connected exactly as
xtsfs is: the fastest any FUSE file system can be here. Writes a markdown table and
a PNG chart of the ratios, and records the result in docs/PERFORMANCE.md.

Besides the single-stream fio workloads: parallel ones (N jobs on one file, 4 jobs on 4
files, 4 appenders with fdatasync, libaio QD16 O_DIRECT), page-cache bytes per byte read
and written (a memory cgroup's `file` delta, or /proc/meminfo without one), the peak RSS
of each daemon, and Redis with four instances on one volume and under a memory cgroup
limit (disk backing). --workloads, --redis-workloads and --skip-parallel pick a part.

Run through scripts/bench.sh (it builds xtsfs and installs what this needs)."""

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
XTSFS = REPO / "target" / "release" / "xtsfs"
FUSE_FLOOR = REPO / "target" / "release" / "examples" / "fuse_floor"
SETUPS = ["backing", "floor", "xtsfs", "xtsfs-v1", "xtsfs-direct", "gocryptfs"]
# The floor keeps no data, so it cannot run Redis.
REDIS_SETUPS = ["backing", "xtsfs", "xtsfs-v1", "xtsfs-direct", "gocryptfs"]
# The xtsfs setups: init arguments, mount arguments. "xtsfs" and "xtsfs-direct" are format
# 2 volumes (what `init` makes); "xtsfs-v1" is a format 1 volume with default options.
XTSFS_SETUPS = {
    "xtsfs": ([], []),
    "xtsfs-v1": (["--format", "1"], []),
    "xtsfs-direct": ([], ["--direct-io"]),
}


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, text=True, capture_output=True, **kw)


def drop_caches():
    sh("sync")
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


GiB = 1 << 30
# Setups with a daemon of their own, whose peak RSS the table reports (the floor's is not
# a cost of any file system).
DAEMON_SETUPS = ["xtsfs", "xtsfs-v1", "xtsfs-direct", "gocryptfs"]


def parse_size(text):
    """fio's sizes: 512M, 4G, 1g (powers of 1024), or bytes."""
    m = re.fullmatch(r"(\d+)([kmgt]?)i?b?", str(text).strip().lower())
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2) or " "))


def human(nbytes):
    for unit, shift in [("GiB", 30), ("MiB", 20), ("KiB", 10)]:
        if nbytes >= 1 << shift:
            v = nbytes / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{nbytes} B"


def retry(what, fn, attempts=40, pause=3):
    """Another engineer rebuilds target/release/xtsfs now and then: while the binary is
    being replaced, running it fails for a moment."""
    for attempt in range(attempts):
        try:
            return fn()
        except (subprocess.CalledProcessError, OSError) as e:
            if attempt == attempts - 1:
                raise
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else e
            print(f"  {what} failed ({detail}); retrying in {pause} s", flush=True)
            time.sleep(pause)


def peak_rss_kib(pid):
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


class BlockDevice:
    """The block device under a directory, for its read counters (/sys/class/block/DEV/stat):
    how many of a cold workload's reads reached the disk rather than the page cache."""

    def __init__(self, directory):
        self.name = self.stat = None
        source = sh("findmnt", "-no", "SOURCE", "-T", directory, check=False).stdout.strip()
        source = re.sub(r"\[.*\]$", "", source)  # bind mounts: /dev/vda[/sub]
        if not source.startswith("/dev/"):
            return
        kname = sh("lsblk", "-ndo", "KNAME", source, check=False).stdout.strip()
        stat = Path("/sys/class/block") / kname / "stat"
        if kname and stat.exists():
            self.name, self.stat = kname, stat

    def reads(self):
        """(read requests completed, sectors read)"""
        fields = self.stat.read_text().split()
        return int(fields[0]), int(fields[2])


class Memory:
    """Where page-cache bytes are counted, and memory limits set: a memory cgroup made for
    the benchmark (v2 `file`, v1 `total_cache`: both count page cache and tmpfs pages) that
    bench.py joins before it mounts anything, so that the daemons it starts, fio and Redis
    are in it too. Without a memory controller, /proc/meminfo's Cached, which counts every
    process on the machine.

    Layout: CONTAINER/main holds bench.py and all it starts; CONTAINER/limited-N are the
    Redis runs under a limit. The container sits under bench.py's own cgroup (cgroup v1,
    where a cgroup may have both processes and children) or, in cgroup v2 (where it may
    not), beside it, under the nearest ancestor that delegates the memory controller."""

    def __init__(self):
        self.version, self.container, self.original, self.limits = None, None, None, 0
        self.why = ""
        try:
            self._setup()
        except OSError as e:
            self.why = f"no memory cgroup ({e})"
            self.version = None
        if self.version is None:
            self.describe = f"/proc/meminfo Cached, system-wide ({self.why})"
        else:
            self.describe = (f"memory cgroup v{self.version} `{self.stat_field}` of the cgroup that holds fio, "
                             f"the daemons and Redis ({self.container})")

    def _setup(self):
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        own_v1 = next((l.split(":", 2)[2] for l in lines if l.split(":")[1] == "memory"), None)
        own_v2 = next((l.split(":", 2)[2] for l in lines if l.startswith("0::")), None)
        v1_root = next((Path(l.split()[1]) for l in Path("/proc/mounts").read_text().splitlines()
                        if l.split()[2] == "cgroup" and "memory" in l.split()[3].split(",")), None)
        v2_root = next((Path(l.split()[1]) for l in Path("/proc/mounts").read_text().splitlines()
                        if l.split()[2] == "cgroup2"), None)
        name = f"xtsfs-bench-{os.getpid()}"
        if own_v1 is not None and v1_root is not None:
            self.version, self.stat_field = 1, "total_cache"
            self.original = v1_root / own_v1.lstrip("/")
            self.container = self.original / name
            self.container.mkdir()
        elif own_v2 is not None and v2_root is not None and "memory" in (v2_root / "cgroup.controllers").read_text().split():
            self.version, self.stat_field = 2, "file"
            self.original = v2_root / own_v2.lstrip("/")
            parent = self.original if self.original == v2_root else self.original.parent
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory\n")
            self.container = parent / name
            self.container.mkdir()
            (self.container / "cgroup.subtree_control").write_text("+memory\n")
        else:
            self.why = "no memory controller in /sys/fs/cgroup"
            return
        self.main = self.container / "main"
        self.main.mkdir()
        self.move(os.getpid(), self.main)

    def move(self, pid, cgroup):
        (cgroup / "cgroup.procs").write_text(f"{pid}\n")

    def file_bytes(self):
        if self.version is None:
            kib = re.search(r"^Cached:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1)
            return int(kib) * 1024
        stat = (self.main / "memory.stat").read_text()
        return int(re.search(rf"^{self.stat_field} (\d+)$", stat, re.M).group(1))

    def limited(self, limit):
        """A new cgroup beside main with a memory limit (None without cgroups)."""
        if self.version is None:
            return None
        self.limits += 1
        cgroup = self.container / f"limited-{self.limits}"
        cgroup.mkdir()
        (cgroup / ("memory.max" if self.version == 2 else "memory.limit_in_bytes")).write_text(f"{limit}\n")
        return cgroup

    def report(self, cgroup):
        """A limited cgroup's peak usage (None if unknown), how many times its usage hit the
        limit (and the kernel reclaimed), and its OOM kills."""
        if self.version == 2:
            peak = cgroup / "memory.peak"
            peak = int(peak.read_text()) if peak.exists() else None
            events = (cgroup / "memory.events").read_text()
            hits = int(re.search(r"^max (\d+)$", events, re.M).group(1))
        else:
            peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
            hits = int((cgroup / "memory.failcnt").read_text())
            events = (cgroup / "memory.oom_control").read_text()
        m = re.search(r"^oom_kill (\d+)$", events, re.M)
        return peak, hits, int(m.group(1)) if m else 0

    def reset_peak(self, cgroup):
        try:
            (cgroup / ("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")).write_text("0\n")
        except OSError:
            pass  # memory.peak is resettable from Linux 6.12 on

    def remove(self, cgroup):
        """Moves what is left in the cgroup to main and removes it."""
        for _ in range(40):
            try:
                cgroup.rmdir()
                return
            except OSError:
                for pid in (cgroup / "cgroup.procs").read_text().split():
                    try:
                        self.move(pid, self.main if cgroup != self.main else self.original)
                    except OSError:
                        pass
                time.sleep(0.25)
        print(f"could not remove the cgroup {cgroup}", file=sys.stderr)

    def close(self):
        if self.version is None:
            return
        self.move(os.getpid(), self.original)
        for child in sorted(self.container.glob("limited-*")) + [self.main]:
            if child.exists():
                self.remove(child)
        self.remove(self.container)


@contextlib.contextmanager
def backing_dir(label, disk_dir):
    """A fresh directory on backing `label`, a 4 GiB tmpfs or a directory under
    `disk_dir`, and the environment that keeps xtsfs's platform keys and run files in
    it; unmounted and removed after."""
    base = Path(tempfile.mkdtemp(prefix=f"xtsfs-bench-{label}-", dir=disk_dir if label == "disk" else "/tmp"))
    try:
        if label == "tmpfs":
            sh("mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", base)
        yield base, dict(os.environ, XTSFS_PLATFORM_KEY_DIR=str(base / "platform-keys"), XTSFS_RUN_DIR=str(base / "run"))
    finally:
        if label == "tmpfs":
            # The daemons may still hold it for a moment after their unmounts return.
            for _ in range(20):
                if sh("umount", base, check=False).returncode == 0 or not os.path.ismount(base):
                    break
                time.sleep(0.5)
            else:
                print(f"could not unmount {base}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


class Setups:
    """Mounts the setups under one base directory."""

    def __init__(self, base: Path, env: dict):
        self.base, self.env = base, env
        self.dirs = {"backing": base / "plain"}
        self.dirs["backing"].mkdir()
        for setup, (init_args, mount_args) in XTSFS_SETUPS.items():
            xb, xm = base / f"{setup}-backing", base / f"{setup}-mnt"
            xm.mkdir()

            def init(xb=xb, init_args=init_args):
                shutil.rmtree(xb, ignore_errors=True)  # what a failed attempt left
                sh(XTSFS, "init", xb, *init_args, env=env)

            retry(f"xtsfs init {setup}", init)
            retry(f"xtsfs mount {setup}", lambda: sh(XTSFS, "mount", xb, xm, *mount_args, env=env))
            self.dirs[setup] = xm
        gb, gm = base / "gocryptfs-backing", base / "gocryptfs-mnt"
        gb.mkdir()
        gm.mkdir()
        pw = base / "gocryptfs.pass"
        pw.write_text("benchmark\n")
        sh("gocryptfs", "-q", "-init", "-passfile", pw, gb)
        sh("gocryptfs", "-q", "-passfile", pw, gb, gm)
        self.dirs["gocryptfs"] = gm
        fm = base / "floor-mnt"
        fm.mkdir()
        self.floor = subprocess.Popen([FUSE_FLOOR, fm], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not os.path.ismount(fm):
            if self.floor.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fuse_floor did not mount: {self.floor.stderr.read() if self.floor.poll() is not None else 'timeout'}")
            time.sleep(0.05)
        self.dirs["floor"] = fm

    def xtsfs_pid(self, setup):
        status = json.loads(retry("xtsfs status", lambda: sh(XTSFS, "status", "--json", self.dirs[setup], env=self.env)).stdout)
        return status["live"]["pid"]

    def daemon_pid(self, setup):
        """The process that serves the setup's mount, None for the backing directory."""
        if setup in XTSFS_SETUPS:
            return self.xtsfs_pid(setup)
        if setup == "floor":
            return self.floor.pid
        if setup == "gocryptfs":
            # gocryptfs forks into the background: its daemon is the gocryptfs process whose
            # arguments end with the mountpoint.
            mountpoint = str(self.dirs["gocryptfs"])
            for proc in Path("/proc").iterdir():
                try:
                    argv = (proc / "cmdline").read_bytes().split(b"\0")[:-1]
                except OSError:
                    continue
                if argv and argv[0].endswith(b"gocryptfs") and argv[-1].decode(errors="replace").rstrip("/") == mountpoint:
                    return int(proc.name)
            raise RuntimeError(f"no gocryptfs process for {mountpoint}")
        return None

    def close(self):
        for setup in XTSFS_SETUPS:
            if setup in self.dirs:
                retry("xtsfs unmount", lambda: sh(XTSFS, "unmount", self.dirs[setup], env=self.env, check=False))
        if "gocryptfs" in self.dirs:
            sh("fusermount3", "-u", self.dirs["gocryptfs"], check=False)
        if "floor" in self.dirs:
            sh("umount", self.dirs["floor"], check=False)
            self.floor.wait(timeout=10)


# Appends start from an empty file that fio must not preallocate: by default it
# fallocates the whole --size first, and its "appends" are then overwrites.
APPEND = ["--rw=write", "--fdatasync=1", "--fallocate=none"]
# How operators benchmark disks. tmpfs and FUSE file systems may refuse O_DIRECT (EINVAL):
# the table then shows '-' for them.
LIBAIO = ["--ioengine=libaio", "--iodepth=16", "--direct=1"]
FIO_WORKLOADS = [
    # name, unit, fio args, cold (caches dropped after the file is laid out)
    ("seq write 1 MiB", "MiB/s", ["--rw=write", "--bs=1M", "--end_fsync=1"], False),
    ("seq read 1 MiB cold", "MiB/s", ["--rw=read", "--bs=1M"], True),
    # On the disk backing, on a --cold-read-size file (4 GiB), as its 4-job twin below:
    # over a 512 MiB file a run makes about as many reads as the file has pages, and the
    # pages that earlier misses brought in (two per read for format 1's units, which
    # straddle backing pages) turn most of the later reads into page-cache hits.
    ("rand read 4 KiB cold", "IOPS", ["--rw=randread", "--bs=4k"], True),
    ("rand write 4 KiB", "IOPS", ["--rw=randwrite", "--bs=4k"], False),
    # Writes to backing pages that are not cached: a format 1 unit straddles two backing
    # pages, which the backing file system must read before it can change part of them.
    ("rand write 4 KiB cold", "IOPS", ["--rw=randwrite", "--bs=4k"], True),
    ("append 4 KiB + fdatasync", "IOPS", [*APPEND, "--bs=4k"], False),
    # Redis's AOF with appendfsync always: one small record per fdatasync.
    ("append 100 B + fdatasync", "IOPS", [*APPEND, "--bs=100"], False),
]
# Several jobs at once, after the single-job workloads (whose names and order stay). The
# IOPS are the sum over the jobs (--group_reporting). "one file": every job on the same
# file; "4 files": each job on its own (--filename_format), laid out before each setup's
# turn, a quarter of --size each, and deleted after it (a 4 GiB tmpfs has no room to keep
# them beside every setup's 512 MiB file).
PARALLEL_WORKLOADS = [
    ("rand write 4 KiB, 2 jobs one file", "IOPS", ["--rw=randwrite", "--bs=4k", "--numjobs=2"], False),
    ("rand write 4 KiB, 4 jobs one file", "IOPS", ["--rw=randwrite", "--bs=4k", "--numjobs=4"], False),
    ("rand read 4 KiB cold, 4 jobs one file", "IOPS", ["--rw=randread", "--bs=4k", "--numjobs=4"], True),
    ("rand write 4 KiB, 4 jobs 4 files", "IOPS", ["--rw=randwrite", "--bs=4k", "--numjobs=4"], False),
    # Four Redis AOFs with appendfsync always on one volume, each job its own empty file.
    ("append 100 B + fdatasync, 4 files", "IOPS", [*APPEND, "--bs=100", "--numjobs=4"], False),
    ("libaio rand read 4 KiB QD16 direct", "IOPS", ["--rw=randread", "--bs=4k", *LIBAIO], False),
    ("libaio rand write 4 KiB QD16 direct", "IOPS", ["--rw=randwrite", "--bs=4k", *LIBAIO], False),
]
ALL_FIO_WORKLOADS = FIO_WORKLOADS + PARALLEL_WORKLOADS
# Page cache that reading or writing --pagecache-size (1 GiB) through a setup adds, per
# byte: the plaintext in the mount's cache plus the ciphertext in the backing's is 2x.
PAGECACHE_READ, PAGECACHE_WRITTEN = "page cache per byte read", "page cache per byte written"
PAGECACHE_WORKLOADS = [PAGECACHE_READ, PAGECACHE_WRITTEN]
DAEMON_RSS = "daemon peak RSS"


class FioError(Exception):
    pass


def fio(targets, args, size, runtime=None, prefix=()):
    """One fio run on `targets` (--filename=..., or --directory and --filename_format);
    time-based when `runtime` is given, else once over `size`; `prefix`: a command that
    runs fio (a profiler). Returns its (group's) job."""
    timing = ["--time_based", f"--runtime={runtime}"] if runtime else []
    cmd = [*prefix, "fio", "--name=bench", *targets, f"--size={size}", "--ioengine=psync", *timing,
           "--output-format=json", "--verify_state_save=0", "--group_reporting", *args]
    run = sh(*cmd, check=False)
    if run.returncode != 0 or "{" not in run.stdout:
        why = [l for l in (run.stderr + run.stdout).splitlines() if l.strip() and not l.startswith(("{", " ", "}"))]
        raise FioError("; ".join(why[-3:]) or f"exit status {run.returncode}")
    job = json.loads(run.stdout[run.stdout.index("{"):])["jobs"][0]
    if job.get("error"):
        raise FioError(f"fio error {job['error']} ({os.strerror(job['error'])})")
    return job


def jobs_of(args):
    return next((int(a.split("=")[1]) for a in args if a.startswith("--numjobs=")), 1)


def record_medians(values, results, label, workload, unit, notes=None):
    """Reports each setup's median over its rounds, keeping the rounds beside it (and any
    notes on each round); a setup without rounds (it could not run the workload) shows '-'."""
    for setup, runs in values.items():
        if runs:
            results.append({"backing": label, "workload": workload, "unit": unit, "setup": setup,
                            "value": statistics.median(runs), "runs": runs,
                            **({"notes": notes[setup]} if notes and notes.get(setup) else {})})


def lay_out(directory: Path, name, args, size, big_size=None):
    """Lays out what fio workload `name` runs on in `directory`, and returns its fio
    targets, its file size and the files to delete after the run. Appends start from no
    file and "files" workloads from fresh files (a quarter of `size` each, for 4 jobs);
    `big_size`: the cold random reads' own file (cold.dat), kept for the next workload;
    the others share bench.dat, laid out once."""
    size_bytes, jobs = parse_size(size), jobs_of(args)
    if name.startswith("append") or name.endswith("files"):
        stem = "append" if name.startswith("append") else "part"
        if jobs > 1:
            targets = [f"--directory={directory}", f"--filename_format={stem}.$jobnum.dat"]
            laid_out = [directory / f"{stem}.{j}.dat" for j in range(jobs)]
        else:
            targets = [f"--filename={directory / (stem + '.dat')}"]
            laid_out = [directory / f"{stem}.dat"]
        for f in laid_out:
            f.unlink(missing_ok=True)
        if stem == "part":
            size = str(size_bytes // jobs)
            fio(targets, ["--rw=write", "--bs=1M", f"--numjobs={jobs}"], size)
        return targets, size, laid_out
    if big_size is not None:
        targets = [f"--filename={directory / 'cold.dat'}"]
        if not (directory / "cold.dat").exists():
            print(f"  laying out a {big_size} file in {directory}", flush=True)
            fio(targets, ["--rw=write", "--bs=1M"], big_size)
        return targets, big_size, []
    targets = [f"--filename={directory / 'bench.dat'}"]
    if not (directory / "bench.dat").exists():
        fio(targets, ["--rw=write", "--bs=1M"], size, 1)  # lays out the file
    return targets, size, []


def run_fio(setups: Setups, size, runtime, repeat, results, label, workloads=FIO_WORKLOADS, names=SETUPS,
            cold_read_size=None, device=None, failures=None):
    """Each workload runs `repeat` times, the setups taking turns within each round so that
    a noisy neighbour slows all of them alike; the median of the rounds is reported.

    `cold_read_size`: the file of the cold random reads (one job and 4), laid out once per
    setup before the first of them and deleted after the last. `device`: the block device
    whose read counters go with each cold round into rounds.md."""
    pid = setups.xtsfs_pid("xtsfs")
    failures = [] if failures is None else failures

    def big(name, cold):
        return cold_read_size is not None and cold and name.startswith("rand read")

    last_big = max((i for i, (n, _, _, c) in enumerate(workloads) if big(n, c)), default=-1)
    for index, (name, unit, args, cold) in enumerate(workloads):
        values = {setup: [] for setup in names}
        notes = {setup: [] for setup in names}
        side = "read" if "read" in name else "write"
        for _ in range(repeat):
            for setup in names:
                directory = setups.dirs[setup]
                if any(f["setup"] == setup and f["workload"] == name and f["backing"] == label for f in failures):
                    continue  # it failed in an earlier round: it cannot run this one
                laid_out, before = [], None  # files to delete after this turn
                try:
                    targets, file_size, laid_out = lay_out(directory, name, args, size,
                                                           cold_read_size if big(name, cold) else None)
                    if cold:
                        drop_caches()
                    before = device.reads() if device and cold else None
                    job = fio(targets, args, file_size, runtime)
                    if before:
                        after = device.reads()
                        ios = max(job[side]["total_ios"], 1)
                        notes[setup].append(f"{(after[0] - before[0]) / ios:.2f} {device.name} reads/IO")
                except FioError as e:
                    print(f"  {label:6} {name:36} {setup:10} cannot run it: {e}", flush=True)
                    failures.append({"backing": label, "workload": name, "setup": setup, "why": str(e)})
                    continue
                finally:
                    # Up to --size per setup: the 4 GiB tmpfs has no room to keep them all.
                    for f in laid_out:
                        f.unlink(missing_ok=True)
                value = job[side]["bw"] / 1024 if unit == "MiB/s" else job[side]["iops"]
                values[setup].append(value)
                note = f"  ({notes[setup][-1]})" if before else ""
                print(f"  {label:6} {name:36} {setup:10} {value:12.1f} {unit}{note}", flush=True)
        record_medians(values, results, label, name, unit, notes)
        if index == last_big:
            for setup in names:
                (setups.dirs[setup] / "cold.dat").unlink(missing_ok=True)
    rss_kib = peak_rss_kib(pid)
    # Up to 1 GiB per setup: on the 4 GiB tmpfs, Redis would find no room after them.
    for setup in names:
        for filename in ["bench.dat", "append.dat", "cold.dat"]:
            (setups.dirs[setup] / filename).unlink(missing_ok=True)
    return rss_kib


def run_pagecache(setups: Setups, nbytes, repeat, results, label, names, memory: Memory, workloads):
    """Page cache per byte: the growth of the page cache while a setup writes a fresh file
    of `nbytes` (1 MiB writes, fsync at the end), and while it reads that file back after
    the caches are dropped, over `nbytes`. The mount's plaintext pages and the backing's
    ciphertext pages both count, whichever process brought them in (fio, or the daemon).
    On a tmpfs the backing's own pages are the data: they stay through drop_caches, so a
    read finds them there and does not count them, a write does."""
    values = {w: {setup: [] for setup in names} for w in workloads}

    def warm_up(directory):
        """drop_caches also drops the pages of fio's and the daemon's own binaries and
        libraries (some 60 MiB for fio), which the measured run would bring back in and
        count: a small write and read through the setup bring them in beforehand."""
        warm = directory / "warm-up.dat"
        fio([f"--filename={warm}"], ["--rw=write", "--bs=1M", "--end_fsync=1"], "1M")
        fio([f"--filename={warm}"], ["--rw=read", "--bs=1M"], "1M")
        warm.unlink()

    for _ in range(repeat):
        for setup in names:
            path = setups.dirs[setup] / "pagecache.dat"
            path.unlink(missing_ok=True)
            try:
                drop_caches()
                warm_up(setups.dirs[setup])
                before = memory.file_bytes()
                fio([f"--filename={path}"], ["--rw=write", "--bs=1M", "--end_fsync=1"], nbytes)
                after = memory.file_bytes()
                if PAGECACHE_WRITTEN in values:
                    values[PAGECACHE_WRITTEN][setup].append(max(0.0, round((after - before) / nbytes, 3)))
                if PAGECACHE_READ in values:
                    drop_caches()
                    warm_up(setups.dirs[setup])
                    before = memory.file_bytes()
                    fio([f"--filename={path}"], ["--rw=read", "--bs=1M"], nbytes)
                    values[PAGECACHE_READ][setup].append(max(0.0, round((memory.file_bytes() - before) / nbytes, 3)))
            finally:
                path.unlink(missing_ok=True)
            print(f"  {label:6} {'page cache per byte':36} {setup:10} "
                  + ", ".join(f"{w.split()[-1]} {values[w][setup][-1]:.2f}x" for w in values), flush=True)
    for workload in PAGECACHE_WORKLOADS:
        if workload in values:
            record_medians(values[workload], results, label, workload, "x")


def record_daemon_rss(setups: Setups, results, label, names):
    """Each daemon's peak RSS (VmHWM) so far: after the fio and page-cache workloads."""
    for setup in names:
        if setup in DAEMON_SETUPS:
            mib = peak_rss_kib(setups.daemon_pid(setup)) / 1024
            results.append({"backing": label, "workload": DAEMON_RSS, "unit": "MiB", "setup": setup,
                            "value": mib, "runs": [mib]})
            print(f"  {label:6} {DAEMON_RSS:36} {setup:10} {mib:12.1f} MiB", flush=True)


class Redis:
    def __init__(self, directory: Path, appendonly="yes", extra=(), cgroup: Path = None, timeout=900):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        def join():
            """In the limited cgroup from its first instruction, so that all it loads is charged
            there; and the first the OOM killer takes there, before the file system's daemon
            (raising oom_score_adj needs no privilege; lowering the daemon's would need
            CAP_SYS_RESOURCE)."""
            (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")
            Path("/proc/self/oom_score_adj").write_text("1000\n")

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--appendonly", appendonly, "--appendfsync", "always", "--save", "",
             "--enable-debug-command", "local", "--daemonize", "no", "--loglevel", "warning", *extra],
            stdout=subprocess.DEVNULL, preexec_fn=join if cgroup else None,
        )
        self.wait_loaded(timeout)

    def cli(self, *args):
        return sh("redis-cli", "-p", self.port, *args, check=False).stdout.strip()

    def wait_loaded(self, timeout):
        deadline = time.monotonic() + timeout
        while self.cli("PING") != "PONG":
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"redis-server did not load in {timeout} s")
            time.sleep(0.01)

    def info(self, field, section="persistence"):
        for line in self.cli("INFO", section).splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        raise KeyError(field)

    def bgsave(self, timeout=900):
        """Seconds that a BGSAVE takes; raises if it fails."""
        start = time.monotonic()
        self.cli("BGSAVE")
        time.sleep(0.05)
        while self.info("rdb_bgsave_in_progress") != "0":
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode}")
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"BGSAVE took over {timeout} s")
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        if self.info("rdb_last_bgsave_status") != "ok":
            raise RuntimeError("BGSAVE failed (rdb_last_bgsave_status is not ok)")
        return elapsed

    def stop(self):
        if self.proc.poll() is None:
            self.cli("SHUTDOWN", "NOSAVE")
            self.proc.wait(timeout=60)


def redis_workloads(keys, big_size, factor):
    """The Redis workloads' names, in the table's order."""
    big = human(big_size)
    return [f"Redis SET appendfsync always", "Redis SET appendfsync everysec",
            f"BGSAVE {keys // 1000}k keys", f"restart load {keys // 1000}k keys",
            REDIS4, f"restart load {big}, cgroup {factor:g}x", f"BGSAVE {big}, cgroup {factor:g}x"]


REDIS4 = "Redis SET appendfsync always, 4 instances"


def run_redis(setups: Setups, keys, requests, repeat, results, label, names=REDIS_SETUPS, workloads=None):
    """As for fio: `repeat` rounds of each workload, the setups taking turns within each
    round, the median reported. One Redis server per setup runs throughout. `workloads`:
    the names (of redis_workloads) to run, all by default."""
    bgsave, load = f"BGSAVE {keys // 1000}k keys", f"restart load {keys // 1000}k keys"
    if workloads is None:
        workloads = [f"Redis SET appendfsync {f}" for f in ["always", "everysec"]] + [bgsave, load]
    fsyncs = [f for f in ["always", "everysec"] if f"Redis SET appendfsync {f}" in workloads]
    if not fsyncs and bgsave not in workloads and load not in workloads:
        return
    servers = {}
    try:
        for setup in names:
            directory = setups.dirs[setup] / "redis"
            directory.mkdir()
            servers[setup] = Redis(directory)
        for fsync in fsyncs:
            workload = f"Redis SET appendfsync {fsync}"
            values = {setup: [] for setup in names}
            for _ in range(repeat):
                for setup, redis in servers.items():
                    redis.cli("CONFIG", "SET", "appendfsync", fsync)
                    out = sh("redis-benchmark", "-p", redis.port, "-t", "set", "-n", requests, "-c", "50", "-q").stdout
                    rps = float(re.findall(r"SET: ([\d.]+) requests per second", out)[-1])
                    values[setup].append(rps)
                    print(f"  {label:6} {'SET ' + fsync:36} {setup:10} {rps:12.0f} req/s", flush=True)
            record_medians(values, results, label, workload, "req/s")
        if bgsave not in workloads and load not in workloads:
            return
        for redis in servers.values():
            redis.cli("CONFIG", "SET", "appendonly", "no")
            redis.cli("DEBUG", "POPULATE", str(keys), "key", "64")
        # Times: lower is better, so the ratio columns use rate = 1 / time.
        times = {workload: {setup: [] for setup in names} for workload in [bgsave, load]}
        for _ in range(repeat):
            for setup in names:
                times[bgsave][setup].append(servers[setup].bgsave())
            for setup in names:
                servers.pop(setup).stop()
                start = time.monotonic()
                servers[setup] = Redis(setups.dirs[setup] / "redis", appendonly="no")
                times[load][setup].append(time.monotonic() - start)
            for workload in [bgsave, load]:
                for setup in names:
                    print(f"  {label:6} {workload:36} {setup:10} {times[workload][setup][-1]:12.3f} s", flush=True)
        for workload in [bgsave, load]:
            if workload in workloads:
                record_medians(times[workload], results, label, workload, "s")
    finally:
        for redis in servers.values():
            redis.stop()
        for setup in names:
            shutil.rmtree(setups.dirs[setup] / "redis", ignore_errors=True)


def run_redis4(setups: Setups, requests, repeat, results, label, names):
    """Four Redis servers per setup on its one volume, each in its own directory with its
    own AOF (appendfsync always); one redis-benchmark -t set per server, all four at once,
    --redis-requests / 4 requests each. The total SET rate: all their requests over the
    time from the start of the first benchmark to the end of the last."""
    servers = {}
    try:
        for setup in names:
            servers[setup] = []
            for i in range(4):
                directory = setups.dirs[setup] / "redis4" / str(i)
                directory.mkdir(parents=True)
                servers[setup].append(Redis(directory))
        each = max(1, requests // 4)
        values = {setup: [] for setup in names}
        for _ in range(repeat):
            for setup in names:
                start = time.monotonic()
                benches = [subprocess.Popen(["redis-benchmark", "-p", str(r.port), "-t", "set", "-n", str(each),
                                             "-c", "50", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                           for r in servers[setup]]
                outs = [b.communicate() for b in benches]
                elapsed = time.monotonic() - start
                for b, (out, err) in zip(benches, outs):
                    if b.returncode != 0 or "requests per second" not in out:
                        raise RuntimeError(f"redis-benchmark failed on {setup}: {err.strip() or out.strip()}")
                rps = 4 * each / elapsed
                values[setup].append(rps)
                print(f"  {label:6} {'SET always, 4 instances':36} {setup:10} {rps:12.0f} req/s", flush=True)
        record_medians(values, results, label, REDIS4, "req/s")
    finally:
        for group in servers.values():
            for redis in group:
                redis.stop()
        for setup in names:
            shutil.rmtree(setups.dirs[setup] / "redis4", ignore_errors=True)


# DEBUG POPULATE's values: "value:N" padded with zero bytes to this size. The servers that
# make the dataset run with rdbcompression off, or LZF would shrink it a hundredfold; 4000
# bytes (a 4096-byte allocation) keeps the per-key overhead small.
BIG_VALUE = 4000


def run_redis_cgroup(setups: Setups, nbytes, factor, repeat, results, label, names, memory: Memory, workloads,
                     failures):
    """Redis restart load and BGSAVE of an `nbytes` dataset (an RDB of about that size)
    under a memory cgroup limit of `factor` times the dataset's RSS in Redis: a host short
    of memory. For each setup and round, a new cgroup with that limit holds the redis-server
    AND the setup's daemon (xtsfs, gocryptfs; the backing directory has none): the kernel
    charges a page-cache page to the cgroup of the task that brings it in, so the mount's
    plaintext pages are charged to Redis and the backing file's ciphertext pages to the
    daemon. With only Redis inside, the second copy would sit outside the limit and the
    double caching that the limit is meant to expose would not count. The daemon is moved
    in for the round (only what it allocates from then on is charged there) and back
    after; Redis runs with oom_score_adj 1000, so that an OOM kill takes Redis (the
    round then shows '-'), not the mount. The caches are dropped before each restart: a
    cold load of the RDB.

    Only on the disk backing: a tmpfs's pages are memory that no limit can reclaim (there
    is no swap), so a 1.5x limit there would only OOM-kill Redis."""
    load, bgsave = workloads
    keys = max(1, nbytes // (BIG_VALUE + 16))
    rss = {}
    print(f"  {label:6} making a {human(nbytes)} dataset ({keys} keys of {BIG_VALUE} B) on each setup", flush=True)
    try:
        for setup in names:
            directory = setups.dirs[setup] / "redis-big"
            directory.mkdir()
            redis = Redis(directory, appendonly="no", extra=["--rdbcompression", "no"])
            try:
                redis.cli("DEBUG", "POPULATE", str(keys), "key", str(BIG_VALUE))
                if redis.cli("SAVE") != "OK":
                    raise RuntimeError(f"SAVE failed on {setup}")
                rss[setup] = int(redis.info("used_memory_rss", "memory"))
            finally:
                redis.stop()
        dataset_rss = statistics.median(rss.values())
        limit = int(factor * dataset_rss)
        rdb = (setups.dirs[names[0]] / "redis-big" / "dump.rdb").stat().st_size
        print(f"  {label:6} RDB {human(rdb)}, Redis RSS {human(dataset_rss)}: cgroup limit {human(limit)}", flush=True)
        times = {w: {setup: [] for setup in names} for w in [load, bgsave]}
        notes = {w: {setup: [] for setup in names} for w in [load, bgsave]}
        for _ in range(repeat):
            for setup in names:
                cgroup = memory.limited(limit)
                pid = setups.daemon_pid(setup)
                redis = None
                try:
                    if pid:
                        memory.move(pid, cgroup)
                    drop_caches()
                    last = (None, 0, 0)

                    def measured(workload, seconds):
                        """Records a time with what the cgroup went through meanwhile."""
                        nonlocal last
                        peak, hits, ooms = now = memory.report(cgroup)
                        memory.reset_peak(cgroup)
                        note = ", ".join(x for x in [f"peak {human(peak)}" if peak else "",
                                                     f"limit hit {hits - last[1]} times",
                                                     f"{ooms - last[2]} OOM kills" if ooms > last[2] else ""] if x)
                        last = now
                        times[workload][setup].append(seconds)
                        notes[workload][setup].append(note)
                        print(f"  {label:6} {workload:36} {setup:10} {seconds:12.3f} s  ({note})", flush=True)

                    start = time.monotonic()
                    try:
                        redis = Redis(setups.dirs[setup] / "redis-big", appendonly="no",
                                      extra=["--rdbcompression", "no"], cgroup=cgroup)
                        measured(load, time.monotonic() - start)
                        measured(bgsave, redis.bgsave())
                    except RuntimeError as e:
                        ooms = memory.report(cgroup)[2]
                        why = f"{e}{f' ({ooms} OOM kills in its cgroup)' if ooms else ''}"
                        print(f"  {label:6} {'Redis in cgroup':36} {setup:10} failed: {why}", flush=True)
                        failures.append({"backing": label, "workload": load if redis is None else bgsave,
                                         "setup": setup, "why": why})
                    finally:
                        if redis:
                            redis.stop()
                finally:
                    if pid:
                        memory.move(pid, memory.main)
                    memory.remove(cgroup)
        for w in [load, bgsave]:
            record_medians(times[w], results, label, w, "s", notes[w])
        return limit, dataset_rss, rdb
    finally:
        for setup in names:
            shutil.rmtree(setups.dirs[setup] / "redis-big", ignore_errors=True)


# Units where lower is better: the ratio columns use rate = 1 / value, so that higher
# stays better for xtsfs everywhere.
LOWER_IS_BETTER = {"s", "x", "MiB"}
FORMATS = {"s": "{:.3f}", "x": "{:.2f}", "MiB": "{:.1f}"}


def table(results):
    rows = ["| backing | workload | unit | backing dir | FUSE floor | xtsfs | xtsfs format 1 | xtsfs --direct-io "
            "| gocryptfs | xtsfs / gocryptfs | --direct-io / gocryptfs | xtsfs / floor | xtsfs / backing | v2 / v1 |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    keys = []
    for r in results:
        key = (r["backing"], r["workload"], r["unit"])
        if key not in keys:
            keys.append(key)
    for label, workload, unit in keys:
        v = {r["setup"]: r["value"] for r in results if (r["backing"], r["workload"]) == (label, workload)}
        fmt = FORMATS.get(unit, "{:.0f}")

        def ratio(a, b):
            """a against b, higher is better for a; None when a setup did not run (--setups,
            or it could not run the workload) or a value is 0 (no page cache at all)."""
            if a not in v or b not in v or not v[a] or not v[b]:
                return None
            return v[b] / v[a] if unit in LOWER_IS_BETTER else v[a] / v[b]

        vs_g, direct_vs_g = ratio("xtsfs", "gocryptfs"), ratio("xtsfs-direct", "gocryptfs")
        vs_f, vs_b, vs_v1 = ratio("xtsfs", "floor"), ratio("xtsfs", "backing"), ratio("xtsfs", "xtsfs-v1")
        ratios.append((f"{label}: {workload}", vs_g, direct_vs_g, vs_b, vs_v1))
        cells = [fmt.format(v[s]) if s in v else "-" for s in ["backing", "floor", "xtsfs", "xtsfs-v1", "xtsfs-direct", "gocryptfs"]]
        cells += [f"{r:.2f}x" if r is not None else "-" for r in [vs_g, direct_vs_g, vs_f, vs_b, vs_v1]]
        rows.append(f"| {label} | {workload} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(rows), ratios


def rounds_table(results):
    """Every round of every setup, and the spread of the rounds (max / min - 1): how much
    the machine's neighbours moved single runs. "per round": for the cold workloads on the
    disk, the backing device's read requests per fio I/O (about 1 for 4 KiB reads that all
    miss the page cache, lower when some hit it; other processes' reads of the same device
    count too); for Redis under a cgroup limit, the cgroup's peak usage and OOM kills."""
    rows = ["| backing | workload | setup | rounds | spread | per round |", "|---|---|---|---|---:|---|"]
    for r in results:
        runs = r["runs"]
        fmt = FORMATS.get(r["unit"], "{:.0f}")
        spread = max(runs) / min(runs) - 1 if min(runs) > 0 else float("nan")
        rows.append(f"| {r['backing']} | {r['workload']} | {r['setup']} | {' / '.join(fmt.format(x) for x in runs)} "
                    f"| {spread:.0%} | {' / '.join(r.get('notes', []))} |")
    return "\n".join(rows)


def chart(ratios, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [r[0] for r in ratios]
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(labels) + 1.5))
    y = range(len(labels))
    bars = ["xtsfs / gocryptfs", "xtsfs --direct-io / gocryptfs", "xtsfs / backing dir", "xtsfs format 2 / format 1"]
    h = 0.8 / len(bars)
    for k, bar in enumerate(bars):
        ax.barh([i + (k - (len(bars) - 1) / 2) * h for i in y], [r[k + 1] or 0 for r in ratios], height=h, label=bar)
    # Ratios on a log scale: 2x and 0.5x are as far from 1 as each other, and one large
    # ratio does not flatten the rest.
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio, log scale (higher is better for xtsfs)")
    ax.legend(loc="lower right")
    ax.set_title("xtsfs (default and --direct-io) relative to gocryptfs, the bare backing directory and format 1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024 // 1024
    if XTSFS == REPO / "target" / "release" / "xtsfs":
        built = sh("git", "-C", REPO, "rev-parse", "--short", "HEAD", check=False).stdout.strip() or "?"
        if sh("git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock",
              check=False).stdout.strip():
            built += ", src/ changed since"
        built = f"commit {built}"
    else:
        built = str(XTSFS)
    versions = {
        "xtsfs": sh(XTSFS, "--version").stdout.strip() + f" ({built})",
        "gocryptfs": sh("gocryptfs", "-version").stdout.strip().splitlines()[0],
        "fio": sh("fio", "--version").stdout.strip(),
        "redis": sh("redis-server", "--version").stdout.split()[2],
    }
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem} GiB RAM, Linux {platform.release()}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items()))


def disk_space_needed(args, names, fio_workloads, pagecache, redis_workloads):
    """Bytes the disk backing needs at its fullest, with some room for the file systems'
    overheads."""
    stores = len([s for s in names if s != "floor"])  # the floor keeps no data
    size, cold = parse_size(args.size), parse_size(args.cold_read_size)
    big_cold = any(cold_ and name.startswith("rand read") for name, _, _, cold_ in fio_workloads)
    fio = stores * (size * 2 + (cold if big_cold else 0))
    pc = parse_size(args.pagecache_size) if pagecache else 0
    big = (stores + 1) * parse_size(args.redis_big_size) if any("cgroup" in w for w in redis_workloads) else 0
    return int(max(fio, pc, big) * 1.05) + GiB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="""examples:
  scripts/bench.sh                                     # everything, updates docs/PERFORMANCE.md
  scripts/bench.sh --skip-parallel --no-docs           # without the parallel workloads
  scripts/bench.sh --workloads 'rand read 4 KiB cold,jobs,files,QD16,page cache' \\
      --redis-workloads 'instances,cgroup' --no-docs   # the parallel and memory workloads
  scripts/bench.sh --workloads 'page cache' --skip-redis --no-docs   # page cache and daemon RSS
  scripts/bench.sh --backings tmpfs --workloads '4 jobs' --repeat 1 --runtime 2 --size 64M \\
      --skip-redis --no-docs                           # a quick look""")
    parser.add_argument("--size", default="512M", help="fio file size")
    parser.add_argument("--runtime", type=int, default=8, help="seconds per fio run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per workload (the median is reported)")
    parser.add_argument("--cold-read-size", default="4G",
                        help="file size of the cold random reads (1 and 4 jobs) on the disk backing, so that "
                             "the page cache does not serve most of them (tmpfs uses --size); laid out once "
                             "per setup, needs setups x this much free space in --disk-dir")
    parser.add_argument("--pagecache-size", default="1G",
                        help="bytes written and read per setup for the page-cache rows")
    parser.add_argument("--redis-keys", type=int, default=1_000_000)
    parser.add_argument("--redis-requests", type=int, default=200_000,
                        help="SET requests per run (the 4-instance run splits them over its servers)")
    parser.add_argument("--redis-big-size", default="1G",
                        help="RDB size of the dataset of the Redis runs under a memory cgroup limit")
    parser.add_argument("--redis-cgroup-factor", type=float, default=1.5,
                        help="memory cgroup limit of those runs, times the dataset's RSS in Redis")
    parser.add_argument("--disk-dir", default="/var/tmp", help="where the disk-backed setups live")
    parser.add_argument("--out", default=str(REPO / "target" / "bench"), help="where results go")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/PERFORMANCE.md")
    parser.add_argument("--backings", default="tmpfs,disk", help="which of tmpfs,disk to run")
    parser.add_argument("--skip-redis", action="store_true", help="run no Redis workload")
    parser.add_argument("--skip-parallel", action="store_true",
                        help="skip the workloads with several jobs, files, instances or a queue depth "
                             "(the fio ones after the single-job ones, and Redis with 4 instances)")
    parser.add_argument("--workloads", help="run only the fio and page-cache workloads whose names contain one of "
                        "these comma-separated strings (e.g. 'cold,append', '4 jobs', 'page cache'), or none "
                        "with 'none'. The daemons' peak RSS row comes with any of them")
    parser.add_argument("--redis-workloads", help="the same for the Redis workloads (e.g. 'instances,cgroup')")
    parser.add_argument("--bin", type=Path, help="the xtsfs binary (default: target/release/xtsfs)")
    parser.add_argument("--floor-bin", type=Path, help="the fuse_floor binary (default: target/release/examples/)")
    parser.add_argument("--setups", help=f"run only these comma-separated setups of {','.join(SETUPS)} "
                        "(xtsfs always runs); the table shows '-' for the others")
    args = parser.parse_args()
    global XTSFS, FUSE_FLOOR
    XTSFS, FUSE_FLOOR = (args.bin or XTSFS).resolve(), (args.floor_bin or FUSE_FLOOR).resolve()
    backings = args.backings.split(",")
    for size in [args.size, args.cold_read_size, args.pagecache_size, args.redis_big_size]:
        try:
            parse_size(size)
        except ValueError as e:
            parser.error(str(e))

    def pick(names, wanted, option):
        if not wanted:
            return names
        picked = [n for n in names if any(w in n for w in wanted.split(","))]
        if not picked and wanted != "none":
            parser.error(f"no workload matches {option} {wanted!r}")
        return picked

    all_fio = ALL_FIO_WORKLOADS if not args.skip_parallel else FIO_WORKLOADS
    fio_names = pick([w[0] for w in all_fio] + PAGECACHE_WORKLOADS, args.workloads, "--workloads")
    workloads = [w for w in all_fio if w[0] in fio_names]
    pagecache = [w for w in PAGECACHE_WORKLOADS if w in fio_names]
    every_redis = redis_workloads(args.redis_keys, parse_size(args.redis_big_size), args.redis_cgroup_factor)
    all_redis = list(every_redis)
    if args.skip_parallel:
        all_redis.remove(REDIS4)
    redis_names = [] if args.skip_redis else pick(all_redis, args.redis_workloads, "--redis-workloads")
    names = SETUPS
    if args.setups:
        wanted = set(args.setups.split(",")) | {"xtsfs"}
        if wanted - set(SETUPS):
            parser.error(f"unknown setups: {','.join(sorted(wanted - set(SETUPS)))}")
        names = [s for s in SETUPS if s in wanted]
    redis_setups = [s for s in REDIS_SETUPS if s in names]
    pagecache_setups = [s for s in names if s != "floor"]
    if args.no_docs is False and (backings != ["tmpfs", "disk"] or names != SETUPS or workloads != ALL_FIO_WORKLOADS
                                  or pagecache != PAGECACHE_WORKLOADS or len(redis_names) != len(all_redis)
                                  or args.skip_parallel):
        parser.error("a partial run cannot update docs/PERFORMANCE.md; add --no-docs")
    if "disk" in backings:
        need = disk_space_needed(args, names, workloads, pagecache, redis_names)
        free = shutil.disk_usage(args.disk_dir).free
        if free < need:
            stores = len([s for s in names if s != "floor"])
            sys.exit(f"bench.py: {args.disk_dir} has {human(free)} free; the disk backing needs about {human(need)} "
                     f"(the fio files: {stores} setups x (--cold-read-size {args.cold_read_size} for the cold random "
                     f"reads + 2 x --size {args.size}); Redis under a cgroup limit: {stores + 1} x --redis-big-size "
                     f"{args.redis_big_size}). Free some space, pass a smaller --cold-read-size, or another --disk-dir.")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, rss, failures, notes = [], {}, [], []
    # Before anything is mounted: the daemons, fio and Redis inherit its memory cgroup.
    memory = Memory() if pagecache or any("cgroup" in w for w in redis_names) else None
    if memory:
        print(f"page cache measured from {memory.describe}", flush=True)
    try:
        for label in backings:
            with backing_dir(label, args.disk_dir) as (base, env):
                setups = None
                device = BlockDevice(base) if label == "disk" else None
                if device and not device.name:
                    print(f"no block device found under {base}: rounds.md will not show disk reads per I/O", flush=True)
                    device = None
                try:
                    setups = Setups(base, env)
                    if workloads or pagecache:
                        print(f"== {label}: fio", flush=True)
                        rss[label] = run_fio(setups, args.size, args.runtime, args.repeat, results, label, workloads, names,
                                             args.cold_read_size if label == "disk" else None, device, failures)
                    if pagecache:
                        print(f"== {label}: page cache", flush=True)
                        run_pagecache(setups, parse_size(args.pagecache_size), args.repeat, results, label,
                                      pagecache_setups, memory, pagecache)
                    if workloads or pagecache:
                        record_daemon_rss(setups, results, label, names)
                    if redis_names:
                        print(f"== {label}: redis", flush=True)
                        run_redis(setups, args.redis_keys, args.redis_requests, args.repeat, results, label, redis_setups,
                                  [w for w in redis_names if w in every_redis[:4]])
                        if REDIS4 in redis_names:
                            run_redis4(setups, args.redis_requests, args.repeat, results, label, redis_setups)
                        cgroup_runs = [w for w in redis_names if "cgroup" in w]
                        if cgroup_runs and label != "disk":
                            print(f"  {label:6} Redis under a cgroup limit: disk backing only (a tmpfs's pages cannot be "
                                  f"reclaimed without swap: the limit would only OOM-kill Redis)", flush=True)
                        elif cgroup_runs and memory.version is None:
                            print(f"  {label:6} Redis under a cgroup limit: skipped, {memory.why}", flush=True)
                            notes.append(f"Redis under a cgroup limit: skipped, {memory.why}.")
                        elif cgroup_runs:
                            limit, dataset_rss, rdb = run_redis_cgroup(
                                setups, parse_size(args.redis_big_size), args.redis_cgroup_factor, args.repeat, results,
                                label, redis_setups, memory, every_redis[5:], failures)
                            notes.append(f"Redis under a cgroup limit ({label}): an RDB of {human(rdb)} (DEBUG POPULATE, "
                                         f"{BIG_VALUE}-byte values, rdbcompression no), {human(dataset_rss)} of RSS in "
                                         f"Redis; memory cgroup v{memory.version} limit {human(limit)} "
                                         f"({args.redis_cgroup_factor:g}x) holding redis-server and the setup's daemon; "
                                         f"caches dropped before each restart.")
                finally:
                    if setups:
                        setups.close()
    finally:
        if memory:
            memory.close()

    markdown, ratios = table(results)
    chart(ratios, out / "ratios.png")
    redis = ("Redis: skipped" if not redis_names else
             f"Redis: redis-benchmark -t set -n {args.redis_requests} -c 50 (4 instances: -n {args.redis_requests // 4} "
             f"each, all at once, total requests over the wall time), {args.redis_keys} keys for BGSAVE/restart, "
             f"median of {args.repeat} rounds")
    if pagecache:
        notes.append(f"Page cache per byte: growth of the page cache while a setup writes {args.pagecache_size} "
                     f"(1 MiB writes, fsync at the end), and reads it back after the caches are dropped, over "
                     f"{args.pagecache_size}; measured from {memory.describe}.")
    notes += [f"{f['backing']}, {f['workload']}, {f['setup']}: could not run ({f['why']})." for f in failures]
    summary = (f"Machine: {machine()}\n\nfio: {args.size} file ({args.cold_read_size} for the cold random reads on "
               f"the disk), {args.runtime} s time-based runs, psync, one job unless the workload names more "
               f"(IOPS summed over the jobs), median of {args.repeat} rounds; {redis}. xtsfs and xtsfs --direct-io "
               f"are format 2 volumes, xtsfs format 1 a volume made with `init --format 1`.\n\n"
               f"{markdown}\n\n" + "".join(f"{n}\n\n" for n in notes)
               + ("Peak RSS of the xtsfs daemon during the fio runs: "
                  + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in rss.items()) + "\n" if rss else ""))
    (out / "results.md").write_text(summary)
    (out / "rounds.md").write_text(rounds_table(results) + "\n")
    (out / "results.json").write_text(json.dumps({"results": results, "rss_kib": rss, "failures": failures}, indent=1))
    print(summary)
    if not args.no_docs:
        doc = REPO / "docs" / "PERFORMANCE.md"
        text = doc.read_text()
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        block = f"{begin}\nLast run: {stamp}. Chart: [performance.png](performance.png).\n\n{summary}{end}"
        doc.write_text(text[: text.index(begin)] + block + text[text.index(end) + len(end):])
        shutil.copy(out / "ratios.png", REPO / "docs" / "performance.png")
        print(f"updated {doc}")


if __name__ == "__main__":
    sys.exit(main())
