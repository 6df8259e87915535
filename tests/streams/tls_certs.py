"""Throwaway certificates for the TLS tests (openssl): a CA, a server certificate for
127.0.0.1 / localhost signed by it, a client certificate, and a second CA that signed
nothing of the server's."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path  # PKCS#8, unencrypted
    client_cert: Path
    client_key: Path
    other_ca: Path

    def server_keystore_pem(self) -> Path:
        """The server's key and certificate chain in one PEM file (Kafka's PEM keystore)."""
        combined = self.server_cert.with_name("server-keystore.pem")
        combined.write_text(
            self.server_key.read_text() + self.server_cert.read_text() + self.ca.read_text()
        )
        return combined


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, *, ext: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    extra = ["-extfile", ext] if ext else []
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)  # fmt: skip


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=test {ca}", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _issue(d, "server", ext="san.ext")
    _issue(d, "client")
    return Pki(
        d / "ca.pem", d / "server.pem", d / "server.key",
        d / "client.pem", d / "client.key", d / "other-ca.pem",
    )  # fmt: skip
