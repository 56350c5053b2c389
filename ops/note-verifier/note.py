#!/usr/bin/env python3
"""A second, independent implementation of C2SP signed-note, tlog-checkpoint
and tlog-cosignature/v1 (Ed25519 from the `cryptography` package), written
from the specifications, to check Trellis's notes against and to make notes
Trellis must accept.

  note.py verify VKEY < note             -> JSON {origin, size, root}
  note.py verify-cosigned VKEY WKEY < note -> JSON {origin, size, root, time}
  note.py sign NAME ORIGIN SIZE ROOT_B64  -> JSON {vkey, note}
  note.py cosign NAME TIME < note         -> JSON {vkey, note}

Exit status 1 (message on stderr) when a note does not verify.
"""
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.exceptions import InvalidSignature

ED25519 = 0x01
COSIGNATURE_V1 = 0x04


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def key_id(name, alg, public):
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def parse_vkey(vkey, alg):
    name, hex_id, material = vkey.strip().split("+", 2)
    raw = base64.b64decode(material, validate=True)
    if raw[0] != alg or len(raw) != 33:
        fail(f"verifier key of type {raw[0]:#x}, expected {alg:#x}")
    kid = bytes.fromhex(hex_id)
    if kid != key_id(name, alg, raw[1:]):
        fail("the verifier key's id does not match its name and key")
    return name, kid, Ed25519PublicKey.from_public_bytes(raw[1:])


def vkey_of(name, alg, private):
    public = private.public_key().public_bytes_raw()
    return f"{name}+{key_id(name, alg, public).hex()}+" + base64.b64encode(
        bytes([alg]) + public
    ).decode()


def split(note):
    """(text, [(name, payload)]): the text ends at the last blank line."""
    cut = note.rfind(b"\n\n")
    if cut < 0 or not note.endswith(b"\n"):
        fail("not a signed note")
    text, sigs = note[: cut + 1], note[cut + 2 :]
    lines = []
    for line in sigs.decode().splitlines():
        if not line.startswith("\u2014 "):
            fail(f"not a signature line: {line!r}")
        name, payload = line[2:].split(" ")
        lines.append((name, base64.b64decode(payload, validate=True)))
    return text, lines


def checkpoint(text):
    origin, size, root = text.decode().split("\n")[:3]
    if not size.isdigit() or (size != "0" and size.startswith("0")):
        fail(f"bad size line {size!r}")
    if len(base64.b64decode(root, validate=True)) != 32:
        fail("the root is not 32 bytes")
    return {"origin": origin, "size": int(size), "root": root}


def find(lines, name, kid):
    for n, payload in lines:
        if n == name and payload[:4] == kid:
            return payload[4:]
    fail(f"no signature by {name}")


def verify(vkey, note):
    name, kid, public = parse_vkey(vkey, ED25519)
    text, lines = split(note)
    try:
        public.verify(find(lines, name, kid), text)
    except InvalidSignature:
        fail(f"the signature by {name} does not verify")
    return text, lines


def main(argv):
    command = argv[1]
    if command == "verify":
        text, _ = verify(argv[2], sys.stdin.buffer.read())
        print(json.dumps(checkpoint(text)))
    elif command == "verify-cosigned":
        text, lines = verify(argv[2], sys.stdin.buffer.read())
        name, kid, public = parse_vkey(argv[3], COSIGNATURE_V1)
        signed = find(lines, name, kid)
        time, signature = int.from_bytes(signed[:8], "big"), signed[8:]
        message = b"cosignature/v1\ntime %d\n" % time + text
        try:
            public.verify(signature, message)
        except InvalidSignature:
            fail(f"the cosignature by {name} does not verify")
        print(json.dumps({**checkpoint(text), "time": time}))
    elif command == "sign":
        name, origin, size, root = argv[2:6]
        private = Ed25519PrivateKey.generate()
        text = f"{origin}\n{size}\n{root}\n".encode()
        public = private.public_key().public_bytes_raw()
        payload = key_id(name, ED25519, public) + private.sign(text)
        note = text + "\n\u2014 ".encode()
        note += f"{name} {base64.b64encode(payload).decode()}\n".encode()
        print(json.dumps({"vkey": vkey_of(name, ED25519, private), "note": note.decode()}))
    elif command == "cosign":
        name, time = argv[2], int(argv[3])
        note = sys.stdin.buffer.read()
        text, _ = split(note)
        private = Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes_raw()
        message = b"cosignature/v1\ntime %d\n" % time + text
        payload = key_id(name, COSIGNATURE_V1, public) + time.to_bytes(8, "big") + private.sign(message)
        note += f"\u2014 {name} {base64.b64encode(payload).decode()}\n".encode()
        print(json.dumps({"vkey": vkey_of(name, COSIGNATURE_V1, private), "note": note.decode()}))
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
