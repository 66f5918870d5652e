#!/bin/bash
# Build the fedd RPM from this git checkout, offline:
#   packaging/rpm/build.sh OUTDIR [--ref REF] [extra rpmbuild arguments...]
# The source tarball holds the files git knows in the working tree (tracked and not ignored: a clean
# checkout gives exactly HEAD), or `git archive REF` with --ref. The RPM lands in OUTDIR/RPMS/noarch/.
# On EL9 (Python 3.11 for fedd):
#   packaging/rpm/build.sh /tmp/fedd-rpm --define '__python3 /usr/bin/python3.11' --define 'python3_pkgversion 3.11'
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
cp "$spec" "$out/SPECS/fedd.spec"

# Debian's rpm has an empty package database (BuildRequires cannot be checked) and its Python
# dependency generator needs python3-packaging: leave both to real EL builds
host=()
if ! rpm -q rpm >/dev/null 2>&1; then
    host=(--nodeps --define "__pythondist_requires %{nil}" --define "__pythondist_provides %{nil}")
fi
rpmbuild -bb --quiet "${host[@]}" \
    --define "_topdir $out" --define "_tmppath $out/tmp" \
    "$@" "$out/SPECS/fedd.spec"
ls "$out"/RPMS/noarch/fedd-"$version"-*.noarch.rpm
