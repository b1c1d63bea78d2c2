"""Stand-in for the get-pip.py script ansible-test downloads to bootstrap its venvs.

This machine reaches package registries only, not the host ansible-test downloads
get-pip.py from. ansible-test runs this file as ``python get_pip.py ARGS...``;
we install pip from the interpreter's bundled wheel (ensurepip) and then pip
installs ARGS (pinned pip version and friends) from the package index as usual.
"""

import os
import subprocess
import sys


def main():
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    env = dict(os.environ)
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], env=env)
    # ensurepip sets PIP_CONFIG_FILE=/dev/null for itself only; the pip run below keeps the
    # machine's own pip configuration (index location, constraints).
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + args, env=env)


if __name__ == "__main__":
    main()
