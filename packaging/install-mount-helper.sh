#!/bin/sh
# Install the mount(8) helper, so that `mount -t s3pipefs`, /etc/fstab lines and systemd
# .mount units work, and the manual pages:
#
#   /sbin/mount.s3pipefs        runs the installed `mount.s3pipefs` console script
#   /sbin/mount.fuse.s3pipefs   the same, for `-t fuse.s3pipefs`
#   MANDIR/man1/s3pipefs.1, MANDIR/man8/mount.s3pipefs.8   (from packaging/man/)
#
# mount(8) looks for helpers only in /sbin (and /sbin/fs.d, /sbin/fs), runs them with a
# minimal environment, and passes `SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`. The helper
# written here is a two-line script that execs the console script by its absolute path,
# so it keeps working whatever PATH mount(8) or systemd give it. Running this script again
# is safe: a helper it wrote earlier is followed to the console script it runs, never
# installed as its own target.
#
# Usage: install-mount-helper.sh [--helper PATH] [--sbin DIR] [--mandir DIR] [--uninstall]
#   --helper PATH   the mount.s3pipefs console script to run (default: the first one on
#                   PATH; a helper this script wrote counts as the script it runs)
#   --sbin DIR      where to install the helpers (default: /sbin; for packaging: $DESTDIR/sbin)
#   --mandir DIR    where to install the manual pages (default: $DESTDIR$PREFIX/share/man,
#                   PREFIX defaulting to /usr/local); mandb(8) indexes it when it is one of
#                   the system's manual directories
#   --uninstall     remove the helpers and pages this script installed (and nothing else)
set -eu

MARK="# installed by s3pipefs packaging/install-mount-helper.sh"
here=$(cd "$(dirname "$0")" && pwd)
helper=""
sbin="${DESTDIR:-}/sbin"
mandir="${DESTDIR:-}${PREFIX:-/usr/local}/share/man"
uninstall=0

while [ $# -gt 0 ]; do
    case "$1" in
        --helper) helper="$2"; shift 2 ;;
        --sbin) sbin="$2"; shift 2 ;;
        --mandir) mandir="$2"; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "install-mount-helper.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

helpers="mount.s3pipefs mount.fuse.s3pipefs"
pages="man1/s3pipefs.1 man8/mount.s3pipefs.8"

ours() {  # a file this script wrote (helpers and pages alike carry $MARK)
    [ -f "$1" ] && grep -qF "$MARK" "$1" 2>/dev/null
}

update_man_index() {  # optional: man(1) finds the pages without it, apropos(1) does not
    [ -z "${DESTDIR:-}" ] && command -v mandb >/dev/null 2>&1 || return 0
    # Only a directory of the system's manpath: elsewhere mandb would put its database
    # into the directory itself and hand the directory to the man user.
    case ":$(manpath -g 2>/dev/null):" in
        *":$mandir:"*) mandb -q "$mandir" >/dev/null 2>&1 || true ;;
    esac
}

if [ "$uninstall" = 1 ]; then
    for f in $helpers $pages; do
        case "$f" in man*) f="$mandir/$f" ;; *) f="$sbin/$f" ;; esac
        if ours "$f"; then
            rm -f "$f"
            echo "removed $f"
        fi
    done
    update_man_index
    exit 0
fi

# The console script behind PATH: a helper this script wrote is followed to what it execs
# (a few steps at most, so one that execs itself, as earlier versions could write, is
# skipped rather than followed forever). Prints nothing when PATH leads nowhere usable.
console_script() {
    p=$1
    for _ in 1 2 3 4; do
        ours "$p" || break
        p=$(sed -n 's/^exec "\(.*\)" "\$@"$/\1/p' "$p")
    done
    if [ -n "$p" ] && [ -x "$p" ] && ! ours "$p"; then
        case "$p" in
            /*) printf '%s\n' "$p" ;;
            *) printf '%s\n' "$(cd "$(dirname "$p")" && pwd)/$(basename "$p")" ;;
        esac
    fi
}

if [ -n "$helper" ]; then
    target=$(console_script "$helper")
else
    target=$(printf '%s\n' "$PATH" | tr ':' '\n' | while IFS= read -r dir; do
        t=$(console_script "${dir:-.}/mount.s3pipefs")
        if [ -n "$t" ]; then echo "$t"; break; fi
    done)
fi
if [ -z "$target" ]; then
    echo "install-mount-helper.sh: no mount.s3pipefs console script found${helper:+ at $helper}" \
         "(helpers this script installed do not count); install s3pipefs first or pass --helper PATH" >&2
    exit 1
fi

install_file() {  # install_file DEST MODE: stdin -> DEST, atomically, unless DEST is foreign
    if [ -e "$1" ] && ! ours "$1"; then
        echo "install-mount-helper.sh: $1 exists and was not installed by this script; not touching it" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$1")"
    tmp="$(dirname "$1")/.$(basename "$1").$$"
    cat > "$tmp"
    chmod "$2" "$tmp"
    mv -f "$tmp" "$1"
}

for n in $helpers; do
    printf '#!/bin/sh\n%s\nexec "%s" "$@"\n' "$MARK" "$target" | install_file "$sbin/$n" 0755
    echo "installed $sbin/$n -> $target"
done

for p in $pages; do
    # The mark goes last, as a roff comment: a first line may carry preprocessor hints.
    { cat "$here/man/$(basename "$p")"; printf '.\\" %s\n' "$MARK"; } | install_file "$mandir/$p" 0644
    echo "installed $mandir/$p"
done
update_man_index
