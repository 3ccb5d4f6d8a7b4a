"""Config validation: defaults, the shipped file, one readable error naming the bad key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from tcpcryptd.core.constants import TEP, AEADId
from tcpcryptd.daemon import config as config_module
from tcpcryptd.daemon.config import (
    LIMITS,
    SCHEMA,
    Config,
    engine_config,
    load_config,
    parse_config,
)
from tcpcryptd.daemon.errors import ConfigError
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.policy import Mode, Policy

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "tcpcryptd.toml"


def test_no_file_gives_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    config = load_config(None)
    assert config == Config()
    assert config.encryption.teps == (TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448,
                                      TEP.ECDHE_P256)
    assert config.encryption.aeads[0] == AEADId.AES_128_GCM
    assert set(config.encryption.aeads) == set(AEADId)
    assert config.control.socket == "/run/tcpcryptd/control.sock"
    assert config.firewall.skip_ports == ()
    assert config.log.keylog == ""


def test_default_path_is_read_when_present(monkeypatch, tmp_path):
    path = tmp_path / "tcpcryptd.toml"
    path.write_text("[queue]\nnumber = 7\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(None).queue.number == 7


def test_shipped_file_documents_every_key_with_its_default():
    data = tomllib.loads(SHIPPED.read_text())
    assert parse_config(data) == Config()
    for section, (_, keys) in SCHEMA.items():
        assert set(data[section]) == set(keys), section


def test_shipped_file_holds_every_engine_limit_with_the_engine_default():
    """[limits] of conf/tcpcryptd.toml is EngineConfig's defaults, value and type (7200.0)."""
    shipped = tomllib.loads(SHIPPED.read_text())["limits"]
    defaults = EngineConfig()
    assert set(shipped) == set(LIMITS)
    for name in LIMITS:
        default = getattr(defaults, name)
        assert (shipped[name], type(shipped[name])) == (default, type(default)), name


def test_every_engine_field_is_a_config_key_or_named_internal():
    """A new EngineConfig field must be decided on: a [limits] key (LIMITS), set from
    [encryption], [rekey], [resumption] or [policy] by engine_config, or internal (protocol
    timers, injected objects)."""
    from_encryption = {"enabled", "teps", "aeads", "aead_preference", "passive_role_ports",
                       "policy", "rekey_bytes", "rekey_interval"}
    from_resumption = {"resumption_enabled", "resumption_cache_size", "resumption_lifetime"}
    internal = {"linger", "tombstone", "challenge_ack_interval", "initial_rto", "min_rto",
                "max_rto", "max_retransmits", "local_rto", "random"}
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    assert engine_fields == set(LIMITS) | from_encryption | from_resumption | internal
    assert not set(LIMITS) & (from_encryption | from_resumption | internal)


def test_resumption_keys_reach_the_engine_and_are_checked():
    """[resumption] defaults are EngineConfig's (the shipped file too); set values reach the
    engine; out-of-range values name the key."""
    shipped = tomllib.loads(SHIPPED.read_text())["resumption"]
    defaults = EngineConfig()
    for key, value in shipped.items():
        default = getattr(defaults, f"resumption_{key}")
        assert (value, type(value)) == (default, type(default)), key
    engine = engine_config(parse_config({"resumption": {
        "enabled": False, "cache_size": 7, "lifetime": 60}}))
    assert (engine.resumption_enabled, engine.resumption_cache_size,
            engine.resumption_lifetime) == (False, 7, 60.0)
    for key, bad in (("cache_size", 0), ("lifetime", 0.5), ("enabled", 1)):
        with pytest.raises(ConfigError, match=f"resumption.{key}"):
            parse_config({"resumption": {key: bad}})


def test_rekey_keys_reach_the_engine():
    engine = engine_config(parse_config({"rekey": {"bytes": 4096, "interval": 0}}))
    assert (engine.rekey_bytes, engine.rekey_interval) == (4096, 0.0)
    assert engine_config(Config()).rekey_bytes == EngineConfig().rekey_bytes == 1 << 30
    with pytest.raises(ConfigError, match="rekey.bytes"):
        parse_config({"rekey": {"bytes": -1}})


def test_every_limit_reaches_the_engine():
    """Each [limits] key, set to twice its default (in range for all), is the engine's."""
    config = parse_config({"limits": {name: getattr(EngineConfig(), name) * 2
                                      for name in LIMITS}})
    engine = engine_config(config)
    for name in LIMITS:
        assert getattr(engine, name) == getattr(config.limits, name) != getattr(
            EngineConfig(), name), name


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[queue\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(path)


def test_error_from_file_names_file_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[queue]\nnumber = 70000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: queue.number: must be in 0..65535, got 70000"


@pytest.mark.parametrize("text, message", [
    ("[nope]\n", "nope: unknown section"),
    ("queue = 1\n", "queue: must be a table"),
    ("[queue]\nnumbr = 1\n", "queue.numbr: unknown key"),
    ("[queue]\nnumber = '1'\n", "queue.number: must be an integer, got str '1'"),
    ("[queue]\nnumber = true\n", "queue.number: must be an integer, got bool"),
    ("[queue]\nmax_len = 0\n", "queue.max_len: must be in 1..65535, got 0"),
    ("[encryption]\nenabled = 1\n", "encryption.enabled: must be true or false"),
    ("[encryption]\nteps = []\n", "encryption.teps: must be a non-empty list"),
    ("[encryption]\nteps = 'X25519'\n", "encryption.teps: must be a non-empty list"),
    ("[encryption]\nteps = ['X25519', 'P-384']\n", "encryption.teps: unknown name 'P-384'"),
    ("[encryption]\nteps = ['X25519', 'x25519']\n", "encryption.teps: 'x25519' is listed twice"),
    ("[encryption]\naeads = [1]\n", "encryption.aeads: unknown name 1"),
    ("[marks]\nseen = 0\n", "marks.seen: must be in 1..4294967295, got 0"),
    ("[marks]\nseen = 0x40000000\n", "marks.seen: shares bits with marks.injected"),
    ("[marks]\nencrypted = 0x60000000\n", "marks.encrypted: shares bits with marks.injected"),
    ("[marks]\ntentative = 0x08000000\n", "marks.tentative: shares bits with marks.plain"),
    ("[firewall]\nbackend = 'nftables'\n", "firewall.backend: must be one of auto, nft, legacy"),
    ("[firewall]\nskip_ports = [22, 0]\n", r"firewall.skip_ports\[1\]: must be in 1..65535"),
    ("[firewall]\nskip_ports = [22, 22]\n", "firewall.skip_ports: a port is listed twice"),
    ("[firewall]\nskip_ports = 22\n", "firewall.skip_ports: must be a list"),
    ("[control]\nsocket = ''\n", "control.socket: must not be empty"),
    ("[control]\nsocket = 5\n", "control.socket: must be a string"),
    ("[limits]\nidle_timeout = 'long'\n", "limits.idle_timeout: must be a number of seconds"),
    ("[limits]\nhandshake_timeout = 0.5\n", "limits.handshake_timeout: must be in 1..3600"),
    ("[limits]\nmax_init_len = 10\n", "limits.max_init_len: must be in 64..65535"),
    ("[limits]\nmax_half_open = 0\n", "limits.max_half_open: must be in 1..10000000, got 0"),
    ("[log]\nlevel = 'loud'\n", "log.level: must be one of debug, info, warning, error"),
    ("[log]\nkeylog = false\n", "log.keylog: must be a string"),
])
def test_bad_values_give_one_error_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(text))


def test_names_are_case_insensitive_and_ordered():
    config = parse_config(tomllib.loads(
        "[encryption]\nteps = ['p-256', 'X448']\naeads = ['chacha20-poly1305']\n"
        "[log]\nlevel = 'DEBUG'\n"))
    assert config.encryption.teps == (TEP.ECDHE_P256, TEP.ECDHE_CURVE448)
    assert config.encryption.aeads == (AEADId.CHACHA20_POLY1305,)
    assert config.log.level == "debug"


def test_engine_config_follows_the_preferences():
    config = parse_config(tomllib.loads(
        "[encryption]\nenabled = false\nteps = ['P-521']\n"
        "aeads = ['AES-256-GCM', 'AES-128-GCM']\n[limits]\nmax_flows = 10\n"
        "max_half_open = 7\n"
        "idle_timeout = 30\naead_idle_release = 0\n"))
    engine = engine_config(config)
    assert engine.enabled is False
    assert engine.teps == (TEP.ECDHE_P521,)
    assert engine.aeads == (AEADId.AES_256_GCM, AEADId.AES_128_GCM)
    # B's preference is in increasing priority (RFC 8548 §3.3): most preferred last
    assert engine.aead_preference == (AEADId.AES_128_GCM, AEADId.AES_256_GCM)
    assert engine.max_flows == 10
    assert engine.max_half_open == 7
    assert engine.idle_timeout == 30.0
    assert engine.aead_idle_release == 0.0


def test_policy_rules_reach_the_engine():
    config = parse_config(tomllib.loads(
        "[policy]\ndefault = 'Require'\n"
        "[[policy.rules]]\nmode = 'skip'\nremote_port = 443\n"
        "[[policy.rules]]\nmode = 'prefer'\npeer = 'fd00::/16'\nlocal_port = 22\n"
        "[[policy.rules]]\nmode = 'require'\npeer = '192.0.2.1'\n"))
    policy = engine_config(config).policy
    assert policy.default is Mode.REQUIRE and policy.require
    assert policy.mode(4, bytes([198, 51, 100, 1]), 40000, 443) is Mode.SKIP
    assert policy.mode(6, bytes([0xFD, 0]) + bytes(14), 22, 5000) is Mode.PREFER
    assert policy.mode(4, bytes([192, 0, 2, 1]), 40000, 443) is Mode.SKIP     # port first
    assert policy.mode(4, bytes([192, 0, 2, 1]), 40000, 80) is Mode.REQUIRE
    assert engine_config(Config()).policy == Policy()


@pytest.mark.parametrize("text, message", [
    ("[policy]\ndefault = 'maybe'\n", "policy.default: must be one of skip, prefer, require"),
    ("[policy]\nrules = {mode = 'skip'}\n", "policy.rules: must be a list of tables"),
    ("[policy]\nrules = [5]\n", r"policy.rules\[0\]: must be a table"),
    ("[policy]\nrules = [{peer = '10.0.0.0/8'}]\n", r"policy.rules\[0\]: needs a mode"),
    ("[policy]\nrules = [{mode = 'skip'}]\n", r"policy.rules\[0\]: needs peer, local_port"),
    ("[policy]\nrules = [{mode = 'skip', port = 1}]\n", r"policy.rules\[0\].port: unknown key"),
    ("[policy]\nrules = [{mode = 'skip', peer = '10.0.0.1/8'}]\n",
     r"policy.rules\[0\].peer: not an address or prefix .*has host bits set"),
    ("[policy]\nrules = [{mode = 'skip', peer = 'example.org'}]\n",
     r"policy.rules\[0\].peer: not an address or prefix"),
    ("[policy]\nrules = [{mode = 'skip', local_port = 0}]\n",
     r"policy.rules\[0\].local_port: must be in 1..65535"),
    ("[policy]\nrules = [{mode = 'skip', remote_port = 22},"
     " {mode = 'require', remote_port = 22}]\n",
     r"policy.rules\[1\]: selects the same connections as policy.rules\[0\]"),
])
def test_bad_policy_gives_one_error_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(text))
