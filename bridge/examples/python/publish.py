#!/usr/bin/env python3
"""Publish into a bridged shmbus channel with the plain Zenoh Python client.

A shmbus bridge running `--from-zenoh ticks` writes what arrives on `shmbus/ticks` into its
local channel `ticks`, where Rust programs read `Tick`s with the ordinary typed Receiver:

    struct Tick { seq: u64, check: u64, data: [u8; 48] }   // #[repr(C)], 64 bytes

The bridge delivers a sample only if its attachment carries the channel's type fingerprint
(`shmbus stat ticks` prints it; here it is a command-line argument).

    python3 publish.py --connect tcp/127.0.0.1:7447 --fingerprint 0123456789abcdef --count 10
"""
import argparse
import json
import struct
import sys
import time

import zenoh

ATTACHMENT = struct.Struct("<4sBBHQQ")  # magic, version, encoding, reserved, fingerprint, origin
ZERO_COPY = 1


def tick(seq: int) -> bytes:
    check = (seq * 0x9E3779B97F4A7C15) % (1 << 64)
    data = bytes((seq + i) % 256 for i in range(48))
    return struct.pack("<QQ", seq, check) + data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--connect", action="append", default=[])
    p.add_argument("--key", default="shmbus/ticks")
    p.add_argument("--fingerprint", required=True, help="hex, as `shmbus stat` shows it")
    p.add_argument("--count", type=int, default=10)
    args = p.parse_args()

    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps("peer"))
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("connect/endpoints", json.dumps(args.connect))
    attachment = ATTACHMENT.pack(b"SHMB", 1, ZERO_COPY, 0, int(args.fingerprint, 16), 0) + b"Tick"
    with zenoh.open(conf) as session:
        pub = session.declare_publisher(
            args.key, congestion_control=zenoh.CongestionControl.BLOCK
        )
        # Zenoh does not store messages: wait until the bridge subscribes.
        while not pub.matching_status.matching:
            time.sleep(0.01)
        for seq in range(args.count):
            pub.put(tick(seq), attachment=attachment)
        # Give the session time to flush before it closes.
        time.sleep(0.5)
        pub.undeclare()
    return 0


if __name__ == "__main__":
    sys.exit(main())
