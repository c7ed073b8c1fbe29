#!/usr/bin/env bash
# Builds valgrind with a 1 TiB client address space (stock valgrind gives a client about 64 GiB
# of its 128 GiB) into DIR, once, and prints the path of its `valgrind`. wasmesh-proxy's Wasm
# host reserves its pooling allocator's memory slots up front (about 250 GiB of address space,
# PROT_NONE, no memory), which stock valgrind refuses; deploy/bench-instructions.sh uses this
# one to count the mesh. The source is Debian's valgrind source package (the version installed),
# fetched with apt-get through a private sources list and cache: the system's apt configuration
# is left alone. Only the address-space limit is changed, so instruction counts are the same as
# stock valgrind's.
#
#   deploy/valgrind-wide.sh DIR
set -euo pipefail
shopt -s inherit_errexit

dest=$(realpath -m "${1:?usage: valgrind-wide.sh DIR}")
if [ -x "$dest/bin/valgrind" ]; then
  echo "$dest/bin/valgrind"
  exit 0
fi
for tool in cc make tar apt-get; do
  command -v "$tool" >/dev/null || { echo "valgrind-wide: $tool is needed" >&2; exit 1; }
done
work=$(mktemp -d)
chmod 755 "$work" # apt downloads as _apt
trap 'rm -rf "$work"' EXIT
echo "valgrind-wide: building valgrind with a 1 TiB client address space in $dest (a few minutes)" >&2

# The Debian source package of the installed version (or the newest if none is installed).
. /etc/os-release
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache"
cat >"$work/parts/src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt=(apt-get -qq -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
"${apt[@]}" update >&2
version=$(dpkg-query -W -f '${Version}' valgrind 2>/dev/null || true)
(cd "$work" && "${apt[@]}" source --download-only "valgrind${version:+=$version}" >&2)
tar -xjf "$work"/valgrind_*.orig.tar.bz2 -C "$work"
src=$(echo "$work"/valgrind-*/)

# The client gets the lower half of [minAddr, maxAddr]; 64-bit Linux has maxAddr = 128 GiB.
file=$src/coregrind/m_aspacemgr/aspacemgr-linux.c
grep -q 'aspacem_maxAddr = (Addr)0x2000000000ULL - 1;' "$file" ||
  { echo "valgrind-wide: $file does not set the 128 GiB limit this script raises" >&2; exit 1; }
sed -i 's/aspacem_maxAddr = (Addr)0x2000000000ULL - 1;/aspacem_maxAddr = (Addr)0x10000000000ULL - 1;/' "$file"

(cd "$src" && ./configure -q --prefix="$dest" >"$work/configure.log" 2>&1 &&
  make -j"$(nproc)" >"$work/make.log" 2>&1 && make install >"$work/install.log" 2>&1) ||
  { tail -30 "$work"/*.log >&2; exit 1; }
echo "$dest/bin/valgrind"
