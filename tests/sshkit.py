"""A throw-away OpenSSH server on 127.0.0.1 for the SSH-remote test (tests/test_remote.py).

Everything lives in one temp folder: a fresh host key, a fresh client key, its
``authorized_keys``, the server's own ``sshd_config``, pid file and log. The server runs as the
current user on a free loopback port and logs in only that user with that key; nothing
system-wide is read or changed (the system's ``/etc/ssh/sshd_config`` is never loaded).
Debian's ``openssh-server`` provides ``sshd``; run as root, sshd also needs its
privilege-separation folder ``/run/sshd``, which .ci/run creates as the package's service would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

SSHD = Path(os.environ.get("SSHD", "/usr/sbin/sshd"))
PRIVSEP_DIR = Path("/run/sshd")
LOOPBACK = "127.0.0.1"


class SSHServer(NamedTuple):
    """A running sshd: who logs in, on which port, with which private key; its log."""

    user: str
    port: int
    key: Path
    log: Path

    def logins(self) -> int:
        """How many public-key logins the server has accepted so far."""
        return self.log.read_text().count("Accepted publickey")


def missing() -> str | None:
    """Why this machine cannot run the server (a one-line fix), or None when it can."""
    if not SSHD.is_file():
        return f"{SSHD} not found: apt-get install openssh-server (.ci/run does it)"
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        return f"sshd run as root needs {PRIVSEP_DIR}: mkdir -p {PRIVSEP_DIR} (.ci/run does it)"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fashiondvc-test",
                    "-f", str(path)], check=True, capture_output=True, timeout=60)


@contextmanager
def ssh_server(timeout: float = 60) -> Iterator[SSHServer]:
    """Run ``sshd`` on 127.0.0.1 (public-key logins for the current user only) until exit.

    Yields
    ------
    SSHServer
        The user, port and private key for ``ssh://<user>@127.0.0.1:<port>/...``.

    Raises
    ------
    RuntimeError
        When sshd cannot run here (`missing`), exits early, or does not listen within
        ``timeout`` seconds; the message holds its log.
    """
    if reason := missing():
        raise RuntimeError(reason)
    base = Path(tempfile.mkdtemp(prefix="fashiondvc-sshd-"))
    host_key, client_key, log = base / "host_key", base / "client_key", base / "sshd.log"
    _keygen(host_key)
    _keygen(client_key)
    authorized = base / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized)
    user = pwd.getpwuid(os.getuid()).pw_name
    port = free_port()
    config = base / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {LOOPBACK}", f"Port {port}", f"HostKey {host_key}",
        f"PidFile {base / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
        f"AllowUsers {user}", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no",  # the temp folder's parents (/tmp) are world-writable
        "Subsystem sftp internal-sftp", "LogLevel INFO", ""]))
    proc = subprocess.Popen([str(SSHD), "-D", "-f", str(config), "-E", str(log)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while "Server listening on" not in (log.read_text() if log.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not listen on {LOOPBACK}:{port} (exit code "
                                   f"{proc.poll()}):\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.2)
        yield SSHServer(user, port, client_key, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
