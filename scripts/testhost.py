"""Disposable Debian 12 or 13 test hosts with systemd as PID 1, for molecule and integration tests.

Usage (as root, Python 3.11 standard library only)::

    testhost.py root                 build (once) the cached debootstrap root
    testhost.py up NAME              copy the root, boot it with systemd-nspawn, wait for systemd and sshd
    testhost.py down NAME            power it off, remove its links, network namespace, veth and directory
                                     (idempotent)
    testhost.py status NAME          show state and addresses (exit 3 unless running)
    testhost.py exec NAME -- CMD...  run CMD inside the host (nsenter into all its namespaces)
    testhost.py inventory NAME       print a YAML inventory host entry for Ansible
    testhost.py link A B             wire running hosts A and B to each other directly; prints B's address
    testhost.py unlink A B           remove that link (idempotent; ``down`` removes every link of a host)

How an instance is wired:

* The cached root lives at ``<base>/root-SUITE`` (``<base>`` is ``.work/testhost`` of the
  repository, or ``$LINKCERT_TESTHOST_DIR``; SUITE is ``bookworm``, Debian 12, unless
  ``$LINKCERT_TESTHOST_SUITE`` says ``trixie``, Debian 13, whatever this machine runs). It is built into a temporary directory and renamed
  into place only when complete; ``/etc/linkcert-testhost.json`` inside it records the suite and
  package list, and a root whose record differs from :data:`PACKAGES` is rebuilt.
* ``up NAME`` copies it to ``<base>/NAME/root``, creates the network namespace ``lc-NAME`` and a
  veth pair: ``lch-...`` (at most 15 characters) with ``198.18.X.1/30`` in the host's namespace,
  ``eth0`` with ``198.18.X.2/30`` and a default route via ``198.18.X.1`` inside ``lc-NAME``.
  The addresses are configured before boot, so the guest needs no network manager.
  ``systemd-nspawn --boot --register=no --keep-unit --network-namespace-path=/run/netns/lc-NAME``
  then boots the copy in its own session; its PID is in ``<base>/NAME/nspawn.pid`` and its console
  output in ``<base>/NAME/console.log``.
* The container's init is found among the descendants of the nspawn PID (parent links read from
  ``/proc/*/stat``): it is the one whose ``NSpid:`` line in ``/proc/PID/status`` ends in ``1``,
  i.e. PID 1 of the container's PID namespace. ``exec``, ``down`` and the readiness checks use
  ``nsenter -t <that PID> -a``.
* Host services the guest needs (the lab's Pebble and DNS) can listen on ``198.18.X.1``
  (``linkcert_lab_host_addr`` in ``status``/``inventory``), e.g. through labctl's ``extra_addrs``.
* This machine forwards nothing between namespaces, so test hosts cannot reach each other through it.
  ``link A B`` instead creates a veth pair whose two ends are created directly in ``lc-A`` and
  ``lc-B`` (nothing in this machine's namespace, not even for a moment), both named ``lk-`` plus
  12 hex digits of a hash of the two names. It takes a /30 of :data:`LINK_POOL`
  (198.19.128.0/17, skipping the first /30 of every /24, which is an instance subnet): A gets its
  first address, B the second; the /30 is on-link, so no route changes. The free /30 is chosen under
  :data:`NET_LOCK` and must not overlap any instance subnet, any link recorded under ``<base>``, nor
  any address or route of this machine or of any namespace in ``/run/netns`` (links of other
  checkouts). Both instances record it in ``<base>/NAME/links.json``:
  ``{"PEER": {"local_addr": ..., "peer_addr": ..., "subnet": ..., "ifname": ...}}``. ``down`` removes
  every link of the instance (the records on both sides; deleting one end deletes the pair), so a
  link never outlives either host. ``status`` shows the links and ``inventory`` has
  ``linkcert_lab_links: {PEER: peer_addr}``.

Never boot systemd on this machine's own root: only on the copied root under ``<base>``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

REPO_DIR = Path(__file__).resolve().parent.parent
#: The Debian release of the test hosts: Debian 12 unless LINKCERT_TESTHOST_SUITE names another known one.
SUITES = ("bookworm", "trixie")
SUITE = os.environ.get("LINKCERT_TESTHOST_SUITE", "").strip() or "bookworm"
if SUITE not in SUITES:
    sys.exit("testhost.py: LINKCERT_TESTHOST_SUITE=%s is not one of %s" % (SUITE, ", ".join(SUITES)))
VARIANT = "minbase"
#: Everything the roles and tests need, baked in: the test hosts have no route to a registry.
#: python3-apt lets ansible.builtin.apt check (not install) packages without network access.
#: python3-cffi-backend is named because debootstrap does not resolve virtual packages
#: (python3-cryptography depends on python3-cffi-backend-api-min/-max, which it provides).
#: certbot, lego and time (GNU time) are for `make bench`, which compares onboarding with them on the edge.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "iproute2", "nginx",
    "ca-certificates", "openssl", "python3-acme", "python3-josepy", "python3-cryptography",
    "python3-cffi-backend", "python3-dnspython", "python3-idna", "python3-requests", "python3-apt",
    "curl", "procps", "certbot", "lego", "time",
)
#: Bump when the post-debootstrap configuration below changes, so cached roots are rebuilt.
ROOT_CONFIG_VERSION = 1
#: Units that have nothing to do in a throw-away container, or that would reach for the network.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "systemd-networkd-wait-online.service",
                "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer")
STAMP_IN_ROOT = "etc/linkcert-testhost.json"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

NET_POOL = ipaddress.ip_network("198.18.0.0/15")
#: Instance subnets are 198.18.X.0/30 (X = 1..255), then 198.19.X.0/30: one /30 per /24 keeps the
#: addresses readable. Index 0 (198.18.0.0/30) is left to hand-made experiments.
NET_INDEXES = range(1, 512)
IFNAMSIZ = 15
GUEST_IF = "eth0"
#: Links between two instances (``link A B``): the /30s of 198.19.128.0/17 except the first of each /24
#: (198.19.X.0/30 is instance subnet X + 256), i.e. 198.19.128.4/30, .8/30 ... 198.19.255.252/30: 8064 links.
LINK_POOL = ipaddress.ip_network("198.19.128.0/17")
LINK_PREFIX = "lk-"

#: A boot takes seconds on an idle machine but has taken over a minute on two busy CPUs; the bound only ends a hung boot.
BOOT_TIMEOUT = float(os.environ.get("LINKCERT_TESTHOST_BOOT_TIMEOUT", "180"))
STOP_TIMEOUT = float(os.environ.get("LINKCERT_TESTHOST_STOP_TIMEOUT", "60"))
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")


class TestHostError(RuntimeError):
    """A test host operation failed; the message is meant for humans."""


# --------------------------------------------------------------------------- small helpers


def _log(message: str) -> None:
    print(f"testhost: {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 120.0, capture: bool = True,
         env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run a command; on failure raise :class:`TestHostError` with its output."""
    try:
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=capture, text=True,
                              timeout=timeout, check=False, env=env)
    except FileNotFoundError:
        raise TestHostError(f"{argv[0]} not found; install it (scripts/bootstrap.sh installs debootstrap, "
                            f"systemd-container and iproute2)") from None
    except subprocess.TimeoutExpired:
        raise TestHostError(f"{shlex.join(argv)} did not finish within {timeout:g}s") from None
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        raise TestHostError(f"{shlex.join(argv)} failed with status {proc.returncode}" + (f":\n{out}" if out else ""))
    return proc


def base_dir() -> Path:
    """Directory holding the cached root and the instances."""
    return Path(os.environ.get("LINKCERT_TESTHOST_DIR") or REPO_DIR / ".work" / "testhost").resolve()


def root_dir() -> Path:
    return base_dir() / f"root-{SUITE}"


def instance_dir(name: str) -> Path:
    return base_dir() / name


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or name.startswith(("root-", "debcache")):
        raise TestHostError(f"invalid instance name {name!r}: use 1-40 lower-case letters, digits and dashes")
    return name


def netns_name(name: str) -> str:
    return f"lc-{name}"


def host_ifname(name: str) -> str:
    """``lch-NAME``, or for long names a prefix plus a hash, so two names never share a veth."""
    full = f"lch-{name}"
    if len(full) <= IFNAMSIZ:
        return full
    digest = hashlib.sha1(name.encode()).hexdigest()[:4]
    return f"lch-{name[:IFNAMSIZ - 9].rstrip('-')}-{digest}"


def link_ifname(name: str, peer: str) -> str:
    """``lk-`` plus 12 hex digits of the (unordered) pair: the name of both ends of their link."""
    first, second = sorted((name, peer))
    digest = hashlib.sha1(f"{first}\0{second}".encode()).hexdigest()
    return f"{LINK_PREFIX}{digest[:IFNAMSIZ - len(LINK_PREFIX)]}"


#: Shared by every checkout on the machine (subnet allocation); the per-checkout lock is in the base directory.
NET_LOCK = Path("/run/lock/linkcert-testhost-net.lock")


@contextlib.contextmanager
def _locked(path: Optional[Path] = None) -> Iterator[None]:
    """Serialise root builds and copies (the base directory's lock), or whatever ``path`` names."""
    if path is None:
        path = base_dir() / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _netns_networks(netns: Optional[str] = None) -> List[ipaddress.IPv4Network]:
    """Networks of every IPv4 address and every /24-or-longer route of a namespace (default: this machine's).

    Another namespace may vanish while it is read: its errors are ignored, this machine's are not.
    """
    ip = ["ip", "-n", netns] if netns else ["ip"]
    nets: List[ipaddress.IPv4Network] = []
    for line in _run([*ip, "-4", "-o", "addr", "show"], check=netns is None).stdout.splitlines():
        words = line.split()
        with contextlib.suppress(ValueError, IndexError):
            if "inet" in words:
                nets.append(ipaddress.ip_interface(words[words.index("inet") + 1]).network)
    for line in _run([*ip, "-4", "route", "show", "table", "all"], check=netns is None).stdout.splitlines():
        words = line.split()
        with contextlib.suppress(ValueError, IndexError):
            dest = words[1] if words[0] in ("local", "broadcast", "unicast") else words[0]
            net = ipaddress.ip_network(dest, strict=False)
            if net.prefixlen >= 24:
                nets.append(net)
    return nets


def _mounts_under(path: Path) -> List[str]:
    """Mount points at or below ``path`` (deepest first)."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _safe_rmtree(path: Path) -> None:
    """Remove a directory tree, first unmounting anything mounted inside it (debootstrap mounts /proc)."""
    if not path.exists() and not path.is_symlink():
        return
    for point in _mounts_under(path):
        _run(["umount", "--lazy", point], check=False)
    left = _mounts_under(path)
    if left:
        raise TestHostError(f"refusing to delete {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    if path.is_symlink():
        path.unlink()  # e.g. /etc/resolv.conf: never write through a symlink of the guest
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the cached root


def _stamp() -> Dict[str, object]:
    return {"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES), "config_version": ROOT_CONFIG_VERSION}


def root_is_current(root: Optional[Path] = None) -> bool:
    root = root or root_dir()
    try:
        recorded = json.loads((root / STAMP_IN_ROOT).read_text())
    except (OSError, ValueError):
        return False
    return {key: recorded.get(key) for key in _stamp()} == _stamp()


def _apt_sources() -> List[Dict[str, List[str]]]:
    """Entries of the machine's apt sources as ``{uris, suites, components, signed_by}`` lists."""
    entries: List[Dict[str, List[str]]] = []
    listing = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for path in listing:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: Dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _sep, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                    continue
                entries.append({"uris": fields.get("uris", "").split(), "suites": fields.get("suites", "").split(),
                                "components": fields.get("components", "").split(),
                                "signed_by": fields.get("signed-by", "").split()})
        elif path.name.endswith(".list") or path == listing[0]:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    options = re.search(r"signed-by=(\S+?)[\s\]]", line)
                    entries.append({"uris": [words[1]], "suites": [words[2]], "components": words[3:],
                                    "signed_by": [options.group(1)] if options else []})
    return entries


def find_mirror() -> Dict[str, Optional[str]]:
    """The Debian mirror (and keyring) this machine's apt uses for the suite."""
    override = os.environ.get("LINKCERT_TESTHOST_MIRROR", "").strip()
    if override:
        return {"uri": override, "keyring": None}
    for entry in _apt_sources():
        if SUITE in entry["suites"] and "main" in entry["components"] and entry["uris"]:
            keyring = next((k for k in entry["signed_by"] if k.startswith("/") and os.path.exists(k)), None)
            return {"uri": entry["uris"][0], "keyring": keyring}
    # Another release than this machine's (trixie hosts on Debian 12, or the reverse): the machine's Debian mirror, whose
    # archive keyring (debian-archive-keyring) signs both releases.
    for entry in _apt_sources():
        if "main" in entry["components"] and entry["uris"] and any(suite in SUITES for suite in entry["suites"]):
            keyring = next((k for k in entry["signed_by"] if k.startswith("/") and os.path.exists(k)), None)
            return {"uri": entry["uris"][0], "keyring": keyring}
    return {"uri": DEFAULT_MIRROR, "keyring": None}


def _configure_root(root: Path) -> None:
    """Settings every instance shares (per-instance ones are set by :func:`_prepare_instance_root`)."""
    _write(root / "etc/hostname", "testhost\n")
    _run(["systemctl", f"--root={root}", "enable", "ssh.service"])
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    # Host keys and the machine id are made per instance; an empty policy-rc.d leftover is removed.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root / "etc/machine-id", "")
    with contextlib.suppress(FileNotFoundError):
        (root / "usr/sbin/policy-rc.d").unlink()
    _write(root / STAMP_IN_ROOT, json.dumps(_stamp(), indent=2) + "\n")


def ensure_root(force: bool = False) -> Path:
    """Build the cached root unless a current one exists; return its path. Call with the lock held."""
    root = root_dir()
    if not force and root_is_current(root):
        return root
    if shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"):
        raise TestHostError("debootstrap is not installed (apt-get install debootstrap)")
    base = base_dir()
    for stale in base.glob(f"{root.name}.tmp-*"):
        _safe_rmtree(stale)
    tmp = base / f"{root.name}.tmp-{os.getpid()}"
    mirror = find_mirror()
    cache = base / "debcache"
    cache.mkdir(parents=True, exist_ok=True)
    argv = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", f"--cache-dir={cache}"]
    if mirror["keyring"]:
        argv.append(f"--keyring={mirror['keyring']}")
    argv += [SUITE, str(tmp), str(mirror["uri"])]
    _log(f"building the {SUITE} root at {root} from {mirror['uri']} (takes about a minute)")
    log = base / "debootstrap.log"
    started = time.monotonic()
    try:
        with open(log, "w") as handle:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                  check=False, timeout=1800, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if proc.returncode != 0:
            inner = tmp / "debootstrap" / "debootstrap.log"
            if inner.exists():  # the detailed log lives inside the half-built root, which is deleted
                with open(log, "a") as handle:
                    handle.write(f"\n--- {inner} ---\n" + inner.read_text(errors="replace"))
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise TestHostError(f"debootstrap failed with status {proc.returncode} (log {log}):\n{tail}")
        _configure_root(tmp)
        old = base / f"{root.name}.old-{os.getpid()}"
        if root.exists():
            os.rename(root, old)
        os.rename(tmp, root)
        _safe_rmtree(old)
    except BaseException:
        _safe_rmtree(tmp)
        raise
    _log(f"root built in {time.monotonic() - started:.0f}s")
    return root


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the command name (state first, then ppid)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[-1].split()


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> List[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _children_map() -> Dict[int, List[int]]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields and len(fields) > 1:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> List[int]:
    children = _children_map()
    found: List[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _ns_pids(pid: int) -> List[str]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    except OSError:
        pass
    return []


def _instance_subnets() -> set:
    """Subnets of the instances under the base directory (their ``net.json``)."""
    used = set()
    for other in base_dir().glob("*/net.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.add(ipaddress.ip_network(json.loads(other.read_text())["subnet"]))
    return used


def _link_candidates() -> Iterator[ipaddress.IPv4Network]:
    """The /30s of :data:`LINK_POOL`, lowest first, without the first /30 of each /24 (an instance subnet)."""
    start = int(LINK_POOL.network_address)
    for offset in range(0, LINK_POOL.num_addresses, 4):
        if offset % 256:
            yield ipaddress.ip_network((start + offset, 30))


class Instance:
    """One test host: its directory, network and processes."""

    def __init__(self, name: str) -> None:
        self.name = check_name(name)
        self.dir = instance_dir(name)
        self.root = self.dir / "root"
        self.key = self.dir / "id_ed25519"
        self.pid_file = self.dir / "nspawn.pid"
        self.console = self.dir / "console.log"
        self.net_file = self.dir / "net.json"
        self.links_file = self.dir / "links.json"
        self.netns = netns_name(name)
        self.host_if = host_ifname(name)

    # ------------------------------------------------------------------ state

    def net(self) -> Dict[str, str]:
        try:
            return json.loads(self.net_file.read_text())
        except (OSError, ValueError):
            raise TestHostError(f"test host {self.name} is not up (no {self.net_file})") from None

    def links(self) -> Dict[str, Dict[str, str]]:
        """This instance's links: ``{peer: {local_addr, peer_addr, subnet, ifname}}`` (``{}`` if none)."""
        try:
            links = json.loads(self.links_file.read_text())
        except (OSError, ValueError):
            return {}
        return links if isinstance(links, dict) else {}

    def _write_links(self, links: Dict[str, Dict[str, str]]) -> None:
        """Replace ``links.json`` atomically (removed when empty); never recreates a removed instance directory."""
        if not self.dir.is_dir():
            return
        if links:
            _write(self.links_file, json.dumps(links, indent=2, sort_keys=True) + "\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                self.links_file.unlink()

    def is_up(self) -> bool:
        return self.nspawn_pid() is not None and Path("/run/netns", self.netns).exists() and self.net_file.exists()

    def nspawn_pid(self) -> Optional[int]:
        """PID of this instance's systemd-nspawn, if it runs (checked against its command line)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        argv = _cmdline(pid)
        if not _alive(pid) or not argv or os.path.basename(argv[0]) != "systemd-nspawn" or str(self.root) not in argv:
            return None
        return pid

    def init_pid(self, nspawn: Optional[int] = None) -> Optional[int]:
        """Host PID of the container's PID 1: the nspawn descendant whose innermost NSpid is 1."""
        nspawn = nspawn or self.nspawn_pid()
        if nspawn is None:
            return None
        for pid in _descendants(nspawn):
            ns_pids = _ns_pids(pid)
            if len(ns_pids) >= 2 and ns_pids[-1] == "1":
                return pid
        return None

    def nsenter_argv(self, command: Sequence[str], init: Optional[int] = None) -> List[str]:
        init = init or self.init_pid()
        if init is None:
            raise TestHostError(f"test host {self.name} is not running")
        return ["nsenter", "-t", str(init), "-a", "/usr/bin/env", "-i", f"PATH={CLEAN_PATH}", "HOME=/root",
                "LANG=C.UTF-8", f"TERM={os.environ.get('TERM', 'dumb')}", *command]

    def system_state(self, init: Optional[int] = None) -> str:
        try:
            proc = _run(self.nsenter_argv(["systemctl", "is-system-running"], init), check=False, timeout=15)
        except TestHostError:
            return "unknown"
        return (proc.stdout or "").strip() or "unknown"

    # ------------------------------------------------------------------ network

    def _allocate_net(self) -> Dict[str, str]:
        """Pick a free 198.18.X.0/30 (lock held): not used by another instance nor by any host address/route."""
        used = _instance_subnets()
        taken = _netns_networks()
        for index in NET_INDEXES:
            subnet = ipaddress.ip_network((int(NET_POOL.network_address) + index * 256, 30))
            if subnet in used or any(subnet.overlaps(net) for net in taken):
                continue
            hosts = list(subnet.hosts())
            return {"subnet": str(subnet), "host_addr": str(hosts[0]), "guest_addr": str(hosts[1]),
                    "prefixlen": str(subnet.prefixlen), "netns": self.netns, "host_if": self.host_if,
                    "guest_if": GUEST_IF}
        raise TestHostError("no free /30 left in 198.18.0.0/15")

    def _setup_net(self, net: Dict[str, str]) -> None:
        self._teardown_net()
        plen = net["prefixlen"]
        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", GUEST_IF, "netns", self.netns])
        _run(["ip", "addr", "add", f"{net['host_addr']}/{plen}", "dev", self.host_if])
        _run(["ip", "link", "set", self.host_if, "up"])
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.netns, "addr", "add", f"{net['guest_addr']}/{plen}", "dev", GUEST_IF])
        _run(["ip", "-n", self.netns, "link", "set", GUEST_IF, "up"])
        _run(["ip", "-n", self.netns, "route", "add", "default", "via", net["host_addr"]])

    def _teardown_net(self) -> None:
        if Path("/run/netns", self.netns).exists():
            _run(["ip", "netns", "delete", self.netns], check=False)
        if Path("/sys/class/net", self.host_if).exists():
            _run(["ip", "link", "delete", self.host_if], check=False)

    # ------------------------------------------------------------------ lifecycle

    def _prepare_root(self, net: Dict[str, str]) -> None:
        """Per-instance identity: hostname, machine id, SSH host keys, root's authorized key, resolver."""
        root = self.root
        _write(root / "etc/hostname", f"{self.name}\n")
        hosts = (root / "etc/hosts").read_text() if (root / "etc/hosts").exists() else ""
        _write(root / "etc/hosts", f"127.0.1.1\t{self.name}\n{hosts}")
        _write(root / "etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
        # Nothing answers DNS on the host end by default: a quick refusal beats a timeout to the host's resolver.
        _write(root / "etc/resolv.conf", f"nameserver {net['host_addr']}\noptions timeout:1 attempts:1\n")
        _run(["ssh-keygen", "-A", "-f", str(root)])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@testhost-{self.name}", "-f", str(self.key)])
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ssh_dir.chmod(0o700)
        _write(ssh_dir / "authorized_keys", Path(f"{self.key}.pub").read_text(), 0o600)

    def up(self) -> Dict[str, str]:
        if self.nspawn_pid() is not None:
            net = self.net()
            _log(f"{self.name} is already up at {net['guest_addr']}")
            return net
        if self.dir.exists() or Path("/run/netns", self.netns).exists() or self._linked_peers():
            _log(f"cleaning up a stale {self.name}")
            self.down(quiet=True)
        for tool in ("systemd-nspawn", "nsenter", "ip", "ssh", "ssh-keygen"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                raise TestHostError(f"{tool} is not installed (systemd-container, util-linux, iproute2, openssh-client)")
        started = time.monotonic()
        try:
            with _locked():
                root = ensure_root()
                self.dir.mkdir(parents=True)
                copy_started = time.monotonic()
                _run(["cp", "-a", "--reflink=auto", str(root), str(self.root)], timeout=600)
                _log(f"copied the root in {time.monotonic() - copy_started:.1f}s")
            # Addresses are machine-wide: hold a lock every checkout shares from choosing a subnet until its
            # veth carries it, so test hosts of two checkouts (or two suites) never pick the same one.
            with _locked(NET_LOCK):
                net = self._allocate_net()
                _write(self.net_file, json.dumps(net, indent=2) + "\n")
                self._setup_net(net)
            self._prepare_root(net)
            boot_started = time.monotonic()
            self._wait_ready(net, self._boot())
        except BaseException as exc:
            tail = self._console_tail()
            _log(f"{self.name} failed to come up: {exc}" + (f"\n--- last lines of {self.console} ---\n{tail}" if tail else ""))
            self.down(quiet=True)
            raise
        _log(f"{self.name} up at {net['guest_addr']} (boot {time.monotonic() - boot_started:.1f}s, "
             f"total {time.monotonic() - started:.1f}s); ssh -i {self.key} root@{net['guest_addr']}")
        return net

    def _boot(self) -> subprocess.Popen:
        argv = ["systemd-nspawn", "--quiet", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
                f"--network-namespace-path=/run/netns/{self.netns}", "-M", self.name, "--settings=false",
                "--link-journal=no", "--resolv-conf=off", "--timezone=off", "--console=read-only"]
        with open(self.console, "ab") as handle:
            handle.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
            handle.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd=self.dir)
        _write(self.pid_file, f"{proc.pid}\n")
        return proc

    def _wait_ready(self, net: Dict[str, str], proc: subprocess.Popen) -> None:
        """Wait (bounded) for systemd to finish booting and for root to log in over SSH with the key."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = "no init yet"
        while True:
            # Liveness from the Popen object: right after exec /proc/PID/cmdline can still be empty.
            code = proc.poll()
            if code is not None:
                raise TestHostError(f"systemd-nspawn exited with status {code}")
            init = self.init_pid(proc.pid)
            if init is not None:
                state = self.system_state(init)
                if state in ("running", "degraded"):
                    break
                # "offline" is not among these: systemctl says it while the manager cannot be asked yet, which a
                # boot on two busy CPUs goes through; a boot that never gets further ends at BOOT_TIMEOUT.
                if state in ("stopping", "maintenance"):
                    raise TestHostError(f"systemd is {state}")
            if time.monotonic() > deadline:
                raise TestHostError(f"systemd not running after {BOOT_TIMEOUT:g}s (state: {state})")
            time.sleep(0.3)
        if state == "degraded":
            failed = _run(self.nsenter_argv(["systemctl", "--failed", "--plain", "--no-legend"]), check=False).stdout
            _log(f"{self.name}: systemd is degraded; failed units:\n{failed.rstrip()}")
        while True:
            if proc.poll() is not None:
                raise TestHostError(f"systemd-nspawn exited with status {proc.returncode}")
            banner = _ssh_banner(net["guest_addr"])
            if banner.startswith("SSH-"):
                login = subprocess.run(self.ssh_argv(["true"], connect_timeout=5), stdin=subprocess.DEVNULL,
                                       capture_output=True, text=True, timeout=30, check=False)
                if login.returncode == 0:
                    return
                banner = f"login failed: {login.stderr.strip()}"
            if time.monotonic() > deadline:
                raise TestHostError(f"no SSH login to {net['guest_addr']}:22 after {BOOT_TIMEOUT:g}s ({banner or 'no banner'})")
            time.sleep(0.3)

    def ssh_argv(self, command: Sequence[str], connect_timeout: int = 10) -> List[str]:
        net = self.net()
        return ["ssh", "-F", "/dev/null", "-i", str(self.key), *SSH_OPTIONS, "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
                f"root@{net['guest_addr']}", *command]

    def down(self, quiet: bool = False) -> bool:
        """Power off and remove everything of this instance; return whether anything was there."""
        present = self.dir.exists() or Path("/run/netns", self.netns).exists() or Path("/sys/class/net", self.host_if).exists()
        nspawn = self.nspawn_pid()
        if nspawn is not None:
            self._stop(nspawn)
        # Stopped first: `link` refuses an instance that is not running, so no new link can appear after this.
        with _locked(NET_LOCK):
            for peer in self._linked_peers():
                _remove_link(self, peer, quiet=quiet)
        self._teardown_net()
        _safe_rmtree(self.dir)
        if not quiet:
            _log(f"{self.name} removed" if present else f"{self.name} was not present")
        return present

    def _linked_peers(self) -> List["Instance"]:
        """Instances linked to this one according to either side's records."""
        names = set(self.links())
        for other in base_dir().glob("*/links.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                if self.name in json.loads(other.read_text()):
                    names.add(other.parent.name)
        peers = []
        for name in sorted(names - {self.name}):
            with contextlib.suppress(TestHostError):  # a hand-edited record with an impossible name
                peers.append(Instance(name))
        return peers

    def _stop(self, nspawn: int) -> None:
        init = self.init_pid(nspawn)
        if init is not None:
            _run(self.nsenter_argv(["systemctl", "poweroff"], init), check=False, timeout=30)
        else:  # still starting: nspawn turns SIGTERM into an orderly shutdown of the container
            with contextlib.suppress(ProcessLookupError):
                os.kill(nspawn, signal.SIGTERM)
        if _wait_gone(nspawn, STOP_TIMEOUT):
            return
        _log(f"{self.name}: systemd-nspawn {nspawn} still runs after {STOP_TIMEOUT:g}s, sending SIGTERM")
        with contextlib.suppress(ProcessLookupError):
            os.kill(nspawn, signal.SIGTERM)
        if not _wait_gone(nspawn, 15):
            with contextlib.suppress(ProcessLookupError):
                os.kill(nspawn, signal.SIGKILL)
            _wait_gone(nspawn, 5)
        # Killing PID 1 of the container's PID namespace ends every process in it.
        if init is not None and _alive(init) and _ns_pids(init)[-1:] == ["1"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
            _wait_gone(init, 5)

    def _console_tail(self, lines: int = 25) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def status(self) -> Dict[str, object]:
        nspawn = self.nspawn_pid()
        init = self.init_pid(nspawn) if nspawn else None
        info: Dict[str, object] = {"name": self.name, "state": "absent", "dir": str(self.dir)}
        if self.dir.exists():
            info["state"] = "running" if nspawn else "stopped"
        if nspawn:
            info.update({"nspawn_pid": nspawn, "init_pid": init or "", "systemd": self.system_state(init) if init else "unknown"})
        with contextlib.suppress(TestHostError):
            net = self.net()
            info.update({"ansible_host": net["guest_addr"], "linkcert_lab_host_addr": net["host_addr"],
                         "subnet": net["subnet"], "netns": net["netns"], "host_if": net["host_if"]})
        if self.key.exists():
            info["ssh_private_key_file"] = str(self.key)
        if self.dir.exists():
            info["links"] = {peer: {**record, "state": "up" if _link_present(self.netns, record) else "missing"}
                             for peer, record in sorted(self.links().items())}
        return info

    def inventory(self) -> str:
        net = self.net()
        values = {
            "ansible_host": net["guest_addr"],
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
            "ansible_python_interpreter": "/usr/bin/python3",
            "linkcert_lab_host_addr": net["host_addr"],
            "linkcert_lab_links": {peer: record["peer_addr"] for peer, record in sorted(self.links().items())},
        }
        return f"{self.name}:\n" + "".join(f"  {key}: {json.dumps(val)}\n" for key, val in values.items())


# --------------------------------------------------------------------------- links between instances


def _link_present(netns: str, record: Dict[str, str]) -> bool:
    """Whether ``netns`` has the record's interface, up, carrying its local address."""
    if not Path("/run/netns", netns).exists():
        return False
    proc = _run(["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", record.get("ifname", ""), "up"], check=False)
    subnet = ipaddress.ip_network(record.get("subnet", "0.0.0.0/32"))
    return proc.returncode == 0 and f" {record.get('local_addr')}/{subnet.prefixlen} " in proc.stdout


def _delete_link_if(netns: str, ifname: str) -> bool:
    """Delete ``ifname`` from ``netns`` if it is there (its veth peer goes with it); return whether it was."""
    if not ifname.startswith(LINK_PREFIX) or not Path("/run/netns", netns).exists():
        return False
    if _run(["ip", "-n", netns, "link", "show", "dev", ifname], check=False).returncode != 0:
        return False
    _run(["ip", "-n", netns, "link", "delete", "dev", ifname])
    return True


def _allocate_link() -> ipaddress.IPv4Network:
    """A free /30 of :data:`LINK_POOL` (:data:`NET_LOCK` held): see the module docstring for what counts as used."""
    used = _instance_subnets()
    for other in base_dir().glob("*/links.json"):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
            used.update(ipaddress.ip_network(record["subnet"]) for record in json.loads(other.read_text()).values())
    taken = _netns_networks()
    with contextlib.suppress(OSError):
        for netns in sorted(os.listdir("/run/netns")):
            taken.extend(_netns_networks(netns))
    for subnet in _link_candidates():
        if subnet not in used and not any(subnet.overlaps(net) for net in taken):
            return subnet
    raise TestHostError(f"no free /30 left for links in {LINK_POOL}")


def _pair(name: str, peer: str) -> Tuple[Instance, Instance]:
    first, second = Instance(name), Instance(peer)
    if first.name == second.name:
        raise TestHostError(f"cannot link {name} with itself")
    return first, second


def link(name: str, peer: str) -> Dict[str, str]:
    """Wire running instances ``name`` and ``peer`` with their own veth pair; return ``name``'s record of it.

    Idempotent: an intact link is left as it is. A half-made one (records or interfaces missing on a side) is
    removed and made again.
    """
    a, b = _pair(name, peer)
    with _locked(NET_LOCK):
        for inst in (a, b):
            if not inst.is_up():
                raise TestHostError(f"test host {inst.name} is not up (testhost.py up {inst.name}); "
                                    f"both must run to be linked")
        ifname = link_ifname(a.name, b.name)
        mine, theirs = a.links().get(b.name), b.links().get(a.name)
        if (mine and theirs and mine.get("ifname") == theirs.get("ifname") == ifname
                and mine.get("subnet") == theirs.get("subnet")
                and mine.get("local_addr") == theirs.get("peer_addr")
                and mine.get("peer_addr") == theirs.get("local_addr")
                and _link_present(a.netns, mine) and _link_present(b.netns, theirs)):
            _log(f"{a.name} and {b.name} are already linked: {mine['local_addr']} <-> {mine['peer_addr']} "
                 f"({mine['subnet']}, {ifname})")
            return mine
        if mine or theirs:
            _log(f"repairing the half-made link of {a.name} and {b.name}")
        _remove_link(a, b, quiet=True)
        subnet = _allocate_link()
        addr_a, addr_b = (str(host) for host in subnet.hosts())
        plen = str(subnet.prefixlen)
        # Both ends are created right in the instances' namespaces: nothing ever sits in this machine's.
        _run(["ip", "link", "add", ifname, "netns", a.netns, "type", "veth", "peer", "name", ifname, "netns", b.netns])
        try:
            for inst, addr in ((a, addr_a), (b, addr_b)):
                _run(["ip", "-n", inst.netns, "addr", "add", f"{addr}/{plen}", "dev", ifname])
                _run(["ip", "-n", inst.netns, "link", "set", "dev", ifname, "up"])
            mine = {"local_addr": addr_a, "peer_addr": addr_b, "subnet": str(subnet), "ifname": ifname}
            theirs = {"local_addr": addr_b, "peer_addr": addr_a, "subnet": str(subnet), "ifname": ifname}
            a._write_links({**a.links(), b.name: mine})
            b._write_links({**b.links(), a.name: theirs})
        except BaseException:
            _remove_link(a, b, quiet=True)
            raise
    _log(f"linked {a.name} ({addr_a}) and {b.name} ({addr_b}) over {ifname} ({subnet})")
    return mine


def unlink(name: str, peer: str) -> bool:
    """Remove the link of ``name`` and ``peer`` (idempotent); return whether anything of it was there."""
    a, b = _pair(name, peer)
    with _locked(NET_LOCK):
        return _remove_link(a, b)


def _remove_link(a: Instance, b: Instance, quiet: bool = False) -> bool:
    """Delete the veth of ``a`` and ``b`` from whichever namespace still has it, and both sides' records.

    Call with :data:`NET_LOCK` held. Either instance may be gone already.
    """
    links_a, links_b = a.links(), b.links()
    ifnames = {link_ifname(a.name, b.name)}
    ifnames.update(record.get("ifname", "") for record in (links_a.get(b.name), links_b.get(a.name)) if record)
    found = False
    for ifname in sorted(ifnames):
        found = _delete_link_if(a.netns, ifname) or _delete_link_if(b.netns, ifname) or found
    for inst, links, other in ((a, links_a, b), (b, links_b, a)):
        if other.name in links:
            del links[other.name]
            inst._write_links(links)
            found = True
    if not quiet:
        _log(f"unlinked {a.name} and {b.name}" if found else f"{a.name} and {b.name} were not linked")
    return found


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _ssh_banner(addr: str, timeout: float = 2.0) -> str:
    try:
        with socket.create_connection((addr, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(256).decode(errors="replace").strip()
    except OSError as exc:
        return str(exc)


# --------------------------------------------------------------------------- CLI


def _cmd_root(args: argparse.Namespace) -> int:
    with _locked():
        root = ensure_root(force=args.force)
    print(root)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    net = Instance(args.name).up()
    print(net["guest_addr"])
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    Instance(args.name).down()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    info = Instance(args.name).status()
    for key, val in info.items():
        print(f"{key}: {json.dumps(val, sort_keys=True) if isinstance(val, dict) else val}")
    return 0 if info["state"] == "running" else 3


def _cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise TestHostError("exec: no command given (testhost.py exec NAME -- CMD...)")
    argv = Instance(args.name).nsenter_argv(command)
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127  # not reached


def _cmd_inventory(args: argparse.Namespace) -> int:
    sys.stdout.write(Instance(args.name).inventory())
    return 0


def _cmd_link(args: argparse.Namespace) -> int:
    print(link(args.name, args.peer)["peer_addr"])
    return 0


def _cmd_unlink(args: argparse.Namespace) -> int:
    unlink(args.name, args.peer)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testhost.py", description="Debian 12 test hosts with systemd as PID 1 "
                                     "(systemd-nspawn on a debootstrapped root, SSH on a 198.18.0.0/15 veth).")
    sub = parser.add_subparsers(dest="command", required=True)
    root = sub.add_parser("root", help="build the cached root if missing or outdated (about a minute)")
    root.add_argument("--force", action="store_true", help="rebuild even if the cached root is current")
    root.set_defaults(func=_cmd_root)
    for name, func, helptext in (("up", _cmd_up, "boot instance NAME; prints its address"),
                                 ("down", _cmd_down, "stop and remove instance NAME (idempotent)"),
                                 ("status", _cmd_status, "show instance NAME; exit 3 unless running"),
                                 ("inventory", _cmd_inventory, "print a YAML inventory host entry")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("name")
        cmd.set_defaults(func=func)
    for name, func, helptext in (("link", _cmd_link, "wire running instances NAME and PEER directly (their own "
                                  "veth and /30, idempotent); prints PEER's address on it"),
                                 ("unlink", _cmd_unlink, "remove the link of NAME and PEER (idempotent)")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("name")
        cmd.add_argument("peer")
        cmd.set_defaults(func=func)
    run = sub.add_parser("exec", help="run a command inside instance NAME: exec NAME -- CMD...")
    run.add_argument("name")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=_cmd_exec)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("testhost.py: error: must run as root (debootstrap, network namespaces, systemd-nspawn)", file=sys.stderr)
        return 1
    try:
        return int(args.func(args))
    except TestHostError as exc:
        print(f"testhost.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
