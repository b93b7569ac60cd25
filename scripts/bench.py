#!/usr/bin/env python3
"""Side-by-side benchmark: the backing dir itself, xtsfs and gocryptfs, each on a tmpfs
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
SETUPS = ["backing", "floor", "xtsfs", "xtsfs-direct", "gocryptfs"]
# The floor keeps no data, so it cannot run Redis.
REDIS_SETUPS = ["backing", "xtsfs", "xtsfs-direct", "gocryptfs"]


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
        for setup, mount_args in [("xtsfs", []), ("xtsfs-direct", ["--direct-io"])]:
            xb, xm = base / f"{setup}-backing", base / f"{setup}-mnt"
            xm.mkdir()
            sh(XTSFS, "init", xb, env=env)
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
        for setup in ["xtsfs", "xtsfs-direct"]:
            sh(XTSFS, "unmount", self.dirs[setup], env=self.env, check=False)
        sh("fusermount3", "-u", self.dirs["gocryptfs"], check=False)
        if "floor" in self.dirs:
            sh("umount", self.dirs["floor"], check=False)
            self.floor.wait(timeout=10)


FIO_WORKLOADS = [
    # name, unit, fio args, cold
    ("seq write 1 MiB", "MiB/s", ["--rw=write", "--bs=1M", "--end_fsync=1"], False),
    ("seq read 1 MiB cold", "MiB/s", ["--rw=read", "--bs=1M"], True),
    ("rand read 4 KiB cold", "IOPS", ["--rw=randread", "--bs=4k"], True),
    ("rand write 4 KiB", "IOPS", ["--rw=randwrite", "--bs=4k"], False),
    ("append 4 KiB + fdatasync", "IOPS", ["--rw=write", "--bs=4k", "--fdatasync=1"], False),
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


def run_fio(setups: Setups, size, runtime, repeat, results, label):
    """Each workload runs `repeat` times, the setups taking turns within each round so that
    a noisy neighbour slows all of them alike; the median of the rounds is reported."""
    pid = setups.xtsfs_pid("xtsfs")
    for name, unit, args, cold in FIO_WORKLOADS:
        values = {setup: [] for setup in SETUPS}
        for _ in range(repeat):
            for setup in SETUPS:
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
                side = "read" if "read" in name else "write"
                value = job[side]["bw"] / 1024 if unit == "MiB/s" else job[side]["iops"]
                values[setup].append(value)
                print(f"  {label:6} {name:26} {setup:10} {value:12.1f} {unit}", flush=True)
        record_medians(values, results, label, name, unit)
    rss_kib = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    # Up to 1 GiB per setup: on the 4 GiB tmpfs, Redis would find no room after them.
    for setup in SETUPS:
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


def run_redis(setups: Setups, keys, requests, repeat, results, label):
    """As for fio: `repeat` rounds of each workload, the setups taking turns within each
    round, the median reported. One Redis server per setup runs throughout."""
    servers = {}
    try:
        for setup in REDIS_SETUPS:
            directory = setups.dirs[setup] / "redis"
            directory.mkdir()
            servers[setup] = Redis(directory)
        for fsync in ["always", "everysec"]:
            workload = f"Redis SET appendfsync {fsync}"
            values = {setup: [] for setup in REDIS_SETUPS}
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
        times = {workload: {setup: [] for setup in REDIS_SETUPS} for workload in [bgsave, load]}
        for _ in range(repeat):
            for setup in REDIS_SETUPS:
                redis = servers[setup]
                start = time.monotonic()
                redis.cli("BGSAVE")
                time.sleep(0.05)
                while redis.info("rdb_bgsave_in_progress") != "0":
                    time.sleep(0.01)
                times[bgsave][setup].append(time.monotonic() - start)
                assert redis.info("rdb_last_bgsave_status") == "ok"
            for setup in REDIS_SETUPS:
                servers.pop(setup).stop()
                start = time.monotonic()
                servers[setup] = Redis(setups.dirs[setup] / "redis", appendonly="no")
                times[load][setup].append(time.monotonic() - start)
            for workload in [bgsave, load]:
                for setup in REDIS_SETUPS:
                    print(f"  {label:6} {workload:26} {setup:10} {times[workload][setup][-1]:12.3f} s", flush=True)
        for workload in [bgsave, load]:
            record_medians(times[workload], results, label, workload, "s")
    finally:
        for redis in servers.values():
            redis.stop()
        for setup in REDIS_SETUPS:
            shutil.rmtree(setups.dirs[setup] / "redis", ignore_errors=True)


def table(results):
    rows = ["| backing | workload | unit | backing dir | FUSE floor | xtsfs | xtsfs --direct-io | gocryptfs "
            "| xtsfs / gocryptfs | --direct-io / gocryptfs | xtsfs / floor | xtsfs / backing |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    keys = []
    for r in results:
        key = (r["backing"], r["workload"], r["unit"])
        if key not in keys:
            keys.append(key)
    for label, workload, unit in keys:
        v = {r["setup"]: r["value"] for r in results if (r["backing"], r["workload"]) == (label, workload)}
        better = (lambda a, b: b / a) if unit == "s" else (lambda a, b: a / b)
        vs_g, vs_b = better(v["xtsfs"], v["gocryptfs"]), better(v["xtsfs"], v["backing"])
        direct_vs_g = better(v["xtsfs-direct"], v["gocryptfs"])
        vs_f = better(v["xtsfs"], v["floor"]) if "floor" in v else None
        ratios.append((f"{label}: {workload}", vs_g, direct_vs_g, vs_b))
        fmt = "{:.3f}" if unit == "s" else "{:.0f}"
        floor, vs_floor = (fmt.format(v["floor"]), f"{vs_f:.2f}x") if vs_f else ("-", "-")
        rows.append(f"| {label} | {workload} | {unit} | {fmt.format(v['backing'])} | {floor} | {fmt.format(v['xtsfs'])} | "
                    f"{fmt.format(v['xtsfs-direct'])} | {fmt.format(v['gocryptfs'])} | {vs_g:.2f}x | {direct_vs_g:.2f}x | "
                    f"{vs_floor} | {vs_b:.2f}x |")
    return "\n".join(rows), ratios


def chart(ratios, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [r[0] for r in ratios]
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(labels) + 1.5))
    y = range(len(labels))
    ax.barh([i - 0.27 for i in y], [r[1] for r in ratios], height=0.27, label="xtsfs / gocryptfs")
    ax.barh([i for i in y], [r[2] for r in ratios], height=0.27, label="xtsfs --direct-io / gocryptfs")
    ax.barh([i + 0.27 for i in y], [r[3] for r in ratios], height=0.27, label="xtsfs / backing dir")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (higher is better for xtsfs)")
    ax.legend(loc="lower right")
    ax.set_title("xtsfs (default and --direct-io) relative to gocryptfs and to the bare backing directory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024 // 1024
    versions = {
        "xtsfs": sh(XTSFS, "--version").stdout.strip(),
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
    args = parser.parse_args()
    backings = args.backings.split(",")
    if args.no_docs is False and (backings != ["tmpfs", "disk"] or args.skip_redis):
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
            rss[label] = run_fio(setups, args.size, args.runtime, args.repeat, results, label)
            if not args.skip_redis:
                print(f"== {label}: redis", flush=True)
                run_redis(setups, args.redis_keys, args.redis_requests, args.repeat, results, label)
        finally:
            if setups:
                setups.close()
            if label == "tmpfs":
                sh("umount", base, check=False)
            shutil.rmtree(base, ignore_errors=True)

    markdown, ratios = table(results)
    chart(ratios, out / "ratios.png")
    summary = (f"Machine: {machine()}\n\nfio: {args.size} file, {args.runtime} s time-based runs, psync, one job, "
               f"median of {args.repeat} rounds; "
               f"Redis: redis-benchmark -t set -n {args.redis_requests} -c 50, {args.redis_keys} keys for BGSAVE/restart, "
               f"median of {args.repeat} rounds.\n\n"
               f"{markdown}\n\nPeak RSS of the xtsfs daemon during the fio runs: "
               + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in rss.items()) + "\n")
    (out / "results.md").write_text(summary)
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
