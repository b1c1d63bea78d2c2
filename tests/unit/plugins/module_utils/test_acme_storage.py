# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Certificate storage: modes, versions, the live symlink, and failures in the middle of an install."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import typing as t
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_storage as storage
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import CertStore, atomic_write
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError

DOMAIN = "links.customer.com"


def pem_set(n: int) -> t.Tuple[bytes, bytes, bytes]:
    return (b"-----BEGIN PRIVATE KEY-----\nkey%d\n-----END PRIVATE KEY-----\n" % n,
            b"-----BEGIN CERTIFICATE-----\ncert%d\n-----END CERTIFICATE-----\n" % n,
            b"-----BEGIN CERTIFICATE-----\nchain%d\n-----END CERTIFICATE-----\n" % n)


def mode_of(path: t.Union[str, Path]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def temp_files(root: Path) -> t.List[Path]:
    return [p for p in root.rglob(".*") if "tmp" in p.name]


def test_install_and_read(tmp_path: Path) -> None:
    root = tmp_path / "certs"
    store = CertStore(root)
    key, cert, chain = pem_set(1)
    store.install(DOMAIN, key, cert, chain)
    live = store.live(DOMAIN)
    assert live == root / DOMAIN
    assert live.is_symlink()
    assert not os.path.isabs(os.readlink(live))  # relative: the tree can be moved or bind-mounted
    assert mode_of(root) == 0o755
    assert mode_of(root / ".versions") == 0o700
    version = store.versions(DOMAIN)[-1]
    assert mode_of(version) == 0o755
    assert os.path.realpath(live) == os.path.realpath(version)
    paths = store.paths(DOMAIN)
    assert paths == {name: str(live / ("%s.pem" % name)) for name in ("privkey", "cert", "chain", "fullchain")}
    for name, expected_mode in {"privkey": 0o600, "cert": 0o644, "chain": 0o644, "fullchain": 0o644}.items():
        assert mode_of(paths[name]) == expected_mode, name
    assert Path(paths["fullchain"]).read_bytes() == cert + chain
    assert store.read(DOMAIN) == {"privkey": key, "cert": cert, "chain": chain, "fullchain": cert + chain}
    assert not temp_files(root)


def test_fullchain_adds_missing_newline(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.install(DOMAIN, b"k\n", b"CERT", b"CHAIN\n")
    assert store.read(DOMAIN)["fullchain"] == b"CERT\nCHAIN\n"


def test_read_not_installed_or_incomplete(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "missing-root")
    assert store.read(DOMAIN) is None
    store = CertStore(tmp_path)
    assert store.read(DOMAIN) is None
    store.install(DOMAIN, *pem_set(1))
    os.unlink(store.versions(DOMAIN)[-1] / "chain.pem")
    assert store.read(DOMAIN) is None


def test_install_twice_and_prune(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.install(DOMAIN, *pem_set(1))
    first = store.versions(DOMAIN)
    store.install(DOMAIN, *pem_set(2))
    second = store.versions(DOMAIN)
    assert len(first) == 1 and len(second) == 2
    assert second[0] == first[0]  # old version kept
    assert os.path.realpath(store.live(DOMAIN)) == os.path.realpath(second[-1])
    assert store.read(DOMAIN)["cert"] == pem_set(2)[1]
    assert (first[0] / "cert.pem").read_bytes() == pem_set(1)[1]
    for n in range(3, 7):
        store.install(DOMAIN, *pem_set(n))
    versions = store.versions(DOMAIN)
    assert len(versions) == storage.KEEP_VERSIONS
    assert [(v / "cert.pem").read_bytes() for v in versions] == [pem_set(n)[1] for n in (4, 5, 6)]
    assert os.path.realpath(store.live(DOMAIN)) == os.path.realpath(versions[-1])
    assert not temp_files(tmp_path)


def test_prune_never_deletes_live(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.install(DOMAIN, *pem_set(1))
    live_version = store.versions(DOMAIN)[0]
    # versions that sort after the live one (e.g. written by a run whose symlink swap never happened)
    for n in range(3):
        (live_version.parent / ("99990101T000000.00000%dZ-feed" % n)).mkdir()
    store._prune(DOMAIN)  # pylint: disable=protected-access
    assert live_version.exists()
    assert store.read(DOMAIN)["cert"] == pem_set(1)[1]


def snapshot(store: CertStore) -> t.Tuple[t.Optional[t.Dict[str, bytes]], str, t.List[Path]]:
    return store.read(DOMAIN), os.readlink(store.live(DOMAIN)), store.versions(DOMAIN)


def fail_symlink_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace(src: t.Any, dst: t.Any, **kwargs: t.Any) -> None:
        if os.path.islink(src):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst, **kwargs)
    monkeypatch.setattr(os, "replace", replace)


def fail_third_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = storage.atomic_write
    calls = []

    def write(path: t.Any, data: bytes, mode: int = 0o644) -> None:
        calls.append(path)
        if len(calls) == 3:
            # a real failure inside atomic_write: the temporary file exists when the write fails
            def fsync(fd: int) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            with monkeypatch.context() as patch:
                patch.setattr(os, "fsync", fsync)
                real_write(path, data, mode)
        real_write(path, data, mode)
    monkeypatch.setattr(storage, "atomic_write", write)


@pytest.mark.parametrize("break_it", [fail_symlink_swap, fail_third_write], ids=["symlink-swap", "third-file"])
def test_failed_install_keeps_previous_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            break_it: t.Callable[[pytest.MonkeyPatch], None]) -> None:
    store = CertStore(tmp_path)
    store.install(DOMAIN, *pem_set(1))
    before = snapshot(store)
    break_it(monkeypatch)
    with pytest.raises(LinkcertError) as info:
        store.install(DOMAIN, *pem_set(2))
    assert info.value.reason == "write_failed"
    assert "No space left on device" in info.value.msg and "ENOSPC" in info.value.msg
    monkeypatch.undo()
    assert snapshot(store) == before
    assert store.read(DOMAIN) == {"privkey": pem_set(1)[0], "cert": pem_set(1)[1], "chain": pem_set(1)[2],
                                  "fullchain": pem_set(1)[1] + pem_set(1)[2]}
    assert not temp_files(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".versions", DOMAIN]


@pytest.mark.parametrize("break_it", [fail_symlink_swap, fail_third_write], ids=["symlink-swap", "third-file"])
def test_failed_first_install_leaves_nothing_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  break_it: t.Callable[[pytest.MonkeyPatch], None]) -> None:
    store = CertStore(tmp_path)
    break_it(monkeypatch)
    with pytest.raises(LinkcertError):
        store.install(DOMAIN, *pem_set(1))
    monkeypatch.undo()
    assert store.read(DOMAIN) is None
    assert not os.path.lexists(store.live(DOMAIN))
    assert store.versions(DOMAIN) == []
    assert not temp_files(tmp_path)


def test_legacy_directory_moved_aside(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    legacy = tmp_path / DOMAIN
    legacy.mkdir()
    (legacy / "cert.pem").write_bytes(b"admin cert")
    (legacy / "notes.txt").write_bytes(b"keep me")
    store.install(DOMAIN, *pem_set(1))
    assert store.live(DOMAIN).is_symlink()
    assert store.read(DOMAIN)["cert"] == pem_set(1)[1]
    moved = [p for p in (tmp_path / ".versions" / DOMAIN).iterdir() if p.name.startswith("legacy-")]
    assert len(moved) == 1
    assert (moved[0] / "cert.pem").read_bytes() == b"admin cert"
    assert (moved[0] / "notes.txt").read_bytes() == b"keep me"
    assert moved[0] not in store.versions(DOMAIN)
    for n in range(2, 7):  # legacy files are never pruned
        store.install(DOMAIN, *pem_set(n))
    assert (moved[0] / "notes.txt").read_bytes() == b"keep me"


def test_legacy_directory_restored_when_link_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CertStore(tmp_path)
    legacy = tmp_path / DOMAIN
    legacy.mkdir()
    (legacy / "cert.pem").write_bytes(b"admin cert")
    fail_symlink_swap(monkeypatch)
    with pytest.raises(LinkcertError):
        store.install(DOMAIN, *pem_set(1))
    monkeypatch.undo()
    assert not legacy.is_symlink()
    assert (legacy / "cert.pem").read_bytes() == b"admin cert"
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("domain", ["../x", "a/b", ".versions", ".", "..", "", "/etc", "x\x00y", None])
def test_bad_domain_rejected(tmp_path: Path, domain: t.Any) -> None:
    store = CertStore(tmp_path / "root")
    for call in (lambda: store.live(domain), lambda: store.paths(domain), lambda: store.read(domain), lambda: store.versions(domain),
                 lambda: store.install(domain, *pem_set(1))):
        with pytest.raises(LinkcertError) as info:
            call()
        assert info.value.reason == "invalid_input"
    assert not (tmp_path / "root").exists()
    assert not (tmp_path / "x").exists()


def test_atomic_write_replaces_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "file.pem"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    atomic_write(target, b"new secret", 0o600)
    assert target.read_bytes() == b"new secret"
    assert mode_of(target) == 0o600
    atomic_write(str(target), b"again")
    assert mode_of(target) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["file.pem"]


def test_atomic_write_sets_mode_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: t.List[t.Tuple[int, int]] = []
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: t.Any, **kwargs: t.Any) -> t.Any:
        info = os.fstat(fd)
        seen.append((stat.S_IMODE(info.st_mode), info.st_size))
        return real_fdopen(fd, *args, **kwargs)
    monkeypatch.setattr(os, "fdopen", fdopen)
    atomic_write(tmp_path / "k.pem", b"secret", 0o600)
    assert seen == [(0o600, 0)]  # the secret is written into a file that is already 0600


def test_atomic_write_enospc_leaves_target_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cert.pem"
    target.write_bytes(b"old content")

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(LinkcertError) as info:
        atomic_write(target, b"new content")
    assert info.value.reason == "write_failed"
    assert info.value.item == str(target)
    assert "ENOSPC" in info.value.msg
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["cert.pem"]


WRITER = textwrap.dedent("""
    import json, sys
    from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write
    from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError
    try:
        atomic_write(sys.argv[1], b"data")
        print(json.dumps(["written", None, None]))
    except LinkcertError as exc:
        print(json.dumps([exc.reason, exc.item, exc.msg]))
""")


def unprivileged_python(drop: t.Dict[str, t.Any]) -> str:
    """An interpreter the unprivileged user can run (a pyenv build under /root is out of its reach)."""
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        try:
            probe = subprocess.run([python, "-c", "pass"], capture_output=True, timeout=60, check=False, **drop)  # type: ignore[call-overload]
        except OSError:  # not executable for that user
            continue
        if probe.returncode == 0:
            return python
    pytest.skip("no Python interpreter that the unprivileged user can run")
    return ""  # pragma: no cover


def readable_module_utils(where: str) -> str:
    """A copy of the collection's module_utils under ``where`` (world-readable), as an import path.

    The checkout may live where the unprivileged user cannot reach (``/root/x`` is 0700), so the child
    imports this copy, not the checkout. Returns the directory to put on PYTHONPATH."""
    source = Path(storage.__file__).resolve().parent
    package = Path(where, "ansible_collections", "mailops", "linkcert", "plugins", "module_utils")
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [package, *package.parents]:
        if folder == Path(where):
            break
        (folder / "__init__.py").touch()
    for dirpath, dirnames, filenames in os.walk(where):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return where


def test_atomic_write_read_only_directory() -> None:
    # root ignores directory permissions, so the write runs in a child process as nobody. Nothing it needs is
    # under tmp_path or the checkout (either may have 0700 parents, such as /root): the directory it writes to
    # and the code it imports are in world-readable temporary directories.
    directory = tempfile.mkdtemp(prefix="linkcert-ro-")
    code = tempfile.mkdtemp(prefix="linkcert-code-")
    try:
        os.chmod(directory, 0o555)
        os.chmod(code, 0o755)
        target = os.path.join(directory, "new.pem")
        drop = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
        env = dict(os.environ, PYTHONPATH=readable_module_utils(code))
        python = unprivileged_python(drop)
        proc = subprocess.run([python, "-c", WRITER, target], capture_output=True, text=True, env=env, timeout=60, check=False,
                              cwd=code, **drop)  # type: ignore[call-overload]
        assert proc.returncode == 0, proc.stderr
        reason, item, message = json.loads(proc.stdout)
        assert reason == "write_failed"
        assert item == target
        assert "Permission denied" in message and "EACCES" in message
        assert os.listdir(directory) == []
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory)
        shutil.rmtree(code)


def test_domains_in_lists_only_normal_host_names(tmp_path: Path) -> None:
    for name in ("links.customer.com.json", "a.example.json", "Upper.Example.json", ".hidden.json", "notes.txt",
                 "links.customer.com.json.corrupt-20261130", "bad name.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "sub.example.json").mkdir()
    assert storage.domains_in(tmp_path, suffix=".json") == ["a.example", "links.customer.com", "sub.example"]
    assert storage.domains_in(tmp_path / "missing") == []


def test_cert_store_domains_are_the_live_links(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.install(DOMAIN, *pem_set(1))
    (tmp_path / "not-a-link.example").mkdir()
    assert store.domains() == [DOMAIN]


KILLED_INSTALL = textwrap.dedent("""
    import os, signal, sys
    from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import CertStore
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would, with a temporary file written but not renamed
        real_fsync(fd)
    os.fsync = fsync
    CertStore(sys.argv[1]).install(sys.argv[2], b"key-new", b"cert-new", b"chain-new")
""")


def killed_install(root: Path, fsync_number: int) -> None:
    """An install in a child process that is SIGKILLed in its ``fsync_number``-th fsync."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", KILLED_INSTALL, str(root), DOMAIN, str(fsync_number)], env=env, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr


def test_install_after_a_killed_install_removes_its_leftovers(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    store.install(DOMAIN, *pem_set(1))
    store.install(DOMAIN, *pem_set(2))
    lock = store.install_lock_path(DOMAIN)
    assert lock == tmp_path / ".versions" / (".%s.lock" % DOMAIN)
    assert sorted(os.listdir(store.versions_dir(DOMAIN))) == sorted(v.name for v in store.versions(DOMAIN)), "versions only"
    assert lock.read_bytes() == b"", "a finished install leaves no mark"
    good = store.versions(DOMAIN)
    killed_install(tmp_path, 3)  # killed in its third fsync: privkey.pem written, cert.pem still a temporary file
    partial = [v for v in store.versions(DOMAIN) if v not in good]
    assert len(partial) == 1 and temp_files(partial[0]), "the killed install left a partial version with a temporary file"
    assert lock.read_bytes().strip().isdigit(), "the killed install left its process id in the lock file"
    assert store.read(DOMAIN)["cert"] == pem_set(2)[1], "the live pair is untouched"
    # what a kill between creating the temporary link and renaming it leaves, and entries that are not leftovers
    os.symlink(os.path.join(".versions", DOMAIN, good[-1].name), tmp_path / (".%s.tmp-0badf00d" % DOMAIN))
    os.symlink("elsewhere", tmp_path / (".www.%s.tmp-0badf00d" % DOMAIN))
    (tmp_path / ".versions" / DOMAIN / "legacy-20200101T000000.000000Z").mkdir()

    store.install(DOMAIN, *pem_set(3))
    assert store.read(DOMAIN)["cert"] == pem_set(3)[1]
    versions = store.versions(DOMAIN)
    assert good[0] in versions and good[1] in versions and len(versions) == 3, "complete versions are kept"
    assert not partial[0].exists()
    assert not os.path.lexists(tmp_path / (".%s.tmp-0badf00d" % DOMAIN))
    assert os.path.islink(tmp_path / (".www.%s.tmp-0badf00d" % DOMAIN)), "another domain's entries are left alone"
    assert (tmp_path / ".versions" / DOMAIN / "legacy-20200101T000000.000000Z").is_dir()
    assert lock.read_bytes() == b""


def test_first_install_after_a_killed_one(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    killed_install(tmp_path, 1)  # killed writing the private key
    assert store.read(DOMAIN) is None and not os.path.lexists(store.live(DOMAIN))
    assert temp_files(tmp_path)
    store.install(DOMAIN, *pem_set(1))
    assert store.read(DOMAIN)["privkey"] == pem_set(1)[0]
    assert len(store.versions(DOMAIN)) == 1
    assert not temp_files(tmp_path)


INSTALL_LOCK_HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
""")


def test_install_waits_for_another_installer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CertStore(tmp_path)
    store.install(DOMAIN, *pem_set(1))
    holder = subprocess.Popen([sys.executable, "-c", INSTALL_LOCK_HOLDER, str(store.install_lock_path(DOMAIN))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(storage, "INSTALL_LOCK_TIMEOUT", 0.2)
        with pytest.raises(LinkcertError) as info:
            store.install(DOMAIN, *pem_set(2))
        assert info.value.reason == "write_failed" and "another process is installing" in info.value.msg
        assert store.read(DOMAIN)["cert"] == pem_set(1)[1] and len(store.versions(DOMAIN)) == 1
    finally:
        if holder.stdin:
            holder.stdin.close()
        holder.wait(10)
        if holder.stdout:
            holder.stdout.close()
    store.install(DOMAIN, *pem_set(2))
    assert store.read(DOMAIN)["cert"] == pem_set(2)[1]
