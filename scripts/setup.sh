#!/usr/bin/env bash
# Installs what xtsfs's build, tests and demo need on Debian 12, and leaves the machine
# ready for them: /dev/fuse present, no system Redis running (tests and the demo start
# their own redis-server on a free port).
#
# Idempotent: when every package is already installed, apt is not touched at all.
# Needs root; as another user it re-runs itself under sudo.
set -euo pipefail

PACKAGES=(
    fuse3 libfuse3-dev pkg-config # FUSE runtime (fusermount3) and headers
    redis-server redis-tools      # Redis on xtsfs: tests and scripts/demo.sh
    fio                           # I/O verification workloads
    softhsm2 opensc openssl       # keys: PKCS#11 token for key tests, RSA PEM generation
    gocryptfs                     # reference encrypted FUSE file system for comparisons
    attr                          # getfattr/setfattr for xattr tests
    procps kmod                   # pgrep/pkill, modprobe
    jq                            # the KMS test program and docs/examples parse JSON
    python3-cryptography          # tests compare the XTS core with OpenSSL's own XTS
    systemd                       # systemd-analyze checks the units in contrib/systemd
)

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        say "not root: re-running under sudo"
        exec sudo -- "$0" "$@"
    fi
    die "must run as root (installs packages, loads the fuse module); sudo is not installed"
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian 12 (and derivatives) only"

# --- packages ---------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true) != installed ]]; then
        missing+=("$pkg")
    fi
done

# Retries a command a few times: mirrors occasionally fail a request.
retry() {
    local n
    for n in 1 2 3; do
        "$@" && return 0
        say "attempt $n of 3 failed: $*"
        sleep $((n * 5))
    done
    return 1
}

if [[ ${#missing[@]} -eq 0 ]]; then
    say "all ${#PACKAGES[@]} packages already installed; skipping apt"
else
    say "installing ${#missing[@]} missing package(s): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    retry apt-get update -q || die "apt-get update failed"
    retry apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" </dev/null ||
        die "apt-get install failed"
    say "packages installed"
fi

# --- /dev/fuse --------------------------------------------------------------------------
if [[ -c /dev/fuse ]]; then
    say "/dev/fuse present"
else
    say "/dev/fuse missing: loading the fuse module (modprobe fuse)"
    modprobe fuse 2>/dev/null || say "modprobe fuse failed (no module, or not allowed in this container)"
    if [[ ! -c /dev/fuse ]] && grep -qw fuse /proc/filesystems 2>/dev/null; then
        # The kernel has FUSE but no device node was made (e.g. no udev in a container).
        say "kernel has FUSE but no device node: creating /dev/fuse (char 10:229)"
        mknod -m 0666 /dev/fuse c 10 229 2>/dev/null || say "mknod /dev/fuse failed"
    fi
    if [[ -c /dev/fuse ]]; then
        say "/dev/fuse present"
    else
        say "WARNING: /dev/fuse is still missing. Builds and unit tests work, but mounting does"
        say "WARNING: not: tests that mount and scripts/demo.sh will fail. In a container, pass"
        say "WARNING: --device /dev/fuse --cap-add SYS_ADMIN; on a VM, install a kernel with FUSE."
    fi
fi

# --- no system Redis ----------------------------------------------------------------------
# Debian's redis-server package starts a server on 127.0.0.1:6379 at install. Tests and the
# demo start their own, so stop it and keep it from starting at boot. systemd may not be
# running (containers, CI), so try every way and only report.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-enabled --quiet redis-server 2>/dev/null || systemctl is-active --quiet redis-server 2>/dev/null; then
        say "stopping and disabling the redis-server systemd service"
        systemctl disable --now redis-server 2>/dev/null || say "systemctl could not stop redis-server"
    fi
elif [[ -x /etc/init.d/redis-server ]]; then
    say "stopping the redis-server init script service (if running) and disabling it at boot"
    service redis-server stop >/dev/null 2>&1 || true
    update-rc.d redis-server disable >/dev/null 2>&1 || true
fi
# True while process $1 runs (a zombie, whose parent has not reaped it yet, does not count).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Whatever the init system, the packaged server writes this pid file: end that process.
pidfile=/run/redis/redis-server.pid
if [[ -s $pidfile ]]; then
    pid=$(cat "$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) == redis-server ]]; then
        say "ending the packaged redis-server (pid $pid from $pidfile)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            say "WARNING: redis-server pid $pid is still running; tests start their own on other ports"
        fi
    fi
fi
if [[ ! -s $pidfile ]] || ! alive "$(cat "$pidfile")"; then
    say "no packaged redis-server running"
fi

# --- report ------------------------------------------------------------------------------
if command -v cargo >/dev/null 2>&1; then
    say "rust: $(cargo --version)"
else
    say "WARNING: cargo is not on PATH; install Rust 1.85 or newer (rustup) to build xtsfs"
fi
say "redis: $(redis-server --version | cut -d' ' -f1-3)"
say "fio: $(fio --version)"
say "done"
