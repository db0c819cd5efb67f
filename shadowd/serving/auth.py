"""Bearer tokens with scopes for the HTTP API: who may label, read and reset.

The ingress checks a route's scope before it reads the body, so a request
without the right token costs a 401/403 and nothing else. Tokens come from
``auth.tokens_file`` and/or the variable ``auth.tokens_env``, both holding::

    - name: product-feedback        # shown in errors and logs instead of the token
      token: 3f1c...                # 32+ characters, e.g. `openssl rand -hex 32`
      scopes: [labels]
    - name: release-ci
      token: 9be0...
      scopes: [read, admin]

Scopes: ``labels`` (POST /feedback), ``read`` (GET /shadow/report), ``admin``
(POST /shadow/reset, and anything that changes the test), ``predict`` (POST
/predict, only with ``auth.predict_requires_token``). A token may do exactly
what its scopes list.

With no token configured, shadowd serves only on loopback (the config tree
refuses anything else) and generates one token with every scope per run, in
``<data_dir>/auth/token`` (mode 0600): ``shadowd demo`` and ``shadowd report
-c CONFIG`` read it there.

Only a SHA-256 of each token is kept in memory and compared with
``hmac.compare_digest`` against every configured token (no early exit): the
time a check takes does not depend on how much of a token an attacker got
right. Tokens never appear in errors, logs or reprs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import Field, SecretStr, TypeAdapter, ValidationError

from shadowd.config import AuthConfig, ShadowdConfig
from shadowd.configbase import Strict
from shadowd.errors import AuthError, ConfigError

__all__ = [
    "GENERATED_TOKEN_PATH",
    "SCOPES",
    "Scope",
    "TokenEntry",
    "TokenSet",
    "generated_token_path",
    "load_tokens",
    "parse_tokens",
    "write_generated_token",
]

Scope = Literal["predict", "labels", "read", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
GENERATED_TOKEN_PATH = Path("auth") / "token"  # under data_dir
_MIN_TOKEN_CHARS = 32


class TokenEntry(Strict):
    """One API token of a tokens file."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,60}$", description="Who holds the token; errors and logs show this, never it."
    )
    token: SecretStr = Field(description=f"The bearer token, {_MIN_TOKEN_CHARS}+ characters of printable ASCII.")
    scopes: Annotated[list[Scope], Field(min_length=1)] = Field(description="What the token may do.")


_ENTRIES = TypeAdapter(list[TokenEntry])


@dataclass(frozen=True)
class _Key:
    name: str
    digest: bytes  # SHA-256 of the token: the token itself is not kept
    scopes: frozenset[str]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenSet:
    """The tokens one ingress accepts; ``check`` raises ``AuthError`` (401/403) with a reason."""

    def __init__(self, keys: Iterable[_Key], generated: bool = False):
        self._keys = tuple(keys)
        self.generated = generated  # one token made for this run (loopback, none configured)

    @classmethod
    def of(cls, entries: Iterable[TokenEntry], generated: bool = False) -> TokenSet:
        return cls((_Key(e.name, _digest(e.token.get_secret_value()), frozenset(e.scopes)) for e in entries), generated)

    @property
    def names(self) -> list[str]:
        return [k.name for k in self._keys]

    def check(self, authorization: str | None, scope: Scope, route: str) -> str:
        """The name of the token in an ``Authorization: Bearer`` header if it has ``scope``."""
        where = f"{route} needs a bearer token with scope {scope}"
        if self.generated:
            where += " (this daemon's generated token is in <data_dir>/auth/token)"
        if not authorization:
            raise AuthError(f"missing token: {where}", 401, scope)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(f"the Authorization header must be 'Bearer <token>': {where}", 401, scope)
        presented = _digest(token)
        found = None
        for key in self._keys:  # every key, no early exit: the time does not depend on which one matched
            if hmac.compare_digest(presented, key.digest):
                found = key
        if found is None:
            raise AuthError(f"token not recognised: {where}", 401, scope)
        if scope not in found.scopes:
            raise AuthError(f"token '{found.name}' lacks scope {scope}: {where}", 403, scope)
        return found.name


def _describe(err: ValidationError, source: str) -> str:
    """One line per error, naming the entry and key; never the value (it may be a token)."""
    lines = []
    for e in err.errors(include_url=False, include_input=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "(top level)"
        lines.append(f"{source}: {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_tokens(text: str, source: str) -> list[TokenEntry]:
    """Validate a tokens document (YAML); ``ConfigError`` names ``source``, the entry and the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    try:
        entries = _ENTRIES.validate_python(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None
    for i, e in enumerate(entries):
        token = e.token.get_secret_value()
        if len(token) < _MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
            raise ConfigError(
                f"{source}: [{i}].token ({e.name}): must be {_MIN_TOKEN_CHARS}+ printable ASCII characters "
                "without spaces, e.g. `openssl rand -hex 32`"
            )
    _check_unique(entries, source)
    return entries


def _check_unique(entries: list[TokenEntry], source: str) -> None:
    names = [e.name for e in entries]
    digests = [_digest(e.token.get_secret_value()) for e in entries]
    for what, values in (("name", names), ("token", digests)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{source}: two entries have the same {what}")


def generated_token_path(data_dir: Path) -> Path:
    return Path(data_dir) / GENERATED_TOKEN_PATH


def write_generated_token(data_dir: Path, fresh: bool) -> str:
    """The per-run token of a daemon without configured tokens, in ``<data_dir>/auth/token`` (0600).

    ``fresh``: replace any earlier one (``shadowd run``/``demo`` start a run with a new token);
    otherwise keep one that exists (a replica restarting mid-run, or ``serve run`` without the
    launcher). Written under a temporary name and moved into place: readers never see half.
    """
    path = generated_token_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not fresh and path.exists():
        return path.read_text().strip()
    tmp = path.with_name(f".token.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if fresh:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):  # create only if absent: racing replicas agree
                os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def _configured(auth: AuthConfig) -> list[TokenEntry]:
    entries: list[TokenEntry] = []
    if auth.tokens_file is not None:
        try:
            text = auth.tokens_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"auth.tokens_file: cannot read {auth.tokens_file}: {err}") from None
        entries += parse_tokens(text, str(auth.tokens_file))
    if auth.tokens_env is not None:
        text_env = os.environ.get(auth.tokens_env)
        if text_env is None:
            raise ConfigError(f"auth.tokens_env: environment variable {auth.tokens_env} is not set")
        entries += parse_tokens(text_env, f"${auth.tokens_env}")
    _check_unique(entries, "auth.tokens_file and auth.tokens_env")
    return entries


def load_tokens(config: ShadowdConfig, fresh: bool = False) -> TokenSet:
    """The tokens the config names; with none configured, the run's generated token with every scope."""
    if config.auth.configured:
        return TokenSet.of(_configured(config.auth))
    token = write_generated_token(config.data_dir, fresh)
    return TokenSet.of([TokenEntry(name="generated", token=SecretStr(token), scopes=list(SCOPES))], generated=True)
