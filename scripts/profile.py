#!/usr/bin/env python3
"""Where the time of each fio workload goes, on xtsfs and on the FUSE floor.

For each workload of scripts/bench.py (the same files, sizes and fio arguments), one
run per setup under `perf record -a -g -e cpu-clock` (the whole machine: fio, the
daemon's threads, kernel workers, idle). Every sample is put in one bucket by its
thread and its call chain:

  caller: kernel         fio's threads in the kernel: its system calls on the mount
                         (the mount's page cache, sending FUSE requests, waiting for
                         them) and faults. (The FUSE functions often tail-call into the
                         page cache and leave no frame, so the call chain cannot tell.)
  caller: fio            fio's own user-space time
  daemon: transport      a daemon thread reading a request from /dev/fuse or replying
  daemon: backing file   a daemon thread in a system call on the backing file (pread,
                         pwrite, fdatasync, fstat, fadvise, ...)
  daemon: encryption     XTS (AES) in a daemon thread
  daemon: own code       the rest of the daemon's user-space time (xtsfs's own logic,
                         the FUSE library, allocation)
  daemon: other kernel   the rest of the daemon's kernel time (scheduling, faults)
  other                  every other thread (kernel workers writing back, ...)
  idle                   no thread ran on the CPU

and reported as microseconds of CPU per I/O, so that xtsfs and the floor, which do
different numbers of I/Os in the same time, compare directly: the floor does no work of
its own, so what xtsfs spends beyond it per I/O, bucket by bucket, is what keeps it under
the floor. Writes a markdown table to stdout and to --out/profile.md.

Needs root, perf, fio, and the builds scripts/bench.sh makes. Usage:
  scripts/profile.py [--backings tmpfs,disk] [--workloads 'QD16,jobs'] [--setups floor,xtsfs,xtsfs-direct]
"""

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the setups and workloads)

FREQUENCY = 4000  # samples per second and CPU
BUCKETS = ["caller: kernel", "caller: fio", "daemon: transport", "daemon: backing file",
           "daemon: encryption", "daemon: own code", "daemon: other kernel", "other", "idle"]
ENCRYPTION = re.compile(r"Xts256|aes::|xts::")
BACKING_CALL = re.compile(r"^__x64_sys_(pread64|pwrite64|preadv2?|pwritev2?|fdatasync|fsync|statx|newfstatat|"
                          r"newfstat|fstatfs|fallocate|ftruncate|fadvise64|sync_file_range|openat2?|close|"
                          r"f?(get|set|remove|list)xattr|fchmod|fchown|utimensat|renameat2|unlinkat|mkdirat)$")
TRANSPORT = re.compile(r"^(fuse_dev_|__x64_sys_(read|readv|write|writev)$)")


def daemon_thread(comm):
    # fuser's worker threads (xtsfs and the floor alike), and xtsfs's own.
    return comm.startswith(("fuser", "xtsfs"))


def bucket(comm, frames):
    """`frames`: (symbol, is_kernel) from the sampled instruction to the outermost caller."""
    if comm.startswith("swapper"):
        return "idle"
    leaf_in_kernel = bool(frames) and frames[0][1]
    if comm == "fio":
        return "caller: kernel" if leaf_in_kernel else "caller: fio"
    symbols = [sym for sym, _ in frames]
    if not daemon_thread(comm):
        return "other"
    if any(ENCRYPTION.search(sym) for sym in symbols):
        return "daemon: encryption"
    if any(BACKING_CALL.match(sym) for sym in symbols):
        return "daemon: backing file"
    if any(TRANSPORT.match(sym) for sym in symbols):
        return "daemon: transport"
    return "daemon: other kernel" if leaf_in_kernel else "daemon: own code"


def samples(data: Path):
    """(comm, frames) of each sample that `perf record -g` wrote to `data`."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    comm, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif line[0] in " \t" and comm is not None:
            # "\t ffffffff81234567 symbol+0x12 ([kernel.kallsyms])"
            parts = line.split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            sym, _, dso = rest.rpartition(" (")
            frames.append((re.sub(r"\+0x[0-9a-f]+$", "", sym), "kernel" in dso))
        else:
            comm = line.rsplit(None, 1)[0].strip()
    if comm is not None:
        yield comm, frames


def profile(targets, args, size, runtime, side):
    """Runs fio under a system-wide profile; returns (its rate, I/Os, sample counts by bucket)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        prefix = ["perf", "record", "-a", "-g", "-e", "cpu-clock", "-F", str(FREQUENCY), "-q", "-o", data, "--"]
        job = bench.fio(targets, args, size, runtime, prefix=prefix)
        counts = Counter(bucket(comm, frames) for comm, frames in samples(data))
    return job[side], counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backings", default="tmpfs,disk")
    parser.add_argument("--workloads", default="",
                        help="comma-separated parts of workload names (default: every fio workload)")
    parser.add_argument("--setups", default="floor,xtsfs")
    parser.add_argument("--size", default="512M")
    parser.add_argument("--runtime", type=int, default=3)
    parser.add_argument("--disk-dir", default="/var/tmp")
    parser.add_argument("--out", default=str(bench.REPO / "target" / "bench"))
    args = parser.parse_args()
    wanted = [w for w in args.workloads.split(",") if w]
    workloads = [w for w in bench.ALL_FIO_WORKLOADS if not wanted or any(p in w[0] for p in wanted)]
    names = args.setups.split(",")

    header = ["backing", "workload", "setup", "rate", *(f"{b} us/IO" for b in BUCKETS), "busy us/IO"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for label in args.backings.split(","):
        with bench.backing_dir(label, args.disk_dir) as (base, env):
            setups = bench.Setups(base, env)
            try:
                for name, unit, fio_args, cold in workloads:
                    side = "read" if "read" in name else "write"
                    for setup in names:
                        directory = setups.dirs[setup]
                        targets, size, laid_out = bench.lay_out(directory, name, fio_args, args.size)
                        try:
                            if cold:
                                bench.drop_caches()
                            result, counts = profile(targets, fio_args, size, args.runtime, side)
                        except bench.FioError as e:
                            print(f"  {label} {name} {setup}: cannot run it: {e}", flush=True)
                            continue
                        finally:
                            for f in laid_out:
                                f.unlink(missing_ok=True)
                        ios = max(result["total_ios"], 1)
                        rate = f"{result['bw'] / 1024:.0f} MiB/s" if unit == "MiB/s" else f"{result['iops']:.0f} IOPS"
                        us = {b: counts[b] * 1e6 / FREQUENCY / ios for b in BUCKETS}
                        busy = sum(v for b, v in us.items() if b != "idle")
                        row = [label, name, setup, rate, *(f"{us[b]:.1f}" for b in BUCKETS), f"{busy:.1f}"]
                        rows.append("| " + " | ".join(row) + " |")
                        print(rows[-1], flush=True)
            finally:
                setups.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").write_text("\n".join(rows) + "\n")
    print(f"\n{out / 'profile.md'}")


if __name__ == "__main__":
    main()
