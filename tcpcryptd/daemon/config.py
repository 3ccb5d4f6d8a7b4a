"""The daemon's configuration: a TOML file (``conf/tcpcryptd.toml``), validated key by key.

Every key is optional; no file at all gives the defaults: encrypt every TCP flow but loopback,
offer the TEPs X25519, X448, P-256 (RFC 8548 §7, Table 4) in that order and all three AEADs
(Table 5) with AES-128-GCM preferred. A bad file gives one :class:`ConfigError` whose message
names the key (``marks.seen: must be an integer, got 'x'``), never a traceback.

The ``[limits]`` section is the engine's own limits: :data:`LIMITS` names which
:class:`~tcpcryptd.engine.config.EngineConfig` fields a user may set and the range accepted;
their types and defaults are EngineConfig's (``LimitsConfig`` is made from its fields). The
other EngineConfig fields are no config key: the algorithms come from ``[encryption]``
(:func:`engine_config`), the rekeying limits from ``[rekey]``, the policy from
``[policy]``; the protocol timers (RTO bounds, linger, challenge-ACK rate) and injected
objects keep the engine's defaults.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from tcpcryptd.core.constants import TEP, AEADId
from tcpcryptd.daemon.errors import ConfigError
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.policy import Mode, Policy, Rule

#: Where ``tcpcryptd`` looks for its configuration when no ``--config`` is given.
DEFAULT_CONFIG_PATH = Path("/etc/tcpcryptd/tcpcryptd.toml")
DEFAULT_CONTROL_PATH = "/run/tcpcryptd/control.sock"

#: Config names of the TEPs (RFC 8548 §7, Table 4).
TEP_NAMES: dict[str, TEP] = {
    "X25519": TEP.ECDHE_CURVE25519,
    "X448": TEP.ECDHE_CURVE448,
    "P-256": TEP.ECDHE_P256,
    "P-521": TEP.ECDHE_P521,
}
#: Config names of the AEAD algorithms (RFC 8548 §7, Table 5).
AEAD_NAMES: dict[str, AEADId] = {
    "AES-128-GCM": AEADId.AES_128_GCM,
    "AES-256-GCM": AEADId.AES_256_GCM,
    "CHACHA20-POLY1305": AEADId.CHACHA20_POLY1305,
}
LOG_LEVELS = ("debug", "info", "warning", "error")
FIREWALL_BACKENDS = ("auto", "nft", "legacy")


@dataclass(frozen=True)
class EncryptionConfig:
    enabled: bool = True
    teps: tuple[TEP, ...] = (TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448, TEP.ECDHE_P256)
    aeads: tuple[AEADId, ...] = (AEADId.AES_128_GCM, AEADId.AES_256_GCM,
                                 AEADId.CHACHA20_POLY1305)
    passive_role_ports: tuple[int, ...] = ()


#: Most worker processes ``queue.workers = 0`` (one per CPU) starts.
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class QueueConfig:
    number: int = 0
    max_len: int = 1024
    #: worker processes, each on its own queue ``number + k``; 0: one per CPU, at most
    #: :data:`MAX_AUTO_WORKERS`
    workers: int = 0
    #: nflog group on which the kernel tells worker ``k`` (group ``log_group + k``) of the
    #: connections it made plain on the peer's SYN-ACK; away from 0, the group iptables'
    #: NFLOG target and ulogd use by default (a group has one listener)
    log_group: int = 8548

    def worker_count(self) -> int:
        """How many workers run: ``workers``, or for 0 the CPUs this process may use."""
        if self.workers:
            return self.workers
        return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


@dataclass(frozen=True)
class MarksConfig:
    injected: int = 0x40000000
    seen: int = 0x20000000
    encrypted: int = 0x10000000
    plain: int = 0x08000000
    #: nfmark of a packet the kernel let through without the queue while a connection is
    #: tentatively plain (daemon/nftables.py: the peer's SYN-ACK without ENO): never recorded
    tentative: int = 0x04000000


@dataclass(frozen=True)
class FirewallConfig:
    backend: str = "auto"
    ipv6: bool = True
    skip_ports: tuple[int, ...] = ()
    offload_max: int = 65536


@dataclass(frozen=True)
class RekeyConfig:
    """``[rekey]``: when a connection starts a new key generation (RFC 8548 §3.8)."""

    bytes: int = EngineConfig.rekey_bytes           #: wire bytes sealed per generation; 0: off
    interval: float = EngineConfig.rekey_interval   #: seconds per generation; 0: off


@dataclass(frozen=True)
class ControlConfig:
    socket: str = DEFAULT_CONTROL_PATH


@dataclass(frozen=True)
class ResumptionConfig:
    """``[resumption]``: session resumption (RFC 8548 §3.5), EngineConfig's defaults."""

    enabled: bool = EngineConfig.resumption_enabled
    cache_size: int = EngineConfig.resumption_cache_size
    lifetime: float = EngineConfig.resumption_lifetime


@dataclass(frozen=True)
class PolicyConfig:
    """``[policy]``: the mode of connections no rule matches, and the rules
    (:mod:`tcpcryptd.engine.policy`)."""

    default: Mode = Mode.PREFER
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    keylog: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""    #: HOST:PORT of the Prometheus endpoint; "" = off


# ---------------------------------------------------------------------------------------------
# Validators: each takes (key, raw value) and returns the typed value or raises ConfigError.

Validator = Callable[[str, Any], Any]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


def _integer(low: int, high: int) -> Validator:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {_type_name(value)} {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{key}: must be in {low}..{high}, got {value}")
        return value
    return check


def _seconds(low: float, high: float) -> Validator:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number of seconds, got {_type_name(value)} "
                              f"{value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{key}: must be in {low:g}..{high:g} seconds, got {value}")
        return float(value)
    return check


def _choice(choices: tuple[str, ...]) -> Validator:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
        return value.lower()
    return check


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {_type_name(value)} {value!r}")
    if "\0" in value:
        raise ConfigError(f"{key}: must not contain NUL")
    return value


def _path(key: str, value: Any) -> str:
    text = _string(key, value)
    if not text:
        raise ConfigError(f"{key}: must not be empty")
    return text


def _name_list(names: dict[str, int]) -> Validator:
    """A non-empty list of distinct algorithm names, in order of preference."""

    def check(key: str, value: Any) -> tuple:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key}: must be a non-empty list of names "
                              f"({', '.join(names)}), got {value!r}")
        result = []
        for item in value:
            upper = item.upper() if isinstance(item, str) else None
            if upper not in names:
                raise ConfigError(f"{key}: unknown name {item!r} (known: {', '.join(names)})")
            if names[upper] in result:
                raise ConfigError(f"{key}: {item!r} is listed twice")
            result.append(names[upper])
        return tuple(result)
    return check


def _port_list(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of TCP ports, got {value!r}")
    port = _integer(1, 65535)
    ports = tuple(port(f"{key}[{index}]", item) for index, item in enumerate(value))
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{key}: a port is listed twice")
    return ports


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` -> (host, port); ValueError when malformed."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT or [V6ADDR]:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{text!r} is not HOST:PORT or [V6ADDR]:PORT")
    return host.strip("[]"), int(port)


def _listen(key: str, value: Any) -> str:
    """"" (off) or ADDR:PORT / [V6ADDR]:PORT with a numeric address."""
    text = _string(key, value)
    if not text:
        return text
    try:
        host, _port = parse_hostport(text)
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: must be ADDR:PORT or [V6ADDR]:PORT with a numeric "
                          f"address (e.g. 127.0.0.1:9469), got {text!r}") from None
    return text


_MARK = _integer(1, 0xFFFFFFFF)
MODES = tuple(str(mode) for mode in Mode)
_PORT = _integer(1, 65535)
#: Keys of one ``policy.rules`` entry (``mode`` required, at least one selector).
RULE_KEYS = ("mode", "peer", "local_port", "remote_port")


def _mode(key: str, value: Any) -> Mode:
    return Mode(_choice(MODES)(key, value))


def _prefix(key: str, value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _string(key, value)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{key}: not an address or prefix ({exc})") from None


def _rules(key: str, value: Any) -> tuple[Rule, ...]:
    """``policy.rules``: a list of tables ``{mode, peer?, local_port?, remote_port?}``."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of tables ([[policy.rules]]), got {value!r}")
    rules: list[Rule] = []
    seen: dict[tuple, int] = {}
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table with mode and selectors, got {entry!r}")
        unknown = sorted(set(entry) - set(RULE_KEYS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: "
                              f"{', '.join(RULE_KEYS)})")
        if "mode" not in entry:
            raise ConfigError(f"{where}: needs a mode ({', '.join(MODES)})")
        if len(entry) == 1:
            raise ConfigError(f"{where}: needs peer, local_port or remote_port (policy.default "
                              f"sets the mode of every other connection)")
        rule = Rule(mode=_mode(f"{where}.mode", entry["mode"]),
                    peer=_prefix(f"{where}.peer", entry["peer"]) if "peer" in entry else None,
                    local_port=(_PORT(f"{where}.local_port", entry["local_port"])
                                if "local_port" in entry else None),
                    remote_port=(_PORT(f"{where}.remote_port", entry["remote_port"])
                                 if "remote_port" in entry else None))
        selectors = (rule.peer, rule.local_port, rule.remote_port)
        if selectors in seen:
            raise ConfigError(f"{where}: selects the same connections as {key}[{seen[selectors]}]")
        seen[selectors] = index
        rules.append(rule)
    return tuple(rules)


#: The ``[limits]`` keys: the EngineConfig fields a user may set, each with the range it
#: accepts. Name, type and default are EngineConfig's; conf/tcpcryptd.toml documents them.
LIMITS: dict[str, Validator] = {
    "max_flows": _integer(1, 10_000_000),
    "max_half_open": _integer(1, 10_000_000),
    "max_held_packets": _integer(1, 1024),
    "max_buffered_bytes": _integer(65536, 1 << 30),
    "max_init_len": _integer(64, 65535),
    "idle_timeout": _seconds(1.0, 30 * 86400.0),
    "handshake_timeout": _seconds(1.0, 3600.0),
    "aead_idle_release": _seconds(0.0, 86400.0),
}

#: ``[limits]`` as validated: the :data:`LIMITS` fields of EngineConfig, with its defaults.
LimitsConfig = make_dataclass(
    "LimitsConfig",
    [(f.name, f.type, field(default=f.default)) for f in fields(EngineConfig) if f.name in LIMITS],
    frozen=True)
LimitsConfig.__module__ = __name__   # picklable (the worker processes get the config)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration (immutable; CLI overrides make a new one)."""

    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    marks: MarksConfig = field(default_factory=MarksConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rekey: RekeyConfig = field(default_factory=RekeyConfig)
    resumption: ResumptionConfig = field(default_factory=ResumptionConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


#: section -> key -> validator. Section and key names are the TOML names.
SCHEMA: dict[str, tuple[type, dict[str, Validator]]] = {
    "encryption": (EncryptionConfig, {
        "enabled": _boolean,
        "teps": _name_list(TEP_NAMES),
        "aeads": _name_list(AEAD_NAMES),
        "passive_role_ports": _port_list,
    }),
    "queue": (QueueConfig, {
        "number": _integer(0, 65535),
        "max_len": _integer(1, 65535),
        "workers": _integer(0, 64),
        "log_group": _integer(0, 65535 - 64),
    }),
    "marks": (MarksConfig, {"injected": _MARK, "seen": _MARK, "encrypted": _MARK,
                            "plain": _MARK, "tentative": _MARK}),
    "firewall": (FirewallConfig, {
        "backend": _choice(FIREWALL_BACKENDS),
        "ipv6": _boolean,
        "skip_ports": _port_list,
        "offload_max": _integer(1, 16_777_216),
    }),
    "control": (ControlConfig, {"socket": _path}),
    "limits": (LimitsConfig, LIMITS),
    "rekey": (RekeyConfig, {"bytes": _integer(0, 1 << 62), "interval": _seconds(0.0, 365 * 86400.0)}),
    "resumption": (ResumptionConfig, {
        "enabled": _boolean,
        "cache_size": _integer(1, 10_000_000),
        "lifetime": _seconds(1.0, 7 * 86400.0),
    }),
    "policy": (PolicyConfig, {
        "default": _mode,
        "rules": _rules,
    }),
    "log": (LogConfig, {"level": _choice(LOG_LEVELS), "keylog": _string}),
    "metrics": (MetricsConfig, {"listen": _listen}),
}


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document; raises :class:`ConfigError` naming the first bad key."""
    sections: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(SCHEMA)})")
        cls, keys = SCHEMA[section]
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
        values = {}
        for key, raw in body.items():
            if key not in keys:
                raise ConfigError(f"{section}.{key}: unknown key (known in [{section}]: "
                                  f"{', '.join(keys)})")
            values[key] = keys[key](f"{section}.{key}", raw)
        sections[section] = cls(**values)
    config = Config(**sections)
    _check_marks(config.marks)
    return config


def _check_marks(marks: MarksConfig) -> None:
    """The marks are tested bit by bit (``--mark X/X``): they must not share a bit."""
    named = (("marks.injected", marks.injected), ("marks.seen", marks.seen),
             ("marks.encrypted", marks.encrypted), ("marks.plain", marks.plain),
             ("marks.tentative", marks.tentative))
    for index, (name, value) in enumerate(named):
        for other_name, other in named[index + 1:]:
            if value & other:
                raise ConfigError(f"{other_name}: shares bits with {name} "
                                  f"({other:#x} & {value:#x})")


def load_config(path: Path | None) -> Config:
    """Read and validate ``path``; ``None`` means the default path if it exists, else defaults.

    An explicitly given path that does not exist is an error (a typo must not silently run
    with defaults).
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def engine_config(config: Config) -> EngineConfig:
    """The engine's configuration: algorithms in preference order and the limits.

    ``encryption.aeads`` lists the most preferred first; A offers them in that order in Init1
    and, as B, the engine wants them in increasing priority (RFC 8548 §3.3).
    """
    return EngineConfig(
        enabled=config.encryption.enabled,
        teps=tuple(int(tep) for tep in config.encryption.teps),
        aeads=tuple(int(aead) for aead in config.encryption.aeads),
        aead_preference=tuple(int(aead) for aead in reversed(config.encryption.aeads)),
        rekey_bytes=config.rekey.bytes,
        rekey_interval=config.rekey.interval,
        passive_role_ports=frozenset(config.encryption.passive_role_ports),
        resumption_enabled=config.resumption.enabled,
        resumption_cache_size=config.resumption.cache_size,
        resumption_lifetime=config.resumption.lifetime,
        **{name: getattr(config.limits, name) for name in LIMITS},
        policy=Policy(config.policy.rules, config.policy.default),
    )
