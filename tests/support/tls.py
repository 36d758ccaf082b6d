"""A throwaway certificate authority for the TLS tests, made with the openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclass(frozen=True)
class Authority:
    directory: Path
    name: str

    @property
    def pem(self) -> str:
        return str(self.directory / f"{self.name}.pem")

    @property
    def key(self) -> str:
        return str(self.directory / f"{self.name}.key")

    def issue(self, name: str, names: tuple[str, ...] = ("DNS:localhost",)) -> Pair:
        """A certificate for server and client use with these subjectAltNames, signed by this CA."""
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={','.join(names)}\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", self.pem, "-CAkey", self.key, "-CAcreateserial",
                 "-out", str(cert), "-days", "2", "-extfile", str(ext))
        for path in (key, cert):
            path.chmod(0o644)  # the sandbox user reads them in its tests; real keys stay 0600
        return Pair(str(cert), str(key))


def authority(directory: Path, name: str = "test-ca") -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    ca = Authority(directory, name)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", ca.key, "-out", ca.pem, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")
    Path(ca.pem).chmod(0o644)
    return ca


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
