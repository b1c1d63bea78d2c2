#!/usr/bin/env bash
# ansible-test sanity for one venv: `scripts/sanity.sh .venv/py311`.
# ansible-test must run from .../ansible_collections/mailops/linkcert/ (a real
# directory, not a symlink), so the tracked files are copied there first.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$1
PYVER=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
DEST=.work/sanity-$PYVER/ansible_collections/mailops/linkcert

# Seed ansible-test's pip bootstrap cache with the offline stand-in, for every
# pip version this ansible-test may ask for.
mkdir -p ~/.ansible/test/cache
sed -n "s/.*pip='\([0-9.]*\)'.*/\1/p" "$VENV"/lib/python*/site-packages/ansible_test/_internal/python_requirements.py |
  while read -r version; do
    cp scripts/get_pip_offline.py ~/.ansible/test/cache/"get_pip_${version//./_}.py"
  done

rm -rf "$DEST"
mkdir -p "$DEST"
# Tracked and new files as they are in the work tree (a file deleted but not yet committed is skipped).
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done |
  xargs -0 cp --parents -t "$DEST"
cd "$DEST"
git init -q . && git add -A >/dev/null   # ansible-test lists the collection's files through git
export PATH=$OLDPWD/$VENV/bin:$PATH
ansible-test sanity --venv --python "$PYVER" --color no "${@:2}"
