"""Bundle manifests, verification and the registry, on plain files."""

import pytest

from schemas.bundle import CURRENT, MANIFEST, BundleError, Manifest, Registry, seal, verify
from schemas.features import FeatureSpec


def manifest(version: int) -> Manifest:
    return Manifest(version=version, created_at=1, feature_spec=FeatureSpec(), trained_until=0)


def staged(registry: Registry, version: int):
    directory = registry.staging(version)
    (directory / "model").mkdir()
    (directory / "model" / "weights.bin").write_bytes(b"\x00\x01" * 100)
    (directory / "vocabulary.json").write_text('{"item_ids": []}')
    seal(directory, manifest(version))
    return directory


def test_sealed_bundle_verifies_with_a_checksum_per_file(tmp_path):
    directory = staged(Registry(tmp_path), 1)

    sealed = verify(directory)

    assert set(sealed.files) == {"model/weights.bin", "vocabulary.json"}
    assert all(len(digest) == 64 for digest in sealed.files.values())


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda d: (d / "model" / "weights.bin").write_bytes(b"\x00\x02" * 100),
            "model/weights.bin: checksum mismatch",
        ),
        (lambda d: (d / "vocabulary.json").unlink(), "files missing: vocabulary.json"),
        (lambda d: (d / "extra.pkl").write_bytes(b"x"), "files not in the manifest: extra.pkl"),
        (lambda d: (d / MANIFEST).write_text("{}"), "not a bundle manifest"),
        (lambda d: (d / MANIFEST).write_text('{"bundle_format": 2}'), "bundle format 2; this version reads 6"),
        (lambda d: (d / MANIFEST).unlink(), "no manifest.json"),
    ],
)
def test_an_altered_bundle_is_refused_with_what_is_wrong(tmp_path, tamper, message):
    directory = staged(Registry(tmp_path), 1)
    tamper(directory)

    with pytest.raises(BundleError, match=message):
        verify(directory)


def test_registry_publishes_atomically_points_current_and_prunes_old_versions(tmp_path):
    registry = Registry(tmp_path)
    for version in (1, 2, 3):
        assert registry.next_version() == version
        registry.publish(staged(registry, version), version)

    assert registry.current() == 3 and (tmp_path / CURRENT).read_text() == "v000003\n"
    assert registry.versions() == [1, 2, 3]
    assert registry.prune(keep=2) == [1]
    assert registry.versions() == [2, 3]
    assert not list(tmp_path.glob(".staging-*"))


def test_registry_refuses_a_staged_bundle_with_another_version(tmp_path):
    registry = Registry(tmp_path)

    with pytest.raises(BundleError, match="manifest says version 1, expected 2"):
        registry.publish(staged(registry, 1), 2)
    assert registry.current() is None


def test_only_a_live_version_of_this_bundle_format_is_servable(tmp_path):
    registry = Registry(tmp_path)
    assert not registry.servable()  # no live version

    registry.publish(staged(registry, 1), 1)
    assert registry.servable()

    older = registry.path(1) / MANIFEST  # as an upgrade finds a bundle of the format before
    older.write_text(older.read_text().replace('"bundle_format": 6', '"bundle_format": 5'))
    assert not registry.servable()
