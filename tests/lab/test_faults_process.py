"""acme_http01_cert when the process or the disk gives out: SIGKILL in the middle of an order, SIGKILL in the
middle of a renewal (while the CA validates, and while the new version is being written), a full disk, and two
runs at once on one domain.

Every case checks what is on disk afterwards, the way an operator would after a crash: the live key and
certificate are a matching pair (or absent), the key is 0600, the state file parses, no temporary file is left,
the domain's lock is free, and the next ordinary run finishes the job.

The process cases run against a second Pebble whose validation is slow (0 to 3 s per challenge), so a run can be
caught with its order in flight.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import labctl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from labtools import BIN, REPO, ModuleRun, acme_args, ansible_env, run_module

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.faults]

ADDR = "127.0.0.1"
NOWHERE = "127.0.0.9"
# Pebble sleeps a random 0..PEBBLE_VA_SLEEPTIME seconds before it validates a challenge; every order validates afresh.
SLOW_VALIDATION = {"PEBBLE_VA_SLEEPTIME": "3", "PEBBLE_VA_NOSLEEP": "0", "PEBBLE_AUTHZREUSE": "0"}
PEM_FILES = ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem")
ENOSPC_TEXT = "No space left on device (ENOSPC)"


@pytest.fixture(scope="module")
def slow_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labctl.Lab]:
    ports = dict(zip(labctl.PORT_KEYS, labctl.free_ports(len(labctl.PORT_KEYS), ADDR)))
    lab = labctl.Lab(dir=tmp_path_factory.mktemp("slowlab"), addr=ADDR, ports=ports, nginx=True, default_ipv4=NOWHERE, timeout=30.0,
                     pebble_env=SLOW_VALIDATION)
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def assert_pair(files: Dict[str, bytes]) -> None:
    """The private key belongs to the certificate."""
    key = serialization.load_pem_private_key(files["privkey.pem"], None)
    cert = x509.load_pem_x509_certificate(files["cert.pem"])
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki), "live key and certificate do not match"


class Roots:
    """The cert_root and state_root of one test, and what can be said about a domain's files in them."""

    def __init__(self, cert_root: Path, state_root: Path) -> None:
        self.cert_root = cert_root
        self.state_root = state_root

    def args(self, lab: labctl.Lab, domain: str, **extra: Any) -> Dict[str, Any]:
        return acme_args(lab, self.cert_root, self.state_root, [{"domain": domain}], **extra)

    def live(self, domain: str) -> Path:
        return self.cert_root / domain

    def versions(self, domain: str) -> List[Path]:
        base = self.cert_root / ".versions" / domain
        return sorted(p for p in base.iterdir() if not p.name.startswith(".")) if base.is_dir() else []

    def pair(self, domain: str) -> Dict[str, bytes]:
        """The live files, read through one resolution of the live link."""
        base = Path(os.path.realpath(self.live(domain)))
        return {name: (base / name).read_bytes() for name in PEM_FILES}

    def state(self, domain: str) -> Optional[Dict[str, Any]]:
        path = self.state_root / ("%s.json" % domain)
        return json.loads(path.read_text()) if path.exists() else None

    def leftovers(self) -> List[str]:
        """Temporary files (``.NAME.tmp-XXXX``) anywhere under the roots."""
        found = []
        for root in (self.cert_root, self.state_root):
            if root.exists():
                found += [str(p) for p in root.rglob("*") if ".tmp-" in p.name]
        return sorted(found)

    def assert_lock_free(self, domain: str) -> None:
        """Nobody holds the domain's lock: a run that was killed must not have left it held (by a survivor)."""
        path = self.state_root / ".locks" / ("%s.lock" % domain)
        if not path.exists():
            return
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise AssertionError("the lock %s is still held after the run was killed" % path) from None
        finally:
            os.close(fd)

    def assert_installed(self, domain: str, state_too: bool = True) -> Dict[str, bytes]:
        """A complete, matching live pair with the right modes, recorded as issued in the state file (with ``state_too``)."""
        live = self.live(domain)
        assert live.is_symlink(), "%s is not the live link" % live
        files = self.pair(domain)
        assert_pair(files)
        cert = x509.load_pem_x509_certificate(files["cert.pem"])
        assert files["fullchain.pem"] == files["cert.pem"] + files["chain.pem"]
        assert stat.S_IMODE(os.stat(live / "privkey.pem").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(live / "cert.pem").st_mode) == 0o644
        if state_too:
            state = self.state(domain)
            assert state is not None and state["ssl_status"] == "issued", state
            assert state["serial"].lstrip("0") == format(cert.serial_number, "x").lstrip("0")
        return files

    def assert_clean(self, domain: str) -> None:
        """No temporary file, every version directory complete, state JSON that parses, the lock free."""
        assert self.leftovers() == []
        for version in self.versions(domain):
            assert sorted(os.listdir(version)) == sorted(PEM_FILES), "incomplete version left behind: %s" % version
        for path in self.state_root.glob("*.json"):
            json.loads(path.read_text())
        self.assert_lock_free(domain)


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    return Roots(tmp_path / "live", tmp_path / "state")


def route(lab: labctl.Lab, name: str) -> None:
    lab.dns_set("a", name, [lab.addr])


def challenge_files(lab: labctl.Lab) -> Set[str]:
    folder = lab.webroot / ".well-known" / "acme-challenge"
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


# ------------------------------------------------------------------ processes


def start_module(args: Dict[str, Any]) -> subprocess.Popen:
    """``ansible localhost -m mailops.linkcert.acme_http01_cert -a JSON`` in the background, in its own session."""
    cmd = [str(BIN / "ansible"), "localhost", "-m", "mailops.linkcert.acme_http01_cert", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-c", "local"]
    return subprocess.Popen(cmd, env=ansible_env({"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 150) -> ModuleRun:
    out, err = proc.communicate(timeout=timeout)
    return ModuleRun(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


def _children() -> Dict[int, List[int]]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> List[int]:
    children, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_tree(proc: subprocess.Popen) -> List[int]:
    """SIGKILL the ``ansible`` process and every process under it, as the OOM killer or a power cut would.

    Killing the process group is not enough: ansible's worker calls setsid(), so the worker and the module run
    in sessions of their own. Everything is stopped first, so nothing forks or is re-parented out of reach.
    """
    stopped: List[int] = []
    while True:
        fresh = [pid for pid in process_tree(proc.pid) if pid not in stopped]
        if not fresh:
            break
        _signal(fresh, signal.SIGSTOP)
        stopped.extend(fresh)
    _signal(stopped, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(pid) for pid in stopped), "killed processes still running"
    return stopped


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pids: List[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop_when(predicate: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    """Poll ``predicate`` every few milliseconds while ``proc`` runs; once it holds, SIGSTOP the run at once.

    The run's process tree is listed ahead (walking /proc takes milliseconds), so the stop lands within a
    poll interval of the moment; kill_tree then finishes the job.
    """
    deadline = time.monotonic() + timeout
    tree: List[int] = []
    listed = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - listed > 0.05:
            tree, listed = process_tree(proc.pid), time.monotonic()
        if predicate():
            _signal(tree, signal.SIGSTOP)
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError("the run ended before %s:\n%s\n%s" % (what, out, err))
        time.sleep(0.001)
    kill_tree(proc)
    raise AssertionError("no %s within %d s" % (what, timeout))


def order_count(lab: labctl.Lab) -> int:
    """Orders Pebble has created so far (it logs each one)."""
    return lab.log_file("pebble").read_text(errors="replace").count("Added order ")


# ------------------------------------------------------------------ cases


def test_sigkill_during_first_issuance(slow_lab, roots):
    domain = "killed.slow.test"
    route(slow_lab, domain)
    args = roots.args(slow_lab, domain)
    published = challenge_files(slow_lab)
    proc = start_module(args)
    # The challenge file appears after the order is placed: from then on the order is in flight at the CA.
    stop_when(lambda: bool(challenge_files(slow_lab) - published), proc, "a published challenge")
    kill_tree(proc)

    assert not os.path.lexists(roots.live(domain)), "nothing may be live after a run killed before it installed"
    assert roots.versions(domain) == []
    assert roots.state(domain) is None or isinstance(roots.state(domain), dict)
    roots.assert_clean(domain)
    # The killed run could not withdraw its token. Once it is older than any live run's, the next run that
    # orders removes it (a fresh one is left alone: it may belong to a run still validating).
    left = challenge_files(slow_lab) - published
    assert left, "the killed run's token is still in the webroot"
    token_dir = slow_lab.webroot / ".well-known" / "acme-challenge"
    long_ago = time.time() - 3 * 3600
    for name in left:
        os.utime(token_dir / name, (long_ago, long_ago))

    run = run_module("acme_http01_cert", args)
    assert run.state == "CHANGED", run.stdout
    result = run.result["results"][0]
    assert (result["action"], result["ssl_status"], result["reason"]) == ("issued", "issued", "issued"), result
    assert not left & challenge_files(slow_lab), "the stale token was swept"
    roots.assert_installed(domain)
    roots.assert_clean(domain)
    assert len(roots.versions(domain)) == 1


@pytest.mark.parametrize("moment", ["validating", "installing"])
def test_sigkill_during_forced_renewal(slow_lab, roots, moment):
    domain = "renew-%s.slow.test" % moment
    route(slow_lab, domain)
    args = roots.args(slow_lab, domain)
    first = run_module("acme_http01_cert", args)
    assert first.state == "CHANGED", first.stdout
    before = roots.assert_installed(domain)

    # Killed while the CA validates, or as soon as the new version directory exists (its files being written, the
    # live link not yet switched). The latter is a race the test can lose on a loaded machine (the whole install is
    # a few fsyncs): then the killed run did switch to its complete new pair, which is checked, and the kill is retried
    # (the state file then still describes the previous certificate: the run was killed before it saved it).
    late = 0
    for _attempt in range(3):
        versions_before = roots.versions(domain)
        link_before = os.readlink(roots.live(domain))
        published = challenge_files(slow_lab)
        proc = start_module(dict(args, force=True))
        if moment == "validating":
            stop_when(lambda: bool(challenge_files(slow_lab) - published), proc, "a published challenge")
        else:
            stop_when(lambda: len(roots.versions(domain)) > len(versions_before), proc, "a new version directory")
        kill_tree(proc)
        roots.assert_lock_free(domain)
        if os.readlink(roots.live(domain)) == link_before:
            break
        assert moment == "installing", "the live link moved although the run was killed before the CA validated"
        before = roots.assert_installed(domain, state_too=False)
        late += 1
    else:
        pytest.fail("three kills in a row came too late to catch the install half-way")

    assert roots.pair(domain) == before, "the working pair changed"
    assert roots.assert_installed(domain, state_too=not late) == before

    again = run_module("acme_http01_cert", dict(args, force=True))
    assert again.state == "CHANGED", again.stdout
    result = again.result["results"][0]
    assert (result["action"], result["ssl_status"]) == ("renewed", "issued"), result
    assert result["serial"] != first.result["results"][0]["serial"]
    after = roots.assert_installed(domain)
    assert after["privkey.pem"] != before["privkey.pem"] and after["cert.pem"] != before["cert.pem"]
    roots.assert_clean(domain)
    assert (roots.cert_root / link_before).is_dir(), "the previous version is kept"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted after the test."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("the disk-full case mounts a small tmpfs, and mount/umount are not installed")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount_point)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("the disk-full case needs to mount a 256 KiB tmpfs, which is not permitted here: %s" % (proc.stderr.strip() or proc.returncode))
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a filler file in ``directory`` until the file system says ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * 4096
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        (directory / "probe").write_bytes(b"x")
    assert info.value.errno == errno.ENOSPC
    (directory / "probe").unlink(missing_ok=True)
    return filler


def failure_of(run: ModuleRun) -> Dict[str, Any]:
    """The reason and message of a failed run: the module's own failure, or the certificate's."""
    if run.state.startswith("FAILED"):
        return {"reason": run.result.get("reason"), "message": run.result.get("msg", ""), "where": "module"}
    result = run.result["results"][0]
    assert result["action"] == "failed", result
    return {"reason": result["reason"], "message": result["message"], "where": "result"}


@pytest.mark.parametrize("full", ["both-roots", "cert-root"])
def test_disk_full_keeps_the_working_pair(lab, tmp_path, small_disk, full):
    domain = "full-%s.acme.test" % full
    route(lab, domain)
    state_root = small_disk / "state" if full == "both-roots" else tmp_path / "state"
    roots = Roots(small_disk / "live", state_root)
    args = roots.args(lab, domain)
    first = run_module("acme_http01_cert", args)
    assert first.state == "CHANGED", first.stdout
    before = roots.assert_installed(domain)
    state_before = roots.state(domain)
    versions_before = roots.versions(domain)

    filler = fill(small_disk)
    run = run_module("acme_http01_cert", dict(args, force=True))
    failure = failure_of(run)
    assert failure["reason"] == "write_failed", run.stdout
    assert ENOSPC_TEXT in failure["message"] and str(small_disk) in failure["message"], failure
    assert roots.pair(domain) == before
    assert roots.assert_installed(domain) == before
    assert failure["where"] == "result", "a full disk is this certificate's failure, not the module's"
    if full == "cert-root":
        # The certificate could not be stored: the state file still describes the working pair, and records the failure.
        state = roots.state(domain)
        assert (state["ssl_status"], state["serial"], state["reason"]) == ("issued", state_before["serial"], "write_failed")
    assert roots.versions(domain) == versions_before
    roots.assert_clean(domain)

    filler.unlink()
    renewed = run_module("acme_http01_cert", dict(args, force=True))
    assert renewed.state == "CHANGED", renewed.stdout
    assert renewed.result["results"][0]["action"] == "renewed"
    after = roots.assert_installed(domain)
    assert after["privkey.pem"] != before["privkey.pem"]
    roots.assert_clean(domain)


def test_two_runs_at_once_with_slow_validation(slow_lab, roots):
    domain = "twice.slow.test"
    route(slow_lab, domain)
    args = roots.args(slow_lab, domain)
    orders_before = order_count(slow_lab)
    procs = [start_module(args) for _run in range(2)]
    runs = [finish(proc) for proc in procs]
    results = [run.result["results"][0] for run in runs]
    by_action = {result["action"]: result for result in results}
    assert sorted(by_action) == ["issued", "none"], results
    other = by_action["none"]
    # The second run waited for the lock and then found the new certificate not due (or, had it waited too long, gave up on the lock).
    assert other["reason"] in ("not_due", "locked"), other
    assert order_count(slow_lab) - orders_before == 1, "exactly one order reached the CA"
    assert len(roots.versions(domain)) == 1, "never two certificates"
    files = roots.assert_installed(domain)
    cert = x509.load_pem_x509_certificate(files["cert.pem"])
    assert format(cert.serial_number, "x") == by_action["issued"]["serial"].lstrip("0")
    roots.assert_clean(domain)
