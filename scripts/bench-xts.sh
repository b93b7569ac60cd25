#!/usr/bin/env bash
# The XTS core (criterion, one core) as a ratio of OpenSSL's aes-256-xts on 4 KiB units,
# both measured now on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
openssl_kbps=$(openssl speed -evp aes-256-xts -bytes 4096 -seconds 3 2>/dev/null | awk '/^AES-256-XTS/ {sub("k", "", $2); print $2}')
cargo bench --locked --bench xts -- --warm-up-time 1 --measurement-time 3 >/dev/null
python3 - "$openssl_kbps" <<'PY'
import json, sys
openssl = float(sys.argv[1]) * 1000  # bytes/s (openssl's "k" is 1000 bytes)
for op in ("encrypt", "decrypt"):
    for size, nbytes in (("4KiB", 4096), ("1MiB", 1 << 20)):
        est = json.load(open(f"target/criterion/xts/{op}_{size}/new/estimates.json"))
        rate = nbytes / (est["mean"]["point_estimate"] / 1e9)
        print(f"xts {op:7} {size:5}: {rate / 1e9:6.2f} GB/s = {rate / openssl * 100:5.1f} % of OpenSSL aes-256-xts ({openssl / 1e9:.2f} GB/s)")
PY
