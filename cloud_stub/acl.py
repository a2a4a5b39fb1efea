"""Who may publish and subscribe to what: the one rule set, rendered for both brokers.

Rules (topic root `simsock/v1/<device_id>/`, docs/protocol.md):

- a unit (username = device_id = client id) may publish only its own
  `hb`, `status`, `ack`, `alert` (`UNIT_PUBLISH`) and subscribe only its own `desired`
  and `cmd` (`UNIT_SUBSCRIBE`), each by its literal topic; it can never publish
  `desired` or `cmd`, never touch another unit's root, never use a wildcard;
- the cloud's service account may publish and subscribe anything under `simsock/v1/`
  (including `+` / `#` filters and `$share/<group>/…` shared subscriptions) and
  administer the credentials (`$CONTROL/dynamic-security/#`);
- everything else is denied; receiving is not restricted (a client only receives what
  its subscriptions allowed it to ask for).

OTA (step 3) extends the unit's lists: add e.g. `ota/state` to `UNIT_PUBLISH` and
`ota/offer` to `UNIT_SUBSCRIBE` — both brokers pick the change up from here.

The rules are data in the format of Mosquitto's dynamic-security roles
(`{"acltype", "topic", "allow"}`), so Mosquitto gets them verbatim (`dynsec_role`) and
the embedded broker evaluates the very same entries with `allowed()`. Mosquitto 2.0's
dynamic-security plugin has no `%u`/`%c` substitution, hence one role per unit with
literal topics.
"""

from __future__ import annotations

from typing import Any

from cloud_stub.protocol import TOPIC_ROOT

UNIT_PUBLISH: tuple[str, ...] = ("hb", "status", "ack", "alert")
UNIT_SUBSCRIBE: tuple[str, ...] = ("desired", "cmd")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE = "$CONTROL/dynamic-security/v1/response"

SERVICE_ROLE = "simsock-service"

Acl = dict[str, Any]  # {"acltype": ..., "topic": ..., "allow": bool}

PUBLISH_TYPES = ("publishClientSend",)
SUBSCRIBE_TYPES = ("subscribeLiteral", "subscribePattern")


def unit_role(device_id: str) -> str:
    return f"unit:{device_id}"


def unit_acls(device_id: str) -> list[Acl]:
    root = f"{TOPIC_ROOT}/{device_id}"
    return [{"acltype": "publishClientSend", "topic": f"{root}/{leaf}", "allow": True} for leaf in UNIT_PUBLISH] + [
        {"acltype": "subscribeLiteral", "topic": f"{root}/{leaf}", "allow": True} for leaf in UNIT_SUBSCRIBE
    ]


def service_acls() -> list[Acl]:
    acls: list[Acl] = []
    for topic in (f"{TOPIC_ROOT}/#", "$CONTROL/dynamic-security/#"):
        acls += [
            {"acltype": "publishClientSend", "topic": topic, "allow": True},
            {"acltype": "publishClientReceive", "topic": topic, "allow": True},
            {"acltype": "subscribePattern", "topic": topic, "allow": True},
            {"acltype": "unsubscribePattern", "topic": topic, "allow": True},
        ]
    # several cloud workers share the load with shared subscriptions; Mosquitto checks the whole
    # `$share/<group>/…` filter against the ACL (the embedded broker checks the filter after it)
    acls += [{"acltype": kind, "topic": f"$share/+/{TOPIC_ROOT}/#", "allow": True}
             for kind in ("subscribePattern", "unsubscribePattern")]
    return acls


def dynsec_role(rolename: str, acls: list[Acl]) -> dict[str, Any]:
    return {"rolename": rolename, "acls": acls}


DEFAULT_ACL_ACCESS = {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                      "unsubscribe": True}


# --- evaluation (the embedded broker; Mosquitto evaluates the same entries itself) ---------


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 matching of a concrete topic against a filter (`#` and `+` never match a leading `$`)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or (f != "+" and f != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def filter_covered(requested: str, pattern: str) -> bool:
    """Is every topic `requested` (a filter) can match also matched by `pattern`? (dynsec subscribePattern)."""
    if requested.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    r_levels, p_levels = requested.split("/"), pattern.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(r_levels):
            return False
        r = r_levels[i]
        if r == "#":
            return False
        if p != "+" and p != r:
            return False
    return len(r_levels) == len(p_levels)


def strip_share(topic_filter: str) -> str:
    """`$share/<group>/<filter>` -> `<filter>` (a shared subscription is checked as its filter)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def allowed(acls: list[Acl], action: str, topic: str) -> bool:
    """`action` is "publish" (a concrete topic), "subscribe" (a filter) or "receive".

    Denies win over allows; no matching entry means the default of DEFAULT_ACL_ACCESS.
    """
    if action == "receive":
        types: tuple[str, ...] = ("publishClientReceive",)
        default = DEFAULT_ACL_ACCESS["publishClientReceive"]
    elif action == "publish":
        types, default = PUBLISH_TYPES, DEFAULT_ACL_ACCESS["publishClientSend"]
    elif action == "subscribe":
        types, default = SUBSCRIBE_TYPES, DEFAULT_ACL_ACCESS["subscribe"]
        topic = strip_share(topic)
        if not topic:
            return False
    else:
        raise ValueError(f"unknown action {action!r}")
    verdicts = []
    for acl in acls:
        kind, pattern = acl.get("acltype"), str(acl.get("topic", ""))
        if kind not in types:
            continue
        if kind == "subscribeLiteral":
            hit = topic == pattern
        elif kind == "subscribePattern":
            hit = filter_covered(topic, pattern)
        else:
            hit = topic_matches(pattern, topic)
        if hit:
            verdicts.append(bool(acl.get("allow")))
    if not verdicts:
        return default
    return all(verdicts)


def client_id_acceptable(client_id: str | None) -> bool:
    """Client ids with MQTT wildcards or `/` are refused for everyone (they would turn into topic patterns)."""
    return bool(client_id) and not any(c in client_id for c in "+#/\x00")  # type: ignore[operator]
