"""Typed client of the cloud's HTTP API (docs/api.md), what every host tool uses to talk to the cloud.

    with ApiClient("http://127.0.0.1:8080", token) as api:
        acct = api.create_account("acme", balance="20.00")
        api.add_device("acme", "dev-1")
        change = api.charge("acme", "25.00")          # -> AccountChange, state suspended
        print(api.account("acme").convergence.pending)

Every method returns the API's pydantic models (cloud_stub.api.models) and raises
`ApiError` (status, code, message) for any answer other than success, and for a cloud
that cannot be reached (status 0, code `unreachable`). Amounts are decimal strings in
currency units ("12.50"), exactly as the API takes them.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, TypeAdapter

from cloud_stub.api import models as m

DEFAULT_API_URL = "http://127.0.0.1:8080"
API_ENV = "SIMSOCK_API"
TOKEN_ENV = "SIMSOCK_TOKEN"

T = TypeVar("T", bound=BaseModel)


class ApiError(Exception):
    """The API refused a request (status, code and message from its JSON error body) or could not be reached."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def check_api_url(url: str) -> str:
    """`http(s)://host[:port]` without a path; ApiError(0, 'bad_url') otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a bad port)
    except ValueError as exc:
        raise ApiError(0, "bad_url", f"bad API URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ApiError(0, "bad_url", f"bad API URL {url!r}: expected http://host:port")
    return url.rstrip("/")


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


class ApiClient:
    def __init__(self, base_url: str | None = None, token: str | None = None, *, timeout: float = 10.0) -> None:
        self.base_url = check_api_url(base_url or os.environ.get(API_ENV) or DEFAULT_API_URL)
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout = timeout
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token.strip()}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """One call; the decoded JSON body on 2xx, ApiError otherwise."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        kwargs: dict[str, Any] = {"json": json, "params": params}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(0, "timeout", f"the cloud API at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", f"cannot reach the cloud API at {self.base_url} ({exc}); "
                                             f"is `simsock cloud serve` running?") from None
        if r.is_success:
            return r.json() if r.content else None
        try:
            body = r.json()
            code, message, detail = body["error"], body["message"], body.get("detail")
        except Exception:
            code, message, detail = "http_error", f"HTTP {r.status_code}: {r.text[:200]}", None
        raise ApiError(r.status_code, code, message, detail)

    def _get(self, path: str, model: type[T], **params: Any) -> T:
        return model.model_validate(self.request("GET", path, params=params))

    def _list(self, path: str, model: type[T], **params: Any) -> list[T]:
        return TypeAdapter(list[model]).validate_python(self.request("GET", path, params=params))  # type: ignore[valid-type]

    def _post(self, path: str, model: type[T], body: dict[str, Any] | None = None, *,
              timeout: float | None = None) -> T:
        return model.model_validate(self.request("POST", path, json=body or {}, timeout=timeout))

    # --- meta ----------------------------------------------------------------------------

    def health(self) -> m.Health:
        return self._get("/v1/health", m.Health)

    def me(self) -> m.Me:
        return self._get("/v1/me", m.Me)

    # --- accounts ------------------------------------------------------------------------

    def accounts(self) -> list[m.Account]:
        return self._list("/v1/accounts", m.Account)

    def create_account(self, name: str, balance: str = "0", currency: str = "USD") -> m.Account:
        return self._post("/v1/accounts", m.Account, {"name": name, "balance": balance, "currency": currency})

    def account(self, account: str | int) -> m.AccountDetail:
        return self._get(f"/v1/accounts/{_seg(account)}", m.AccountDetail)

    def top_up(self, account: str | int, amount: str, reason: str | None = None) -> m.AccountChange:
        return self._post(f"/v1/accounts/{_seg(account)}/topup", m.AccountChange, {"amount": amount, "reason": reason})

    def charge(self, account: str | int, amount: str, reason: str | None = None) -> m.AccountChange:
        return self._post(f"/v1/accounts/{_seg(account)}/charge", m.AccountChange, {"amount": amount, "reason": reason})

    def add_device(self, account: str | int, device_id: str, serial: str | None = None) -> m.AccountChange:
        return self._post(f"/v1/accounts/{_seg(account)}/devices", m.AccountChange,
                          {"device_id": device_id, "serial": serial})

    # --- account lifecycle ---------------------------------------------------------------

    def enter_sleep(self, account: str | int) -> m.AccountChange:
        return self._post(f"/v1/accounts/{_seg(account)}/sleep", m.AccountChange)

    def delete_account(self, account: str | int, *, signed_notice: bool = False) -> m.AccountChange:
        return m.AccountChange.model_validate(self.request(
            "DELETE", f"/v1/accounts/{_seg(account)}", params={"signed_notice": signed_notice or None}))

    def reopen_account(self, deleted: str | int, name: str, device_ids: list[str] | None = None) -> m.AccountChange:
        return self._post(f"/v1/accounts/{_seg(deleted)}/reopen", m.AccountChange,
                          {"name": name, "device_ids": device_ids})

    def delink_device(self, account: str | int, device_id: str, *, signed_application: bool = False
                      ) -> m.AccountChange:
        return self._post(f"/v1/accounts/{_seg(account)}/devices/{_seg(device_id)}/delink", m.AccountChange,
                          {"signed_application": signed_application})

    def restore_device(self, account: str | int, device_id: str) -> m.AccountChange:
        return self._post(f"/v1/accounts/{_seg(account)}/devices/{_seg(device_id)}/restore", m.AccountChange)

    def quote_feature(self, account: str | int, feature: str) -> m.FeatureQuote:
        return self._get(f"/v1/accounts/{_seg(account)}/features/{_seg(feature)}/quote", m.FeatureQuote)

    def add_feature(self, account: str | int, feature: str) -> m.FeatureAdded:
        return self._post(f"/v1/accounts/{_seg(account)}/features", m.FeatureAdded, {"feature": feature})

    def cancel_feature(self, account: str | int, feature: str) -> m.AccountChange:
        return m.AccountChange.model_validate(
            self.request("DELETE", f"/v1/accounts/{_seg(account)}/features/{_seg(feature)}"))

    def ledger(self, account: str | int) -> list[m.LedgerEntry]:
        return self._list(f"/v1/accounts/{_seg(account)}/ledger", m.LedgerEntry)

    def notifications(self, account: str | int) -> list[m.Notification]:
        return self._list(f"/v1/accounts/{_seg(account)}/notifications", m.Notification)

    def lifecycle_tick(self) -> m.TickResult:
        return self._post("/v1/lifecycle/tick", m.TickResult)

    # --- devices, desired state, commands ------------------------------------------------

    def devices(self, account: str | int | None = None) -> list[m.Device]:
        return self._list("/v1/devices", m.Device, account=account)

    def device(self, device_id: str) -> m.Device:
        return self._get(f"/v1/devices/{_seg(device_id)}", m.Device)

    def device_status(self, device_id: str) -> m.DeviceStatus:
        return self._get(f"/v1/devices/{_seg(device_id)}/status", m.DeviceStatus)

    def desired(self, device_id: str) -> m.DesiredState:
        return self._get(f"/v1/devices/{_seg(device_id)}/desired", m.DesiredState)

    def republish_desired(self, device_id: str) -> m.DesiredState:
        return self._post(f"/v1/devices/{_seg(device_id)}/desired/publish", m.DesiredState)

    def send_command(self, device_id: str, op: str, arg: str | None = None, *, exp: int | None = None,
                     wait: float = 0) -> m.Command:
        """Send a command; with `wait` > 0 the answer comes once the unit acked (or `wait` s passed)."""
        return self._post(f"/v1/devices/{_seg(device_id)}/commands", m.Command,
                          {"op": op, "arg": arg, "exp": exp, "wait": wait}, timeout=self.timeout + wait)

    def command(self, cmd_id: str, *, wait: float = 0) -> m.Command:
        return m.Command.model_validate(self.request(
            "GET", f"/v1/commands/{_seg(cmd_id)}", params={"wait": wait or None},
            timeout=self.timeout + wait))

    # --- events, audit, tokens -----------------------------------------------------------

    def events(self, *, account: str | int | None = None, device: str | None = None, kind: str | None = None,
               limit: int = 100) -> list[m.Event]:
        return self._list("/v1/events", m.Event, account=account, device=device, kind=kind, limit=limit)

    def audit(self, *, account: str | int | None = None, target_type: str | None = None,
              target_id: str | None = None, token_id: int | None = None, action: str | None = None,
              after_id: int | None = None, limit: int = 100) -> list[m.AuditEntry]:
        return self._list("/v1/audit", m.AuditEntry, account=account, target_type=target_type, target_id=target_id,
                          token_id=token_id, action=action, after_id=after_id, limit=limit)

    def tokens(self, include_revoked: bool = False) -> list[m.Token]:
        return self._list("/v1/tokens", m.Token, include_revoked=include_revoked or None)

    def create_token(self, name: str, role: str) -> m.TokenCreated:
        return self._post("/v1/tokens", m.TokenCreated, {"name": name, "role": role})

    def revoke_token(self, token_id: int) -> m.Token:
        return m.Token.model_validate(self.request("DELETE", f"/v1/tokens/{int(token_id)}"))

    # --- factory registration (docs/bench.md) --------------------------------------------

    def register_unit(self, uid: str, imei: str, iccid: str, *, station: str, operator: str,
                      bundle_hash: str | None = None, rotate: bool = False) -> m.UnitRegistration:
        """A unit's serial, device id and (new) credentials; the same serial again for known hardware ids."""
        return self._post("/v1/units/register", m.UnitRegistration, {
            "uid": uid, "imei": imei, "iccid": iccid, "station": station, "operator": operator,
            "bundle_hash": bundle_hash, "rotate": rotate})

    def unit_result(self, serial: str, step: str, ok: bool, *, detail: dict[str, Any] | None = None,
                    station: str | None = None, operator: str | None = None,
                    bundle_hash: str | None = None) -> m.Unit:
        return self._post(f"/v1/units/{_seg(serial)}/result", m.Unit, {
            "step": step, "ok": ok, "detail": detail, "station": station, "operator": operator,
            "bundle_hash": bundle_hash})

    def void_unit(self, serial: str, reason: str) -> m.Unit:
        return self._post(f"/v1/units/{_seg(serial)}/void", m.Unit, {"reason": reason})

    def unit(self, serial: str) -> m.Unit:
        return self._get(f"/v1/units/{_seg(serial)}", m.Unit)


__all__ = ["API_ENV", "DEFAULT_API_URL", "TOKEN_ENV", "ApiClient", "ApiError", "check_api_url"]
