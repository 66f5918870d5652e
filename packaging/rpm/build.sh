#!/bin/bash
# Build the self-contained fedd RPM from this git checkout, the same way on EL9 and on Debian:
#   packaging/rpm/build.sh OUTDIR [--ref REF] [extra rpmbuild arguments...]
# The source tarball holds the files git knows in the working tree (tracked and not ignored: a clean
# checkout gives exactly HEAD), or `git archive REF` with --ref. The wheels of requirements.lock come
# from the wheel cache, downloaded from PyPI (hash-checked) only when missing (wheels.sh fetch), and
# go into the SRPM as Source1, so rpmbuild itself runs offline. The RPM lands in OUTDIR/RPMS/x86_64/.
# Needs /usr/bin/python3.11 with pip (EL9: dnf install python3.11 python3.11-pip rpm-build
# systemd-rpm-macros git; Debian: python3.11 python3-pip rpm git).
set -euo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUTDIR [--ref REF] [rpmbuild arguments...]" >&2
    exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
shift
ref=""
if [ "${1:-}" = "--ref" ]; then
    ref=${2:?--ref needs a git revision}
    shift 2
fi

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
spec=packaging/rpm/fedd.spec
version=$(sed -n 's/^Version:[[:space:]]*//p' "$spec")
pyversion=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' fedd/__init__.py)
if [ "$version" != "$pyversion" ]; then
    echo "$spec says Version $version but fedd/__init__.py says $pyversion" >&2
    exit 1
fi

mkdir -p "$out/SOURCES" "$out/SPECS" "$out/BUILD" "$out/RPMS" "$out/SRPMS" "$out/tmp"
tarball="$out/SOURCES/fedd-$version.tar.gz"
if [ -n "$ref" ]; then
    git archive --format=tar.gz --prefix="fedd-$version/" -o "$tarball" "$ref"
else
    stage="$out/tmp/stage"
    rm -rf "$stage"
    mkdir -p "$stage/fedd-$version"
    git ls-files -z --cached --others --exclude-standard |
        xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\n" "$f"; done' sh |
        tar -cf - -T - | tar -xf - -C "$stage/fedd-$version"
    tar -czf "$tarball" -C "$stage" "fedd-$version"
    rm -rf "$stage"
fi
wheels="$out/tmp/wheels"
rm -rf "$wheels"
"$top/packaging/rpm/wheels.sh" fetch "$wheels"
# wheels are zip files already: an uncompressed tar
tar -cf "$out/SOURCES/fedd-$version-wheels.tar" -C "$out/tmp" wheels
rm -rf "$wheels"
cp "$spec" "$out/SPECS/fedd.spec"

# Debian's rpm has an empty package database: BuildRequires cannot be checked there
host=()
if ! rpm -q rpm >/dev/null 2>&1; then
    host=(--nodeps)
fi
rpmbuild -bb --quiet "${host[@]}" \
    --define "_topdir $out" --define "_tmppath $out/tmp" \
    "$@" "$out/SPECS/fedd.spec"
ls "$out"/RPMS/x86_64/fedd-"$version"-*.x86_64.rpm
