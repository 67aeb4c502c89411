"""Keys with scopes: how they are configured (GRPO_API_KEY, GRPO_API_KEYS, a keys file) and how a sent key is
recognised."""

from pathlib import Path

import pytest

from access import DEFAULT_KEY_ID, InvalidKeys, KeyRing, allows, configured_keys, read_keys_file
from settings import ApiKey, Scope, Settings


def test_keys_come_from_the_single_key_the_list_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# id scope key\n\nops admin ops-secret-1  # the on-call team\nweb inference web-secret-2\n")
    monkeypatch.setenv("GRPO_API_KEY", "old-single-key")
    monkeypatch.setenv("GRPO_API_KEYS", '[{"id": "shop", "scope": "inference", "key": "shop-secret-3"}]')
    monkeypatch.setenv("GRPO_API_KEYS_FILE", str(keys_file))
    keys = {key.id: key for key in configured_keys(Settings())}
    assert {key_id: key.scope for key_id, key in keys.items()} == {
        "shop": Scope.INFERENCE,
        DEFAULT_KEY_ID: Scope.ADMIN,  # the single key of earlier versions keeps opening everything
        "ops": Scope.ADMIN,
        "web": Scope.INFERENCE,
    }
    ring = KeyRing(list(keys.values()))
    assert ring.enabled
    assert ring.identify("old-single-key").id == DEFAULT_KEY_ID
    assert ring.identify("web-secret-2").id == "web"
    assert ring.identify("web-secret-") is None and ring.identify("") is None and ring.identify(None) is None
    # Any printable ASCII key works, punctuation included.
    punctuation = "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"
    assert KeyRing([ApiKey(id="p", scope="admin", key=punctuation)]).identify(punctuation)


def test_no_key_configured_leaves_the_api_open() -> None:
    assert not KeyRing.from_settings(Settings()).enabled


def test_an_inference_key_allows_inference_only_and_an_admin_key_everything() -> None:
    inference = ApiKey(id="web", scope="inference", key="a")
    admin = ApiKey(id="ops", scope="admin", key="b")
    assert allows(inference, Scope.INFERENCE) and not allows(inference, Scope.ADMIN)
    assert allows(admin, Scope.INFERENCE) and allows(admin, Scope.ADMIN)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("ops admin", "line 1: expected '<id> <scope> <key>', got 2"),
        ("ops root secret", "line 1: scope"),
        ("\nbad/id admin secret", "line 2: id"),
    ],
)
def test_a_malformed_keys_file_is_refused_without_echoing_the_key(tmp_path: Path, content: str, problem: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(content)
    with pytest.raises(InvalidKeys, match=problem) as refused:
        read_keys_file(keys_file)
    assert "secret" not in str(refused.value)


def test_repeated_ids_or_keys_are_refused() -> None:
    with pytest.raises(InvalidKeys, match="more than once: a"):
        KeyRing([ApiKey(id="a", scope="admin", key="x"), ApiKey(id="a", scope="inference", key="y")])
    with pytest.raises(InvalidKeys, match="a, b are the same key"):
        KeyRing([ApiKey(id="a", scope="admin", key="x"), ApiKey(id="b", scope="inference", key="x")])
