#!/usr/bin/env bash
# Installs xtsfs under PREFIX (default /usr/local): the binary, its man page, bash, zsh
# and fish completions, and the systemd units of contrib/systemd (not enabled).
#
#   scripts/install.sh [PREFIX] [--bin PATH]
#
# Without --bin it builds the release binary first. The units name PREFIX/bin/xtsfs.
# mount(8) (`mount -t fuse.xtsfs`, fstab lines, .mount units) runs xtsfs through
# mount.fuse3 on its own fixed PATH, which has /usr/local/bin and /usr/bin: with another
# PREFIX, link PREFIX/bin/xtsfs into one of them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
prefix=/usr/local
bin=
while [[ $# -gt 0 ]]; do
    case $1 in
    --bin)
        bin=${2:?--bin needs a path}
        shift 2
        ;;
    -h | --help)
        sed -n '2,10s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    -*)
        echo "install: unknown option '$1' (see --help)" >&2
        exit 2
        ;;
    *)
        prefix=$1
        shift
        ;;
    esac
done
if [[ -z $bin ]]; then
    cargo build --release --locked
    bin=target/release/xtsfs
fi
[[ -x $bin ]] || {
    echo "install: '$bin' is not an executable" >&2
    exit 1
}

say() { printf 'install: %s\n' "$*"; }
put() { # put MODE SOURCE DEST
    install -D -m "$1" "$2" "$3"
    say "$3"
}

put 0755 "$bin" "$prefix/bin/xtsfs"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" generate man >"$tmp/xtsfs.1"
"$bin" generate bash >"$tmp/xtsfs.bash"
"$bin" generate zsh >"$tmp/_xtsfs"
"$bin" generate fish >"$tmp/xtsfs.fish"
put 0644 "$tmp/xtsfs.1" "$prefix/share/man/man1/xtsfs.1"
put 0644 "$tmp/xtsfs.bash" "$prefix/share/bash-completion/completions/xtsfs"
put 0644 "$tmp/_xtsfs" "$prefix/share/zsh/site-functions/_xtsfs"
put 0644 "$tmp/xtsfs.fish" "$prefix/share/fish/vendor_completions.d/xtsfs.fish"
for unit in xtsfs-redis.service mnt-xtsfs.mount redis-server.service.d/xtsfs.conf; do
    sed "s#/usr/local/bin/xtsfs#$prefix/bin/xtsfs#g" "contrib/systemd/$unit" >"$tmp/unit"
    put 0644 "$tmp/unit" "$prefix/lib/systemd/system/$unit"
done
say "done; the units are installed, not enabled (see README, 'Redis guide')"
