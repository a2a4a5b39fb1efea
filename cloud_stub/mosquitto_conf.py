"""The Mosquitto configuration the project generates: listener, persistence, dynamic security.

`dynsec_document(service, units)` is the dynamic-security plugin's JSON: the cloud's
service account (role `simsock-service`: everything under `simsock/v1/`, plus the
`$CONTROL/dynamic-security/#` administration topics), and one client + one role per
unit (`unit:<device_id>`: the literal topics of `cloud_stub.acl`), each client bound to
its client id. Passwords appear only as the `$7$` hashes the registry stores
(PBKDF2-SHA512: `password`, `salt`, `iterations` are exactly that record's fields).
The embedded broker boots from the same document (amqtt_fixes.DynsecStore).

Why the dynamic-security plugin and not a password file + ACL file: the cloud changes
credentials while the broker runs (`$CONTROL/dynamic-security/v1`), and deleting or
disabling a client there disconnects its live connection at once. A password file only
takes effect on SIGHUP and never disconnects a connected client, so a revoked unit would
stay online until its next reconnect.

`mosquitto_conf(...)` renders mosquitto.conf: no anonymous access, the plugin, a plain
listener on loopback and optionally a TLS listener (cloud_stub.tls). Mosquitto is told
to stay the user that started it (`user`), or, started as root, it would switch to the
`mosquitto` user and could write neither its persistence file nor the plugin's JSON.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cloud_stub import acl
from cloud_stub.credentials import ClientRecord, PasswordHash, ServiceAccount

PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def dynsec_plugin() -> str | None:
    return next((p for p in PLUGIN_CANDIDATES if Path(p).exists()), None)


def unit_client(record: ClientRecord) -> dict[str, Any]:
    return {
        "username": record.username,
        "clientid": record.username,
        **PasswordHash.parse(record.pw_hash).dynsec(),
        "roles": [{"rolename": acl.unit_role(record.username)}],
    }


def dynsec_document(service: ServiceAccount, units: Iterable[ClientRecord] = ()) -> dict[str, Any]:
    units = list(units)
    clients = [{
        "username": service.username,
        **PasswordHash.parse(service.pw_hash()).dynsec(),
        "roles": [{"rolename": acl.SERVICE_ROLE}],
    }] + [unit_client(u) for u in units]
    roles = [acl.dynsec_role(acl.SERVICE_ROLE, acl.service_acls())] + [
        acl.dynsec_role(acl.unit_role(u.username), acl.unit_acls(u.username)) for u in units
    ]
    return {"clients": clients, "groups": [], "roles": roles, "defaultACLAccess": dict(acl.DEFAULT_ACL_ACCESS)}


def mosquitto_conf(
    *,
    host: str,
    port: int,
    workdir: Path,
    dynsec_json: Path | None,
    tls_port: int | None = None,
    tls_files: tuple[Path, Path, Path] | None = None,  # (ca, cert, key)
) -> str:
    lines = []
    if dynsec_json is not None:
        plugin = dynsec_plugin()
        if plugin is None:
            raise RuntimeError("mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed")
        lines += ["per_listener_settings false", "allow_anonymous false", f"plugin {plugin}",
                  f"plugin_opt_config_file {dynsec_json}"]
    else:
        lines += ["allow_anonymous true"]
    lines += [f"listener {port} {host}"]
    if tls_port is not None and tls_files is not None:
        ca, cert, key = tls_files
        lines += [f"listener {tls_port} {host}", f"cafile {ca}", f"certfile {cert}", f"keyfile {key}",
                  "tls_version tlsv1.2"]
    lines += [
        f"user {getpass.getuser()}",
        # Nagle made every message the broker forwards wait ~40 ms for a delayed ACK
        # (bench/desired_latency.py: desired→ack 44 ms → ~1 ms with it off).
        "set_tcp_nodelay true",
        # The default queue (1,000 messages per client) dropped a lagging cloud's acks and
        # heartbeats when 1,000 units answered at once (bench/fleet_converge.py).
        "max_queued_messages 100000",
        "persistence true",
        f"persistence_location {workdir}/",
        "autosave_interval 1",
        f"log_dest file {workdir}/mosquitto.log",
        "log_type error", "log_type warning", "log_type notice",
    ]
    return "\n".join(lines) + "\n"
