"""stunnel4 with mutual TLS: a C TLS relay at each end, the closest classic peer to our links."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.netns import Netns, sh
from bench.paths import ECHO_PORT, IPERF_PORT, Endpoints, TcpTarget, tool_version
from bench.paths._base import DaemonPath

__all__ = ["Stunnel", "make_tls_pki"]

_SERVER_NAME = "ub-bench-b"


def make_tls_pki(d: Path, names: tuple[str, ...]) -> None:
    """Throwaway ECDSA P-256 CA plus one leaf per name (`<name>.crt/.key`), valid two days."""

    def openssl(*args: str) -> None:
        sh(["openssl", *args])

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "2",
        "-subj",
        "/CN=ub-bench-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name in names:
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n")
        openssl(
            "req",
            *ec,
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.crt"),
        )


class Stunnel(DaemonPath):
    """A: 127.0.0.1 -> stunnel (A) == TLS, both sides verified ==> stunnel (B) -> servers."""

    name = "stunnel"
    title = "stunnel4 mutual TLS, two ends"
    binaries: ClassVar[Mapping[str, str]] = {"stunnel4": "stunnel4", "openssl": "openssl"}

    def versions(self) -> dict[str, str]:
        return {
            "stunnel": tool_version(["stunnel4", "-version"], prefix="stunnel "),
            "openssl": tool_version(["openssl", "version"]),
        }

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        make_tls_pki(tmpdir, ("ub-bench-a", _SERVER_NAME))
        services = (("iperf", 8443, 15201, IPERF_PORT), ("echo", 8444, 17007, ECHO_PORT))
        common = ["foreground = yes", "pid =", "debug = 3"]
        b_conf, a_conf = list(common), list(common)
        for label, b_port, a_port, dest in services:
            b_conf += [
                f"[{label}]",
                f"accept = {ns_b.addr}:{b_port}",
                f"connect = 127.0.0.1:{dest}",
                f"cert = {tmpdir / (_SERVER_NAME + '.crt')}",
                f"key = {tmpdir / (_SERVER_NAME + '.key')}",
                f"CAfile = {tmpdir / 'ca.crt'}",
                "verifyChain = yes",
                "requireCert = yes",
            ]
            a_conf += [
                f"[{label}]",
                "client = yes",
                f"accept = 127.0.0.1:{a_port}",
                f"connect = {ns_b.addr}:{b_port}",
                f"cert = {tmpdir / 'ub-bench-a.crt'}",
                f"key = {tmpdir / 'ub-bench-a.key'}",
                f"CAfile = {tmpdir / 'ca.crt'}",
                "verifyChain = yes",
                f"checkHost = {_SERVER_NAME}",
            ]
        (tmpdir / "b.conf").write_text("\n".join(b_conf) + "\n")
        (tmpdir / "a.conf").write_text("\n".join(a_conf) + "\n")
        pid_b = self.spawn(ns_b, ["stunnel4", str(tmpdir / "b.conf")], tmpdir / "b.log")
        for _, b_port, _, _ in services:
            ns_b.wait_listen(b_port)
        pid_a = self.spawn(ns_a, ["stunnel4", str(tmpdir / "a.conf")], tmpdir / "a.log")
        for _, _, a_port, _ in services:
            ns_a.wait_listen(a_port)
        return Endpoints(
            throughput=TcpTarget(ns_a.name, "127.0.0.1", 15201),
            rr=TcpTarget(ns_a.name, "127.0.0.1", 17007),
            cpu_pids={"stunnel(A)": pid_a, "stunnel(B)": pid_b},
            notes=(self._negotiated(ns_a, ns_b, tmpdir),),
        )

    @staticmethod
    def _negotiated(ns_a: Netns, ns_b: Netns, d: Path) -> str:
        """Protocol and cipher, from one extra handshake made inside the namespaces."""
        try:
            out = ns_a.run(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"{ns_b.addr}:8444",
                    "-brief",
                    "-cert",
                    str(d / "ub-bench-a.crt"),
                    "-key",
                    str(d / "ub-bench-a.key"),
                    "-CAfile",
                    str(d / "ca.crt"),
                ],
                timeout=10,
                check=False,
                merge=True,
            )
        except subprocess.TimeoutExpired:
            return "tls: unknown (s_client timed out)"
        found = dict(
            line.split(": ", 1)
            for line in out.splitlines()
            if line.startswith(("Protocol", "Cipher"))
        )
        return f"tls: {found.get('Protocol version', '?')} {found.get('Ciphersuite', '?')}"
