"""Independent check of the published tcpcrypt test vectors (tests/vectors/tcpcrypt.json).

This module deliberately does NOT import :mod:`tcpcryptd`. Every value in the vectors is
recomputed here from `cryptography` primitives and byte layouts written out by hand from
the RFC texts, so the vectors (made by tools/make_vectors.py, which calls our core) are
proven right by a second, independent reading of RFC 8547 and RFC 8548. The test doubles as
a worked description of the protocol; the field meanings are in tests/vectors/README.md.

One further test runs the generator in a subprocess and compares its output with the
committed file byte for byte: a change of the implementation that silently changes the wire
format fails here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

REPO = Path(__file__).resolve().parents[2]
VECTORS_PATH = REPO / "tests" / "vectors" / "tcpcrypt.json"
GENERATOR_PATH = REPO / "tools" / "make_vectors.py"

# --- Constants, written out again from the RFCs (not imported) -----------------------------

ENO_KIND = 0x45  # RFC 8547 §4.1 / §10: TCP option kind 69
CONST_NEXTK = 0x01  # RFC 8548 §4.3, Table 1
CONST_SESSID = 0x02
CONST_REKEY = 0x03
CONST_KEY_A = 0x04
CONST_KEY_B = 0x05
CONST_RESUME = 0x06
INIT1_MAGIC = 0x15101A0E
INIT2_MAGIC = 0x097105E0
N_A_LEN = N_B_LEN = K_LEN = 32  # RFC 8548 §5
AE_NONCE_LEN = 12  # RFC 8548 §6, Table 3 (all three AEADs)
AE_TAG_LEN = 16  # RFC 5116 §5.1, RFC 8439 §2.8
FINP, URGP = 0x01, 0x02  # RFC 8548 §4.2.1 flags
REKEY = 0x01  # RFC 8548 §4.2 control

#: TEP id -> key-agreement scheme (RFC 8548 §5, §7 Table 4).
TEPS = {0x21: "P-256", 0x22: "P-521", 0x23: "X25519", 0x24: "X448"}
#: Wire length of Pub for each TEP. P-curves: u16 pubkey_len + compressed point.
PUB_LEN = {0x21: 2 + 33, 0x22: 2 + 67, 0x23: 32, 0x24: 56}
#: AEAD id -> (cryptography class, ae_key_len) (RFC 8548 §6 Table 3, §7 Table 5).
AEADS: dict[int, tuple[type, int]] = {
    0x0001: (AESGCM, 16),
    0x0002: (AESGCM, 32),
    0x0010: (ChaCha20Poly1305, 32),
}
P_CURVES = {0x21: ec.SECP256R1(), 0x22: ec.SECP521R1()}
P_SCALAR_LEN = {0x21: 32, 0x22: 66}


# --- Key schedule primitives (RFC 8548 §3.3, §3.4, §3.5; RFC 5869) ------------------------


def extract(salt: bytes, ikm: bytes) -> bytes:
    """Extract(salt, IKM) = HKDF-Extract-SHA256 = HMAC-SHA256(key=salt, msg=IKM)."""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def cprf(key: bytes, info: bytes, length: int) -> bytes:
    """CPRF(K, CONST, L) = HKDF-Expand-SHA256(PRK=K, info=CONST, L) (RFC 8548 §5)."""
    return HKDFExpand(hashes.SHA256(), length, info).derive(key)


def hkdf_expand_by_hand(key: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3 written out: T(n) = HMAC(K, T(n-1) | info | n), n one byte."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(key, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def ss_chain(ss0: bytes, count: int) -> list[bytes]:
    """ss[0] = PRK; ss[i] = CPRF(ss[i-1], CONST_NEXTK, K_LEN) (RFC 8548 §3.3)."""
    chain = [ss0]
    while len(chain) < count:
        chain.append(cprf(chain[-1], bytes([CONST_NEXTK]), K_LEN))
    return chain


def master_keys(ss_i: bytes, sn_i: bytes, count: int) -> list[bytes]:
    """mk[0] = CPRF(ss[i], CONST_REKEY | sn[i], K_LEN); mk[j] = CPRF(mk[j-1], CONST_REKEY, K_LEN)."""
    mk = [cprf(ss_i, bytes([CONST_REKEY]) + sn_i, K_LEN)]
    while len(mk) < count:
        mk.append(cprf(mk[-1], bytes([CONST_REKEY]), K_LEN))
    return mk


# --- Key agreement (RFC 8548 §5; RFC 7748; IEEE 1363 ECSVDP-DH) ----------------------------


def public_key_on_wire(tep: int, private: bytes) -> bytes:
    """Pub as carried in Init1/Init2: X25519/X448 raw; P-curves u16 L | compressed point.

    The reading of README.md "Readings of the RFCs": pubkey_len L counts the whole
    structure, so L = 2 + point length.
    """
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if tep == 0x23:
        return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*raw)
    if tep == 0x24:
        return x448.X448PrivateKey.from_private_bytes(private).public_key().public_bytes(*raw)
    point = p_curve_private_key(tep, private).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return struct.pack(">H", 2 + len(point)) + point


def p_curve_private_key(tep: int, scalar: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256/P-521 private key from its big-endian scalar."""
    assert len(scalar) == P_SCALAR_LEN[tep]
    return ec.derive_private_key(int.from_bytes(scalar, "big"), P_CURVES[tep])


def ephemeral_secret(tep: int, private: bytes, peer_pub_on_wire: bytes) -> bytes:
    """ES = key agreement of our private key with the peer's Pub (RFC 8548 §3.3, §5)."""
    if tep == 0x23:
        peer = x25519.X25519PublicKey.from_public_bytes(peer_pub_on_wire)
        return x25519.X25519PrivateKey.from_private_bytes(private).exchange(peer)
    if tep == 0x24:
        peer448 = x448.X448PublicKey.from_public_bytes(peer_pub_on_wire)
        return x448.X448PrivateKey.from_private_bytes(private).exchange(peer448)
    (pubkey_len,) = struct.unpack_from(">H", peer_pub_on_wire)
    assert pubkey_len == len(peer_pub_on_wire)
    point = ec.EllipticCurvePublicKey.from_encoded_point(P_CURVES[tep], peer_pub_on_wire[2:])
    return p_curve_private_key(tep, private).exchange(ec.ECDH(), point)  # x-coordinate


# --- Init1 / Init2 (RFC 8548 §4.1) ----------------------------------------------------------


@dataclass(frozen=True)
class Init1:
    ciphers: tuple[int, ...]
    n_a: bytes
    pub_a: bytes


@dataclass(frozen=True)
class Init2:
    sym_cipher: int
    n_b: bytes
    pub_b: bytes


def parse_init1(raw: bytes, tep: int) -> Init1:
    """Init1 = INIT1_MAGIC(4) | message_len(4) | nciphers(1) | sym_cipher(2)*K | N_A | Pub_A."""
    magic, message_len, nciphers = struct.unpack_from(">IIB", raw, 0)
    assert magic == INIT1_MAGIC
    assert message_len == len(raw), "message_len is the whole message; 'ignored' is empty"
    ciphers = struct.unpack_from(f">{nciphers}H", raw, 9)
    n_a_at = 9 + 2 * nciphers
    pub_at = n_a_at + N_A_LEN
    assert len(raw) == pub_at + PUB_LEN[tep]
    return Init1(ciphers, raw[n_a_at:pub_at], raw[pub_at:])


def build_init1(ciphers: tuple[int, ...], n_a: bytes, pub_a: bytes) -> bytes:
    body = struct.pack(f">B{len(ciphers)}H", len(ciphers), *ciphers) + n_a + pub_a
    return struct.pack(">II", INIT1_MAGIC, 8 + len(body)) + body


def parse_init2(raw: bytes, tep: int) -> Init2:
    """Init2 = INIT2_MAGIC(4) | message_len(4) | sym_cipher(2) | N_B(32) | Pub_B."""
    magic, message_len, sym_cipher = struct.unpack_from(">IIH", raw, 0)
    assert magic == INIT2_MAGIC
    assert message_len == len(raw) == 10 + N_B_LEN + PUB_LEN[tep]
    return Init2(sym_cipher, raw[10 : 10 + N_B_LEN], raw[10 + N_B_LEN :])


def build_init2(sym_cipher: int, n_b: bytes, pub_b: bytes) -> bytes:
    body = struct.pack(">H", sym_cipher) + n_b + pub_b
    return struct.pack(">II", INIT2_MAGIC, 8 + len(body)) + body


# --- ENO SYN options (RFC 8547 §4.1-4.3, RFC 8548 §3.5) -------------------------------------


@dataclass(frozen=True)
class SynOption:
    gopt: int | None  # first global suboption, None when implicit
    teps: tuple[tuple[int, bytes], ...]  # (TEP byte incl. v bit, suboption data)


def parse_syn_option(raw: bytes) -> SynOption:
    """Walk a SYN-form ENO option: globals (<0x20), TEP bytes, length bytes (0x80-0x9f)."""
    assert raw[0] == ENO_KIND and raw[1] == len(raw) >= 2
    contents, gopt, teps, i = raw[2:], None, [], 0
    while i < len(contents):
        byte = contents[i]
        if byte < 0x20:
            gopt = byte if gopt is None else gopt
            i += 1
        elif byte < 0x80:
            teps.append((byte, b""))
            i += 1
        elif byte < 0xA0:
            data_len = (byte & 0x1F) + 1
            assert contents[i + 1] >= 0xA0 and i + 2 + data_len <= len(contents)
            teps.append((contents[i + 1], contents[i + 2 : i + 2 + data_len]))
            i += 2 + data_len
        else:  # TEP with v=1 and no length byte: data runs to the end of the option
            teps.append((byte, contents[i + 1 :]))
            i = len(contents)
    return SynOption(gopt, tuple(teps))


# --- Encryption frames (RFC 8548 §3.6, §4.2) ------------------------------------------------


def aead_nonce(nonce_randomizer: bytes, offset: int) -> bytes:
    """N = frame_ID XOR NR; frame_ID = zero bytes | offset (8 bytes, big-endian)."""
    frame_id = bytes(AE_NONCE_LEN - 8) + struct.pack(">Q", offset)
    return bytes(f ^ r for f, r in zip(frame_id, nonce_randomizer, strict=True))


def split_traffic_key(aead_id: int, traffic_key: bytes) -> tuple[Any, bytes]:
    """Traffic key = K (ae_key_len) | NR (ae_nonce_len) (RFC 8548 §3.6, Figure 4)."""
    cls, key_len = AEADS[aead_id]
    assert len(traffic_key) == key_len + AE_NONCE_LEN
    return cls(traffic_key[:key_len]), traffic_key[key_len:]


# --- Deterministic inputs (tests/vectors/README.md, "Determinism") -------------------------


def seed(name: str, label: str, length: int) -> bytes:
    return hashlib.shake_256(f"tcpcryptd test vector|{name}|{label}".encode()).digest(length)


def seeded_private_key(name: str, label: str, tep: int) -> bytes:
    """X curves: seed bytes. P-curves: top bit / top byte cleared, so 0 < d < group order."""
    if tep == 0x23:
        return seed(name, label, 32)
    if tep == 0x24:
        return seed(name, label, 56)
    scalar = bytearray(seed(name, label, P_SCALAR_LEN[tep]))
    scalar[0] &= 0x7F if tep == 0x21 else 0x00
    return bytes(scalar)


# --- Loading the vectors --------------------------------------------------------------------


def load_cases() -> list[dict[str, Any]]:
    return json.loads(VECTORS_PATH.read_text())["cases"]


CASES = load_cases()
FRESH = [c for c in CASES if "resumed_from" not in c]
RESUMED = [c for c in CASES if "resumed_from" in c]
BY_NAME = {c["name"]: c for c in CASES}


def unhex(case: dict[str, Any], field: str) -> bytes:
    return bytes.fromhex(case[field])


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


@dataclass(frozen=True)
class Derived:
    """Everything recomputed here for one case, independent of the vector file's values."""

    ss: list[bytes]
    sn: bytes
    session_id: bytes
    resume: bytes
    k_ab: list[bytes]
    k_ba: list[bytes]


def derive_fresh(case: dict[str, Any]) -> tuple[bytes, bytes, Derived]:
    """Fresh key exchange (RFC 8548 §3.3): returns (ES, PRK, derived keys) from the privates."""
    tep, init1, init2 = case["tep"], unhex(case, "init1"), unhex(case, "init2")
    pub_b = parse_init2(init2, tep).pub_b
    pub_a = parse_init1(init1, tep).pub_a
    es = ephemeral_secret(tep, unhex(case, "a_private"), pub_b)
    assert es == ephemeral_secret(tep, unhex(case, "b_private"), pub_a), "both sides agree"
    transcript = unhex(case, "a_syn_eno") + unhex(case, "b_syn_eno")
    prk = extract(parse_init1(init1, tep).n_a, transcript + init1 + init2 + es)
    b_tep_byte = parse_syn_option(unhex(case, "b_syn_eno")).teps[-1][0]
    return es, prk, derive_keys(case, ss_chain(prk, len(case["ss"])), b"", b_tep_byte)


def derive_resumed(case: dict[str, Any]) -> Derived:
    """Resumption (RFC 8548 §3.5): ss[i] from the original PRK, sn[i] = nonce_a | nonce_b."""
    original = BY_NAME[case["resumed_from"]]
    i = case["i"]
    ss_i_onward = ss_chain(derive_fresh(original)[1], i + len(case["ss"]))[i:]
    sn = unhex(case, "nonce_a") + unhex(case, "nonce_b")
    return derive_keys(case, ss_i_onward, sn, original["tep"] | 0x80)


def derive_keys(case: dict[str, Any], ss: list[bytes], sn: bytes, tep_byte: int) -> Derived:
    """session_id, resume and k_ab/k_ba[j] from ss[i] (= ss[0] of the list) and sn[i]."""
    ss_i = ss[0]
    generations = len(case["k_ab"])
    mk = master_keys(ss_i, sn, generations)
    key_material_len = AEADS[case["aead"]][1] + AE_NONCE_LEN
    return Derived(
        ss=ss,
        sn=sn,
        session_id=bytes([tep_byte]) + cprf(ss_i, bytes([CONST_SESSID]) + sn, K_LEN),
        resume=cprf(ss_i, bytes([CONST_RESUME]), 18),
        k_ab=[cprf(m, bytes([CONST_KEY_A]), key_material_len) for m in mk],
        k_ba=[cprf(m, bytes([CONST_KEY_B]), key_material_len) for m in mk],
    )


def derive(case: dict[str, Any]) -> Derived:
    return derive_resumed(case) if "resumed_from" in case else derive_fresh(case)[2]


# --- The schema -----------------------------------------------------------------------------

COMMON_FIELDS = {
    "name", "tep", "aead", "a_syn_eno", "b_syn_eno", "a_private", "b_private", "init1",
    "init2", "shared_secret", "prk", "ss", "session_id", "resume", "k_ab", "k_ba", "frames",
}  # fmt: skip
RESUMED_FIELDS = COMMON_FIELDS | {"resumed_from", "i", "nonce_a", "nonce_b"}
FRAME_FIELDS = {"sender", "generation", "offset", "control", "plaintext", "frame"}


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_schema(case: dict[str, Any]) -> None:
    assert set(case) == (RESUMED_FIELDS if "resumed_from" in case else COMMON_FIELDS)
    assert case["tep"] in TEPS and case["aead"] in AEADS
    for field in ("a_syn_eno", "b_syn_eno", "a_private", "b_private", "init1", "init2",
                  "shared_secret", "prk", "session_id", "resume"):  # fmt: skip
        bytes.fromhex(case[field])
    assert len(case["k_ab"]) == len(case["k_ba"]) >= 1 and len(case["ss"]) >= 1
    for frame in case["frames"]:
        assert set(frame) == FRAME_FIELDS and frame["sender"] in ("A", "B")


def test_names_are_unique() -> None:
    assert len(BY_NAME) == len(CASES)


# --- Coverage the issue asks for ------------------------------------------------------------


def test_every_tep_aead_pair_has_a_fresh_case() -> None:
    assert {(c["tep"], c["aead"]) for c in FRESH} == {(t, a) for t in TEPS for a in AEADS}


def test_a_resumed_case_from_x25519_aes128gcm_with_i_1() -> None:
    assert any(
        BY_NAME[c["resumed_from"]]["tep"] == 0x23
        and BY_NAME[c["resumed_from"]]["aead"] == 0x0001
        and c["i"] == 1
        for c in RESUMED
    )


def all_frames() -> list[dict[str, Any]]:
    return [f for c in CASES for f in c["frames"]]


def test_a_rekey_to_generation_1() -> None:
    assert any(f["generation"] == 1 and f["control"] & REKEY for f in all_frames())
    assert any(len(c["k_ab"]) >= 2 for c in CASES)


def test_a_finp_frame_and_an_urgp_frame() -> None:
    flags = [bytes.fromhex(f["plaintext"])[0] for f in all_frames()]
    assert any(flag & FINP for flag in flags)
    assert any(flag & URGP for flag in flags)


# --- SYN options, Init messages and key agreement (fresh cases) -----------------------------


@pytest.mark.parametrize("case", FRESH, ids=ids(FRESH))
def test_fresh_syn_options(case: dict[str, Any]) -> None:
    """A offers the TEP; B (passive opener) answers global b=1 and the negotiated TEP last.

    RFC 8547 §4.2/§4.3: b=0 makes A, b=1 makes B, and a passive opener must send its global
    suboption explicitly; §4.5: the negotiated TEP is the last valid one in B's option.
    """
    a_option = parse_syn_option(unhex(case, "a_syn_eno"))
    b_option = parse_syn_option(unhex(case, "b_syn_eno"))
    assert (a_option.gopt or 0) & 0x01 == 0, "A sent b=0"
    assert b_option.gopt is not None and b_option.gopt & 0x01, "B sent b=1 explicitly"
    assert case["tep"] in {byte & 0x7F for byte, _ in a_option.teps}
    assert b_option.teps[-1] == (case["tep"], b""), "v=0: fresh key exchange"


@pytest.mark.parametrize("case", FRESH, ids=ids(FRESH))
def test_fresh_init1_layout(case: dict[str, Any]) -> None:
    tep, init1 = case["tep"], unhex(case, "init1")
    parsed = parse_init1(init1, tep)
    assert case["aead"] in parsed.ciphers
    assert all(c in AEADS for c in parsed.ciphers)
    assert parsed.pub_a == public_key_on_wire(tep, unhex(case, "a_private"))
    assert init1 == build_init1(parsed.ciphers, parsed.n_a, parsed.pub_a)


@pytest.mark.parametrize("case", FRESH, ids=ids(FRESH))
def test_fresh_init2_layout(case: dict[str, Any]) -> None:
    tep, init2 = case["tep"], unhex(case, "init2")
    parsed = parse_init2(init2, tep)
    assert parsed.sym_cipher == case["aead"]
    assert parsed.pub_b == public_key_on_wire(tep, unhex(case, "b_private"))
    assert init2 == build_init2(parsed.sym_cipher, parsed.n_b, parsed.pub_b)


@pytest.mark.parametrize("case", FRESH, ids=ids(FRESH))
def test_fresh_pub_encoding(case: dict[str, Any]) -> None:
    """X curves: raw key; P-curves: pubkey_len = 2 + 33/67, then a compressed point (02/03)."""
    pub = parse_init1(unhex(case, "init1"), case["tep"]).pub_a
    if case["tep"] in P_CURVES:
        assert struct.unpack_from(">H", pub)[0] == len(pub) == PUB_LEN[case["tep"]]
        assert pub[2] in (0x02, 0x03)
    else:
        assert len(pub) == PUB_LEN[case["tep"]]


@pytest.mark.parametrize("case", FRESH, ids=ids(FRESH))
def test_fresh_shared_secret_and_prk(case: dict[str, Any]) -> None:
    es, prk, _ = derive_fresh(case)
    assert len(es) == {0x21: 32, 0x22: 66, 0x23: 32, 0x24: 56}[case["tep"]]
    assert unhex(case, "shared_secret") == es
    assert unhex(case, "prk") == prk


@pytest.mark.parametrize("case", FRESH, ids=ids(FRESH))
def test_fresh_inputs_derive_from_the_case_name(case: dict[str, Any]) -> None:
    """Private keys and nonces follow the seeding documented in tests/vectors/README.md."""
    name, tep = case["name"], case["tep"]
    assert unhex(case, "a_private") == seeded_private_key(name, "a_private", tep)
    assert unhex(case, "b_private") == seeded_private_key(name, "b_private", tep)
    assert parse_init1(unhex(case, "init1"), tep).n_a == seed(name, "n_a", N_A_LEN)
    assert parse_init2(unhex(case, "init2"), tep).n_b == seed(name, "n_b", N_B_LEN)


# --- Resumption (RFC 8548 §3.5) -------------------------------------------------------------


@pytest.mark.parametrize("case", RESUMED, ids=ids(RESUMED))
def test_resumed_has_no_key_exchange(case: dict[str, Any]) -> None:
    for field in ("a_private", "b_private", "init1", "init2", "shared_secret", "prk"):
        assert case[field] == "", field


@pytest.mark.parametrize("case", RESUMED, ids=ids(RESUMED))
def test_resumed_nonces_derive_from_the_case_name(case: dict[str, Any]) -> None:
    assert unhex(case, "nonce_a") == seed(case["name"], "nonce_a", 8)
    assert unhex(case, "nonce_b") == seed(case["name"], "nonce_b", 8)


@pytest.mark.parametrize("case", RESUMED, ids=ids(RESUMED))
def test_resumed_syn_options(case: dict[str, Any]) -> None:
    """A: TEP|v=1, resume[i]{0..8}, nonce_a. B: global 0x01, TEP|v=1, resume[i]{9..17}, nonce_b."""
    tep_byte = BY_NAME[case["resumed_from"]]["tep"] | 0x80
    resume_i = derive_resumed(case).resume
    nonce_a, nonce_b = unhex(case, "nonce_a"), unhex(case, "nonce_b")
    assert len(nonce_a) <= 8 and len(nonce_b) <= 8
    assert parse_syn_option(unhex(case, "a_syn_eno")) == SynOption(
        None, ((tep_byte, resume_i[:9] + nonce_a),)
    )
    assert parse_syn_option(unhex(case, "b_syn_eno")) == SynOption(
        0x01, ((tep_byte, resume_i[9:] + nonce_b),)
    )
    assert len(unhex(case, "a_syn_eno")) <= 40 and len(unhex(case, "b_syn_eno")) <= 40


@pytest.mark.parametrize("case", RESUMED, ids=ids(RESUMED))
def test_resumed_keeps_original_tep_and_aead(case: dict[str, Any]) -> None:
    original = BY_NAME[case["resumed_from"]]
    assert (case["tep"], case["aead"]) == (original["tep"], original["aead"])
    assert case["i"] >= 1, "ss[0] secured the original connection"
    if case["i"] < len(original["ss"]):
        assert case["ss"][0] == original["ss"][case["i"]]


# --- Key schedule (RFC 8548 §3.3-3.5), all cases --------------------------------------------


def test_cprf_is_hkdf_expand() -> None:
    """The CPRF used above equals RFC 5869's T(n) loop, also for lengths past one block."""
    case = FRESH[0]
    key = unhex(case, "prk")
    for length in (18, 32, 44, 70):
        assert cprf(key, b"\x03abc", length) == hkdf_expand_by_hand(key, b"\x03abc", length)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_session_secrets(case: dict[str, Any]) -> None:
    assert [bytes.fromhex(s) for s in case["ss"]] == derive(case).ss


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_session_id(case: dict[str, Any]) -> None:
    """session_id = B's TEP byte (v bit included) | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN)."""
    session_id = unhex(case, "session_id")
    assert len(session_id) == 33
    assert session_id == derive(case).session_id
    assert session_id[0] == parse_syn_option(unhex(case, "b_syn_eno")).teps[-1][0]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_resumption_identifier(case: dict[str, Any]) -> None:
    assert unhex(case, "resume") == derive(case).resume


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_traffic_keys_per_generation(case: dict[str, Any]) -> None:
    derived = derive(case)
    assert [bytes.fromhex(k) for k in case["k_ab"]] == derived.k_ab
    assert [bytes.fromhex(k) for k in case["k_ba"]] == derived.k_ba


# --- Frames (RFC 8548 §3.6-3.8, §4.2) -------------------------------------------------------


def frames_of(case: dict[str, Any], sender: str) -> list[dict[str, Any]]:
    return [f for f in case["frames"] if f["sender"] == sender]


def first_frame_offset(case: dict[str, Any], sender: str) -> int:
    """README.md "Readings of the RFCs": the wire stream counts from the byte after the
    SYN, Init bytes included.

    A resumed session has no Init messages (its init1/init2 are empty): first frame at 0.
    """
    return len(unhex(case, "init1" if sender == "A" else "init2"))


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
@pytest.mark.parametrize("sender", ["A", "B"])
def test_frame_offsets_follow_the_wire_stream(case: dict[str, Any], sender: str) -> None:
    offset = first_frame_offset(case, sender)
    for frame in frames_of(case, sender):
        assert frame["offset"] == offset
        offset += len(bytes.fromhex(frame["frame"]))


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
@pytest.mark.parametrize("sender", ["A", "B"])
def test_rekey_bit_marks_the_first_frame_of_a_generation(case: dict[str, Any], sender: str) -> None:
    """RFC 8548 §3.8: rekey = 1 exactly on the first frame under a new local generation."""
    generation = 0
    for frame in frames_of(case, sender):
        assert frame["generation"] in (generation, generation + 1)
        assert bool(frame["control"] & REKEY) == (frame["generation"] == generation + 1)
        generation = frame["generation"]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
@pytest.mark.parametrize("sender", ["A", "B"])
def test_finp_only_on_the_last_frame(case: dict[str, Any], sender: str) -> None:
    """RFC 8548 §3.7: FINp on the last frame a sender sends and on no other."""
    flags = [bytes.fromhex(f["plaintext"])[0] for f in frames_of(case, sender)]
    assert [bool(flag & FINP) for flag in flags[:-1]] == [False] * (len(flags) - 1)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_frames_decrypt_and_reencrypt(case: dict[str, Any]) -> None:
    """Each frame = control | clen | AEAD(K, frame_ID XOR NR, plaintext, AD = control | clen).

    Host A (which was also A in the original session of a resumed case) sends with k_ab[j],
    host B with k_ba[j] (RFC 8548 §3.3, §3.5).
    """
    derived = derive(case)
    for frame in case["frames"]:
        wire = bytes.fromhex(frame["frame"])
        plaintext = bytes.fromhex(frame["plaintext"])
        control, clen = struct.unpack_from(">BH", wire)
        associated_data, ciphertext = wire[:3], wire[3:]
        assert control == frame["control"] and control & 0xFE == 0, "cres sent as zero"
        assert clen == len(ciphertext) == len(plaintext) + AE_TAG_LEN
        keys = derived.k_ab if frame["sender"] == "A" else derived.k_ba
        aead, nonce_randomizer = split_traffic_key(case["aead"], keys[frame["generation"]])
        nonce = aead_nonce(nonce_randomizer, frame["offset"])
        assert aead.decrypt(nonce, ciphertext, associated_data) == plaintext
        assert aead.encrypt(nonce, plaintext, associated_data) == ciphertext
        flags = plaintext[0]
        assert flags & 0xFC == 0, "fres sent as zero"
        if flags & URGP:
            assert len(plaintext) >= 3, "flags | urgent(2) | data"


# --- The committed file is what the generator makes now -------------------------------------


def test_generator_reproduces_the_committed_vectors() -> None:
    """Catches an implementation change that silently changes the wire format."""
    python_path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    run = subprocess.run(
        [sys.executable, str(GENERATOR_PATH)], capture_output=True, cwd=REPO, env=env
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert run.stdout == VECTORS_PATH.read_bytes(), "wire format changed: see tests/vectors/README.md"
