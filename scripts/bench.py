#!/usr/bin/env python3
"""Side-by-side benchmark: the backing dir itself, xtsfs (format 2, and a format 1 volume
made with the hidden `init --format 1`) and gocryptfs, each on a tmpfs
and on a disk-backed directory, with fio and Redis workloads. fio also runs on the FUSE
floor (examples/fuse_floor/), a FUSE file system that does no work, connected exactly as
xtsfs is: the fastest any FUSE file system can be here. Writes a markdown table and
a PNG chart of the ratios, and records the result in docs/PERFORMANCE.md.

Run through scripts/bench.sh (it builds xtsfs and installs what this needs)."""

import argparse
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


class Setups:
    """Mounts the setups under one base directory."""

    def __init__(self, base: Path, env: dict):
        self.base, self.env = base, env
        self.dirs = {"backing": base / "plain"}
        self.dirs["backing"].mkdir()
        for setup, (init_args, mount_args) in XTSFS_SETUPS.items():
            xb, xm = base / f"{setup}-backing", base / f"{setup}-mnt"
            xm.mkdir()
            sh(XTSFS, "init", xb, *init_args, env=env)
            sh(XTSFS, "mount", xb, xm, *mount_args, env=env)
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
        status = json.loads(sh(XTSFS, "status", "--json", self.dirs[setup], env=self.env).stdout)
        return status["live"]["pid"]

    def close(self):
        for setup in XTSFS_SETUPS:
            if setup in self.dirs:
                sh(XTSFS, "unmount", self.dirs[setup], env=self.env, check=False)
        if "gocryptfs" in self.dirs:
            sh("fusermount3", "-u", self.dirs["gocryptfs"], check=False)
        if "floor" in self.dirs:
            sh("umount", self.dirs["floor"], check=False)
            self.floor.wait(timeout=10)


# Appends start from an empty file that fio must not preallocate: by default it
# fallocates the whole --size first, and its "appends" are then overwrites.
APPEND = ["--rw=write", "--fdatasync=1", "--fallocate=none"]
FIO_WORKLOADS = [
    # name, unit, fio args, cold (caches dropped after the file is laid out)
    ("seq write 1 MiB", "MiB/s", ["--rw=write", "--bs=1M", "--end_fsync=1"], False),
    ("seq read 1 MiB cold", "MiB/s", ["--rw=read", "--bs=1M"], True),
    ("rand read 4 KiB cold", "IOPS", ["--rw=randread", "--bs=4k"], True),
    ("rand write 4 KiB", "IOPS", ["--rw=randwrite", "--bs=4k"], False),
    # Writes to backing pages that are not cached: a format 1 unit straddles two backing
    # pages, which the backing file system must read before it can change part of them.
    ("rand write 4 KiB cold", "IOPS", ["--rw=randwrite", "--bs=4k"], True),
    ("append 4 KiB + fdatasync", "IOPS", [*APPEND, "--bs=4k"], False),
    # Redis's AOF with appendfsync always: one small record per fdatasync.
    ("append 100 B + fdatasync", "IOPS", [*APPEND, "--bs=100"], False),
]


def fio(directory: Path, args, size, runtime, filename="bench.dat"):
    out = sh(
        "fio", "--name=bench", f"--filename={directory / filename}", f"--size={size}",
        "--ioengine=psync", "--time_based", f"--runtime={runtime}", "--output-format=json",
        "--verify_state_save=0", *args,
    ).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job


def record_medians(values, results, label, workload, unit):
    """Reports each setup's median over its rounds, keeping the rounds beside it."""
    for setup, runs in values.items():
        results.append({"backing": label, "workload": workload, "unit": unit, "setup": setup,
                        "value": statistics.median(runs), "runs": runs})


def run_fio(setups: Setups, size, runtime, repeat, results, label, workloads=FIO_WORKLOADS, names=SETUPS):
    """Each workload runs `repeat` times, the setups taking turns within each round so that
    a noisy neighbour slows all of them alike; the median of the rounds is reported."""
    pid = setups.xtsfs_pid("xtsfs")
    for name, unit, args, cold in workloads:
        values = {setup: [] for setup in names}
        for _ in range(repeat):
            for setup in names:
                directory = setups.dirs[setup]
                if name.startswith("append"):
                    (directory / "append.dat").unlink(missing_ok=True)
                    filename = "append.dat"
                else:
                    filename = "bench.dat"
                    if not (directory / filename).exists():
                        fio(directory, ["--rw=write", "--bs=1M"], size, 1)  # lays out the file
                if cold:
                    drop_caches()
                job = fio(directory, args, size, runtime, filename)
                if filename == "append.dat":
                    # Up to --size per setup: the 4 GiB tmpfs has no room to keep them all.
                    (directory / filename).unlink()
                side = "read" if "read" in name else "write"
                value = job[side]["bw"] / 1024 if unit == "MiB/s" else job[side]["iops"]
                values[setup].append(value)
                print(f"  {label:6} {name:26} {setup:10} {value:12.1f} {unit}", flush=True)
        record_medians(values, results, label, name, unit)
    rss_kib = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    # Up to 1 GiB per setup: on the 4 GiB tmpfs, Redis would find no room after them.
    for setup in names:
        for filename in ["bench.dat", "append.dat"]:
            (setups.dirs[setup] / filename).unlink(missing_ok=True)
    return rss_kib


class Redis:
    def __init__(self, directory: Path, appendonly="yes"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--appendonly", appendonly, "--appendfsync", "always", "--save", "",
             "--enable-debug-command", "local", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        self.wait_loaded()

    def cli(self, *args):
        return sh("redis-cli", "-p", self.port, *args, check=False).stdout.strip()

    def wait_loaded(self):
        while self.cli("PING") != "PONG":
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited")
            time.sleep(0.01)

    def info(self, field):
        for line in self.cli("INFO", "persistence").splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        raise KeyError(field)

    def stop(self):
        self.cli("SHUTDOWN", "NOSAVE")
        self.proc.wait(timeout=60)


def run_redis(setups: Setups, keys, requests, repeat, results, label, names=REDIS_SETUPS):
    """As for fio: `repeat` rounds of each workload, the setups taking turns within each
    round, the median reported. One Redis server per setup runs throughout."""
    servers = {}
    try:
        for setup in names:
            directory = setups.dirs[setup] / "redis"
            directory.mkdir()
            servers[setup] = Redis(directory)
        for fsync in ["always", "everysec"]:
            workload = f"Redis SET appendfsync {fsync}"
            values = {setup: [] for setup in names}
            for _ in range(repeat):
                for setup, redis in servers.items():
                    redis.cli("CONFIG", "SET", "appendfsync", fsync)
                    out = sh("redis-benchmark", "-p", redis.port, "-t", "set", "-n", requests, "-c", "50", "-q").stdout
                    rps = float(re.findall(r"SET: ([\d.]+) requests per second", out)[-1])
                    values[setup].append(rps)
                    print(f"  {label:6} {'SET ' + fsync:26} {setup:10} {rps:12.0f} req/s", flush=True)
            record_medians(values, results, label, workload, "req/s")
        for redis in servers.values():
            redis.cli("CONFIG", "SET", "appendonly", "no")
            redis.cli("DEBUG", "POPULATE", str(keys), "key", "64")
        # Times: lower is better, so the ratio columns use rate = 1 / time.
        bgsave, load = f"BGSAVE {keys // 1000}k keys", f"restart load {keys // 1000}k keys"
        times = {workload: {setup: [] for setup in names} for workload in [bgsave, load]}
        for _ in range(repeat):
            for setup in names:
                redis = servers[setup]
                start = time.monotonic()
                redis.cli("BGSAVE")
                time.sleep(0.05)
                while redis.info("rdb_bgsave_in_progress") != "0":
                    time.sleep(0.01)
                times[bgsave][setup].append(time.monotonic() - start)
                assert redis.info("rdb_last_bgsave_status") == "ok"
            for setup in names:
                servers.pop(setup).stop()
                start = time.monotonic()
                servers[setup] = Redis(setups.dirs[setup] / "redis", appendonly="no")
                times[load][setup].append(time.monotonic() - start)
            for workload in [bgsave, load]:
                for setup in names:
                    print(f"  {label:6} {workload:26} {setup:10} {times[workload][setup][-1]:12.3f} s", flush=True)
        for workload in [bgsave, load]:
            record_medians(times[workload], results, label, workload, "s")
    finally:
        for redis in servers.values():
            redis.stop()
        for setup in names:
            shutil.rmtree(setups.dirs[setup] / "redis", ignore_errors=True)


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
        fmt = "{:.3f}" if unit == "s" else "{:.0f}"

        def ratio(a, b):
            """a against b, higher is better for a; None when a setup did not run (--setups)."""
            if a not in v or b not in v:
                return None
            return v[b] / v[a] if unit == "s" else v[a] / v[b]

        vs_g, direct_vs_g = ratio("xtsfs", "gocryptfs"), ratio("xtsfs-direct", "gocryptfs")
        vs_f, vs_b, vs_v1 = ratio("xtsfs", "floor"), ratio("xtsfs", "backing"), ratio("xtsfs", "xtsfs-v1")
        ratios.append((f"{label}: {workload}", vs_g, direct_vs_g, vs_b, vs_v1))
        cells = [fmt.format(v[s]) if s in v else "-" for s in ["backing", "floor", "xtsfs", "xtsfs-v1", "xtsfs-direct", "gocryptfs"]]
        cells += [f"{r:.2f}x" if r is not None else "-" for r in [vs_g, direct_vs_g, vs_f, vs_b, vs_v1]]
        rows.append(f"| {label} | {workload} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(rows), ratios


def rounds_table(results):
    """Every round of every setup, and the spread of the rounds (max / min - 1): how much
    the machine's neighbours moved single runs."""
    rows = ["| backing | workload | setup | rounds | spread |", "|---|---|---|---|---:|"]
    for r in results:
        runs = r["runs"]
        fmt = "{:.3f}" if r["unit"] == "s" else "{:.0f}"
        spread = max(runs) / min(runs) - 1 if min(runs) > 0 else float("nan")
        rows.append(f"| {r['backing']} | {r['workload']} | {r['setup']} | {' / '.join(fmt.format(x) for x in runs)} "
                    f"| {spread:.0%} |")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="512M", help="fio file size")
    parser.add_argument("--runtime", type=int, default=8, help="seconds per fio run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per workload (the median is reported)")
    parser.add_argument("--redis-keys", type=int, default=1_000_000)
    parser.add_argument("--redis-requests", type=int, default=200_000)
    parser.add_argument("--disk-dir", default="/var/tmp", help="where the disk-backed setups live")
    parser.add_argument("--out", default=str(REPO / "target" / "bench"), help="where results go")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/PERFORMANCE.md")
    parser.add_argument("--backings", default="tmpfs,disk", help="which of tmpfs,disk to run")
    parser.add_argument("--skip-redis", action="store_true", help="run the fio workloads only")
    parser.add_argument("--workloads", help="run only the fio workloads whose names contain one of these "
                        "comma-separated strings (e.g. 'cold,append'), or none with 'none'")
    parser.add_argument("--bin", type=Path, help="the xtsfs binary (default: target/release/xtsfs)")
    parser.add_argument("--floor-bin", type=Path, help="the fuse_floor binary (default: target/release/examples/)")
    parser.add_argument("--setups", help=f"run only these comma-separated setups of {','.join(SETUPS)} "
                        "(xtsfs always runs); the table shows '-' for the others")
    args = parser.parse_args()
    global XTSFS, FUSE_FLOOR
    XTSFS, FUSE_FLOOR = (args.bin or XTSFS).resolve(), (args.floor_bin or FUSE_FLOOR).resolve()
    backings = args.backings.split(",")
    workloads = FIO_WORKLOADS
    if args.workloads:
        wanted = args.workloads.split(",")
        workloads = [w for w in FIO_WORKLOADS if any(s in w[0] for s in wanted)]
        if not workloads and args.workloads != "none":
            parser.error(f"no fio workload matches {args.workloads!r}")
    names = SETUPS
    if args.setups:
        wanted = set(args.setups.split(",")) | {"xtsfs"}
        if wanted - set(SETUPS):
            parser.error(f"unknown setups: {','.join(sorted(wanted - set(SETUPS)))}")
        names = [s for s in SETUPS if s in wanted]
    redis_names = [s for s in REDIS_SETUPS if s in names]
    if args.no_docs is False and (backings != ["tmpfs", "disk"] or args.skip_redis or names != SETUPS
                                  or workloads != FIO_WORKLOADS):
        parser.error("a partial run cannot update docs/PERFORMANCE.md; add --no-docs")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, rss = [], {}
    for label in backings:
        base = Path(tempfile.mkdtemp(prefix=f"xtsfs-bench-{label}-", dir=args.disk_dir if label == "disk" else "/tmp"))
        if label == "tmpfs":
            sh("mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", base)
        env = dict(os.environ, XTSFS_PLATFORM_KEY_DIR=str(base / "platform-keys"), XTSFS_RUN_DIR=str(base / "run"))
        setups = None
        try:
            setups = Setups(base, env)
            print(f"== {label}: fio", flush=True)
            rss[label] = run_fio(setups, args.size, args.runtime, args.repeat, results, label, workloads, names)
            if not args.skip_redis:
                print(f"== {label}: redis", flush=True)
                run_redis(setups, args.redis_keys, args.redis_requests, args.repeat, results, label, redis_names)
        finally:
            if setups:
                setups.close()
            if label == "tmpfs":
                # The daemons may still hold it for a moment after their unmounts return.
                for _ in range(20):
                    if sh("umount", base, check=False).returncode == 0 or not os.path.ismount(base):
                        break
                    time.sleep(0.5)
                else:
                    print(f"could not unmount {base}", file=sys.stderr)
            shutil.rmtree(base, ignore_errors=True)

    markdown, ratios = table(results)
    chart(ratios, out / "ratios.png")
    redis = ("Redis: skipped" if args.skip_redis else
             f"Redis: redis-benchmark -t set -n {args.redis_requests} -c 50, {args.redis_keys} keys for BGSAVE/restart, "
             f"median of {args.repeat} rounds")
    summary = (f"Machine: {machine()}\n\nfio: {args.size} file, {args.runtime} s time-based runs, psync, one job, "
               f"median of {args.repeat} rounds; {redis}. xtsfs and xtsfs --direct-io are format 2 volumes, "
               f"xtsfs format 1 a volume made with `init --format 1`.\n\n"
               f"{markdown}\n\nPeak RSS of the xtsfs daemon during the fio runs: "
               + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in rss.items()) + "\n")
    (out / "results.md").write_text(summary)
    (out / "rounds.md").write_text(rounds_table(results) + "\n")
    (out / "results.json").write_text(json.dumps({"results": results, "rss_kib": rss}, indent=1))
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
