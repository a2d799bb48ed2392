#!/usr/bin/env python3
"""Writes seed LaunchRequests (proto/prism/launcher/launcher.proto) into
fuzz/corpus/launch_request/, encoded by hand in the protobuf wire format:
the requests of the README's quick start and a few edge cases.
Run from the repository root: python3 fuzz/launch_seeds.py"""

import os

# LaunchRequest fields: 1 pattern_name, 2 isolation (enum), 3 namespace,
# 4 session_id, 5 config (map<string, string>), 6 grace_period_secs (int64).
UNSPECIFIED, NONE, NAMESPACE, SESSION = 0, 1, 2, 3


def varint(n):
    n &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def launch(pattern="", isolation=0, namespace="", session="", config=None, grace=0):
    out = b""
    if pattern:
        out += field_bytes(1, pattern)
    if isolation:
        out += field_varint(2, isolation)
    if namespace:
        out += field_bytes(3, namespace)
    if session:
        out += field_bytes(4, session)
    for k, v in (config or {}).items():
        out += field_bytes(5, field_bytes(1, k) + field_bytes(2, v))
    if grace:
        out += field_varint(6, grace)
    return out


SEEDS = {
    "quickstart-namespace": launch("hello-pattern", NAMESPACE, "tenant-a"),
    "quickstart-session": launch("hello-pattern", SESSION, "tenant-a", "user-1"),
    "quickstart-shared": launch("config-lookup", NONE),
    "manifest-level": launch("hello-pattern", UNSPECIFIED, "tenant-b"),
    "session-default-namespace": launch("keyed", SESSION, session="user-2"),
    "config-and-grace": launch(
        "keyed", SESSION, "tenant-a", "u1", {"LOG_LEVEL": "debug", "COLOUR": "red"}, 10
    ),
    "config-not-accepted": launch("keyed", SESSION, "tenant-a", "u1", {"OTHER": "x"}),
    "config-forbidden": launch("hello-pattern", NAMESPACE, "tenant-a", config={"LD_PRELOAD": "/x.so"}),
    "negative-grace": launch("hello-pattern", NAMESPACE, "tenant-a", grace=-1),
    "grace-over-limit": launch("hello-pattern", NAMESPACE, "tenant-a", grace=86401),
    "unknown-isolation": launch("hello-pattern", 7, "tenant-a"),
    "bad-namespace": launch("hello-pattern", NAMESPACE, "../etc"),
    "unknown-pattern": launch("nope", NAMESPACE, "tenant-a"),
    "empty": launch(),
}

if __name__ == "__main__":
    out = os.path.join("fuzz", "corpus", "launch_request")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)
