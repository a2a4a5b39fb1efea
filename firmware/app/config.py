"""Unit configuration: defaults (docs/firmware.md) merged with ``config.json``.

`load(store, log)` and `merge(overrides, log)` return a fresh dict; a key with a
value of the wrong type or range keeps its default, an unknown key is ignored — each
with a log line. Intervals may be floats so tests and demos can scale time down.

Extra key, not in the table of docs/firmware.md: ``board`` (object, default ``{}``),
options for the board layer (pins, UART, APN on esp32); the unix board ignores it.
"""

MODES_CHECKIN = ("suspended", "sleep", "deep_sleep", "delinked")

# (key, default, kind). An immutable table; `defaults()` builds the mutable dict.
_KEYS = (
    ("broker_host", "127.0.0.1", "str"),
    ("broker_port", 1883, "port"),  # 8883 when tls is on and the port is not given
    ("tls", False, "bool"),
    ("tls_ca", "ca.der", "str"),  # the CA (DER or PEM) in the storage root
    ("tls_server_name", None, "str"),  # the name the broker's certificate must carry; None: broker_host
    ("hb_s", 300, "pos"),
    ("keepalive_s", 600, "keepalive"),
    ("ack_timeout_s", 20, "pos"),
    ("backoff_min_s", 2, "nonneg"),
    ("backoff_max_s", 600, "nonneg"),
    ("checkin_suspended_s", (600, 3600), "range"),
    ("checkin_sleep_s", (77760, 95040), "range"),
    ("checkin_deep_sleep_s", (544320, 665280), "range"),
    ("checkin_delinked_s", (544320, 665280), "range"),
    ("checkin_wait_s", 5, "nonneg"),
    ("relay_on_suspend", "keep", "suspend"),
    ("mains_poll_ms", 500, "posint"),
    ("board", None, "dict"),
)


def defaults():
    cfg = {}
    for key, default, kind in _KEYS:
        if kind == "dict":
            default = {}
        cfg[key] = default
    return cfg


def _is_num(x):
    t = type(x)
    return t is int or t is float


def _check(kind, v):
    """The normalized value, or None when `v` is not acceptable for `kind`."""
    if kind == "str":
        return v if type(v) is str and v else None
    if kind == "bool":
        return v if type(v) is bool else None
    if kind == "port":
        return v if type(v) is int and 0 < v < 65536 else None
    if kind == "pos":
        return v if _is_num(v) and v > 0 else None
    if kind == "nonneg":
        return v if _is_num(v) and v >= 0 else None
    if kind == "posint":
        return v if type(v) is int and v > 0 else None
    if kind == "keepalive":
        return v if type(v) is int and 0 <= v <= 65535 else None
    if kind == "range":
        if type(v) in (list, tuple) and len(v) == 2 and _is_num(v[0]) and _is_num(v[1]) and 0 <= v[0] <= v[1]:
            return (v[0], v[1])
        return None
    if kind == "suspend":
        return v if v in ("keep", "off") else None
    if kind == "dict":
        return v if type(v) is dict else None
    return None


def merge(overrides, log=None):
    cfg = defaults()
    if overrides is None:
        return cfg
    if type(overrides) is not dict:
        if log is not None:
            log.warn("config.json is not an object, using defaults")
        return cfg
    kinds = {}
    for key, _default, kind in _KEYS:
        kinds[key] = kind
    for key in overrides:
        kind = kinds.get(key)
        if kind is None:
            if log is not None:
                log.warn("ignored unknown key %r" % (key,))
            continue
        v = _check(kind, overrides[key])
        if v is None:
            if log is not None:
                log.warn("bad value for %s: %r, keeping default %r" % (key, overrides[key], cfg[key]))
            continue
        cfg[key] = v
    if cfg["tls"] and "broker_port" not in overrides:
        cfg["broker_port"] = 8883
    if cfg["backoff_max_s"] < cfg["backoff_min_s"]:
        if log is not None:
            log.warn("backoff_max_s < backoff_min_s, using backoff_min_s for both")
        cfg["backoff_max_s"] = cfg["backoff_min_s"]
    return cfg


def load(store, log=None):
    return merge(store.load("config.json"), log)


def checkin_range(cfg, mode):
    """The (low, high) check-in interval in seconds for a check-in `mode`."""
    return cfg["checkin_" + mode + "_s"]
