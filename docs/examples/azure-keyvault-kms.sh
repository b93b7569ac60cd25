#!/usr/bin/env bash
# xtsfs KMS command for an RSA key in Azure Key Vault or Managed HSM, through the az CLI.
# It speaks the protocol in docs/KMS.md: one JSON request on stdin, one reply on stdout.
#
#   xtsfs init BACKING --key command:/usr/local/lib/xtsfs/azure-keyvault-kms.sh
#   xtsfs init BACKING --key command:/usr/local/lib/xtsfs/azure-keyvault-kms.sh#VERSION
#
# Install: copy it into a directory only root can write, chmod 0755 (xtsfs refuses a
# program others could replace), and set VAULT and KEY below. xtsfs passes its environment
# on, so XTSFS_AZURE_VAULT / XTSFS_AZURE_KEY work too, but a mount started by systemd does
# not see your shell's variables.
#
# The key: az keyvault key create --vault-name VAULT --name KEY --kty RSA-HSM --size 3072 \
#            --ops encrypt decrypt
# Rotate with az keyvault key rotate: unless pinned with #VERSION, xtsfs wraps with the
# newest version and still unwraps volumes wrapped under older ones.
# The host's identity (az login --identity for a VM's managed identity) needs get, encrypt
# and decrypt on keys: the "Key Vault Crypto User" role, or an access policy with
# keys get/encrypt/decrypt.
#
# key_id is the key's URL without the version (https://VAULT.vault.azure.net/keys/KEY) and
# key_version is the Key Vault version id. Needs: az, jq.
set -euo pipefail
umask 077

VAULT=${XTSFS_AZURE_VAULT:-}
KEY=${XTSFS_AZURE_KEY:-}
readonly ALGORITHM=RSA-OAEP-256

# fail KIND MESSAGE: the error reply, then exit. A reply, not an exit status, is how a
# KMS command reports a refusal.
fail() {
    jq -cn --arg kind "$1" --arg message "$2" \
        '{xtsfs_kms: 1, ok: false, error: {kind: $kind, message: $message}}'
    exit 0
}

for tool in az jq; do
    command -v "$tool" >/dev/null 2>&1 || fail unavailable "$tool is not installed on this host"
done
[[ -n $VAULT && -n $KEY ]] || fail unavailable "set VAULT and KEY in $0"

# A private directory for the request and az's error output, removed however this exits.
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# az_failed WHAT: the error reply that az's complaint in $tmp/az.err calls for.
az_failed() {
    local said
    said=$(tr -s '\n' ' ' <"$tmp/az.err" | cut -c 1-400)
    case $said in
    *Forbidden* | *Unauthorized* | *AuthorizationFailed* | *"does not have"* | *"az login"*)
        fail denied "$1: $said" ;;
    *KeyNotFound* | *NotFound* | *"was not found"*)
        fail not-found "$1: $said" ;;
    *BadParameter* | *"Bad Request"* | *"BadRequest"*)
        fail invalid "$1: $said" ;;
    *)
        fail unavailable "$1: $said" ;;
    esac
}

# Standard, padded base64 whichever alphabet az answers in.
readonly STD_B64='def std_b64: gsub("-"; "+") | gsub("_"; "/") | . + ("=" * ((4 - length % 4) % 4));'

cat >"$tmp/request.json"
jq -e '.xtsfs_kms == 1' "$tmp/request.json" >/dev/null 2>&1 ||
    fail invalid "this program speaks xtsfs KMS protocol version 1 only"
op=$(jq -r '.op' "$tmp/request.json")
wanted=$(jq -r '.key_version // ""' "$tmp/request.json")
# The version becomes an az argument: allow Key Vault's version ids and nothing else.
[[ -z $wanted || $wanted =~ ^[0-9A-Za-z]{1,64}$ ]] || fail invalid "'$wanted' is not a Key Vault key version"

# The key version this request is about: the pinned one, else the newest.
show=(--vault-name "$VAULT" --name "$KEY")
[[ -n $wanted ]] && show+=(--version "$wanted")
az keyvault key show "${show[@]}" -o json >"$tmp/key.json" 2>"$tmp/az.err" ||
    az_failed "cannot read key '$KEY' in vault '$VAULT'"
kid=$(jq -r '.key.kid' "$tmp/key.json")
key_id=${kid%/*}
key_version=${kid##*/}
case $(jq -r '.key.kty' "$tmp/key.json") in
RSA | RSA-HSM) ;;
*) fail invalid "key '$KEY' is not an RSA key" ;;
esac
[[ $(jq -r '.attributes.enabled' "$tmp/key.json") == true ]] ||
    fail denied "version $key_version of key '$KEY' is disabled"

# reply FIELD: the ok reply, FIELD (ciphertext or plaintext) taken from az's JSON result on
# stdin. Secrets go through pipes and shell variables, never a program's arguments.
reply() {
    jq -c --arg field "$1" --arg id "$key_id" --arg version "$key_version" --arg algorithm "$ALGORITHM" "$STD_B64"'
        {xtsfs_kms: 1, ok: true, key_id: $id, key_version: $version, algorithm: $algorithm}
        + (if $field == "" then {} else {($field): (.result | std_b64)} end)'
}

crypt=(--vault-name "$VAULT" --name "$KEY" --version "$key_version" --algorithm "$ALGORITHM"
    --data-type base64 -o json)
case $op in
check)
    echo '{}' | reply ""
    ;;
wrap)
    # az reads an argument from a file when given @FILE: the key stays off the command line.
    jq -j '.plaintext' "$tmp/request.json" >"$tmp/plaintext.b64"
    result=$(az keyvault key encrypt "${crypt[@]}" --value "@$tmp/plaintext.b64" 2>"$tmp/az.err") ||
        az_failed "encrypt with key '$KEY' version $key_version failed"
    rm -f -- "$tmp/plaintext.b64"
    printf '%s' "$result" | reply ciphertext
    ;;
unwrap)
    jq -j '.ciphertext' "$tmp/request.json" >"$tmp/ciphertext.b64"
    result=$(az keyvault key decrypt "${crypt[@]}" --value "@$tmp/ciphertext.b64" 2>"$tmp/az.err") ||
        az_failed "decrypt with key '$KEY' version $key_version failed"
    printf '%s' "$result" | reply plaintext
    ;;
*)
    fail invalid "unknown op '$op'"
    ;;
esac
