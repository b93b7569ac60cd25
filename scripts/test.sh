#!/usr/bin/env bash
# Builds xtsfs and runs every check and test; this is the one test command (README, CI).
#
#   format  cargo fmt --all --check                     (skipped if rustfmt is not installed)
#   build   cargo build --locked --all-targets
#   clippy  cargo clippy --locked --all-targets -- -D warnings  (skipped if clippy is not installed)
#   test    cargo test --locked --no-fail-fast -- --test-threads=2
#           (unit, integration and doc tests; --no-fail-fast: a failing test binary does
#           not keep the later ones from running)
#
# Every step runs even after another failed, so one run shows every problem (the tests
# are skipped only if the build failed). Exits 0 only if no step failed.
#
# Environment:
#   XTSFS_SKIP_LINT=1      skip format and clippy (e.g. while iterating locally)
#   XTSFS_TEST_TIMEOUT=S   seconds before the test step is killed (default 1800)
#   XTSFS_TEST_ARGS="..."  extra arguments for the test binaries, e.g. a name filter
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
test_timeout=${XTSFS_TEST_TIMEOUT:-1800}
read -r -a extra_test_args <<<"${XTSFS_TEST_ARGS:-}"

say() { printf '\n==> %s\n' "$*"; }

command -v cargo >/dev/null 2>&1 || {
    echo "test: error: cargo is not on PATH; install Rust 1.85 or newer" >&2
    exit 1
}
echo "test: $(cargo --version), $(rustc --version)"
if [[ $(id -u) -ne 0 ]] && ! [[ -r /dev/fuse && -w /dev/fuse ]]; then
    echo "test: note: not root and /dev/fuse is not usable by $(id -un); tests that mount will fail or skip"
fi

steps=()
results=()
failed_steps=()
record() { # record NAME RESULT
    steps+=("$1")
    results+=("$2")
    if [[ $2 == FAILED* ]]; then
        failed_steps+=("$1")
    fi
}
run_step() { # run_step NAME COMMAND...
    local name=$1 started=$SECONDS status=0
    shift
    say "$name: $*"
    "$@" || status=$?
    if [[ $status -eq 0 ]]; then
        record "$name" "ok ($((SECONDS - started))s)"
    else
        record "$name" "FAILED (exit $status, $((SECONDS - started))s)"
    fi
    return 0
}

lint=1
if [[ ${XTSFS_SKIP_LINT:-0} == 1 ]]; then
    lint=0
fi

# --- format ----------------------------------------------------------------------------------
if [[ $lint -eq 0 ]]; then
    record format "skipped (XTSFS_SKIP_LINT=1)"
elif cargo fmt --version >/dev/null 2>&1; then
    run_step format cargo fmt --all --check
else
    record format "skipped (rustfmt not installed)"
fi

# --- build -----------------------------------------------------------------------------------
run_step build cargo build --locked --all-targets
build_ok=1
if [[ ${results[-1]} == FAILED* ]]; then
    build_ok=0
fi

# --- clippy ----------------------------------------------------------------------------------
if [[ $lint -eq 0 ]]; then
    record clippy "skipped (XTSFS_SKIP_LINT=1)"
elif cargo clippy --version >/dev/null 2>&1; then
    run_step clippy cargo clippy --locked --all-targets -- -D warnings
else
    record clippy "skipped (clippy not installed)"
fi

# --- tests -----------------------------------------------------------------------------------
passed=0 failed=0 ignored=0
if [[ $build_ok -eq 0 ]]; then
    record test "skipped (build failed)"
else
    log=$(mktemp -t xtsfs-test.XXXXXX.log)
    mounts_before=$(findmnt -rn -t fuse.xtsfs -o TARGET 2>/dev/null || true)
    say "test: cargo test --locked --no-fail-fast -- --test-threads=2 ${extra_test_args[*]} (timeout ${test_timeout}s)"
    started=$SECONDS
    status=0
    # stdin from /dev/null: CI has none, and nothing in a test may wait for a terminal.
    timeout --kill-after=60 "$test_timeout" \
        cargo test --locked --no-fail-fast -- --test-threads=2 "${extra_test_args[@]}" </dev/null 2>&1 | tee "$log" ||
        status=$?
    if [[ $status -eq 124 || $status -eq 137 ]]; then
        record test "FAILED (timed out after ${test_timeout}s)"
        # libtest reports a test still running after 60 s; name those that never finished.
        echo
        echo "test: timed out after ${test_timeout}s; tests reported as long-running:"
        sed -n 's/^test \(.*\) has been running for over 60 seconds$/  \1/p' "$log" || true
    elif [[ $status -ne 0 ]]; then
        record test "FAILED (exit $status, $((SECONDS - started))s)"
    else
        record test "ok ($((SECONDS - started))s)"
    fi
    # Sum "test result: ok. 12 passed; 0 failed; 1 ignored; ..." over all test binaries.
    read -r passed failed ignored < <(
        sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored;.*/\1 \2 \3/p' "$log" |
            awk '{p += $1; f += $2; i += $3} END {print p + 0, f + 0, i + 0}'
    )
    if [[ $failed -gt 0 ]]; then
        echo
        echo "failed tests:"
        grep -E '^test .* \.\.\. FAILED$' "$log" | sed 's/^test /  /; s/ \.\.\. FAILED$//' || true
    fi
    rm -f "$log"

    # A test that leaks a mount leaves a dead mount point on the machine. Only in CI, where
    # nothing else runs, can a mount that appeared during this run be taken for one of
    # ours and detached; elsewhere another test run may own it, so only report.
    leaked=$(comm -13 <(sort <<<"$mounts_before") <(findmnt -rn -t fuse.xtsfs -o TARGET 2>/dev/null | sort) | sed '/^$/d' || true)
    if [[ -n $leaked ]]; then
        echo
        if [[ ${CI:-} == true ]]; then
            echo "test: WARNING: tests left these xtsfs mounts behind; unmounting them lazily:"
        else
            echo "test: WARNING: these xtsfs mounts appeared during this run and are still there"
            echo "test: (left by these tests, or made by another test run on this machine):"
        fi
        while IFS= read -r m; do
            echo "  $m"
            if [[ ${CI:-} == true ]]; then
                fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "  (could not unmount $m)"
            fi
        done <<<"$leaked"
    fi
fi

# --- summary ---------------------------------------------------------------------------------
echo
echo "==================== xtsfs test summary ===================="
for i in "${!steps[@]}"; do
    printf '  %-8s %s\n' "${steps[$i]}" "${results[$i]}"
done
if [[ ${#failed_steps[@]} -eq 0 ]]; then
    echo "  RESULT: OK"
else
    echo "  RESULT: FAILED (${failed_steps[*]})"
fi
echo "============================================================"
echo "tests: $passed passed, $failed failed, $ignored skipped"
[[ ${#failed_steps[@]} -eq 0 ]]
