#!/bin/sh
# Install the mount(8) helper, so that `mount -t s3pipefs`, /etc/fstab lines and systemd
# .mount units work:
#
#   /sbin/mount.s3pipefs        runs the installed `mount.s3pipefs` console script
#   /sbin/mount.fuse.s3pipefs   the same, for `-t fuse.s3pipefs`
#
# mount(8) looks for helpers only in /sbin (and /sbin/fs.d, /sbin/fs), runs them with a
# minimal environment, and passes `SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`. The helper
# written here is a two-line script that execs the console script by its absolute path,
# so it keeps working whatever PATH mount(8) or systemd give it.
#
# Usage: install-mount-helper.sh [--helper PATH] [--sbin DIR] [--uninstall]
#   --helper PATH   the mount.s3pipefs to run (default: the one on PATH)
#   --sbin DIR      where to install (default: /sbin; for packaging: $DESTDIR/sbin)
#   --uninstall     remove helpers this script installed (and nothing else)
set -eu

MARK="# installed by s3pipefs packaging/install-mount-helper.sh"
helper=""
sbin="${DESTDIR:-}/sbin"
uninstall=0

while [ $# -gt 0 ]; do
    case "$1" in
        --helper) helper="$2"; shift 2 ;;
        --sbin) sbin="$2"; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "install-mount-helper.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

names="mount.s3pipefs mount.fuse.s3pipefs"

if [ "$uninstall" = 1 ]; then
    for n in $names; do
        if [ -f "$sbin/$n" ] && grep -q "$MARK" "$sbin/$n" 2>/dev/null; then
            rm -f "$sbin/$n"
            echo "removed $sbin/$n"
        fi
    done
    exit 0
fi

if [ -z "$helper" ]; then
    helper=$(command -v mount.s3pipefs || true)
fi
if [ -z "$helper" ] || [ ! -x "$helper" ]; then
    echo "install-mount-helper.sh: mount.s3pipefs not found; install s3pipefs first or pass --helper PATH" >&2
    exit 1
fi
case "$helper" in
    /*) ;;
    *) helper="$(cd "$(dirname "$helper")" && pwd)/$(basename "$helper")" ;;
esac

mkdir -p "$sbin"
for n in $names; do
    if [ -e "$sbin/$n" ] && ! grep -q "$MARK" "$sbin/$n" 2>/dev/null; then
        echo "install-mount-helper.sh: $sbin/$n exists and was not installed by this script; not touching it" >&2
        exit 1
    fi
    tmp="$sbin/.$n.$$"
    printf '#!/bin/sh\n%s\nexec "%s" "$@"\n' "$MARK" "$helper" > "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$sbin/$n"
    echo "installed $sbin/$n -> $helper"
done
