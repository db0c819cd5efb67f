"""API tokens: the tokens file, scopes, the constant-time check, the generated loopback token,
and the config rule that nothing is served off loopback without configured tokens."""

from __future__ import annotations

import contextlib
import hmac
import os
import stat
import threading

import pytest
import yaml

from shadowd.config import parse_config
from shadowd.errors import AuthError, ConfigError
from shadowd.serving.auth import TokenSet, generated_token_path, load_tokens, parse_tokens, write_generated_token

LABELS_TOKEN = "L" * 20 + "-labels-token-0001"
ADMIN_TOKEN = "A" * 20 + "-admin-token-00002"
READ_TOKEN = "R" * 20 + "-read-token-000003"
TOKENS = [
    {"name": "product-feedback", "token": LABELS_TOKEN, "scopes": ["labels"]},
    {"name": "release-ci", "token": ADMIN_TOKEN, "scopes": ["read", "admin"]},
    {"name": "dashboard", "token": READ_TOKEN, "scopes": ["read"]},
]
BASE = {
    "task": "classification",
    "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]}},
}


def tokens() -> TokenSet:
    return TokenSet.of(parse_tokens(yaml.safe_dump(TOKENS), "tokens.yaml"))


def refused(tokens: TokenSet, header: str | None, scope: str) -> AuthError:
    with pytest.raises(AuthError) as err:
        tokens.check(header, scope, "POST /x")  # type: ignore[arg-type]
    return err.value


def test_missing_token_is_401_naming_route_and_scope():
    err = refused(tokens(), None, "labels")
    assert err.http_status == 401 and err.scope == "labels"
    assert "missing token" in err.reason and "POST /x needs a bearer token with scope labels" in err.reason
    assert refused(tokens(), f"Basic {LABELS_TOKEN}", "labels").http_status == 401
    assert refused(tokens(), "Bearer ", "labels").http_status == 401


def test_unknown_token_is_401_and_a_token_without_the_scope_is_403():
    err = refused(tokens(), "Bearer " + "x" * 40, "admin")
    assert err.http_status == 401 and "token not recognised" in err.reason
    err = refused(tokens(), f"Bearer {LABELS_TOKEN}", "admin")
    assert err.http_status == 403 and "token 'product-feedback' lacks scope admin" in err.reason
    for e in (err, refused(tokens(), f"Bearer {READ_TOKEN}x", "read")):
        assert LABELS_TOKEN not in e.reason and READ_TOKEN not in e.reason


def test_the_right_scope_passes_and_scopes_do_not_imply_each_other():
    t = tokens()
    assert t.check(f"Bearer {LABELS_TOKEN}", "labels", "POST /feedback") == "product-feedback"
    assert t.check(f"bearer  {ADMIN_TOKEN} ", "admin", "POST /shadow/reset") == "release-ci"
    assert t.check(f"Bearer {ADMIN_TOKEN}", "read", "GET /shadow/report") == "release-ci"
    assert refused(t, f"Bearer {READ_TOKEN}", "admin").http_status == 403
    assert refused(t, f"Bearer {ADMIN_TOKEN}", "labels").http_status == 403


def test_every_token_is_compared_in_constant_time(monkeypatch):
    """hmac.compare_digest on fixed-length digests, against every configured token, no early exit:
    how long a check takes says nothing about which token, or how much of one, was right."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module the check calls, wherever it is imported
    t = tokens()
    for header in (f"Bearer {LABELS_TOKEN}", f"Bearer {READ_TOKEN}", "Bearer " + "z" * 40):
        calls.clear()
        with contextlib.suppress(AuthError):
            t.check(header, "labels", "POST /feedback")
        assert len(calls) == len(TOKENS)
        assert all(len(a) == len(b) == 32 for a, b in calls)  # SHA-256 digests, never the raw tokens
        assert not any(LABELS_TOKEN.encode() in a + b for a, b in calls)


def test_token_objects_do_not_reveal_tokens():
    (entry,) = parse_tokens(yaml.safe_dump(TOKENS[:1]), "tokens.yaml")
    assert LABELS_TOKEN not in repr(entry) and LABELS_TOKEN not in str(entry)
    assert LABELS_TOKEN not in repr(tokens().__dict__)


@pytest.mark.parametrize(
    "doc, words",
    [
        ([{"name": "a", "token": LABELS_TOKEN, "scopes": ["write"]}], "tokens.yaml: [0].scopes[0]: Input should be"),
        ([{"name": "a", "token": LABELS_TOKEN, "scopes": []}], "tokens.yaml: [0].scopes: List should have at least"),
        ([{"name": "a", "token": LABELS_TOKEN}], "tokens.yaml: [0].scopes: Field required"),
        ([{"name": "a b", "token": LABELS_TOKEN, "scopes": ["read"]}], "tokens.yaml: [0].name"),
        ([{"name": "a", "token": "short-" + "s3cr3t", "scopes": ["read"]}], "[0].token (a): must be 32+"),
        ([TOKENS[0], {**TOKENS[1], "name": TOKENS[0]["name"]}], "two entries have the same name"),
        ([TOKENS[0], {**TOKENS[1], "token": LABELS_TOKEN}], "two entries have the same token"),
        ({"token": LABELS_TOKEN}, "tokens.yaml: (top level): Input should be a valid list"),
    ],
)
def test_a_bad_tokens_file_names_file_and_key_never_the_token(doc, words):
    with pytest.raises(ConfigError) as err:
        parse_tokens(yaml.safe_dump(doc), "tokens.yaml")
    assert words in str(err.value)
    assert LABELS_TOKEN not in str(err.value) and "s3cr3t" not in str(err.value)


def test_tokens_from_a_file_relative_to_the_config_and_from_env(tmp_path, monkeypatch):
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(TOKENS[:2]))
    monkeypatch.setenv("SHADOWD_TOKENS", yaml.safe_dump(TOKENS[2:]))
    cfg = parse_config(
        {
            **BASE,
            "serving": {"host": "0.0.0.0"},
            "auth": {"tokens_file": "tokens.yaml", "tokens_env": "SHADOWD_TOKENS"},
        },
        "shadowd.yaml",
        tmp_path,
    )
    assert cfg.auth.tokens_file == tmp_path / "tokens.yaml"
    t = load_tokens(cfg)
    assert t.names == ["product-feedback", "release-ci", "dashboard"] and not t.generated
    assert not generated_token_path(cfg.data_dir).exists()
    monkeypatch.setenv("SHADOWD_TOKENS", yaml.safe_dump(TOKENS[:1]))
    with pytest.raises(ConfigError, match=r"auth\.tokens_file and auth\.tokens_env: two entries have the same name"):
        load_tokens(cfg)
    monkeypatch.delenv("SHADOWD_TOKENS")
    with pytest.raises(ConfigError, match=r"auth\.tokens_env: environment variable SHADOWD_TOKENS is not set"):
        load_tokens(cfg)
    (tmp_path / "tokens.yaml").unlink()
    with pytest.raises(ConfigError, match=r"auth.tokens_file: cannot read .*tokens.yaml"):
        load_tokens(cfg)


def test_off_loopback_without_tokens_the_config_is_refused_naming_the_keys():
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ConfigError) as err:
            parse_config({**BASE, "serving": {"host": host}}, "shadowd.yaml")
        message = str(err.value)
        assert message.startswith("shadowd.yaml: ") and "auth.tokens_file" in message and "serving.host" in message
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        parse_config({**BASE, "serving": {"host": host}})
    parse_config({**BASE, "serving": {"host": "0.0.0.0"}, "auth": {"tokens_env": "T"}})


def test_metrics_bind_loopback_by_default():
    assert parse_config(BASE).metrics.host == "127.0.0.1"


def test_the_generated_token_is_private_fresh_per_run_and_shared_by_replicas(tmp_path):
    cfg = parse_config({**BASE, "data_dir": str(tmp_path / "data")})
    first = write_generated_token(cfg.data_dir, fresh=True)
    path = generated_token_path(cfg.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first) >= 40
    t = load_tokens(cfg)  # a replica of this run: the same token, every scope
    assert t.generated and t.check(f"Bearer {first}", "admin", "POST /shadow/reset") == "generated"
    second = write_generated_token(cfg.data_dir, fresh=True)  # the next run
    assert second != first
    assert refused(load_tokens(cfg), f"Bearer {first}", "read").http_status == 401
    assert "<data_dir>/auth/token" in refused(load_tokens(cfg), None, "read").reason
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary files left


def test_replicas_racing_to_create_the_token_agree(tmp_path):
    got: list[str] = []
    threads = [
        threading.Thread(target=lambda: got.append(write_generated_token(tmp_path, fresh=False))) for _ in range(8)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(got)) == 1 and os.listdir(tmp_path / "auth") == ["token"]
