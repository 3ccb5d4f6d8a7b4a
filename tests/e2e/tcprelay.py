"""A TCP relay for the man-in-the-middle test: accept on one address, re-originate to another.

    python tcprelay.py LISTEN_ADDR PORT TARGET_ADDR TARGET_PORT

Accepts connections until killed; each gets its own connection to the target and the bytes
are copied both ways, a FIN passed on as a FIN (half-close), so each leg is an ordinary TCP
connection that the machine's own tcpcryptd encrypts on its own (two tcpcrypt sessions).
Prints ``relay: ready`` once listening.
"""

from __future__ import annotations

import socket
import sys
import threading


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client: socket.socket, target: tuple[str, int]) -> None:
    with client, socket.create_connection(target, timeout=30) as upstream:
        upstream.settimeout(None)
        back = threading.Thread(target=pump, args=(upstream, client))
        back.start()
        pump(client, upstream)
        back.join()


def main() -> None:
    listen_addr, port, target_addr, target_port = sys.argv[1:5]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((listen_addr, int(port)))
        listener.listen(8)
        print("relay: ready", flush=True)
        while True:
            client, _ = listener.accept()
            threading.Thread(target=serve, args=(client, (target_addr, int(target_port))),
                             daemon=True).start()


if __name__ == "__main__":
    main()
