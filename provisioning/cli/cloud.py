"""`simsock cloud …`: run the local cloud stand-in (broker, cloud, HTTP API)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cloud_stub import auth
from cloud_stub.registry import DEFAULT_DB_URL, RegistryError
from cloud_stub.run import serve
from cloud_stub.service import BrokerURLError, CloudEvent
from cloud_stub.tls import TLSError
from provisioning.cli import app

cloud_app = typer.Typer(no_args_is_help=True, help="The local cloud: registry, MQTT ingestion, desired state.")
app.add_typer(cloud_app, name="cloud")

DbOption = Annotated[
    str, typer.Option("--db", envvar="SIMSOCK_DB", help="Database URL (sqlite:///path.db).", show_default=True)
]


def fail(message: str, code: int = 1) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _event_line(e: CloudEvent) -> str:
    d: dict[str, Any] = e.data
    dev = f"[cyan]{escape(e.device_id)}[/] " if e.device_id else ""
    if e.kind == "hb":
        return (f"[dim]hb[/]     {dev}seq={d['seq']} mode={d['mode']} dv={d['desired_version']} "
                f"relay={'on' if d['relay_on'] else 'off'} fw={d['fw']}")
    if e.kind == "status":
        return f"[yellow]status[/] {dev}{d.get('old')} -> [bold]{d['status']}[/] ({d.get('reason')})"
    if e.kind == "ack":
        what = f"cmd {d['id']}" if "id" in d else f"desired v{d['dv']}"
        ok = "[green]ok[/]" if d["ok"] else f"[red]refused[/] {escape(str(d.get('err')))}"
        return f"[green]ack[/]    {dev}{what} {ok}"
    if e.kind == "desired":
        return f"[magenta]desired[/] {dev}v{d['v']} {d['mode']}"
    if e.kind == "connection":
        if d.get("connected"):
            return f"[blue]broker[/] connected (re-published {d.get('republished', 0)} desired states)"
        return f"[red]broker[/] connection lost ({escape(str(d.get('reason')))}), reconnecting"
    return f"{e.kind:<7}{dev}{escape(str(d))}"


@cloud_app.command("serve")
def serve_cmd(
    broker: Annotated[
        str, typer.Option(help="embedded (amqtt in-process), mosquitto (private process) or mqtt://host:port.")
    ] = "embedded",
    port: Annotated[int, typer.Option(help="Port of the broker started here (embedded/mosquitto).")] = 1883,
    host: Annotated[str, typer.Option(help="Address of the broker started here.")] = "127.0.0.1",
    db: DbOption = DEFAULT_DB_URL,
    hb_interval: Annotated[
        float, typer.Option(help="Heartbeat interval (s) assumed until a unit's own is learnt.")
    ] = 300.0,
    hb_timeout: Annotated[
        float | None,
        typer.Option(help="Fixed heartbeat timeout (s); default 2.5 x each unit's heartbeat interval."),
    ] = None,
    http_port: Annotated[int, typer.Option(help="Port of the HTTP API (0: any free port).")] = 8080,
    http_host: Annotated[str, typer.Option(help="Address of the HTTP API.")] = "127.0.0.1",
    bootstrap_token: Annotated[
        bool, typer.Option("--bootstrap-token", help="Create and print a fresh admin API token (for local use).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print live events.")] = False,
    tls: Annotated[
        bool, typer.Option("--tls", help="Also listen with TLS (a CA and certificate made in --tls-dir, then reused).")
    ] = False,
    tls_port: Annotated[int, typer.Option(help="Port of the TLS listener (with --tls).")] = 8883,
    tls_dir: Annotated[
        str, typer.Option(envvar="SIMSOCK_TLS_DIR", help="Where the CA and the broker's certificate live (with --tls).")
    ] = "simsock-tls",
    tls_name: Annotated[
        list[str] | None,
        typer.Option(help="Another host name or IP the units reach the broker by (repeatable; with --tls)."),
    ] = None,
) -> None:
    """Run the cloud, a broker and the HTTP API until Ctrl-C."""
    console = Console()
    if (hb_timeout is not None and hb_timeout <= 0) or hb_interval <= 0:
        raise fail("--hb-interval and --hb-timeout must be greater than zero")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then has no KeyboardInterrupt
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with serve(broker, db, host=host, port=port, hb_interval=hb_interval, hb_timeout=hb_timeout,
                   http_port=http_port, http_host=http_host, tls_dir=tls_dir if tls else None,
                   tls_port=tls_port, tls_names=tls_name or ()) as served:
            remove = served.cloud.add_listener(lambda e: console.print(_event_line(e), highlight=False))
            if quiet:
                remove()
            console.print(f"[bold]simsock cloud[/] broker [green]{served.broker_url}[/]  "
                          f"api [green]{served.api_url}[/]  db {escape(db)}", highlight=False, soft_wrap=True)
            if served.tls is not None:
                console.print(f"TLS [green]{served.tls_url}[/] for {', '.join(served.tls.names)}  "
                              f"CA {escape(str(served.tls.ca_pem))} (units: {escape(str(served.tls.ca_der))})",
                              highlight=False, soft_wrap=True)
            if bootstrap_token:
                cloud = served.cloud
                _, secret = auth.create_token(cloud.registry, "bootstrap", auth.Role.ADMIN.value,
                                              actor=auth.local_actor(), at=cloud.clock(),
                                              via="simsock cloud serve --bootstrap-token")
                console.print(f"admin token (shown once): {secret}", highlight=False, soft_wrap=True)
                console.print(f"  export SIMSOCK_API={served.api_url} SIMSOCK_TOKEN={secret}", highlight=False,
                              soft_wrap=True, style="dim")
            if served.broker is not None and served.service_url:  # the broker enforces credentials (docs/security.md)
                console.print(f"cloud service account, for more cloud workers (shown once): "
                              f"{served.service_url}", highlight=False, soft_wrap=True)
            console.print("Ctrl-C to stop.", style="dim")
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            remove()
            console.print("stopping…", style="dim")
    except (BrokerURLError, RegistryError, ConnectionError, RuntimeError, TLSError) as exc:
        raise fail(str(exc)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
