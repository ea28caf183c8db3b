#!/usr/bin/env bash
# End-to-end demo of s3pipefs on one machine, with nothing mocked:
#
#   1. `s3pipefs serve` runs a local S3 server (SeaweedFS) in the background
#   2. `s3pipefs mount` shows its bucket as a directory (FUSE)
#   3. `tar c` a real directory into the mount, `tar x` it back out, `diff -r`
#   4. `s3pipefs put` from a pipe and `s3pipefs cat` back, compared by md5sum
#
# Prints each step and PASS/FAIL; exits 0 only if every step passed. Always unmounts and
# stops the server on exit. Environment: PYTHON (default .venv/bin/python, else python3),
# DEMO_SRC (the directory to tar, default /usr/share/doc), KEEP=1 keeps the work dir.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$root/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
SRC=${DEMO_SRC:-/usr/share/doc}
BUCKET=demo

work=$(mktemp -d "${TMPDIR:-/tmp}/s3pipefs-demo.XXXXXX")
mnt=$work/mnt
mkdir -p "$mnt" "$work/out"
server_pid=""
passed=0
failed=0

s3pipefs() { "$PY" -m s3pipefs "$@"; }
step() { printf '\n==> %s\n' "$*"; }
pass() { printf 'PASS: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }

cleanup() {
    set +e
    if mountpoint -q "$mnt"; then
        step "unmount $mnt"
        fusermount3 -u "$mnt" 2>/dev/null || fusermount -u "$mnt" 2>/dev/null || umount "$mnt" \
            || umount -l "$mnt"
    fi
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        step "stop the server"
        kill -TERM "$server_pid"
        wait "$server_pid"
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$failed" -gt 0 ]; then
        echo "work dir kept: $work (server log: $work/server/weed.log, mount log: $work/mount.log)"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "start a local S3 server: s3pipefs serve --port 0 --bucket $BUCKET"
"$PY" -m s3pipefs serve --data-dir "$work/server" --port 0 --bucket "$BUCKET" >"$work/serve.env" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 1 900); do   # up to 90 s: startup is ~3 s, slow CI machines need more
    grep -q '^unset ' "$work/serve.env" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '^unset ' "$work/serve.env"; then
    fail "the server did not start"
    cat "$work/serve.err" >&2
    exit 1
fi
cat "$work/serve.env"
# shellcheck disable=SC1091
source "$work/serve.env"   # only comments, export and unset lines
pass "server ready at $AWS_ENDPOINT_URL"

step "mount: s3pipefs mount $BUCKET $mnt"
if s3pipefs mount -o "log=$work/mount.log" "$BUCKET" "$mnt" 2>"$work/mount.err" && mountpoint -q "$mnt"; then
    pass "mounted ($(grep " $mnt " /proc/mounts | cut -d' ' -f1,3))"
else
    fail "mount failed: $(cat "$work/mount.err")"
    exit 1
fi

step "tar c $SRC into the mount ($(du -sh "$SRC" | cut -f1), $(find "$SRC" | wc -l) entries)"
start=$(date +%s.%N)
if tar -C "$(dirname "$SRC")" -cf "$mnt/archive.tar" "$(basename "$SRC")"; then
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    pass "wrote $mnt/archive.tar: $(stat -c %s "$mnt/archive.tar") bytes in ${secs}s"
else
    fail "tar c into the mount"
fi

step "tar x out of the mount, then diff -r against $SRC"
if tar -C "$work/out" -xf "$mnt/archive.tar" \
    && diff -r --no-dereference "$SRC" "$work/out/$(basename "$SRC")"; then
    pass "extracted tree is identical"
else
    fail "extracted tree differs"
fi

step "the archive is a segmented stream on S3"
if s3pipefs info "s3://$BUCKET/archive.tar"; then
    pass "s3pipefs info"
else
    fail "s3pipefs info"
fi

step "pipe through S3: head -c 64M /dev/urandom | s3pipefs put; s3pipefs cat | md5sum"
head -c 64M /dev/urandom >"$work/random.bin"
want=$(md5sum <"$work/random.bin" | cut -d' ' -f1)
if cat "$work/random.bin" | s3pipefs put "s3://$BUCKET/piped.bin" \
    && got=$(s3pipefs cat "s3://$BUCKET/piped.bin" | md5sum | cut -d' ' -f1) \
    && [ "$got" = "$want" ]; then
    pass "md5 $got matches"
else
    fail "md5 of the piped stream: want $want, got ${got:-nothing}"
fi

step "the piped stream read through the mount"
for _ in $(seq 1 100); do   # the mount caches listings for metadata_ttl (5 s)
    [ -e "$mnt/piped.bin" ] && break
    sleep 0.1
done
got=$(md5sum <"$mnt/piped.bin" | cut -d' ' -f1) || got=""
if [ "$got" = "$want" ]; then
    pass "md5 $got matches"
else
    fail "md5 through the mount: want $want, got ${got:-nothing}"
fi

echo
if [ "$failed" -eq 0 ]; then
    echo "demo: PASS ($passed steps)"
else
    echo "demo: FAIL ($failed of $((passed + failed)) steps failed)"
    exit 1
fi
