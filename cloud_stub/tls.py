"""The project's own small PKI: a CA and the broker's server certificate (docs/security.md, "TLS").

    files = broker_tls(state_dir / "tls", names=["broker.example.net"])
    files.ca_pem, files.ca_der    # what clients trust: the cloud (paho tls_set), the units (DER)
    files.cert, files.key         # the broker's certificate and key (the key 0600)

- `ensure_ca(directory)` makes a CA (EC P-256, 20 years) the first time and reuses it
  afterwards: every unit provisioned with that CA keeps trusting the broker across
  restarts and new server certificates.
- `ensure_server_cert(directory, names)` issues the broker's certificate (EC P-256, 2 years)
  for `localhost`, `127.0.0.1`, `::1` and `names` (host names or IP addresses), signed by
  the CA, and reuses the existing one while it is signed by that CA, covers every name
  and has more than 30 days left.
- EC P-256 (ECDSA-SHA256): a 91-byte public key, fast to verify in mbedTLS on the unit,
  and a handshake a fraction of the size of an RSA-2048 one on the cellular link.
- `notBefore` is 2000-01-01 for both: an ESP32 boots with its clock at MicroPython's epoch
  (2000-01-01) until it has network time, and mbedTLS refuses a certificate that is "not
  yet valid" by the unit's clock. An early `notBefore` protects nothing that matters here.
- Keys are written 0600 (created that way, never world-readable for an instant), every
  file atomically (a temporary file renamed into place): a crash leaves no half-written
  key or certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_DER = "ca.der"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 20 * 365
SERVER_DAYS = 2 * 365
RENEW_DAYS = 30  # a server certificate with fewer days left is reissued
NOT_BEFORE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class TLSError(Exception):
    """Bad input (a name that is neither a host name nor an IP) or unusable files in the directory."""


@dataclass(frozen=True)
class TLSFiles:
    directory: Path
    ca_pem: Path  # the CA certificate, PEM: for paho / Python clients and Mosquitto's cafile
    ca_der: Path  # the same in DER: what a unit stores (load_verify_locations(cadata=…))
    cert: Path  # the broker's certificate, PEM
    key: Path  # the broker's private key, PEM, 0600
    names: tuple[str, ...]  # the names and addresses the certificate covers


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode does not apply to a leftover tmp file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san(name: str) -> x509.GeneralName:
    name = name.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    ok = bool(name) and len(name) <= 253 and all(
        0 < len(lb) <= 63 and lb[0] != "-" and lb[-1] != "-" and all(c.isalnum() or c == "-" for c in lb)
        and lb.isascii()
        for lb in labels
    )
    if not ok:
        raise TLSError(f"{name!r} is neither a host name nor an IP address")
    return x509.DNSName(name.lower())


def _names(names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for n in (*DEFAULT_NAMES, *names):
        _san(n)  # validates
        key = n.strip().lower()
        if key not in out:
            out.append(key)
    return tuple(out)


def ensure_ca(
    directory: Path, common_name: str = "simsock local CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in `directory` (made there the first time; `ca.pem`, `ca.der`, `ca.key`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_p, key_p, der_p = directory / CA_CERT, directory / CA_KEY, directory / CA_DER
    if cert_p.exists() or key_p.exists():
        if not (cert_p.exists() and key_p.exists()):
            raise TLSError(f"{directory}: one of {CA_CERT} / {CA_KEY} is missing; restore it or remove both "
                           "(a new CA means every unit needs the new ca.der)")
        try:
            cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
            key = serialization.load_pem_private_key(key_p.read_bytes(), password=None)
        except ValueError as e:
            raise TLSError(f"{directory}: the CA files cannot be read: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise TLSError(f"{directory}: {CA_KEY} is not the key of {CA_CERT}")
        if not der_p.exists():
            _write_atomic(der_p, cert.public_bytes(serialization.Encoding.DER), 0o644)
        return cert, key
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    # the key first: a cert without its key would be refused at the next start, a lone key is just redone
    _write_atomic(key_p, _key_pem(key), 0o600)
    _write_atomic(der_p, cert.public_bytes(serialization.Encoding.DER), 0o644)
    _write_atomic(cert_p, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _server_cert_ok(cert_p: Path, key_p: Path, ca: x509.Certificate, names: tuple[str, ...]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
        key = serialization.load_pem_private_key(key_p.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    if key.public_key() != cert.public_key():
        return False
    if cert.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_DAYS):
        return False
    return all(_san(n) in san for n in names)


def ensure_server_cert(
    directory: Path, names: Iterable[str] = (), ca_common_name: str = "simsock local CA"
) -> TLSFiles:
    """The CA (ensure_ca) and a broker certificate for `names` + localhost/127.0.0.1/::1, reused while valid."""
    directory = Path(directory)
    all_names = _names(names)
    ca, ca_key = ensure_ca(directory, ca_common_name)
    cert_p, key_p = directory / SERVER_CERT, directory / SERVER_KEY
    if not _server_cert_ok(cert_p, key_p, ca, all_names):
        key = _new_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_names[0])]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(min(_now() + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in all_names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_atomic(key_p, _key_pem(key), 0o600)
        _write_atomic(cert_p, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return TLSFiles(directory, directory / CA_CERT, directory / CA_DER, cert_p, key_p, all_names)


broker_tls = ensure_server_cert
