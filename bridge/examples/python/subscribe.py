#!/usr/bin/env python3
"""Subscribe to a bridged shmbus channel with the plain Zenoh Python client.

The channel carries this zero-copy message (the Rust side's `#[repr(C)]` struct):

    struct Tick { seq: u64, check: u64, data: [u8; 48] }

so each payload is 64 bytes, little-endian. The attachment says which type it is
(see bridge/src/wire.rs): magic b"SHMB", version, encoding, fingerprint, origin bridge id,
type name. Prints one line per message: "<seq> <check> <fingerprint hex> <type name>".

    pip install -r requirements.txt
    python3 subscribe.py --connect tcp/127.0.0.1:7447 --key shmbus/ticks --count 10
"""
import argparse
import json
import queue
import struct
import sys

import zenoh

ATTACHMENT = struct.Struct("<4sBBHQQ")  # magic, version, encoding, reserved, fingerprint, origin


def decode_attachment(raw: bytes):
    if len(raw) < ATTACHMENT.size:
        raise ValueError(f"attachment of {len(raw)} bytes")
    magic, version, encoding, _, fingerprint, origin = ATTACHMENT.unpack_from(raw)
    if magic != b"SHMB" or version != 1:
        raise ValueError("not a shmbus attachment")
    return encoding, fingerprint, origin, raw[ATTACHMENT.size:].decode("utf-8", "replace")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--connect", action="append", default=[])
    p.add_argument("--key", default="shmbus/ticks")
    p.add_argument("--count", type=int, default=10)
    args = p.parse_args()

    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps("peer"))
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("connect/endpoints", json.dumps(args.connect))
    samples = queue.Queue()
    with zenoh.open(conf) as session:
        # Samples arrive on Zenoh's threads; the main thread prints them in order.
        sub = session.declare_subscriber(args.key, samples.put)
        for _ in range(args.count):
            sample = samples.get()
            payload = sample.payload.to_bytes()
            encoding, fingerprint, _origin, type_name = decode_attachment(
                sample.attachment.to_bytes()
            )
            seq, check = struct.unpack_from("<QQ", payload)
            print(f"{seq} {check} {fingerprint:016x} {type_name}", flush=True)
        sub.undeclare()
    return 0


if __name__ == "__main__":
    sys.exit(main())
