"""ssh -L port forwarding: one SSH session carries every forwarded connection as a channel."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.netns import Netns, sh
from bench.paths import ECHO_PORT, IPERF_PORT, Endpoints, TcpTarget, tool_version
from bench.paths._base import DaemonPath

__all__ = ["Ssh"]

_SSHD_PORT = 2222
_FORWARDS = ((25201, IPERF_PORT), (27007, ECHO_PORT))
_PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it


class Ssh(DaemonPath):
    """A: 127.0.0.1 -> ssh -L (A) == one SSH session ==> sshd (B) -> 127.0.0.1 servers in B."""

    name = "ssh"
    title = "ssh -L port forwarding (OpenSSH defaults)"
    binaries: ClassVar[Mapping[str, str]] = {
        "sshd": "openssh-server",
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
    }

    def __init__(self) -> None:
        super().__init__()
        self._made_privsep = False

    def versions(self) -> dict[str, str]:
        return {"openssh": tool_version(["ssh", "-V"])}

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        if not _PRIVSEP_DIR.exists():
            _PRIVSEP_DIR.mkdir(mode=0o755)
            self._made_privsep = True
        host_key, client_key = tmpdir / "host_ed25519", tmpdir / "client_ed25519"
        for key, comment in ((host_key, "ub-bench-host"), (client_key, "ub-bench-client")):
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])
        (tmpdir / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
        host_pub = host_key.with_suffix(".pub").read_text().split()
        (tmpdir / "known_hosts").write_text(
            f"[{ns_b.addr}]:{_SSHD_PORT} {host_pub[0]} {host_pub[1]}\n"
        )
        (tmpdir / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {_SSHD_PORT}",
                    f"ListenAddress {ns_b.addr}",
                    f"HostKey {host_key}",
                    "PidFile none",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    f"AuthorizedKeysFile {tmpdir / 'authorized_keys'}",
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        pid_b = self.spawn(
            ns_b,
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(tmpdir / "sshd_config")],
            tmpdir / "sshd.log",
        )
        ns_b.wait_listen(_SSHD_PORT)
        opts = self._client_opts(tmpdir, client_key)
        forwards = [
            a
            for local, remote in _FORWARDS
            for a in ("-L", f"127.0.0.1:{local}:127.0.0.1:{remote}")
        ]
        pid_a = self.spawn(
            ns_a,
            [
                "ssh",
                *opts,
                "-N",
                "-T",
                "-o",
                "ExitOnForwardFailure=yes",
                *forwards,
                f"root@{ns_b.addr}",
            ],
            tmpdir / "ssh.log",
        )
        for local, _ in _FORWARDS:
            ns_a.wait_listen(local)
        return Endpoints(
            throughput=TcpTarget(ns_a.name, "127.0.0.1", _FORWARDS[0][0]),
            rr=TcpTarget(ns_a.name, "127.0.0.1", _FORWARDS[1][0]),
            cpu_pids={"ssh(A)": pid_a, "sshd(B)": pid_b},
            notes=(self._negotiated(ns_a, ns_b, opts),),
        )

    def teardown(self) -> None:
        super().teardown()
        if self._made_privsep:
            with contextlib.suppress(OSError):
                _PRIVSEP_DIR.rmdir()
            self._made_privsep = False

    @staticmethod
    def _client_opts(d: Path, key: Path) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={d / 'known_hosts'}",
            "-o",
            "LogLevel=ERROR",
            "-i",
            str(key),
            "-p",
            str(_SSHD_PORT),
        ]

    @staticmethod
    def _negotiated(ns_a: Netns, ns_b: Netns, opts: list[str]) -> str:
        """Key exchange and cipher, from one extra short session inside the namespaces."""
        try:
            out = ns_a.run(
                ["ssh", *opts, "-v", f"root@{ns_b.addr}", "true"],
                timeout=15,
                check=False,
                merge=True,
            )
        except subprocess.TimeoutExpired:
            return "cipher unknown (ssh -v timed out)"
        kex = cipher = "?"
        for line in out.splitlines():
            if "kex: algorithm:" in line:
                kex = line.rsplit(" ", 1)[-1]
            elif "kex: server->client cipher:" in line:
                cipher = line.split("cipher:", 1)[1].split()[0]
        return f"cipher {cipher}; kex {kex}"
