"""Protocol constants of TCP-ENO (RFC 8547) and tcpcrypt (RFC 8548)."""

from enum import IntEnum

#: TCP option kind of TCP-ENO (RFC 8547 §4.1, §10).
ENO_KIND = 69

#: The non-SYN-form ENO option tcpcrypt sends: kind 69, length 2, no contents (RFC 8547 §4.1).
NON_SYN_OPTION = b"\x45\x02"


class TEP(IntEnum):
    """tcpcrypt TEP identifiers (RFC 8548 §7, Table 4)."""

    ECDHE_P256 = 0x21
    ECDHE_P521 = 0x22
    ECDHE_CURVE25519 = 0x23
    ECDHE_CURVE448 = 0x24


class AEADId(IntEnum):
    """Authenticated-encryption algorithm identifiers (RFC 8548 §7, Table 5)."""

    AES_128_GCM = 0x0001
    AES_256_GCM = 0x0002
    CHACHA20_POLY1305 = 0x0010


# RFC 8548 §4.3, Table 1.
CONST_NEXTK = b"\x01"
CONST_SESSID = b"\x02"
CONST_REKEY = b"\x03"
CONST_KEY_A = b"\x04"
CONST_KEY_B = b"\x05"
CONST_RESUME = b"\x06"
INIT1_MAGIC = 0x15101A0E
INIT2_MAGIC = 0x097105E0

#: Nonce and session-secret lengths of every TEP in RFC 8548 (§5).
N_A_LEN = 32
N_B_LEN = 32
K_LEN = 32

#: Length of a resumption identifier resume[i] (RFC 8548 §3.5).
RESUME_ID_LEN = 18
#: Half an identifier as carried in a resumption suboption (RFC 8548 §3.5, Figs 2/3).
RESUME_HALF_LEN = 9
#: Largest resumption nonce (RFC 8548 §3.5).
MAX_RESUME_NONCE_LEN = 8

#: Default upper bound on an Init message's message_len
#: (README.md "Readings of the RFCs").
DEFAULT_MAX_INIT_LEN = 4096
