"""Model kind ``http``: a model served by an existing server (KServe, Triton, MLServer, an in-house service).

Where it sits in the data flow: ``load_model`` connects to it; the ingress
awaits it for production (a refused connection or a bad answer is answered
502, no answer within ``timeout_s`` 504), the shadow worker awaits it for a
candidate, the noise replica or the reference (a failure is that pair's
outcome). Nothing here blocks an event loop: calls go through one pooled
``httpx.AsyncClient`` per process and event loop.

Payloads (``payload.protocol``):

- ``oip_v2``: the Open Inference Protocol v2 (KServe, Triton, MLServer, ...).
  ``POST {url}/v2/models/{model_name}[/versions/{model_version}]/infer`` with
  ``{"inputs": [{"name", "shape": [n, ...input_shape], "datatype", "data"}]}``;
  the answer's ``outputs`` entry (by ``output_name``, or the only one) holds
  the n rows.
- ``json``: a request body template in which the string ``"$inputs"`` stands
  for the batch (a list of examples) or, with ``batched: false``, one example
  (one call each), and a JSON path (``$.predictions``, ``$.outputs[0].data``)
  to the outputs in the answer. The template is data and the path a list of
  keys and indexes: no config value is ever evaluated as code.

Credentials never sit in the config: a header whose name looks like one
(``Authorization``, ``X-Api-Key``, ...) must come from an environment
variable (``headers_env``) or a file (``headers_file``), read when a replica
connects; a URL with ``user:password@`` or a credential-like query parameter
is refused. Header values never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import Field, JsonValue, field_validator, model_validator

from shadowd.configbase import Strict, resolve_path, secret_error
from shadowd.errors import ModelError, RemoteModelError, RemoteModelTimeout
from shadowd.models.base import ModelBase, RemotePredict

if TYPE_CHECKING:
    import httpx
    import numpy as np

__all__ = [
    "INPUTS_PLACEHOLDER",
    "HttpModel",
    "JsonPayload",
    "OipV2Payload",
    "output_rows",
    "parse_json_path",
]

INPUTS_PLACEHOLDER = "$inputs"

# Header names and query parameters that hold credentials: their values come from the environment or a file.
_CREDENTIAL_NAME = re.compile(
    r"auth|token|secret|passw|cookie|credential|signature|session|api[-_]?key|access[-_]?key|^key$|^sig$", re.I
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# One step of a JSON path after the leading "$": .key, [index] or ["any key"].
_PATH_STEP = re.compile(r'\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\["([^"\\]*)"\]')
# OIP v2 tensor datatypes shadowd reads as numbers (BYTES is text).
_NUMERIC_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)
_EXCERPT_BYTES = 200


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """The steps of a JSON path: ``$`` (the whole answer), ``$.predictions``, ``$.outputs[0].data``,
    ``$["odd key"]``. Raises ValueError saying where the path stops making sense."""
    if not path.startswith("$"):
        raise ValueError(f"{path!r} is not a JSON path; it starts with $, e.g. $.predictions or $.outputs[0].data")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        m = _PATH_STEP.match(path, pos)
        if m is None:
            raise ValueError(
                f'cannot read {path!r} from character {pos + 1} ({path[pos:]!r}); steps are .key, [index] or ["key"]'
            )
        steps.append(m[1] if m[1] is not None else int(m[2]) if m[2] is not None else m[3])
        pos = m.end()
    return tuple(steps)


def _path_text(steps: tuple[str | int, ...]) -> str:
    out = "$"
    for step in steps:
        if isinstance(step, int):
            out += f"[{step}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", step):
            out += f".{step}"
        else:
            out += f'["{step}"]'
    return out


def _count_placeholders(template: Any) -> int:
    if template == INPUTS_PLACEHOLDER:
        return 1
    if isinstance(template, dict):
        return sum(_count_placeholders(v) for v in template.values())
    if isinstance(template, list):
        return sum(_count_placeholders(v) for v in template)
    return 0


def _fill(template: Any, inputs: Any) -> Any:
    """The template with its "$inputs" string replaced by ``inputs`` (a copy; the template is untouched)."""
    if template == INPUTS_PLACEHOLDER:
        return inputs
    if isinstance(template, dict):
        return {k: _fill(v, inputs) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, inputs) for v in template]
    return template


def _bad_answer(message: str, detail: str = "") -> RemoteModelError:
    return RemoteModelError(message, "bad_answer", detail=detail)


def output_rows(value: Any, n: int, what: str) -> np.ndarray:
    """An answer's outputs for ``n`` examples as an (n, k) float64 array.

    A list of n rows is the rule; a flat list of n numbers is one value per
    example, and for a single example a flat list is its row. Anything else
    raises RemoteModelError: not numbers ("bad_answer", outcome error), or
    not n rows (outcome bad_shape).
    """
    import numpy as np

    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad_answer(f"{what} is not an array of numbers") from None
    if arr.ndim == 1 and arr.size == n:
        return arr.reshape(n, 1)
    if arr.ndim == 1 and n == 1:
        return arr.reshape(1, -1)
    if arr.ndim >= 2 and arr.shape[0] == n:
        return arr.reshape(n, -1)
    raise RemoteModelError(f"{what} has shape {list(arr.shape)} for {n} example(s)", "bad_answer", "bad_shape")


class OipV2Payload(Strict):
    """The Open Inference Protocol v2 (KServe, Triton, MLServer)."""

    protocol: Literal["oip_v2"] = Field(
        description="oip_v2: POST {url}/v2/models/{model_name}/infer with a tensor of the batch."
    )
    model_name: str | None = Field(
        None, min_length=1, description="The model's name on the server; default: this model's name."
    )
    model_version: str | None = Field(
        None, min_length=1, description="The model's version on the server (/versions/{v}); default: none."
    )
    input_name: str = Field("input-0", min_length=1, description="Name of the input tensor the model expects.")
    datatype: Literal["FP32", "FP64"] = Field("FP32", description="Datatype of the input tensor.")
    output_name: str | None = Field(
        None,
        min_length=1,
        description="Which output tensor of the answer holds the model's outputs; default: the only one (an "
        "answer with several outputs and no output_name is a bad answer).",
    )

    def path(self, default_name: str) -> str:
        """The inference path on the server; ``default_name`` stands in for an unset model_name."""
        name = quote(self.model_name or default_name, safe="")
        version = f"/versions/{quote(self.model_version, safe='')}" if self.model_version else ""
        return f"/v2/models/{name}{version}/infer"

    def request(self, batch: np.ndarray) -> dict[str, Any]:
        tensor = {"name": self.input_name, "shape": list(batch.shape), "datatype": self.datatype}
        return {"inputs": [{**tensor, "data": batch.reshape(-1).tolist()}]}

    def parse(self, answer: Any, n: int) -> np.ndarray:
        """The n output rows of an OIP v2 inference answer; RemoteModelError says what is missing."""
        import numpy as np

        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise _bad_answer("the answer has no 'outputs' (a list of tensors)")
        names = [str(o.get("name")) for o in outputs]
        if self.output_name is not None:
            if self.output_name not in names:
                raise _bad_answer(f"the answer has no output {self.output_name!r} (it has {names[:8]})")
            out = outputs[names.index(self.output_name)]
        elif len(outputs) == 1:
            out = outputs[0]
        else:
            raise _bad_answer(f"the answer has {len(outputs)} outputs {names[:8]}; set payload.output_name")
        what = f"output {out.get('name')!r}"
        if out.get("datatype") not in _NUMERIC_DATATYPES:
            raise _bad_answer(f"{what} has datatype {out.get('datatype')!r}; shadowd reads numeric tensors")
        shape = out.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _bad_answer(f"{what} has no valid 'shape'")
        try:
            flat = np.asarray(out.get("data"), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise _bad_answer(f"{what} has 'data' that is not numbers") from None
        if flat.size != math.prod(shape):
            raise _bad_answer(f"{what} has {flat.size} values for shape {shape}")
        return output_rows(flat.reshape(shape), n, what)


class JsonPayload(Strict):
    """A plain JSON service: a body template and where the outputs are in the answer."""

    protocol: Literal["json"] = Field(description="json: POST the body template to url as it is.")
    body: JsonValue = Field(
        description='The request body, with the string "$inputs" exactly once where the inputs go, e.g. '
        '{"instances": "$inputs"}; everything else is sent as written.'
    )
    output_path: str = Field(
        description="JSON path to the outputs in the answer: $ (the whole answer), $.predictions, "
        '$.outputs[0].data, $["odd key"]; with batched, a list with one entry per example.'
    )
    batched: bool = Field(
        True,
        description='true: "$inputs" is the batch (a list of examples) and the answer holds one output per '
        'example; false: "$inputs" is one example, one call per example (up to max_connections at once).',
    )

    @field_validator("body")
    @classmethod
    def _one_placeholder(cls, v: JsonValue) -> JsonValue:
        count = _count_placeholders(v)
        if count != 1:
            raise ValueError(f'must contain the string "{INPUTS_PLACEHOLDER}" exactly once (found {count})')
        return v

    @field_validator("output_path")
    @classmethod
    def _path_reads(cls, v: str) -> str:
        parse_json_path(v)
        return v

    def request(self, batch: np.ndarray) -> Any:
        return _fill(self.body, batch.tolist() if self.batched else batch[0].tolist())

    def parse(self, answer: Any, n: int) -> np.ndarray:
        steps = parse_json_path(self.output_path)
        node = answer
        for i, step in enumerate(steps):
            found = (isinstance(node, list) and isinstance(step, int) and step < len(node)) or (
                isinstance(node, dict) and isinstance(step, str) and step in node
            )
            if not found:
                raise _bad_answer(f"the answer has nothing at {_path_text(steps[: i + 1])} (payload.output_path)")
            node = node[step]
        return output_rows(node, n, f"the answer's {self.output_path}")


Payload = Annotated[OipV2Payload | JsonPayload, Field(discriminator="protocol")]


def _check_header_names(names: Any, key: str) -> None:
    for name in names:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{key}: {name!r} is not a valid HTTP header name")


class HttpModel(ModelBase):
    kind: Literal["http"] = Field(description="http: a model served by an existing server, called over HTTP.")
    url: str = Field(
        description="oip_v2: the server's base URL (e.g. http://digits.models.svc:8080; the /v2/models/... path "
        "is added); json: the endpoint to POST to. http or https; no credentials in it (headers_env, "
        "headers_file)."
    )
    payload: Payload = Field(
        default_factory=lambda: OipV2Payload(protocol="oip_v2"),
        description="What is sent and read back: protocol oip_v2 (default) or json (a body template and an "
        "output path).",
    )
    timeout_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="Longest wait for one HTTP call (connecting, sending, the whole answer), per attempt. For "
        "production, past it the client gets a 504; a candidate's batch is also bounded by "
        "shadow.candidate_timeout_s.",
    )
    retries: int = Field(
        0,
        ge=0,
        le=5,
        description="Further attempts after a refused or broken connection or an HTTP 502/503/504 (never after "
        "a timeout: the server may still be working). 0, the default: production's client gets the first "
        "failure at once; each retry adds its wait to a production answer.",
    )
    max_connections: int = Field(
        32,
        ge=1,
        le=1024,
        description="Pooled connections per replica (kept alive between calls); with payload.batched false, also "
        "the most examples of one batch in flight at once.",
    )
    max_response_bytes: int = Field(
        16 * 2**20, ge=1024, description="Largest answer read; a longer one is a bad answer (502 for production)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Headers sent as written, for what is not a credential (e.g. a routing header). A name that "
        "looks like a credential (Authorization, X-Api-Key, *token*, *secret*, ...) is refused here: use "
        "headers_env or headers_file.",
    )
    headers_env: dict[str, str] = Field(
        default_factory=dict,
        description="Header name -> environment variable holding its whole value (e.g. Authorization: "
        "MODEL_AUTH with MODEL_AUTH='Bearer ...'), read in each replica when it starts.",
    )
    headers_file: dict[str, Path] = Field(
        default_factory=dict,
        description="Header name -> file holding its whole value (surrounding whitespace stripped), e.g. a "
        "mounted Kubernetes secret; relative paths are relative to the config file.",
    )
    ca_file: Path | None = Field(
        None, description="CA bundle (PEM) to verify an https server with; default: the system's CAs."
    )

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        if any(c.isspace() or ord(c) < 32 for c in v):
            raise ValueError("must not contain whitespace or control characters")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://digits.models.svc:8080")
        if parts.username is not None or parts.password is not None:
            raise secret_error(
                "carries credentials (user:password@host); send them as a header from headers_env or "
                "headers_file, never in the config"
            )
        try:
            parts.port  # noqa: B018 (raises ValueError for a port out of range)
        except ValueError:
            raise ValueError("has a port that is not a number in 0-65535") from None
        for name, _ in parse_qsl(parts.query, keep_blank_values=True):
            if _CREDENTIAL_NAME.search(name):
                raise secret_error(
                    f"has the query parameter {name!r}, which looks like a credential; send it as a header "
                    "from headers_env or headers_file, never in the config"
                )
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return v

    @field_validator("headers")
    @classmethod
    def _no_inline_credentials(cls, v: dict[str, str]) -> dict[str, str]:
        _check_header_names(v, "headers")
        for name, value in v.items():
            if _CREDENTIAL_NAME.search(name):
                raise secret_error(
                    f"header {name!r} looks like a credential; put its value in an environment variable "
                    "(headers_env) or a file (headers_file), never in the config"
                )
            if not _printable_ascii(value):
                raise ValueError(f"header {name!r}: values are printable ASCII, without line breaks")
        return v

    @field_validator("headers_env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        _check_header_names(v, "headers_env")
        for name, var in v.items():
            if not _ENV_NAME.match(var):
                raise ValueError(f"header {name!r}: {var!r} is not an environment variable name")
        return v

    @field_validator("headers_file")
    @classmethod
    def _file_header_names(cls, v: dict[str, Path]) -> dict[str, Path]:
        _check_header_names(v, "headers_file")
        return v

    @model_validator(mode="after")
    def _one_source_per_header(self) -> Self:
        seen: dict[str, str] = {}
        for key in ("headers", "headers_env", "headers_file"):
            for name in getattr(self, key):
                if name.lower() in seen:
                    raise ValueError(f"header {name!r} is set in both {seen[name.lower()]} and {key}")
                seen[name.lower()] = key
        return self

    def with_base_dir(self, base_dir: Path) -> Self:
        files = {name: resolve_path(path, base_dir) for name, path in self.headers_file.items()}
        return self.model_copy(update={"headers_file": files, "ca_file": resolve_path(self.ca_file, base_dir)})

    def endpoint(self) -> str:
        """The URL each call POSTs to."""
        if isinstance(self.payload, JsonPayload):
            return self.url
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + self.payload.path(self.name)))

    def resolved_headers(self) -> dict[str, str]:
        """Every header with its value, read from the environment and files now. ModelError names the
        variable or file that is missing or unusable, never a value."""
        out = dict(self.headers)
        for name, var in self.headers_env.items():
            value = os.environ.get(var, "").strip()
            if not value:
                raise ModelError(
                    f"model {self.name!r}: header {name} comes from the environment variable {var}, which is "
                    "not set or empty in this process"
                )
            out[name] = _checked_value(value, f"the environment variable {var}", self.name)
        for name, path in self.headers_file.items():
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
                raise ModelError(f"model {self.name!r}: cannot read header {name} from {path}: {why}") from None
            if not value:
                raise ModelError(f"model {self.name!r}: header {name}: {path} is empty")
            out[name] = _checked_value(value, str(path), self.name)
        return out

    def connect(self) -> RemotePredict:
        return _HttpCaller(self, self.resolved_headers(), self._ssl_context())

    def _ssl_context(self) -> ssl.SSLContext | bool:
        """Built once when a replica connects, not in a call's time budget (loading CAs takes a while)."""
        if urlsplit(self.url).scheme == "http":
            return False  # no TLS, nothing to verify
        try:
            return ssl.create_default_context(cafile=None if self.ca_file is None else str(self.ca_file))
        except (OSError, ssl.SSLError) as err:
            raise ModelError(f"model {self.name!r}: cannot use ca_file {self.ca_file}: {err}") from None


def _printable_ascii(value: str) -> bool:
    return all(32 <= ord(c) < 127 or c == "\t" for c in value)


def _checked_value(value: str, source: str, model: str) -> str:
    if not _printable_ascii(value):
        raise ModelError(
            f"model {model!r}: the header value in {source} has characters a header cannot carry (line breaks, "
            "control or non-ASCII characters)"
        )
    return value


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT_BYTES].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text) + ("..." if len(body) > _EXCERPT_BYTES else "")


class _HttpCaller:
    """Calls one remote model: builds the payload, POSTs it with the pooled client, reads the answer."""

    def __init__(self, cfg: HttpModel, headers: dict[str, str], verify: ssl.SSLContext | bool):
        # Imported here, when a replica connects: together about a second on a busy machine, which must not
        # come out of a first call's budget (httpx loads its transport, httpcore, when a client is built).
        import httpcore  # noqa: F401
        import httpx

        self._httpx = httpx
        self._cfg = cfg
        self._payload = cfg.payload
        self._url = cfg.endpoint()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self._verify = verify
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client_here(self) -> httpx.AsyncClient:
        """The pooled client of the running loop (a client's connections belong to the loop that opened them;
        a replica has one loop, a test or ``shadowd replay`` may have another)."""
        httpx = self._httpx
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            n = self._cfg.max_connections
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._cfg.timeout_s),
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                verify=self._verify,
                follow_redirects=False,
            )
            self._loop = loop
        return self._client

    async def __call__(self, batch: Any) -> np.ndarray:
        import numpy as np

        x = np.asarray(batch)
        if isinstance(self._payload, JsonPayload) and not self._payload.batched and len(x) > 1:
            try:
                async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                    tasks = [group.create_task(self._call(x[i : i + 1])) for i in range(len(x))]
            except* RemoteModelError as failed:  # the batch fails as its first failed example did
                raise failed.exceptions[0] from None
            return np.concatenate([t.result() for t in tasks])
        return await self._call(x)

    async def _call(self, x: np.ndarray) -> np.ndarray:
        body = json.dumps(self._payload.request(x)).encode()
        attempts = self._cfg.retries + 1
        for attempt in range(attempts):
            try:
                answer = await self._post(body)
            except RemoteModelError as err:
                if err.retriable and attempt + 1 < attempts:
                    continue
                raise
            return self._payload.parse(answer, len(x))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _post(self, body: bytes) -> Any:
        httpx = self._httpx
        cfg = self._cfg
        limit = cfg.max_response_bytes
        client = self._client_here()  # outside the call's time budget: a first call builds the pool
        try:
            async with asyncio.timeout(cfg.timeout_s):
                async with client.stream("POST", self._url, content=body, headers=self._headers) as r:
                    data = bytearray()
                    async for chunk in r.aiter_bytes():
                        data += chunk
                        if len(data) > limit:
                            raise _bad_answer(f"the answer is over {limit} bytes (max_response_bytes)")
                    status = r.status_code
        except (TimeoutError, httpx.TimeoutException):
            raise RemoteModelTimeout(f"no answer within {cfg.timeout_s} s (timeout_s)") from None
        except httpx.ConnectError:
            raise RemoteModelError("cannot connect to its server", "refused", retriable=True) from None
        except httpx.HTTPError as err:  # reset, closed early, protocol error: the call may not have arrived
            raise RemoteModelError(f"the connection failed ({type(err).__name__})", "refused", retriable=True) from None
        if not 200 <= status < 300:
            raise RemoteModelError(
                f"its server answered HTTP {status}",
                "status",
                detail=_excerpt(bytes(data)),
                retriable=status in (502, 503, 504),
            )
        try:
            return json.loads(data)
        except ValueError:
            raise _bad_answer("the answer is not JSON", detail=_excerpt(bytes(data))) from None

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
