#!/usr/bin/env bash
# Fetches the pebble package of another Debian release (Debian 12's 2.4 or Debian 13's 2.6) through apt, from
# Debian's archive, and unpacks it under .work/pebble/VERSION/ (its binary: .work/pebble/VERSION/usr/bin/pebble),
# so the lab runs the ACME tests against both. Nothing is installed and no APT source is added to the host: apt
# reads a private sources list and keeps its lists and cache under .work/apt. Pebble is a static Go binary, so
# either release's runs on the other.
#
#   scripts/fetch_pebble.sh SUITE      (bookworm or trixie)
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:?usage: fetch_pebble.sh SUITE}
case $suite in
  bookworm | trixie) ;;
  *) echo "fetch_pebble.sh: unknown suite '$suite' (bookworm or trixie)" >&2; exit 2 ;;
esac
mirror=${LINKCERT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
apt_dir=$PWD/.work/apt/$suite
stamp=.work/pebble/$suite.version

if [ -s "$stamp" ] && [ -x ".work/pebble/$(cat "$stamp")/usr/bin/pebble" ]; then
  exit 0
fi
[ -r "$keyring" ] || { echo "fetch_pebble.sh: $keyring is missing (debian-archive-keyring)" >&2; exit 1; }
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
echo "deb [signed-by=$keyring] $mirror $suite main" > "$apt_dir/sources.list"
# An empty dpkg status of its own: apt must not take the host's installed pebble (Debian 13's 2.6 on a trixie
# machine, newer than bookworm's) for the version to fetch, which the private lists cannot serve.
: > "$apt_dir/status"
options=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=/nonexistent
         -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::State::status=$apt_dir/status" -o "Dir::Cache=$apt_dir/cache"
         -o Debug::NoLocking=1 -o APT::Sandbox::User=root -o APT::Get::List-Cleanup=0)
echo ">> pebble from Debian $suite (private apt lists in $apt_dir)"
apt-get "${options[@]}" -qq update
rm -f "$apt_dir"/debs/pebble_*.deb
(cd "$apt_dir/debs" && apt-get "${options[@]}" -qq download pebble)
deb=$(ls "$apt_dir"/debs/pebble_*.deb)
version=$(dpkg-deb -f "$deb" Version | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')
dest=.work/pebble/$version
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
dpkg-deb -x "$deb" "$dest.tmp"
"$dest.tmp/usr/bin/pebble" -h >/dev/null 2>&1 || [ $? -eq 2 ] || { echo "fetch_pebble.sh: $deb's pebble does not run here" >&2; exit 1; }
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "$version" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
echo ">> pebble $(dpkg-deb -f "$deb" Version) in $dest/usr/bin/pebble"
