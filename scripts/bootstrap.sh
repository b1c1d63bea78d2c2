#!/usr/bin/env bash
# Installs everything `make demo` and `make test` need on a fresh Debian 12 machine
# (run as root). Re-runnable: each step is skipped when its stamp is newer than
# its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMPS=.venv/stamps
mkdir -p "$STAMPS"

APT_PACKAGES=(pebble nginx python3-venv python3-dev gcc debootstrap systemd-container iproute2 openssl ca-certificates curl shellcheck openssh-client time faketime chromium chromium-driver)

need_apt=0
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo ">> apt-get install ${APT_PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # RUNLEVEL=1 keeps Debian's maintainer scripts from starting the system nginx on port 80:
  # the lab and the roles run their own instances.
  RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

# The ACME lab tests run against Debian 12's Pebble (2.4) and Debian 13's (2.6, with ARI and replaces checks): the
# host's own package is one of them, the other release's is fetched into .work/pebble (scripts/fetch_pebble.sh).
codename=$(sed -n "s/^VERSION_CODENAME=//p" /etc/os-release)
case $codename in
  bookworm) bash scripts/fetch_pebble.sh trixie ;;
  trixie) bash scripts/fetch_pebble.sh bookworm ;;
  *) echo "!! Debian $codename: only Debian 12 (bookworm) and 13 (trixie) are known; the lab tests only its own pebble" >&2 ;;
esac

find_python313() {
  for candidate in python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys, venv; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

make_venv() {  # name python requirements
  local name=$1 python=$2 req=$3 venv=.venv/$1
  if [ ! -x "$venv/bin/python" ] || [ "$req" -nt "$STAMPS/$name" ] || [ requirements.txt -nt "$STAMPS/$name" ]; then
    echo ">> venv $venv ($("$python" --version)) from $req"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    (cd requirements && "$ROOT/$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$(basename "$req")")
    touch "$STAMPS/$name"
  fi
}

make_venv py311 /usr/bin/python3 requirements/test-py311.txt
# sslyze (Mozilla TLS profile check of a served certificate) in a venv of its own: it pins cryptography and pydantic.
make_venv sslyze /usr/bin/python3 requirements/sslyze.txt
if PY313=$(find_python313); then
  make_venv py313 "$PY313" requirements/test-py313.txt
else
  echo "!! no Python 3.13 found: the newest ansible-core, ansible-lint and molecule cannot be installed" >&2
  exit 1
fi

# The collection must sit at ansible_collections/mailops/linkcert for Ansible to load it.
mkdir -p .work/collections/ansible_collections/mailops
ln -sfn ../../../.. .work/collections/ansible_collections/mailops/linkcert
