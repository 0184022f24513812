"""OpenSSH public keys as users paste them (a line of ``~/.ssh/id_ed25519.pub``): parsed, checked
and fingerprinted the way ``ssh-keygen -l`` does (``SHA256:`` and the unpadded base64 of the
SHA-256 of the key blob), so the "SSH keys" page shows the fingerprint users see in their
terminal. The gateway compares the blob a client offers with the registered ones.

Refused with a message saying what to paste instead: a private key, DSA keys (OpenSSH dropped
them), RSA keys under 2048 bits, certificates, ``authorized_keys`` options, a blob that is not
the key type its line names. Pure: standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

# Key types the gateway accepts (what ssh-keygen makes today, security keys included).
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
MIN_RSA_BITS = 2048
MAX_LINE = 16_384  # a 16384-bit RSA key is about 2,800 characters
MAX_COMMENT = 200
HOW_TO = "paste one line of your public key file, e.g. the output of: cat ~/.ssh/id_ed25519.pub"


class BadKey(ValueError):
    """A line that is not a public key the gateway accepts; the message says why and what to do."""


@dataclass(frozen=True)
class PublicKey:
    """One public key: its type, its blob (the base64 part, decoded) and the comment after it."""

    algorithm: str
    blob: bytes
    comment: str = ""
    bits: int = 0  # RSA modulus size; 0 for the others (their size is fixed by the type)

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        return fingerprint(self.blob)

    @property
    def openssh(self) -> str:
        """``TYPE BASE64``: the key in OpenSSH's form, without its comment."""
        return f"{self.algorithm} {base64.b64encode(self.blob).decode()}"


def fingerprint(blob: bytes) -> str:
    """The SHA256 fingerprint of a key blob, as OpenSSH prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(line: str) -> PublicKey:
    """The key on one line ``TYPE BASE64 [COMMENT]``; :class:`BadKey` saying what is wrong."""
    text = line.strip()
    if not text:
        raise BadKey(f"the key is empty: {HOW_TO}")
    if len(text) > MAX_LINE:
        raise BadKey(f"the key is {len(text):,} characters long, more than any public key: {HOW_TO}")
    if "PRIVATE KEY" in text:
        raise BadKey("this is a PRIVATE key: never paste it anywhere. Paste the .pub file beside it instead")
    if "\n" in text or "\r" in text:
        raise BadKey(f"the key must be one line (this is {len(text.splitlines())}): {HOW_TO}")
    parts = text.split(None, 2)
    algorithm = parts[0]
    if algorithm.endswith("-cert-v01@openssh.com"):
        raise BadKey("certificates are not accepted: paste the plain public key (the .pub file without -cert)")
    if algorithm == "ssh-dss":
        raise BadKey("DSA keys are not accepted (OpenSSH removed them): make an ed25519 key with ssh-keygen -t ed25519")
    if algorithm not in KEY_TYPES:
        raise BadKey(
            f"the line starts with {algorithm[:40]!r}, which is not a key type "
            f"({', '.join(KEY_TYPES[:5])}, ...); it must start with the type, without authorized_keys options: {HOW_TO}"
        )
    if len(parts) < 2:
        raise BadKey(f"the {algorithm} key has no key data after its type: {HOW_TO}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise BadKey(f"the key data after {algorithm} is not base64 (was the line cut or wrapped?): {HOW_TO}") from None
    comment = parts[2].strip() if len(parts) > 2 else ""
    if len(comment) > MAX_COMMENT:
        raise BadKey(f"the comment after the key is {len(comment)} characters long; at most {MAX_COMMENT}")
    if any(ord(c) < 32 for c in comment):
        raise BadKey("the comment after the key has control characters")
    return PublicKey(algorithm, blob, comment, _check_blob(algorithm, blob))


def _check_blob(algorithm: str, blob: bytes) -> int:
    """Check that the blob is a well-formed key of ``algorithm``; the RSA modulus size, else 0."""
    fields = _ssh_strings(blob, algorithm)
    if not fields or fields[0] != algorithm.encode():
        named = fields[0][:40].decode(errors="replace") if fields else "nothing"
        raise BadKey(f"the key data is a {named!r} key, not the {algorithm} its line says: {HOW_TO}")
    expected = {"ssh-ed25519": 2, "ssh-rsa": 3, "sk-ssh-ed25519@openssh.com": 3}.get(algorithm, 3)
    if algorithm == "sk-ecdsa-sha2-nistp256@openssh.com":
        expected = 4
    if len(fields) != expected:
        raise BadKey(f"the {algorithm} key data is damaged (was the line cut?): {HOW_TO}")
    if algorithm in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com") and len(fields[1]) != 32:
        raise BadKey(f"the {algorithm} key data is damaged (an ed25519 key has 32 bytes): {HOW_TO}")
    if algorithm.startswith(("ecdsa-", "sk-ecdsa-")) and fields[1] != algorithm.split("-")[-1].split("@")[0].encode():
        raise BadKey(f"the {algorithm} key data names another curve ({fields[1][:20]!r}): {HOW_TO}")
    if algorithm == "ssh-rsa":
        bits = int.from_bytes(fields[2], "big").bit_length()
        if bits < MIN_RSA_BITS:
            raise BadKey(f"this RSA key has {bits} bits; at least {MIN_RSA_BITS} (better: ssh-keygen -t ed25519)")
        return bits
    return 0


def _ssh_strings(blob: bytes, algorithm: str) -> list[bytes]:
    """The length-prefixed strings a key blob is made of (RFC 4251 ``string`` and ``mpint``)."""
    fields: list[bytes] = []
    at = 0
    while at < len(blob):
        if at + 4 > len(blob) or len(fields) > 8:
            raise BadKey(f"the {algorithm} key data is damaged (was the line cut?): {HOW_TO}")
        size = int.from_bytes(blob[at : at + 4], "big")
        at += 4
        if at + size > len(blob):
            raise BadKey(f"the {algorithm} key data is damaged (was the line cut?): {HOW_TO}")
        fields.append(blob[at : at + size])
        at += size
    return fields
