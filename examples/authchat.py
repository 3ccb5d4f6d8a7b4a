#!/usr/bin/env python3
"""authchat: authenticate a tcpcrypt session ID with a shared passphrase, then send a file.

tcpcrypt alone protects a connection from passive eavesdroppers only: an active man in the
middle can terminate the connection and re-originate it, running one tcpcrypt session with
each end. The two sessions then have different session IDs (RFC 8548 §3.4, derived from
both ends' fresh key shares), so applications that check they agree on the session ID
detect the attack (RFC 8548 §3.4, §8; draft-ietf-tcpinc-api §5). This example does the
simplest such check, in the spirit of the draft's cookie-based example (§5.1):

1. Both ends read the connection's session from tcpcryptd (:mod:`tcpcryptd.api`) and refuse
   to go on unless it is encrypted.
2. Each end sends ``HMAC-SHA256(passphrase, "authchat v1" || TCP_ENO_SELF_NAME)``, where the
   self name is its role byte (A = 0, B = 1, RFC 8547 §4.5) followed by the session ID.
   The role byte makes the two proofs differ, so neither can be reflected back.
3. Each end checks the peer's proof against ``HMAC(passphrase, "authchat v1" ||
   TCP_ENO_PEER_NAME)`` with a constant-time comparison. Through a man in the middle each
   end computes over its own leg's session ID and the check fails at both ends.
4. Authenticated, the client sends a file (8-byte length, then the bytes); the server
   stores it and answers with its SHA-256, which the client compares with its own.

Usage (``--control`` is the daemon's control socket; every user may query connections
their own processes own)::

    authchat.py serve   --port 7000 --passphrase-file KEY --output received.bin
    authchat.py connect HOST 7000   --passphrase-file KEY --input file.bin

Exit status: 0 authenticated (and the file arrived intact), 2 the connection is not
encrypted, 3 authentication failed, 1 any other error.

The passphrase is read from a file, never from the command line (other users can read
command lines). A caveat: a man in the middle sees one proof computed with the passphrase,
so a guessable passphrase can be found offline by trying candidates; use a long random
secret, or a PAKE, for real deployments.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import socket
import struct
import sys
from pathlib import Path

from tcpcryptd import api

#: Domain separation of the proofs (protocol name and version).
CONTEXT = b"authchat v1"
PROOF_LEN = hashlib.sha256().digest_size
_LENGTH = struct.Struct("!Q")
#: Seconds a peer may take to send its next message.
IO_TIMEOUT = 30.0

EXIT_NOT_ENCRYPTED = 2
EXIT_AUTH_FAILED = 3


class AuthError(Exception):
    """The session could not be authenticated; ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def proof(passphrase: bytes, name: bytes) -> bytes:
    """The proof of knowing ``passphrase`` bound to one end's name (role byte || session ID)."""
    return hmac.new(passphrase, CONTEXT + name, hashlib.sha256).digest()


def recv_exact(sock: socket.socket, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        chunk = sock.recv(min(length - len(data), 1 << 16))
        if not chunk:
            raise AuthError(f"the peer closed the connection after {len(data)} of "
                            f"{length} bytes", 1)
        data += chunk
    return bytes(data)


def authenticate(sock: socket.socket, passphrase: bytes, control: str) -> api.Session:
    """Steps 1-3 of the module doc; returns the authenticated session or raises AuthError."""
    info = api.wait_session(sock, control=control)
    if not info.encrypted or info.self_name is None or info.peer_name is None:
        raise AuthError(f"the connection is not encrypted (state {info.state})",
                        EXIT_NOT_ENCRYPTED)
    sock.sendall(proof(passphrase, info.self_name))
    received = recv_exact(sock, PROOF_LEN)
    if not hmac.compare_digest(received, proof(passphrase, info.peer_name)):
        raise AuthError("authentication FAILED: the peer does not know the passphrase, or a "
                        "man in the middle runs a different tcpcrypt session with it",
                        EXIT_AUTH_FAILED)
    return info


def serve(args: argparse.Namespace, passphrase: bytes) -> None:
    """Accept one connection, authenticate it, store the file, answer with its SHA-256."""
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.bind, args.port))
        listener.listen(1)
        conn, peer = listener.accept()
    with conn:
        conn.settimeout(IO_TIMEOUT)
        info = authenticate(conn, passphrase, args.control)
        print(f"authenticated {peer[0]} port {peer[1]}: session {info.session_id.hex()} "
              f"role {info.role} {info.tep} {info.aead}", flush=True)
        (length,) = _LENGTH.unpack(recv_exact(conn, _LENGTH.size))
        digest = hashlib.sha256()
        with open(args.output, "wb") as out:
            remaining = length
            while remaining:
                chunk = recv_exact(conn, min(remaining, 1 << 16))
                out.write(chunk)
                digest.update(chunk)
                remaining -= len(chunk)
        conn.sendall(digest.digest())
        print(f"received {length} bytes, sha256 {digest.hexdigest()}", flush=True)


def connect(args: argparse.Namespace, passphrase: bytes) -> None:
    """Connect, authenticate, send the file and check the server's SHA-256 of it."""
    data = Path(args.input).read_bytes() if args.input else b""
    with socket.create_connection((args.host, args.port), timeout=IO_TIMEOUT) as sock:
        info = authenticate(sock, passphrase, args.control)
        print(f"authenticated {args.host} port {args.port}: session "
              f"{info.session_id.hex()} role {info.role} {info.tep} {info.aead}", flush=True)
        sock.sendall(_LENGTH.pack(len(data)) + data)
        echoed = recv_exact(sock, PROOF_LEN)
    sent = hashlib.sha256(data).digest()
    if not hmac.compare_digest(echoed, sent):
        raise AuthError("the server stored other bytes than were sent", 1)
    print(f"sent {len(data)} bytes, sha256 {sent.hex()} confirmed", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--control", default=api.DEFAULT_CONTROL_PATH,
                        help="tcpcryptd control socket (default %(default)s)")
    parser.add_argument("--passphrase-file", required=True, type=Path,
                        help="file holding the shared passphrase")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("serve", help="accept one connection")
    server.add_argument("--bind", default="0.0.0.0")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--output", required=True, help="where to store the received file")
    client = commands.add_parser("connect", help="connect to a server")
    client.add_argument("host")
    client.add_argument("port", type=int)
    client.add_argument("--input", help="file to send (default: nothing)")
    args = parser.parse_args(argv)
    passphrase = args.passphrase_file.read_bytes().rstrip(b"\r\n")
    if not passphrase:
        parser.error(f"{args.passphrase_file} holds no passphrase")
    try:
        (serve if args.command == "serve" else connect)(args, passphrase)
    except AuthError as exc:
        print(f"authchat: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, api.TcpincError) as exc:
        print(f"authchat: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
