#!/usr/bin/env bash
# A KMS for tests: speaks xtsfs's KMS command protocol (docs/KMS.md) over RSA private keys
# in a directory, with real RSA-OAEP-256 (SHA-256, MGF1-SHA-256) done by openssl.
#
#   openssl-kms.sh [KMS_DIR] < request.json > reply.json
#
# KMS_DIR (the first argument, else $KMS_DIR) holds the key versions v1.pem, v2.pem, ...;
# the newest is the highest N and its key_version is "vN". Files in KMS_DIR change what it
# does, so that tests can make it fail the ways a real KMS does:
#   key-id       the key id to report (default "openssl-kms")
#   deny         reply {"kind": "denied"}
#   unavailable  reply {"kind": "unavailable"}
#   sleep        sleep this many seconds first, after writing this script's pid to KMS_DIR/pid
#   exit         exit with this status, no reply, a complaint on stderr
#   reply        print this file as the reply, whatever the request
#
# Tests run it through a per-test wrapper that passes KMS_DIR as the argument: xtsfs passes
# its own environment on, nothing more.
set -euo pipefail

kms_dir=${1:-${KMS_DIR:-}}
if [[ -z $kms_dir || ! -d $kms_dir ]]; then
    echo "openssl-kms: give the key directory as the first argument or in KMS_DIR" >&2
    exit 2
fi

# fail KIND MESSAGE: an error reply.
fail() {
    jq -cn --arg kind "$1" --arg message "$2" \
        '{xtsfs_kms: 1, ok: false, error: {kind: $kind, message: $message}}'
    exit 0
}

# succeed: the ok reply; stdin is the op's result (base64) or empty for check. Results go
# through stdin, not jq's arguments, which any user can read in /proc.
succeed() {
    jq -cRs --arg op "$op" --arg id "$key_id" --arg version "$key_version" '
        {xtsfs_kms: 1, ok: true, key_id: $id, key_version: $version, algorithm: "RSA-OAEP-256"}
        + (if $op == "wrap" then {ciphertext: .} elif $op == "unwrap" then {plaintext: .} else {} end)'
}

request=$(cat)

if [[ -f $kms_dir/sleep ]]; then
    echo $$ >"$kms_dir/pid"
    sleep "$(cat "$kms_dir/sleep")"
fi
if [[ -f $kms_dir/exit ]]; then
    echo "openssl-kms: told to fail" >&2
    exit "$(cat "$kms_dir/exit")"
fi
if [[ -f $kms_dir/reply ]]; then
    cat "$kms_dir/reply"
    exit 0
fi
[[ -f $kms_dir/deny ]] && fail denied "the test KMS denies this host"
[[ -f $kms_dir/unavailable ]] && fail unavailable "the test KMS is down"

fields=$(jq -r '[.xtsfs_kms, .op, .key_version // ""] | @tsv' <<<"$request") ||
    fail invalid "the request is not JSON"
IFS=$'\t' read -r protocol op wanted <<<"$fields"
[[ $protocol == 1 ]] || fail invalid "protocol version $protocol is not 1"

newest=$(find "$kms_dir" -maxdepth 1 -name 'v*.pem' -printf '%f\n' |
    sed -n 's/^v\([0-9][0-9]*\)\.pem$/\1/p' | sort -n | tail -n 1)
[[ -n $newest ]] || fail not-found "no key versions in $kms_dir"
key_version=${wanted:-v$newest}
key=$kms_dir/$key_version.pem
[[ $key_version =~ ^v[0-9]+$ && -f $key ]] || fail not-found "no key version '$key_version'"
key_id=$(cat "$kms_dir/key-id" 2>/dev/null || echo openssl-kms)

oaep=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256)
case $op in
check)
    succeed </dev/null
    ;;
wrap)
    ciphertext=$(jq -r '.plaintext' <<<"$request" | base64 -d |
        openssl pkeyutl -encrypt -inkey "$key" "${oaep[@]}" | base64 -w0) ||
        fail invalid "encryption failed"
    printf '%s' "$ciphertext" | succeed
    ;;
unwrap)
    plaintext=$(jq -r '.ciphertext' <<<"$request" | base64 -d 2>/dev/null |
        openssl pkeyutl -decrypt -inkey "$key" "${oaep[@]}" 2>/dev/null | base64 -w0) ||
        fail invalid "decryption failed: the ciphertext is damaged or for another key"
    printf '%s' "$plaintext" | succeed
    ;;
*)
    fail invalid "unknown op '$op'"
    ;;
esac
