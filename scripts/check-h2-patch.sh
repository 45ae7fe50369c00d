#!/usr/bin/env bash
# Checks that third_party/h2 is the h2 crate published on crates.io plus
# third_party/h2/SATMESH.patch, and nothing else (third_party/h2/SATMESH.md, "The check").
#
#   scripts/check-h2-patch.sh           check (scripts/test.sh runs this before the build)
#   scripts/check-h2-patch.sh --write   rewrite SATMESH.patch from the tree, then check
#
# The published .crate of the version in third_party/h2/Cargo.toml is downloaded once into
# $CARGO_TARGET_DIR/h2-check (default target/h2-check) and verified against the sha256 in
# third_party/h2/SATMESH.sha256 (a [patch] path crate has no checksum in Cargo.lock).
# Not compared: SATMESH.md, SATMESH.patch, SATMESH.sha256 (ours), Cargo.lock (in the
# published crate, but ignored by its own .gitignore) and target/ (a local build of h2).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "check-h2-patch: $*" >&2
    exit 1
}

write=false
case "${1:-}" in
    "") ;;
    --write) write=true ;;
    *) fail "unknown argument '$1' (usage: scripts/check-h2-patch.sh [--write])" ;;
esac

h2=third_party/h2
version=$(awk '/^\[package\]/ { p = 1; next } /^\[/ { p = 0 }
    p && /^version = / { gsub(/"/, "", $3); print $3; exit }' "$h2/Cargo.toml")
[ -n "$version" ] || fail "no [package] version in $h2/Cargo.toml"
crate="h2-$version.crate"
grep -q "  $crate\$" "$h2/SATMESH.sha256" ||
    fail "$h2/SATMESH.sha256 has no sha256 for $crate (Cargo.toml says h2 $version)"

# The workspace must resolve h2 to this path crate (a registry h2 would leave it unused).
awk -v v="$version" '/^\[\[package\]\]/ { n = ""; ver = ""; src = 0 }
    /^name = "h2"$/ { n = 1 } /^version = / { ver = $3 } /^source = / { src = 1 }
    n && ver == "\"" v "\"" && !src { found = 1 } END { exit !found }' Cargo.lock ||
    fail "Cargo.lock does not resolve h2 $version from $h2 (run cargo update -p h2 --precise $version)"

cache="${CARGO_TARGET_DIR:-target}/h2-check"
mkdir -p "$cache"
cp "$h2/SATMESH.sha256" "$cache/SATMESH.sha256"
if [ ! -f "$cache/$crate" ]; then
    curl -sSfL --retry 2 -m 120 -o "$cache/$crate.part" \
        "https://static.crates.io/crates/h2/$crate" ||
        fail "could not download $crate from static.crates.io"
    mv "$cache/$crate.part" "$cache/$crate"
fi
if ! (cd "$cache" && grep "  $crate\$" SATMESH.sha256 | sha256sum --check --quiet --strict -); then
    rm -f "$cache/$crate"
    fail "$crate does not match the sha256 in $h2/SATMESH.sha256 (deleted; run again)"
fi

scratch=$(mktemp -d "$cache/tree.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
tar -xzf "$cache/$crate" -C "$scratch"
published="$scratch/h2-$version"
[ -d "$published" ] || fail "$crate did not unpack into h2-$version/"
excluded=(-x SATMESH.md -x SATMESH.patch -x SATMESH.sha256 -x Cargo.lock -x target)

if $write; then
    # a/ is the published crate, b/ is ours; headers carry no timestamps, so the patch
    # changes only when the difference does.
    mv "$published" "$scratch/a"
    cp -r "$h2" "$scratch/b"
    status=0
    (cd "$scratch" && diff -ruN "${excluded[@]}" a b) >"$scratch/patch" || status=$?
    [ "$status" -le 1 ] || fail "diff failed while writing the patch"
    sed -E -e 's#^((---|\+\+\+) [ab]/[^\t]*)\t.*$#\1#' \
        -e 's#^diff -ruN .* (a/[^ ]+ b/[^ ]+)$#diff -ruN \1#' "$scratch/patch" >"$h2/SATMESH.patch"
    echo "check-h2-patch: wrote $h2/SATMESH.patch ($(grep -c '^diff ' "$h2/SATMESH.patch") files)"
    rm -rf "$scratch/a" "$scratch/b"
    tar -xzf "$cache/$crate" -C "$scratch"
fi

patch --quiet --forward --fuzz=0 --no-backup-if-mismatch -p1 -d "$published" \
    <"$h2/SATMESH.patch" >"$scratch/patch.log" 2>&1 || {
    cat "$scratch/patch.log" >&2
    fail "SATMESH.patch does not apply cleanly to the published $crate"
}
if ! diff -r "${excluded[@]}" "$published" "$h2" >"$scratch/diff"; then
    head -n 100 "$scratch/diff" >&2
    fail "$h2 is not the published $crate plus SATMESH.patch (differences above; if they are" \
        "intended, run scripts/check-h2-patch.sh --write and say why in SATMESH.md)"
fi
echo "check-h2-patch: $h2 is the published $crate plus SATMESH.patch ($(grep -c '^diff ' "$h2/SATMESH.patch") files)"
