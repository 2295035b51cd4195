import pytest

from schemas.redis_keys import KeyKind, redis_key


def test_key_layout_is_prefix_version_namespace_kind_entity():
    assert redis_key(KeyKind.TOOLCHAIN_CHECK, "events", "live") == "kf:v1:live:toolchain_check:events"


def test_entity_ids_may_contain_colons():
    assert redis_key(KeyKind.TOOLCHAIN_CHECK, "tenant:topic", "ns-2") == "kf:v1:ns-2:toolchain_check:tenant:topic"


@pytest.mark.parametrize("namespace", ["", "Live", "a:b", "x" * 49, "-leading-dash"])
def test_malformed_namespaces_are_rejected(namespace):
    with pytest.raises(ValueError, match="namespace"):
        redis_key(KeyKind.TOOLCHAIN_CHECK, "events", namespace)


def test_empty_entity_id_is_rejected():
    with pytest.raises(ValueError, match="entity_id"):
        redis_key(KeyKind.TOOLCHAIN_CHECK, "", "live")
