#!/usr/bin/env bash
# Redis on xtsfs, end to end, in a throw-away workspace:
#
#   build -> init a volume under a private platform key (MMK) -> status -> mount ->
#   redis-server with its data dir on the mount (AOF, fsync always) -> write keys and a
#   canary -> BGSAVE -> plaintext view vs. encrypted backing (listings, hex dumps) ->
#   the canary must not appear anywhere in the backing directory -> rotate the platform
#   key while Redis runs -> shut down, unmount -> mount again, restart Redis, the data
#   must come back -> shut down, unmount, clean up.
#
# Exits 0 only if every step passed. Whatever happens, Redis is shut down and the mount is
# unmounted on exit. Needs root (FUSE mount); as another user it builds as that user and
# then re-runs itself under sudo.
#
# Usage: scripts/demo.sh [--bin PATH] [--keep]
#   --bin PATH  use this xtsfs binary instead of building one (also: XTSFS_BIN=PATH)
#   --keep      keep the workspace (backing dir, keys, logs) after the demo
set -Eeuo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self="$repo/scripts/demo.sh"
bin=${XTSFS_BIN:-}
keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin)
            [[ $# -ge 2 ]] || { echo "demo: --bin needs a path" >&2; exit 2; }
            bin=$2
            shift 2
            ;;
        --keep) keep=1; shift ;;
        -h | --help) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -t 1 ]]; then
    bold=$'\e[1m' green=$'\e[32m' red=$'\e[31m' dim=$'\e[2m' reset=$'\e[0m'
else
    bold='' green='' red='' dim='' reset=''
fi
step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n%s[%d] %s%s\n' "$bold" "$step_no" "$*" "$reset"
}
say() { printf '    %s\n' "$*"; }
ok() { printf '    %sOK%s %s\n' "$green" "$reset" "$*"; }
die() {
    printf '    %sFAILED%s %s\n' "$red" "$reset" "$*" >&2
    exit 1
}
# A command line as a shell would need it typed (quotes only where needed).
show() {
    local arg out=''
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$arg "; else out+="${arg@Q} "; fi
    done
    printf '%s' "${out% }"
}
# Shows a command, then runs it; its output is indented.
run() {
    printf '    %s$ %s%s\n' "$dim" "$(show "$@")" "$reset"
    "$@" 2>&1 | sed 's/^/      /'
}

build() {
    step "Build xtsfs (release)"
    command -v cargo >/dev/null 2>&1 ||
        die "cargo is not on PATH. Run scripts/demo.sh as the user who has Rust (it asks sudo only for what needs root), or pass --bin PATH."
    run cargo build --release --locked --manifest-path "$repo/Cargo.toml"
    bin="${CARGO_TARGET_DIR:-$repo/target}/release/xtsfs"
}

# --- root --------------------------------------------------------------------------------------
if [[ $(id -u) -ne 0 ]]; then
    printf 'demo: mounting a FUSE file system and running Redis on it needs root.\n'
    command -v sudo >/dev/null 2>&1 || { echo "demo: error: run this as root (sudo is not installed)" >&2; exit 1; }
    [[ -n $bin ]] || build
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
    printf 'demo: re-running under sudo with %s\n' "$bin"
    args=(--bin "$bin")
    [[ $keep -eq 0 ]] || args+=(--keep)
    exec sudo -- "$self" "${args[@]}"
fi
printf '%sxtsfs demo: Redis on an AES-256-XTS encrypted FUSE mount%s (running as root)\n' "$bold" "$reset"

if [[ -z $bin ]]; then
    build
else
    step "Use the given xtsfs binary"
    say "$bin"
fi
[[ -x $bin ]] || die "no executable xtsfs at '$bin'"
run "$bin" --version

# --- prerequisites --------------------------------------------------------------------------
step "Check prerequisites"
missing=()
for tool in redis-server redis-cli fusermount3 findmnt od grep awk timeout; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[[ ${#missing[@]} -eq 0 ]] || die "missing: ${missing[*]}. Run scripts/setup.sh first."
[[ -c /dev/fuse ]] || die "/dev/fuse does not exist. Run scripts/setup.sh (it loads the fuse module)."
ok "redis $(redis-server --version | awk '{print $3}'), fuse3 $(fusermount3 --version 2>&1 | awk '{print $NF}'), /dev/fuse present"

# --- workspace and cleanup ----------------------------------------------------------------------
ws=$(mktemp -d -t xtsfs-demo.XXXXXX)
backing="$ws/backing"
mnt="$ws/mnt"
export XTSFS_PLATFORM_KEY_DIR="$ws/platform-keys"
redis_pid=''
redis_port=''
key_monitor=0
finished=0

is_mounted() { [[ $(findmnt -rn -o FSTYPE --mountpoint "$mnt" 2>/dev/null || true) == fuse.xtsfs ]]; }
any_mount() { findmnt -rn --mountpoint "$mnt" >/dev/null 2>&1; }
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}
rcli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@" </dev/null; }

on_error() {
    printf '    %sFAILED%s line %s: %s (exit %s)\n' "$red" "$reset" "$1" "$2" "$3" >&2
}
trap 'on_error "$LINENO" "$BASH_COMMAND" "$?"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

stop_redis() { # stop_redis [nosave]: SHUTDOWN, then SIGTERM/SIGKILL to our pid if needed
    if [[ -z $redis_pid ]] || ! alive "$redis_pid"; then
        redis_pid=''
        return 0
    fi
    rcli SHUTDOWN "$@" >/dev/null 2>&1 || true
    local i
    for i in $(seq 100); do
        alive "$redis_pid" || break
        sleep 0.1
        if [[ $i -eq 50 ]]; then # 5s and still there: SIGTERM (Redis shuts down cleanly on it)
            kill "$redis_pid" 2>/dev/null || true
        fi
    done
    if alive "$redis_pid"; then
        kill -KILL "$redis_pid" 2>/dev/null || true
        sleep 0.5
    fi
    ! alive "$redis_pid" || return 1
    redis_pid=''
}

cleanup() {
    local status=$?
    set +eE
    trap - ERR
    if [[ -n $redis_pid ]] && alive "$redis_pid"; then
        printf '\n%scleanup:%s shutting down redis-server (pid %s)\n' "$bold" "$reset" "$redis_pid"
        stop_redis NOSAVE || printf 'cleanup: redis-server pid %s did not exit\n' "$redis_pid"
    fi
    if any_mount; then
        printf '%scleanup:%s unmounting %s\n' "$bold" "$reset" "$mnt"
        timeout 30 "$bin" unmount "$mnt" 2>/dev/null ||
            timeout 30 "$bin" unmount --lazy "$mnt" 2>/dev/null ||
            fusermount3 -u -z "$mnt" 2>/dev/null ||
            umount -l "$mnt" 2>/dev/null
    fi
    if [[ $status -ne 0 ]]; then
        local log
        for log in "$ws/redis.log" "$ws/xtsfs.log"; do
            [[ -s $log ]] || continue
            printf '\nlast lines of %s:\n' "$log"
            tail -n 15 "$log" | sed 's/^/  /'
        done
    fi
    if any_mount; then
        printf 'cleanup: %s is still mounted: workspace %s left in place\n' "$mnt" "$ws"
    elif [[ $keep -eq 1 ]]; then
        printf 'workspace kept: %s (XTSFS_PLATFORM_KEY_DIR=%s)\n' "$ws" "$XTSFS_PLATFORM_KEY_DIR"
    else
        rm -rf -- "$ws"
    fi
    if [[ $status -eq 0 && $finished -eq 1 ]]; then
        printf '\n%s%sDEMO PASSED%s\n' "$bold" "$green" "$reset"
    else
        [[ $status -ne 0 ]] || status=1
        printf '\n%s%sDEMO FAILED%s (exit %s)\n' "$bold" "$red" "$reset" "$status" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
    local port _
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

info_field() { # info_field SECTION FIELD
    rcli INFO "$1" | tr -d '\r' | awk -F: -v f="$2" '$1 == f {print $2}'
}

start_redis() {
    redis_port=$(free_port) || die "no free TCP port found on 127.0.0.1"
    # rdbcompression no: keeps string values as-is in dump.rdb, so the plaintext side of the
    # canary check below finds the canary there too, and the hex dump is readable.
    run redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$mnt" \
        --appendonly yes --appendfsync always --save '' --rdbcompression no \
        --daemonize yes --pidfile "$ws/redis.pid" --logfile "$ws/redis.log"
    local _
    for _ in $(seq 100); do
        [[ $(rcli PING 2>/dev/null) == PONG ]] && break
        sleep 0.1
    done
    [[ $(rcli PING 2>/dev/null) == PONG ]] || die "redis-server did not answer PING within 10s (see its log below)"
    redis_pid=$(cat "$ws/redis.pid")
    ok "redis-server pid $redis_pid answers on 127.0.0.1:$redis_port with dir $(rcli CONFIG GET dir | tail -n 1)"
}

mount_volume() {
    "$bin" mount --help >/dev/null 2>&1 ||
        die "this xtsfs has no 'mount' command yet ($bin mount --help fails); the demo needs a build with 'xtsfs mount'"
    mkdir -p "$mnt"
    local extra=() help
    help=$("$bin" mount --help 2>/dev/null)
    # The daemon's log, shown if the demo fails.
    if grep -q -- --log-file <<<"$help"; then
        extra+=(--log-file "$ws/xtsfs.log")
    fi
    # Check the key every second (default 60s), so the key rotation below shows at once.
    if grep -q -- --key-check-interval <<<"$help"; then
        extra+=(--key-check-interval 1s)
        key_monitor=1
    fi
    run timeout 120 "$bin" mount "${extra[@]}" "$backing" "$mnt"
    is_mounted || die "xtsfs mount exited 0 but $mnt is not a fuse.xtsfs mount"
    run findmnt --mountpoint "$mnt"
    ok "mounted"
}

unmount_volume() {
    run timeout 60 "$bin" unmount "$mnt"
    ! any_mount || die "$mnt is still mounted after xtsfs unmount"
    ok "unmounted"
}

# --- the demo ------------------------------------------------------------------------------
step "Workspace with a private platform key store"
say "workspace:  $ws"
say "backing:    $backing   (what lands on disk)"
say "mountpoint: $mnt   (what Redis sees)"
say "XTSFS_PLATFORM_KEY_DIR=$XTSFS_PLATFORM_KEY_DIR"

step "Create a volume protected by a platform-managed key (MMK)"
run "$bin" init "$backing"
run "$bin" platform-key list
run ls -la "$backing"

step "Volume status"
run "$bin" status "$backing"

step "Mount it"
mount_volume
if "$bin" status "$mnt" >/dev/null 2>&1; then
    run "$bin" status "$mnt"
fi

step "Start Redis with its data directory on the mount"
start_redis

step "Write data, including a canary string"
canary="XTSFS-DEMO-CANARY-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')-this-text-must-never-reach-the-disk"
say "canary: $canary"
[[ $(rcli SET demo:canary "$canary") == OK ]] || die "SET demo:canary failed"
rcli HSET demo:user:1 name alice email alice@example.com plan premium >/dev/null
rcli RPUSH demo:queue job-1 job-2 job-3 >/dev/null
for i in $(seq 1 2000); do printf 'SET demo:key:%d value-%d-%s\n' "$i" "$i" "$(printf '%040d' "$i")"; done |
    redis-cli -h 127.0.0.1 -p "$redis_port" >/dev/null
dbsize=$(rcli DBSIZE)
[[ $dbsize -eq 2003 ]] || die "expected 2003 keys, Redis has $dbsize"
run redis-cli -h 127.0.0.1 -p "$redis_port" GET demo:canary
run redis-cli -h 127.0.0.1 -p "$redis_port" HGETALL demo:user:1
ok "$dbsize keys written; every write was appended to the AOF and fsynced (appendfsync always)"

step "BGSAVE (Redis forks, writes temp-<pid>.rdb, renames it to dump.rdb)"
saves_before=$(info_field persistence rdb_saves)
run redis-cli -h 127.0.0.1 -p "$redis_port" BGSAVE SCHEDULE
for _ in $(seq 600); do
    [[ $(info_field persistence rdb_saves) -gt $saves_before && $(info_field persistence rdb_bgsave_in_progress) == 0 ]] && break
    sleep 0.1
done
[[ $(info_field persistence rdb_saves) -gt $saves_before ]] || die "BGSAVE did not finish within 60s"
[[ $(info_field persistence rdb_last_bgsave_status) == ok ]] || die "BGSAVE failed: rdb_last_bgsave_status is $(info_field persistence rdb_last_bgsave_status)"
[[ -s $mnt/dump.rdb ]] || die "no dump.rdb in $mnt after BGSAVE"
ok "BGSAVE finished: rdb_last_bgsave_status:ok, dump.rdb is $(stat -c %s "$mnt/dump.rdb") bytes"

step "What Redis sees: plaintext names and contents under the mount"
run ls -la "$mnt" "$mnt/appendonlydir"

step "What is on disk: the backing tree has encrypted names"
run ls -laR "$backing/tree"

step "Hex dump: dump.rdb through the mount vs. its backing file"
plain_size=$(stat -c %s "$mnt/dump.rdb")
# File names are encrypted, so find dump.rdb's backing file by elimination: the only
# regular file at the top of the tree (Redis's one top-level file), else the one closest in
# size to the plaintext plus a file header.
mapfile -t top_files < <(find "$backing/tree" -mindepth 1 -maxdepth 1 -type f)
[[ ${#top_files[@]} -gt 0 ]] || die "no regular file at the top of $backing/tree"
enc=${top_files[0]}
if [[ ${#top_files[@]} -gt 1 ]]; then
    best=-1
    for f in "${top_files[@]}"; do
        d=$(($(stat -c %s "$f") - plain_size - 32))
        d=${d#-}
        if [[ $best -lt 0 || $d -lt $best ]]; then best=$d enc=$f; fi
    done
fi
say "plaintext: $mnt/dump.rdb ($plain_size bytes)"
run od -A x -t x1z -N 128 "$mnt/dump.rdb"
say "ciphertext: ${enc#"$backing"/} ($(stat -c %s "$enc") bytes; starts with the 32-byte xtsfs file header)"
run od -A x -t x1z -N 128 "$enc"

step "The canary must appear in the plaintext view and nowhere in the backing directory"
mapfile -t plain_hits < <(grep -rlaF -- "$canary" "$mnt" || true)
say "files under the mount containing the canary: ${#plain_hits[@]}"
for f in "${plain_hits[@]}"; do say "  ${f#"$mnt"/}"; done
# Checks that the check can see the canary at all: Redis wrote it to the AOF and the RDB.
[[ ${#plain_hits[@]} -ge 2 ]] || die "expected the canary in both the AOF and dump.rdb under the mount"
# shellcheck disable=SC2016 # the literal $canary is what is meant
printf '    %s$ grep -rlaF -- "$canary" %s%s\n' "$dim" "$backing" "$reset"
mapfile -t backing_hits < <(grep -rlaF -- "$canary" "$backing" || true)
say "files in the backing directory containing the canary: ${#backing_hits[@]}"
for f in "${backing_hits[@]}"; do say "  LEAK: $f"; done
[[ ${#backing_hits[@]} -eq 0 ]] || die "the canary is in the backing directory in plaintext"
rdb_magic_hits=$(grep -rlaF -- "REDIS00" "$backing" | wc -l || true)
[[ $rdb_magic_hits -eq 0 ]] || die "the RDB magic 'REDIS00' is readable in $rdb_magic_hits backing file(s)"
name_hits=$(find "$backing" \( -name '*dump*' -o -name '*appendonly*' -o -name '*.rdb' -o -name '*.aof' \) | wc -l)
[[ $name_hits -eq 0 ]] || die "$name_hits backing file name(s) show Redis's plaintext file names"
ok "0 hits for the canary, 0 for the RDB magic, 0 plaintext file names in $backing"

step "Rotate the platform key while Redis runs"
if [[ $key_monitor -eq 1 ]]; then
    key_version() { "$bin" status "$backing" 2>/dev/null | awk '$1 == "version:" {print $2; exit}'; }
    before=$(key_version)
    run "$bin" platform-key rotate default
    for _ in $(seq 100); do
        [[ $(key_version) != "$before" ]] && break
        sleep 0.1
    done
    after=$(key_version)
    [[ $after != "$before" ]] || die "the mounted volume still uses key version $before 10s after the rotation"
    [[ $(rcli SET demo:after-rotation ok) == OK ]] || die "SET after the rotation failed"
    [[ $(rcli GET demo:canary) == "$canary" ]] || die "GET after the rotation failed"
    ok "the mounted volume rewrapped its data key under version $after by itself (was $before); Redis kept running"
    say "(an unmounted volume moves to the new version with: xtsfs rewrap BACKING --key mmk)"
    expected_keys=2004
else
    say "skipped: this xtsfs has no key monitor (mount --key-check-interval)"
    expected_keys=2003
fi

step "Shut Redis down and unmount"
run redis-cli -h 127.0.0.1 -p "$redis_port" SHUTDOWN
stop_redis || die "redis-server pid $redis_pid did not exit"
ok "redis-server exited"
unmount_volume
run ls -la "$backing/tree"

step "Mount again and restart Redis: the data must come back through decryption"
mount_volume
start_redis
got=$(rcli GET demo:canary)
[[ $got == "$canary" ]] || die "demo:canary reads back as '$got'"
dbsize=$(rcli DBSIZE)
[[ $dbsize -eq $expected_keys ]] || die "expected $expected_keys keys after restart, Redis loaded $dbsize"
[[ $(rcli HGET demo:user:1 email) == alice@example.com ]] || die "demo:user:1 did not come back"
ok "Redis reloaded $dbsize keys from the AOF on the encrypted volume; the canary matches"

step "Shut down, unmount, clean up"
run redis-cli -h 127.0.0.1 -p "$redis_port" SHUTDOWN
stop_redis || die "redis-server pid $redis_pid did not exit"
unmount_volume
finished=1
