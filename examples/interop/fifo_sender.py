#!/usr/bin/env python3
"""A shmbus sender written with the Python standard library only.

Writes COUNT zero-copy messages `Point { x: i64, y: i64 }` (x = i, y = -2 * i) into the
shmbus FIFO at PATH, framed as docs/wire-format.md describes: a hello first, then one
frame per message. The receiving Rust program checks the type with the fingerprint.

usage: fifo_sender.py PATH COUNT FINGERPRINT TYPE_NAME
"""
import os
import struct
import sys
import time
import zlib

HELLO_MAGIC = b"SHMBUS\x00\x01"
KIND_DATA, KIND_HELLO = 0, 1
ENCODING_ZERO_COPY = 1


def frame(kind: int, payload: bytes) -> bytes:
    head = struct.pack("<IB", len(payload), kind)
    crc = zlib.crc32(head + payload) & 0xFFFFFFFF
    return head + payload + struct.pack("<I", crc)


def hello(fingerprint: int, name: str, max_frame: int) -> bytes:
    n = name.encode()
    return HELLO_MAGIC + struct.pack("<IQIH", ENCODING_ZERO_COPY, fingerprint, max_frame, len(n)) + n


def main() -> None:
    path, count, fingerprint, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0), sys.argv[4]
    deadline = time.monotonic() + 10
    while True:  # like shmbus: wait for the receiver to open the FIFO
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as out:
        out.write(frame(KIND_HELLO, hello(fingerprint, name, 16)))
        for i in range(count):
            out.write(frame(KIND_DATA, struct.pack("<qq", i, -2 * i)))


if __name__ == "__main__":
    main()
