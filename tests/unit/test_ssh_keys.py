"""Public key lines as users paste them: accepted with ssh-keygen's fingerprint, or refused with
a message that says what to paste instead."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgpu.ssh.keys import BadKey, parse_public_key

# Made with ssh-keygen; the fingerprints are what `ssh-keygen -lf` printed for them.
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICRVhHSYTgGA3N4dIFC0JCSIAlrAwljoi24zSweMgHv2 alice@laptop"
ED25519_FP = "SHA256:cLjftnjaVevef0krEasAbfNZ+fz2pGymNXnbcSL42WI"
ECDSA384 = (
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBHdURGqCQMtd3FH03iaR5HEW17ydbr/H+iIUK3"
    "AIAA/bbtps/z9Lb9W/xPDFKeQfFL41s7uS41cM0QuAtMWj8yNp8rlq9PsTRN+YXiGdpUhZhxcW7t3+jkZHABATbGj95Q=="
)
ECDSA384_FP = "SHA256:OCUVqeLCDJQWY+ieKAnOVYgqkHTGTWJtWrnCLT79EVc"
RSA2048 = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCxqPb9Os5zm1gjAsLl1xeCV1+uAulnZ67/h+MHbO7YTPzrD/+otM3s64raCQyorVjDOqD39d0"
    "ChDxXuK/2dtIG862uuFnKJs2lgi/lmc6udzD1H+QvWA7dpwsYPIhalj9ZKPC6h7nOC5051+5/d8GDLtB+gPOSLiIB6dtCdJ85ACzSZ1wTt0e5SP"
    "Rxr1yK+0vJQhfkHhtE15DcFJvf/WRM34F91jSscqlylJ3lSPlwZllZg8R5ICuMJ9KANhZMIVxpkOnHWEQddN1CFX7AEe+v2yhNKuWaNsXf0XZOzg"
    "S+RTU2dn2PU2ZhsKrDc+zqFkaFtYgT6M2LljYufPdvwyuR x"
)
RSA2048_FP = "SHA256:2Cn5PDa4QScsmQuNiPFKFva854Eb5quJHtQQ/E2xkZQ"
RSA1024 = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCg81je6RfgosvnZ+sqyfTidjRrEq8HL/3Q5YQsCOkYaTiosxkCTSio45Lgyyl1hDR1cqKQttV7"
    "YsyvPuXMAOcT8/D05a5H1Xl7qATAnE5CVxBvGPuf6MD9y+H1WmjT8eW3lyo5YWaQRCIqkPgXZ/p8DfPYkjveYFyp+/07zAdppw== root@vm"
)


@pytest.mark.parametrize(
    ("line", "fingerprint", "algorithm", "comment", "bits"),
    [
        (ED25519, ED25519_FP, "ssh-ed25519", "alice@laptop", 0),
        (ECDSA384, ECDSA384_FP, "ecdsa-sha2-nistp384", "", 0),
        (RSA2048, RSA2048_FP, "ssh-rsa", "x", 2048),
    ],
)
def test_a_public_key_line_gives_the_fingerprint_ssh_keygen_prints(line, fingerprint, algorithm, comment, bits):
    key = parse_public_key(f"  {line}\n")
    assert (key.fingerprint, key.algorithm, key.comment, key.bits) == (fingerprint, algorithm, comment, bits)
    assert key.openssh == " ".join(line.split()[:2])


def test_a_comment_with_spaces_is_kept_whole():
    assert parse_public_key(ED25519 + " and more words").comment == "alice@laptop and more words"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "the key is empty"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----", "PRIVATE key"),
        (RSA1024, "this RSA key has 1024 bits; at least 2048"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP1", "DSA keys are not accepted"),
        ('command="ls" ' + ED25519, "without authorized_keys options"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "certificates are not accepted"),
        ("ssh-ed25519", "has no key data"),
        ("ssh-ed25519 not*base64", "is not base64"),
        ("ssh-rsa " + ED25519.split()[1], "is a 'ssh-ed25519' key, not the ssh-rsa"),
        ("ssh-ed25519 " + ED25519.split()[1][:40], "damaged"),
        (ED25519 + "\n" + ED25519, "must be one line"),
        (ED25519 + " " + "c" * 201, "at most 200"),
    ],
)
def test_what_is_not_a_public_key_is_refused_saying_why(line, message):
    with pytest.raises(BadKey, match=None) as e:
        parse_public_key(line)
    assert message in str(e.value)


def test_an_ed25519_blob_of_the_wrong_size_is_refused():
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x10" + b"k" * 16
    with pytest.raises(BadKey, match="32 bytes"):
        parse_public_key("ssh-ed25519 " + base64.b64encode(blob).decode())


@given(st.text(max_size=300))
def test_any_text_is_a_key_or_a_bad_key_never_a_crash(text):
    try:
        parse_public_key(text)
    except BadKey as e:
        assert str(e)


@given(st.binary(max_size=200), st.sampled_from(["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"]))
def test_any_blob_is_a_key_or_a_bad_key_never_a_crash(blob, algorithm):
    try:
        parse_public_key(f"{algorithm} {base64.b64encode(blob).decode()}")
    except BadKey as e:
        assert str(e)
