"""The exception tree of the protocol core.

Every parser and check in :mod:`tcpcryptd.core` raises a subclass of :class:`TcpcryptError`
for bad input and nothing else, so callers (the flow engine) can map each class to one
reaction: disable ENO, or abort the connection (RFC 8548 §3.3 "abort" = RFC 793 ABORT).
"""


class TcpcryptError(Exception):
    """Base class of every error the protocol core raises on bad input."""


class ENOParseError(TcpcryptError):
    """A malformed ENO option: ignore it and disable ENO (RFC 8547 §4.1, §4.6)."""


class InitMessageError(TcpcryptError):
    """A bad Init1/Init2 message (magic, message_len, bounds): abort
    (README.md "Readings of the RFCs")."""


class CipherMismatchError(InitMessageError):
    """Init2 selects a sym_cipher that was not in A's Init1 list: abort (RFC 8548 §3.3)."""


class KeyAgreementError(TcpcryptError):
    """Peer public key fails validation, or an all-zero X25519/X448 secret (RFC 8548 §5)."""


class FrameError(TcpcryptError):
    """A malformed encryption frame (RFC 8548 §4.2): abort."""


class FrameAuthError(FrameError):
    """AEAD decryption returned FAIL (RFC 8548 §3.6): abort, distinct from end-of-file."""
