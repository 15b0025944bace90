from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from registry.errors import BundleRejected, KeyFileError
from registry.signing import PublicKey, SigningKey, TrustedKeys, generate_key_pair

DIGEST = hashlib.sha256(b"a bundle").hexdigest()
OTHER_DIGEST = hashlib.sha256(b"another bundle").hexdigest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_id_is_the_start_of_the_sha256_of_the_raw_public_key() -> None:
    key = SigningKey.generate()
    raw = key.public.raw
    assert len(raw) == 32
    assert key.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert key.public.key_id == key.key_id
    assert SigningKey.generate().key_id != key.key_id


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "k.key", tmp_path / "k.pub")

    loaded = SigningKey.load(tmp_path / "k.key")
    public = PublicKey.load(tmp_path / "k.pub")

    assert loaded.key_id == key.key_id
    assert public == key.public
    assert PublicKey.from_pem(public.pem) == public
    assert (tmp_path / "k.pub").read_bytes() == key.public.pem
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "k.key").read_bytes()  # PKCS#8, unencrypted
    TrustedKeys([public]).verify(DIGEST, loaded.sign_digest(DIGEST), key.key_id)


def test_private_key_file_is_created_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        SigningKey.generate().save(tmp_path / "k.key", tmp_path / "k.pub")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "k.key") == 0o600
    assert mode_of(tmp_path / "k.pub") == 0o644


def test_save_refuses_to_overwrite_and_leaves_the_old_files(tmp_path: Path) -> None:
    SigningKey.generate().save(tmp_path / "k.key", tmp_path / "k.pub")
    before = (tmp_path / "k.key").read_bytes(), (tmp_path / "k.pub").read_bytes()

    with pytest.raises(KeyFileError, match="already exists; refusing to overwrite"):
        SigningKey.generate().save(tmp_path / "k.key", tmp_path / "k.pub")

    assert ((tmp_path / "k.key").read_bytes(), (tmp_path / "k.pub").read_bytes()) == before


def test_save_writes_nothing_when_only_the_public_file_exists(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("someone else's\n")
    with pytest.raises(KeyFileError, match=r"k\.pub already exists"):
        SigningKey.generate().save(tmp_path / "k.key", tmp_path / "k.pub")
    assert not (tmp_path / "k.key").exists()
    assert (tmp_path / "k.pub").read_text() == "someone else's\n"


def test_public_key_save_refuses_to_overwrite(tmp_path: Path) -> None:
    key = SigningKey.generate().public
    key.save(tmp_path / "a.pub")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        SigningKey.generate().public.save(tmp_path / "a.pub")
    assert PublicKey.load(tmp_path / "a.pub") == key


def test_generate_key_pair_writes_name_key_and_name_pub(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "keys")

    assert (private.name, public.name) == ("edgefaas-signing.key", "edgefaas-signing.pub")
    assert mode_of(private) == 0o600
    assert SigningKey.load(private).public == PublicKey.load(public)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_pair(tmp_path / "keys")
    other = generate_key_pair(tmp_path / "keys", name="site-b")
    assert other == (tmp_path / "keys/site-b.key", tmp_path / "keys/site-b.pub")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "junk.key").write_text("not a key\n")
    with pytest.raises(KeyFileError, match=r"junk\.key is not a PEM private key"):
        SigningKey.load(tmp_path / "junk.key")
    with pytest.raises(KeyFileError, match=r"junk\.key is not a PEM public key"):
        PublicKey.load(tmp_path / "junk.key")
    with pytest.raises(KeyFileError, match=r"cannot read signing key file .*missing\.key"):
        SigningKey.load(tmp_path / "missing.key")


def test_load_refuses_an_encrypted_private_key(tmp_path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "locked.key").write_bytes(pem)
    with pytest.raises(KeyFileError, match="is encrypted"):
        SigningKey.load(tmp_path / "locked.key")


def test_load_refuses_a_key_of_another_algorithm(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        PublicKey.load(tmp_path / "ec.pub")


# -- trusted keys ----------------------------------------------------------------------------


def test_trusted_keys_load_every_pub_file_of_a_folder_and_named_files(tmp_path: Path) -> None:
    folder = tmp_path / "trusted"
    folder.mkdir()
    a, b, c = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    a.save(folder / "a.key", folder / "a.pub")  # the .key beside it is not read
    b.public.save(folder / "b.pub")
    (folder / "README").write_text("public keys of the sites\n")
    c.public.save(tmp_path / "c.pub")

    trusted = TrustedKeys.load([folder, tmp_path / "c.pub"])

    assert trusted.key_ids == sorted([a.key_id, b.key_id, c.key_id])
    for key in (a, b, c):
        trusted.verify(DIGEST, key.sign_digest(DIGEST), key.key_id)


def test_trusted_keys_load_refuses_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"trusted key path .*nowhere does not exist"):
        TrustedKeys.load([tmp_path / "nowhere"])


def test_with_key_adds_a_key() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    trusted = TrustedKeys([a.public])
    both = trusted.with_key(b.public)
    assert both.key_ids == sorted([a.key_id, b.key_id])
    assert trusted.key_ids == [a.key_id]
    both.verify(DIGEST, b.sign_digest(DIGEST), b.key_id)


def test_verify_refuses_an_untrusted_key_and_lists_the_trusted_ones() -> None:
    trusted_key, stranger = SigningKey.generate(), SigningKey.generate()
    trusted = TrustedKeys([trusted_key.public])
    message = (
        f"signed by key {stranger.key_id}, which this node does not trust "
        f"(trusted: {trusted_key.key_id})"
    )
    with pytest.raises(BundleRejected) as caught:
        trusted.verify(DIGEST, stranger.sign_digest(DIGEST), stranger.key_id)
    assert str(caught.value) == message
    assert caught.value.to_dict()["code"] == "bundle_rejected"


def test_verify_refuses_a_trusted_key_id_with_another_keys_signature() -> None:
    trusted_key, stranger = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(BundleRejected, match="signature does not match the bundle"):
        TrustedKeys([trusted_key.public]).verify(
            DIGEST, stranger.sign_digest(DIGEST), trusted_key.key_id
        )


def test_verify_refuses_a_signature_of_another_digest() -> None:
    key = SigningKey.generate()
    with pytest.raises(
        BundleRejected, match=f"signature does not match the bundle \\(key {key.key_id}\\)"
    ):
        TrustedKeys([key.public]).verify(DIGEST, key.sign_digest(OTHER_DIGEST), key.key_id)


def test_verify_refuses_a_signature_of_the_bare_digest() -> None:
    """The signed message carries a prefix, so a signature over the digest alone (made for
    another purpose with the same key) does not pass."""
    private = Ed25519PrivateKey.generate()
    key = SigningKey(private)
    bare = base64.b64encode(private.sign(DIGEST.encode())).decode()
    with pytest.raises(BundleRejected, match="does not match"):
        TrustedKeys([key.public]).verify(DIGEST, bare, key.key_id)
    prefixed = base64.b64encode(private.sign(b"edgefaas-bundle-v1:" + DIGEST.encode())).decode()
    assert prefixed == key.sign_digest(DIGEST)


@pytest.mark.parametrize("signature", ["not base64!", "abc", "é"])
def test_verify_refuses_a_signature_that_is_not_base64(signature: str) -> None:
    key = SigningKey.generate()
    with pytest.raises(BundleRejected, match="signature is not valid base64"):
        TrustedKeys([key.public]).verify(DIGEST, signature, key.key_id)


def test_verify_quotes_a_malformed_key_id() -> None:
    with pytest.raises(BundleRejected, match=r"signed by key '\\nevil', .*\(trusted: none\)"):
        TrustedKeys().verify(DIGEST, "", "\nevil")
