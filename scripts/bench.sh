#!/usr/bin/env bash
# Benchmarks xtsfs (format 2, and format 1 beside it) against the bare backing directory,
# gocryptfs and a FUSE file system that does no work (fio + Redis), then
# the XTS core against OpenSSL. Needs root (mounts, drop_caches). Options go to bench.py,
# e.g. scripts/bench.sh --runtime 3 --size 128M --redis-keys 200000 --no-docs
# Parts: --workloads 'page cache' --skip-redis, --redis-workloads 'instances,cgroup',
# --skip-parallel (scripts/bench.py --help lists them all). Needs free space in
# /var/tmp for the cold random reads' 4 GiB file on each setup (--cold-read-size).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (it mounts and drops caches)" >&2; exit 1; }
scripts/setup.sh
python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib
cargo build --release --locked --bin xtsfs --example fuse_floor
python3 scripts/bench.py "$@"
scripts/bench-xts.sh
