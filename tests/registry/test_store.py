"""The node's bundle store: nothing unverified lands on disk, digests are file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.bundle import SignedBundle, build_callable_bundle
from registry.errors import BundleRejected
from registry.signing import SigningKey, TrustedKeys
from registry.store import BundleStore, check_digest


def answer(event: object) -> dict[str, str]:
    return {"answer": "42"}


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def bundle(key: SigningKey) -> SignedBundle:
    return build_callable_bundle(answer, "answer").sign(key)


@pytest.fixture
def store(tmp_path: Path, key: SigningKey) -> BundleStore:
    return BundleStore(tmp_path / "node", TrustedKeys([key.public]))


def test_a_verified_bundle_is_stored_under_its_digest_and_unpacks_once(
    store: BundleStore, bundle: SignedBundle
) -> None:
    store.put(bundle.data, bundle.digest, bundle.signature, bundle.key_id)
    assert store.has(bundle.digest) and store.digests() == [bundle.digest]
    assert store.path(bundle.digest).read_bytes() == bundle.data
    assert store.meta(bundle.digest).key_id == bundle.key_id
    first = store.unpack(bundle.digest)
    second = store.unpack(bundle.digest)
    assert first == second and first.name == "answer"
    assert Path(first.handler.target).is_file()


def test_tampered_bytes_never_reach_the_disk(store: BundleStore, bundle: SignedBundle) -> None:
    flipped = bytearray(bundle.data)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(BundleRejected, match="digest mismatch"):
        store.put(bytes(flipped), bundle.digest, bundle.signature, bundle.key_id)
    assert not store.has(bundle.digest)
    assert list(store.root.glob("*.bundle")) == []


def test_a_bundle_from_an_untrusted_signer_is_refused(
    store: BundleStore, bundle: SignedBundle
) -> None:
    other = build_callable_bundle(answer, "answer").sign(SigningKey.generate())
    with pytest.raises(BundleRejected, match="does not trust"):
        store.put(other.data, other.digest, other.signature, other.key_id)
    assert not store.has(other.digest)


@pytest.mark.parametrize("digest", ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 64 + "/x"])
def test_only_sha256_hex_digests_name_files(digest: str) -> None:
    with pytest.raises(BundleRejected, match="not a sha256 digest"):
        check_digest(digest)


def test_the_applied_state_survives_a_restart(tmp_path: Path, key: SigningKey) -> None:
    store = BundleStore(tmp_path / "node", TrustedKeys([key.public]))
    assert store.load_applied() == {}
    store.save_applied({"echo": {"digest": "a" * 64, "version": 3}})
    again = BundleStore(tmp_path / "node", TrustedKeys([key.public]))
    assert again.load_applied() == {"echo": {"digest": "a" * 64, "version": 3}}
