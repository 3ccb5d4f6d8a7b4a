"""The ``tcpcryptd`` command: run the daemon, toggle it, inspect its sessions.

Every subcommand takes ``--config PATH`` (default /etc/tcpcryptd/tcpcryptd.toml if present)
and ``--control PATH`` (default: the config's ``control.socket``). Exit status: 0 success,
1 operational error (message on stderr), 2 usage error.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from typing import Any

import click

from tcpcryptd import __version__
from tcpcryptd.daemon import control
from tcpcryptd.daemon import status as status_view
from tcpcryptd.daemon.config import Config, load_config, parse_hostport
from tcpcryptd.daemon.errors import ControlError, DaemonError

#: Linux capability numbers (linux/capability.h) the daemon needs.
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    help="Configuration file [default: /etc/tcpcryptd/tcpcryptd.toml if it exists].")
_control_option = click.option(
    "--control", "control_path", type=str,
    help="Control socket [default: control.socket of the configuration].")


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _load(config_path: Path | None, control_path: str | None) -> Config:
    try:
        config = load_config(config_path)
    except DaemonError as exc:
        _fail(str(exc))
    if control_path:
        config = dataclasses.replace(config, control=dataclasses.replace(
            config.control, socket=control_path))
    return config


def _ask(config: Config, message: dict[str, Any]) -> dict[str, Any]:
    try:
        answer = control.request(config.control.socket, message)
    except ControlError as exc:
        _fail(str(exc))
    if not answer.get("ok"):
        _fail(str(answer.get("error", "the daemon refused the request")))
    return answer


def missing_capabilities() -> list[str]:
    """Names of CAP_NET_ADMIN/CAP_NET_RAW missing from this process's effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("CapEff:"))
        effective = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    return [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN),
                                   ("CAP_NET_RAW", CAP_NET_RAW))
            if not effective >> bit & 1]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tcpcryptd")
def main() -> None:
    """Transparent TCP-ENO (RFC 8547) + tcpcrypt (RFC 8548) encryption daemon."""


@main.command()
@_config_option
@_control_option
@click.option("--queue", "queue_num", type=click.IntRange(0, 65535),
              help="NFQUEUE number [default: queue.number of the configuration].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Log level [default: log.level of the configuration].")
def run(config_path: Path | None, control_path: str | None, queue_num: int | None,
        log_level: str | None) -> None:
    """Run the daemon in the foreground.

    Installs the firewall rules, serves until SIGTERM/SIGINT, and removes the rules again.
    """
    config = _load(config_path, control_path)
    if queue_num is not None:
        config = dataclasses.replace(config, queue=dataclasses.replace(config.queue,
                                                                       number=queue_num))
    if log_level is not None:
        config = dataclasses.replace(config, log=dataclasses.replace(config.log,
                                                                     level=log_level))
    missing = missing_capabilities()
    if missing:
        _fail(f"tcpcryptd run needs {' and '.join(missing)}: run it as root")
    from tcpcryptd.daemon.runner import run_daemon  # the engine and NFQUEUE load only here

    try:
        run_daemon(config)
    except DaemonError as exc:
        _fail(str(exc))


def _toggle(config: Config, enable: bool) -> None:
    answer = _ask(config, {"command": "enable" if enable else "disable"})
    state = "enabled" if answer.get("enabled") else "disabled"
    click.echo(f"encryption of new connections {state} (existing connections unchanged)")


@main.command()
@_config_option
@_control_option
def enable(config_path: Path | None, control_path: str | None) -> None:
    """Encrypt new connections again (on the running daemon)."""
    _toggle(_load(config_path, control_path), True)


@main.command()
@_config_option
@_control_option
def disable(config_path: Path | None, control_path: str | None) -> None:
    """Stop encrypting new connections; existing encrypted ones keep working.

    With no daemon running, removes rules a crashed daemon left behind.
    """
    config = _load(config_path, control_path)
    try:
        running = control.daemon_running(config.control.socket)
    except ControlError as exc:   # there, but busy or unreachable: its rules stay
        _fail(str(exc))
    if running:
        _toggle(config, False)
        return
    from tcpcryptd.daemon.runner import remove_leftover_rules

    try:
        removal = remove_leftover_rules(config)
    except DaemonError as exc:
        _fail(f"no tcpcryptd is running, and removing its rules failed: {exc}")
    if removal.kept:
        click.echo(f"no tcpcryptd is running: {removal.describe()}")
    elif removal.removed:
        click.echo("no tcpcryptd is running: removed the firewall rules it left behind")
    else:
        click.echo("no tcpcryptd is running: no firewall rules to remove")


def _check_peer(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            status_view.parse_peer(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@main.command()
@_config_option
@_control_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--state", "states", multiple=True, type=click.Choice(status_view.STATES),
              help="Only sessions in this state (repeatable).")
@click.option("--peer", callback=_check_peer, metavar="ADDR[:PORT]",
              help="Only sessions with this remote end ([V6ADDR]:PORT with a port).")
@click.option("--summary", is_flag=True,
              help="One line: sessions per state and connection totals, no table.")
@click.option("--limit", type=click.IntRange(min=0), metavar="N",
              help="At most N session rows.")
@click.option("--all", "full", is_flag=True,
              help=f"The session table also with more than {status_view.PEER_SUMMARY_ROWS} "
                   f"sessions (instead of one line per peer).")
def status(config_path: Path | None, control_path: str | None, as_json: bool,
           states: tuple[str, ...], peer: str | None, summary: bool,
           limit: int | None, full: bool) -> None:
    """Daemon state, counters and the sessions (filtered in the daemon).

    Up to 20 sessions as a table; more as one line per peer (connections, encrypted ones,
    bytes each way, age of the newest session) unless --all or --limit. Session IDs are
    shortened (first 8 and last 4 hex digits); --json has them whole. States: syn-sent,
    syn-received, negotiated, keying, encrypted, closed, aborted, tombstone (see
    `man tcpcryptd`).
    """
    if summary and limit is not None:
        raise click.UsageError("--limit applies to session rows: not with --summary")
    message: dict[str, Any] = {"command": "status"}
    if states:
        message["states"] = list(states)
    if peer is not None:
        message["peer"] = peer
    if summary:
        message["summary"] = True
    if limit is not None:
        message["limit"] = limit
    answer = _ask(_load(config_path, control_path), message)
    answer.pop("ok")
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
    elif summary:
        if "summary" not in answer:
            _fail("the running tcpcryptd is older and has no summary: restart it")
        click.echo(status_view.render_summary(answer["summary"]))
    else:
        click.echo(status_view.render(answer, full=full or limit is not None), nl=False)


def _resolve(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _fail(f"cannot resolve {host}: {exc.strerror}")
    return str(infos[0][4][0])


@main.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keylog", "keylog_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Key log written by tcpcryptd (log.keylog), either end of the connections.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--write", "write_path", type=click.Path(dir_okay=False, path_type=Path),
              metavar="OUT.pcap",
              help="Write the capture with the decrypted connections as plain TCP.")
def decode(capture: Path, keylog_path: Path, as_json: bool, write_path: Path | None) -> None:
    """Decrypt the tcpcrypt connections of a pcap/pcapng CAPTURE.

    Prints per ENO connection: addresses, TEP, AEAD, session ID, frames verified/failed,
    plaintext bytes and FIN/URG events each way. Exit status 1 when a connection cannot be
    decrypted (no key) or a frame fails to verify, or the capture cannot be read.
    """
    from tcpcryptd import decode as decoder   # scapy loads only here

    try:
        sessions = decoder.load_keylog(keylog_path)
        packets, connections, segments = decoder.read_capture(capture)
        decoder.decode(connections, sessions)
        written = (decoder.write_plain(write_path, packets, connections, segments)
                   if write_path is not None else None)
    except decoder.DecodeError as exc:
        _fail(str(exc))
    eno = [conn for conn in connections if conn.eno]
    if as_json:
        click.echo(json.dumps({"capture": str(capture), "packets": len(packets),
                               "connections": [conn.json() for conn in eno]}, indent=2))
    else:
        click.echo(decoder.render(eno), nl=False)
    if written is not None:
        click.echo(f"wrote {written} packets to {write_path}", err=True)
    if not eno:
        _fail(f"{capture}: no TCP-ENO connection (SYN and SYN-ACK with option 69, a TEP "
              f"chosen) in the capture")
    bad = [conn for conn in eno if conn.status != "decrypted"]
    if bad:
        undecryptable = sum(conn.status == "undecryptable" for conn in bad)
        _fail(f"{len(bad)} of {len(eno)} ENO connections not fully decrypted "
              f"({undecryptable} without a key in {keylog_path})")


@main.command("session-id")
@_config_option
@_control_option
@click.argument("remote", required=False, metavar="HOST:PORT")
@click.option("--local-port", type=click.IntRange(1, 65535),
              help="Select the connection by its local port.")
def session_id(config_path: Path | None, control_path: str | None, remote: str | None,
               local_port: int | None) -> None:
    """Print the tcpcrypt session ID of one connection (hex).

    Fails when the connection has none: RFC 8547 §4.8 never allows an empty session ID.
    """
    if remote is None and local_port is None:
        raise click.UsageError("give HOST:PORT of the remote end, or --local-port N")
    message: dict[str, Any] = {"command": "session-id"}
    if remote is not None:
        try:
            host, port = parse_hostport(remote)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="HOST:PORT") from None
        message.update(remote_addr=_resolve(host), remote_port=port)
    if local_port is not None:
        message["local_port"] = local_port
    answer = _ask(_load(config_path, control_path), message)
    click.echo(answer["session_id"])
