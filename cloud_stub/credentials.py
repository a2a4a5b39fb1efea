"""Per-unit MQTT credentials: random passwords, the one hash format both brokers verify.

A unit's MQTT username is its device_id (also its client id); its password is 32
random URL-safe characters (192 bits) made at registration by `new_password()`. The
plaintext exists only in the registration response: the cloud stores
`hash_password(pw)`, the format of Mosquitto's `mosquitto_passwd` (`$7$`):

    $7$<iterations>$<base64 12-byte salt>$<base64 64-byte PBKDF2-HMAC-SHA512>

Why PBKDF2-SHA512 in that format and not argon2 (which amqtt's pwdlib would offer): the
same record feeds Mosquitto's dynamic-security JSON (`password`, `salt`, `iterations`
are exactly these fields) and its password file, and the embedded broker checks it with
hashlib; argon2 would need a second, broker-specific record per unit. The secrets are
random, not chosen by people, so the iteration count guards nothing a dictionary could
find; `ITERATIONS` (10,000: ~5 ms per check on one core) is a cost per *connect* the
broker pays, kept low enough for a reconnect storm (1,000 units ~ 5 s of one core) and
recorded in each hash, so it can be raised for new credentials at any time.

The cloud's own service account (`SERVICE_USER`) is made by whoever starts the broker
(`ServiceAccount.generate()`); its password lives in that process's memory only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote

ITERATIONS = 10_000
SALT_BYTES = 12  # what Mosquitto's dynamic-security plugin requires (it refuses other lengths)
HASH_BYTES = 64
PASSWORD_BYTES = 24  # -> 32 characters of base64url

SERVICE_USER = "simsock-cloud"
RESERVED_PREFIX = "simsock-"  # usernames of services; no device_id may start with it


class CredentialError(ValueError):
    """A credential that cannot be issued, parsed or used."""


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """`$7$iterations$salt$hash` (PBKDF2-HMAC-SHA512, 12-byte salt), as mosquitto_passwd writes it."""
    if not password:
        raise CredentialError("empty password")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES or iterations < 1:
        raise CredentialError(f"salt must be {SALT_BYTES} bytes and iterations >= 1")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class PasswordHash:
    iterations: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, encoded: str) -> PasswordHash:
        parts = encoded.split("$")
        if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
            raise CredentialError("not a $7$ (PBKDF2-SHA512) password hash")
        try:
            iterations = int(parts[2])
            salt = base64.b64decode(parts[3], validate=True)
            digest = base64.b64decode(parts[4], validate=True)
        except ValueError as exc:
            raise CredentialError(f"malformed $7$ password hash: {exc}") from None
        if iterations < 1 or len(salt) != SALT_BYTES or len(digest) != HASH_BYTES:
            raise CredentialError("malformed $7$ password hash (iterations, salt or digest length)")
        return cls(iterations, salt, digest)

    def verify(self, password: str) -> bool:
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), self.salt, self.iterations, HASH_BYTES)
        return hmac.compare_digest(got, self.digest)

    def dynsec(self) -> dict[str, object]:
        """The fields of a client in Mosquitto's dynamic-security JSON."""
        return {
            "password": base64.b64encode(self.digest).decode(),
            "salt": base64.b64encode(self.salt).decode(),
            "iterations": self.iterations,
        }


def verify_password(password: str | None, encoded: str) -> bool:
    """True if `password` matches the `$7$` hash; False for None, empty or a malformed hash."""
    if not password:
        return False
    try:
        return PasswordHash.parse(encoded).verify(password)
    except CredentialError:
        return False


def check_unit_username(device_id: str) -> str:
    """A device_id usable as a unit's username and client id; CredentialError otherwise."""
    from cloud_stub.protocol import ProtocolError, check_device_id

    try:
        check_device_id(device_id)
    except ProtocolError as exc:
        raise CredentialError(str(exc)) from None
    if device_id.startswith(RESERVED_PREFIX):
        raise CredentialError(f"device id {device_id!r}: the prefix {RESERVED_PREFIX!r} is reserved for services")
    return device_id


@dataclass(frozen=True)
class ServiceAccount:
    """The cloud's MQTT account: may publish desired state and commands, and administer units' credentials."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def generate(cls, username: str = SERVICE_USER) -> ServiceAccount:
        return cls(username, new_password())

    def pw_hash(self) -> str:
        return hash_password(self.password)

    def url(self, host: str, port: int, scheme: str = "mqtt") -> str:
        """`mqtt://user:password@host:port`, what Cloud(...) and `simsock account --broker` take."""
        return f"{scheme}://{quote(self.username, safe='')}:{quote(self.password, safe='')}@{host}:{port}"


@dataclass(frozen=True)
class ClientRecord:
    """What a broker needs to admit one unit: username (= client id) and the stored hash."""

    username: str
    pw_hash: str
