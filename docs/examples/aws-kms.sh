#!/usr/bin/env bash
# xtsfs KMS command for an asymmetric RSA key in AWS KMS, through the aws CLI (v2).
# It speaks the protocol in docs/KMS.md: one JSON request on stdin, one reply on stdout.
#
#   xtsfs init BACKING --key command:/usr/local/lib/xtsfs/aws-kms.sh
#   xtsfs init BACKING --key command:/usr/local/lib/xtsfs/aws-kms.sh#KEY-ARN
#
# Install: copy it into a directory only root can write, chmod 0755 (xtsfs refuses a
# program others could replace), and set KMS_KEY (and REGION if the CLI has no default)
# below. xtsfs passes its environment on, so XTSFS_AWS_KMS_KEY / XTSFS_AWS_REGION work
# too, but a mount started by systemd does not see your shell's variables.
#
# The key: aws kms create-key --key-spec RSA_3072 --key-usage ENCRYPT_DECRYPT, then
#          aws kms create-alias --alias-name alias/xtsfs-kek --target-key-id KEY-ID
# AWS KMS does not rotate asymmetric keys, so a "version" here is a whole key: key_id is
# KMS_KEY as configured (best an alias) and key_version is the ARN of the key it names.
# To rotate, create a new key and point the alias at it (aws kms update-alias): unless
# pinned with #KEY-ARN, xtsfs wraps with the key the alias names now and unwraps older
# volumes with the key ARN they recorded. Keep the old keys enabled until every volume
# has been rewrapped.
# The host's role needs kms:DescribeKey, kms:Encrypt and kms:Decrypt on the keys.
#
# Needs: aws (v2), jq, base64.
set -euo pipefail
umask 077

KMS_KEY=${XTSFS_AWS_KMS_KEY:-}
REGION=${XTSFS_AWS_REGION:-}
readonly ALGORITHM=RSAES_OAEP_SHA_256

# fail KIND MESSAGE: the error reply, then exit. A reply, not an exit status, is how a
# KMS command reports a refusal.
fail() {
    jq -cn --arg kind "$1" --arg message "$2" \
        '{xtsfs_kms: 1, ok: false, error: {kind: $kind, message: $message}}'
    exit 0
}

for tool in aws jq base64; do
    command -v "$tool" >/dev/null 2>&1 || fail unavailable "$tool is not installed on this host"
done
[[ -n $KMS_KEY ]] || fail unavailable "set KMS_KEY in $0"

# A private directory for the request, the fileb:// inputs and the CLI's error output,
# removed however this exits.
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

region=()
[[ -n $REGION ]] && region=(--region "$REGION")

# aws_failed WHAT: the error reply that the CLI's complaint in $tmp/aws.err calls for.
aws_failed() {
    local said
    said=$(tr -s '\n' ' ' <"$tmp/aws.err" | cut -c 1-400)
    case $said in
    *AccessDenied* | *DisabledException* | *UnrecognizedClient* | *ExpiredToken* | *InvalidClientTokenId* | *"Unable to locate credentials"*)
        fail denied "$1: $said" ;;
    *NotFoundException*)
        fail not-found "$1: $said" ;;
    *InvalidCiphertextException* | *IncorrectKeyException* | *InvalidKeyUsageException* | *ValidationException*)
        fail invalid "$1: $said" ;;
    *)
        fail unavailable "$1: $said" ;;
    esac
}

cat >"$tmp/request.json"
jq -e '.xtsfs_kms == 1' "$tmp/request.json" >/dev/null 2>&1 ||
    fail invalid "this program speaks xtsfs KMS protocol version 1 only"
op=$(jq -r '.op' "$tmp/request.json")
wanted=$(jq -r '.key_version // ""' "$tmp/request.json")
# The version becomes an aws argument: allow a KMS key ARN and nothing else.
[[ -z $wanted || $wanted =~ ^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9A-Za-z-]{1,128}$ ]] ||
    fail invalid "'$wanted' is not a KMS key ARN"

# The key this request is about: the pinned ARN, else whatever KMS_KEY names now.
aws kms describe-key --key-id "${wanted:-$KMS_KEY}" "${region[@]}" --output json >"$tmp/key.json" 2>"$tmp/aws.err" ||
    aws_failed "cannot describe key '${wanted:-$KMS_KEY}'"
key_version=$(jq -r '.KeyMetadata.Arn' "$tmp/key.json")
jq -e '.KeyMetadata.KeyUsage == "ENCRYPT_DECRYPT" and (.KeyMetadata.KeySpec | test("^RSA_(2048|3072|4096)$"))' \
    "$tmp/key.json" >/dev/null || fail invalid "$key_version is not an RSA ENCRYPT_DECRYPT key"
state=$(jq -r '.KeyMetadata.KeyState' "$tmp/key.json")
case $state in
Enabled) ;;
Disabled) fail denied "$key_version is disabled" ;;
*) fail unavailable "$key_version is $state" ;;
esac

# reply [FIELD]: the ok reply, with FIELD (ciphertext or plaintext) read as base64 from
# stdin. Secrets go through pipes and shell variables, never a program's arguments.
reply() {
    jq -cRs --arg field "${1:-}" --arg id "$KMS_KEY" --arg version "$key_version" '
        {xtsfs_kms: 1, ok: true, key_id: $id, key_version: $version, algorithm: "RSA-OAEP-256"}
        + (if $field == "" then {} else {($field): (. | rtrimstr("\n"))} end)'
}

crypt=(--key-id "$key_version" --encryption-algorithm "$ALGORITHM" "${region[@]}")
case $op in
check)
    reply </dev/null
    ;;
wrap)
    # fileb:// hands the CLI raw bytes from a file: the key stays off the command line.
    jq -r '.plaintext' "$tmp/request.json" | base64 -d >"$tmp/plaintext.bin" ||
        fail invalid "the plaintext is not base64"
    result=$(aws kms encrypt "${crypt[@]}" --plaintext "fileb://$tmp/plaintext.bin" \
        --query CiphertextBlob --output text 2>"$tmp/aws.err") ||
        aws_failed "encrypt with $key_version failed"
    rm -f -- "$tmp/plaintext.bin"
    printf '%s' "$result" | reply ciphertext
    ;;
unwrap)
    jq -r '.ciphertext' "$tmp/request.json" | base64 -d >"$tmp/ciphertext.bin" ||
        fail invalid "the ciphertext is not base64"
    result=$(aws kms decrypt "${crypt[@]}" --ciphertext-blob "fileb://$tmp/ciphertext.bin" \
        --query Plaintext --output text 2>"$tmp/aws.err") ||
        aws_failed "decrypt with $key_version failed"
    printf '%s' "$result" | reply plaintext
    ;;
*)
    fail invalid "unknown op '$op'"
    ;;
esac
