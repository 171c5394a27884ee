#!/usr/bin/env bash
# A private PostgreSQL installation running a released synclink, for the upgrade tests.
#
#   scripts/released.sh 0.1.0        builds it (once), prints its bin directory
#
# PostgreSQL finds its lib/ and share/ relative to its own binaries, so a copy of the system's
# PostgreSQL 15 laid out as <prefix>/lib/postgresql/15/{bin,lib} and <prefix>/share/postgresql/15
# is an installation of its own. Into that copy go the released version's library (built from
# the commit that was released), its control file and its full script as shipped
# (sql/synclink--<version>.sql), and no other synclink files, so that CREATE EXTENSION there
# makes exactly the released extension. The system's installation is left alone.
#
# The tree goes to $CARGO_TARGET_DIR/released/<version> (target/released/<version> by default)
# and is made again only when the release commit or the system's PostgreSQL changed. The
# library is built in the same target directory as the current one, under a crate name of its
# own, so the dependencies (pgrx above all) are compiled once for both.
set -euo pipefail

version=${1:?usage: scripts/released.sh <version>}
case "$version" in
  # released version -> the commit it was built from
  0.1.0) commit=207ddb96fe769400f305f701bfbcc4f31a9110d3 ;;
  *) echo "released.sh: no release $version is known (see the list in $0)" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
target=${CARGO_TARGET_DIR:-$repo/target}
case "$target" in /*) ;; *) target=$repo/$target ;; esac
prefix=$target/released/$version
stamp="$commit $("$PG_CONFIG" --version)"

if [ -f "$prefix/.complete" ] && [ "$(cat "$prefix/.complete")" = "$stamp" ]; then
  cat "$prefix/bindir"
  exit 0
fi

script=$repo/sql/synclink--$version.sql
[ -f "$script" ] || { echo "released.sh: $script is missing" >&2; exit 1; }
if [ "$(git -C "$repo" rev-parse --is-shallow-repository)" = true ]; then
  echo "released.sh: this clone is shallow, so the commit synclink $version was released from" \
       "($commit) may be missing; run: git fetch --unshallow" >&2
  exit 1
fi
if ! git -C "$repo" cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "released.sh: commit $commit (synclink $version) is not in this clone; fetch the full" \
       "history of the repository (git fetch --unshallow, or git fetch origin $commit)" >&2
  exit 1
fi

started=$(date +%s)
# The release's sources, from git (a fixed place, so that cargo finds its earlier build).
src=$target/released/src/$version
rm -rf "$src"
mkdir -p "$src"
git -C "$repo" archive "$commit" | tar -x -C "$src"
# A crate name of its own keeps its library apart from the current build's in the shared
# target directory (cargo names a cdylib by the crate alone, without a hash).
crate=synclink_released_${version//./_}
sed -i -E "s/^\[lib\]$/[lib]\nname = \"$crate\"/" "$src/Cargo.toml"
grep -q "^name = \"$crate\"" "$src/Cargo.toml" || { echo "released.sh: no [lib] in Cargo.toml" >&2; exit 1; }
echo "released.sh: building synclink $version ($commit)" >&2
(cd "$src" && CARGO_TARGET_DIR=$target cargo build --lib --locked -p synclink >&2)
so=$target/debug/lib$crate.so
[ -f "$so" ] || { echo "released.sh: $so was not built" >&2; exit 1; }

rm -rf "$prefix"
# The same layout below $prefix as the system's below the prefix its three directories share.
pg_bin=$("$PG_CONFIG" --bindir) pg_lib=$("$PG_CONFIG" --pkglibdir) pg_share=$("$PG_CONFIG" --sharedir)
common=$pg_bin
while [ "$common" != / ] &&
      { [ "${pg_lib#"$common"/}" = "$pg_lib" ] || [ "${pg_share#"$common"/}" = "$pg_share" ]; }; do
  common=$(dirname "$common")
done
common=${common%/}
for dir in "$pg_bin" "$pg_lib" "$pg_share"; do
  mkdir -p "$(dirname "$prefix${dir#"$common"}")"
  cp -a "$dir" "$prefix${dir#"$common"}"
done
bindir=$prefix${pg_bin#"$common"}
libdir=$prefix${pg_lib#"$common"}
sharedir=$prefix${pg_share#"$common"}
rm -f "$libdir/synclink.so" "$sharedir/extension/synclink.control" "$sharedir/extension"/synclink--*.sql
[ "$("$bindir/pg_config" --pkglibdir)" = "$libdir" ] ||
  { echo "released.sh: the copy of PostgreSQL in $prefix does not find its own lib/" >&2; exit 1; }
install -m 755 "$so" "$libdir/synclink.so"
sed "s/@CARGO_VERSION@/$version/" "$src/synclink.control" > "$sharedir/extension/synclink.control"
install -m 644 "$script" "$sharedir/extension/synclink--$version.sql"
echo "$bindir" > "$prefix/bindir"
echo "$stamp" > "$prefix/.complete"
echo "released.sh: synclink $version in $prefix ($(( $(date +%s) - started )) s)" >&2
echo "$bindir"
