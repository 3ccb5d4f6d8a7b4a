"""Protocol core of tcpcryptd: TCP-ENO (RFC 8547) and tcpcrypt (RFC 8548), sans-IO.

Pure functions and small classes over bytes; no sockets, no clock, no globals.  The names
below are the layer's public interface (docs/ARCHITECTURE.md); the submodules hold the rest.
"""

from tcpcryptd.core.aead import AEAD_ALGORITHMS, AEADAlgorithm, TrafficKey, aead_algorithm
from tcpcryptd.core.constants import (
    DEFAULT_MAX_INIT_LEN,
    ENO_KIND,
    INIT1_MAGIC,
    INIT2_MAGIC,
    NON_SYN_OPTION,
    TEP,
    AEADId,
)
from tcpcryptd.core.eno import (
    Suboption,
    SynOption,
    encode_syn_option,
    parse_resumption,
    parse_syn_option,
)
from tcpcryptd.core.errors import (
    CipherMismatchError,
    ENOParseError,
    FrameAuthError,
    FrameError,
    InitMessageError,
    KeyAgreementError,
    TcpcryptError,
)
from tcpcryptd.core.frame import (
    FRAME_OVERHEAD,
    FRAME_OVERHEAD_URGENT,
    MAX_FRAME_DATA,
    MAX_FRAME_DATA_URGENT,
    Frame,
    FrameDecoder,
    decode_frame,
    encode_frame,
)
from tcpcryptd.core.keys import KeySchedule, cprf, extract
from tcpcryptd.core.messages import (
    Init1,
    Init2,
    encode_init1,
    encode_init2,
    message_length,
    parse_init1,
    parse_init2,
)
from tcpcryptd.core.negotiation import (
    Fallback,
    FallbackReason,
    Negotiated,
    Role,
    negotiate,
    passive_answer,
)
from tcpcryptd.core.resumption import CacheEntry, SessionCache
from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake, Session
from tcpcryptd.core.tep import EphemeralKey, KeyAgreementScheme, key_agreement

__all__ = [
    # constants
    "AEADId", "DEFAULT_MAX_INIT_LEN", "ENO_KIND", "INIT1_MAGIC", "INIT2_MAGIC",
    "NON_SYN_OPTION", "TEP",
    # errors
    "CipherMismatchError", "ENOParseError", "FrameAuthError", "FrameError",
    "InitMessageError", "KeyAgreementError", "TcpcryptError",
    # TCP-ENO
    "Suboption", "SynOption", "encode_syn_option", "parse_resumption", "parse_syn_option",
    "Fallback", "FallbackReason", "Negotiated", "Role", "negotiate", "passive_answer",
    # tcpcrypt
    "AEAD_ALGORITHMS", "AEADAlgorithm", "TrafficKey", "aead_algorithm",
    "EphemeralKey", "KeyAgreementScheme", "key_agreement",
    "KeySchedule", "cprf", "extract",
    "Init1", "Init2", "encode_init1", "encode_init2", "message_length", "parse_init1",
    "parse_init2",
    "FRAME_OVERHEAD", "FRAME_OVERHEAD_URGENT", "MAX_FRAME_DATA", "MAX_FRAME_DATA_URGENT",
    "Frame", "FrameDecoder", "decode_frame", "encode_frame",
    "InitiatorHandshake", "ResponderHandshake", "Session",
    "CacheEntry", "SessionCache",
]
