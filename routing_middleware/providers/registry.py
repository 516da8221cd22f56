"""Known providers, their defaults, and which outgoing URLs belong to them.

A provider is configuration over a wire dialect: base URL, auth header, API-key
environment variable and quirk options. Dialect modules are imported lazily, by
name, the first time one is asked for, so importing this module costs nothing.

:func:`match_endpoint` runs on every outgoing HTTP request of an instrumented
app: a host that is not an LLM provider costs one dict lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from .base import CallerDialect, Dialect, ProviderConfig

__all__ = [
    "PROVIDERS",
    "EndpointKind",
    "EndpointMatch",
    "ProviderSpec",
    "api_key_env",
    "caller_dialect",
    "dialect",
    "match_endpoint",
    "provider_config",
    "register_base_url",
]

EndpointKind = Literal[
    "chat", "responses", "embeddings", "messages", "generate", "stream_generate", "models", "other"
]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Defaults for one provider.

    ``base_url`` may hold ``{resource}`` (Azure), filled from the ``resource`` option;
    ``regions`` maps a ``region`` option to a base URL (Qwen). ``hosts`` are the
    hostnames (``host:port`` for local servers) whose requests belong to it;
    ``host_suffixes`` match subdomains (``.openai.azure.com``).
    """

    name: str
    dialect: str
    base_url: str
    api_key_env: str
    hosts: tuple[str, ...] = ()
    host_suffixes: tuple[str, ...] = ()
    auth_header: str = "authorization"
    auth_scheme: str | None = "Bearer"
    key_required: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    regions: Mapping[str, str] = field(default_factory=dict)


# Open-weight hosts mostly take ``max_tokens`` and often not the ``developer`` role.
_OPEN: Mapping[str, Any] = {"max_tokens_field": "max_tokens", "developer_role": "system"}
_OPEN_TOP_K: Mapping[str, Any] = {**_OPEN, "top_k": True}

_TABLE: tuple[ProviderSpec, ...] = (
    ProviderSpec("openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY",
                 hosts=("api.openai.com",)),
    ProviderSpec(
        "azure", "openai", "https://{resource}.openai.azure.com/openai/v1", "AZURE_OPENAI_API_KEY",
        host_suffixes=(".openai.azure.com", ".cognitiveservices.azure.com",
                       ".services.ai.azure.com"),
        auth_header="api-key", auth_scheme=None,
    ),
    ProviderSpec("anthropic", "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY",
                 hosts=("api.anthropic.com",), auth_header="x-api-key", auth_scheme=None),
    ProviderSpec("gemini", "gemini", "https://generativelanguage.googleapis.com/v1beta",
                 "GEMINI_API_KEY",
                 hosts=("generativelanguage.googleapis.com", "aiplatform.googleapis.com"),
                 host_suffixes=("-aiplatform.googleapis.com",),
                 auth_header="x-goog-api-key", auth_scheme=None),
    ProviderSpec("deepseek", "openai", "https://api.deepseek.com", "DEEPSEEK_API_KEY",
                 hosts=("api.deepseek.com",), options={"developer_role": "system"}),
    ProviderSpec(
        "qwen", "openai", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        "DASHSCOPE_API_KEY",
        hosts=("dashscope-intl.aliyuncs.com", "dashscope-us.aliyuncs.com",
               "dashscope.aliyuncs.com"),
        options={"developer_role": "system", "top_k": True},
        regions={
            "intl": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "us": "https://dashscope-us.aliyuncs.com/compatible-mode/v1",
            "cn": "https://dashscope.aliyuncs.com/compatible-mode/v1",
        },
    ),
    ProviderSpec(
        "mistral", "openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY",
        hosts=("api.mistral.ai",),
        options={
            "max_tokens_field": "max_tokens",
            "seed_field": "random_seed",
            "tool_choice_required": "any",
            "tool_call_ids": "mistral",
            "developer_role": "system",
            "drop_fields": ("user", "metadata"),
            # Usage comes on Mistral's final chunk unasked, and its API validates
            # request fields strictly: stream_options could only cost a 422.
            "stream_options": False,
        },
    ),
    ProviderSpec("xai", "openai", "https://api.x.ai/v1", "XAI_API_KEY", hosts=("api.x.ai",)),
    ProviderSpec("groq", "openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY",
                 hosts=("api.groq.com",), options={"developer_role": "system"}),
    ProviderSpec("together", "openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY",
                 hosts=("api.together.xyz", "api.together.ai"), options=_OPEN_TOP_K),
    ProviderSpec("fireworks", "openai", "https://api.fireworks.ai/inference/v1",
                 "FIREWORKS_API_KEY", hosts=("api.fireworks.ai",), options=_OPEN_TOP_K),
    ProviderSpec("openrouter", "openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY",
                 hosts=("openrouter.ai",), options={"top_k": True}),
    ProviderSpec("cerebras", "openai", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY",
                 hosts=("api.cerebras.ai",), options={"developer_role": "system"}),
    ProviderSpec("deepinfra", "openai", "https://api.deepinfra.com/v1/openai",
                 "DEEPINFRA_API_KEY", hosts=("api.deepinfra.com",), options=_OPEN_TOP_K),
    ProviderSpec("moonshot", "openai", "https://api.moonshot.ai/v1", "MOONSHOT_API_KEY",
                 hosts=("api.moonshot.ai", "api.moonshot.cn"), options=_OPEN),
    ProviderSpec("zai", "openai", "https://api.z.ai/api/paas/v4", "ZAI_API_KEY",
                 hosts=("api.z.ai", "open.bigmodel.cn"), options=_OPEN),
    ProviderSpec("minimax", "openai", "https://api.minimax.io/v1", "MINIMAX_API_KEY",
                 hosts=("api.minimax.io", "api.minimaxi.com"), options=_OPEN),
    ProviderSpec("perplexity", "openai", "https://api.perplexity.ai", "PERPLEXITY_API_KEY",
                 hosts=("api.perplexity.ai",), options=_OPEN),
    ProviderSpec("cohere", "openai", "https://api.cohere.ai/compatibility/v1", "COHERE_API_KEY",
                 hosts=("api.cohere.ai", "api.cohere.com"), options=_OPEN),
    # Self-hosted: no default host to intercept (port 8000 is every dev server's);
    # register the real base URL with register_base_url().
    ProviderSpec("vllm", "openai", "http://localhost:8000/v1", "VLLM_API_KEY",
                 key_required=False, options=_OPEN_TOP_K),
    ProviderSpec("ollama", "openai", "http://localhost:11434/v1", "OLLAMA_API_KEY",
                 hosts=("localhost:11434", "127.0.0.1:11434"), key_required=False,
                 options=_OPEN_TOP_K),
)  # fmt: skip

#: Every known provider by canonical id.
PROVIDERS: Mapping[str, ProviderSpec] = {spec.name: spec for spec in _TABLE}

# Where each dialect lives; imported on first use. Caller sides may live in a
# ``<dialect>_caller`` sibling.
_DIALECT_MODULES = {
    "openai": "routing_middleware.providers.openai",
    "anthropic": "routing_middleware.providers.anthropic",
    "gemini": "routing_middleware.providers.gemini",
}
_dialects: dict[str, Any] = {}
_callers: dict[str, Any] = {}


def _spec(name: str) -> ProviderSpec:
    spec = PROVIDERS.get(name)
    if spec is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown provider {name!r}; known providers: {known}")
    return spec


def api_key_env(name: str) -> str:
    """The environment variable conventionally holding ``name``'s API key.

    Nothing here reads the environment; callers decide when to.
    """
    return _spec(name).api_key_env


def provider_config(
    name: str, *, api_key: str | None = None, base_url: str | None = None, **options: Any
) -> ProviderConfig:
    """A ProviderConfig for ``name`` from the table's defaults.

    Options understood here: ``resource`` (Azure resource name), ``region``
    (Qwen: ``intl``, ``us``, ``cn``), ``referer`` and ``title`` (OpenRouter's
    attribution headers), ``headers`` (extra headers). Any other option is a
    dialect option and overrides the table's (see ``providers.openai``); for Azure's
    legacy route pass ``azure_api_version``.
    """
    spec = _spec(name)
    resource = options.pop("resource", None)
    region = options.pop("region", None)
    headers = dict(options.pop("headers", None) or {})
    referer = options.pop("referer", None)
    title = options.pop("title", None)
    if referer:
        headers["HTTP-Referer"] = str(referer)
    if title:
        headers["X-OpenRouter-Title"] = str(title)
    url = base_url
    if url is None and region is not None:
        if region not in spec.regions:
            choices = ", ".join(spec.regions) or "none"
            raise ValueError(f"unknown region {region!r} for {name}; regions: {choices}")
        url = spec.regions[region]
    if url is None:
        url = spec.base_url
    if "{resource}" in url:
        if not resource:
            raise ValueError(f"provider {name!r} needs base_url= or resource= (the resource name)")
        url = url.replace("{resource}", str(resource))
    return ProviderConfig(
        name=name,
        dialect=spec.dialect,
        base_url=url.rstrip("/"),
        api_key=api_key,
        auth_header=spec.auth_header,
        auth_scheme=spec.auth_scheme,
        headers=headers,
        options={**spec.options, **options},
    )


def _resolve(kind: str, name: str, cache: dict[str, Any], modules: tuple[str, ...]) -> Any:
    found = cache.get(name)
    if found is not None:
        return found
    wanted = (
        ("encode_request", "decode_response")
        if kind == "dialect"
        else ("parse_request", "encode_response", "stream_encoder")
    )
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        for value in vars(module).values():
            if isinstance(value, type) or getattr(value, "name", None) != name:
                continue
            if all(callable(getattr(value, attr, None)) for attr in wanted):
                cache[name] = value
                return value
    raise LookupError(f"no {kind} implementation named {name!r} is installed")


def _dialect_name(name: str) -> str:
    if name in _DIALECT_MODULES:
        return name
    return _spec(name).dialect


def dialect(name: str) -> Dialect:
    """The upstream dialect ``name`` (``openai``, ``anthropic``, ``gemini``) or a provider's."""
    key = _dialect_name(name)
    module = _DIALECT_MODULES[key]
    result: Dialect = _resolve("dialect", key, _dialects, (module,))
    return result


def caller_dialect(name: str) -> CallerDialect:
    """The caller-side dialect ``openai``, ``anthropic`` or ``gemini``."""
    if name not in _DIALECT_MODULES:
        raise ValueError(f"no caller dialect {name!r}; known: {', '.join(_DIALECT_MODULES)}")
    module = _DIALECT_MODULES[name]
    result: CallerDialect = _resolve("caller dialect", name, _callers, (f"{module}_caller", module))
    return result


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class EndpointMatch:
    """What an outgoing request URL is, for interception.

    ``dialect`` is the wire dialect the caller used on that path (a Gemini host's
    ``/v1beta/openai/chat/completions`` is ``openai``); ``model`` is set when the
    path names it (Gemini ``models/{m}:generateContent``, Azure deployments);
    ``is_llm`` is false for paths that are not model calls (listing models, files).
    """

    provider: str
    dialect: str
    kind: EndpointKind
    model: str | None = None

    @property
    def is_llm(self) -> bool:
        return self.kind not in ("models", "other")


_MISS = object()
_HOST_CACHE_LIMIT = 4096
_host_cache: dict[str, str | None] = {}
_custom_hosts: dict[str, str] = {}


def register_base_url(name: str, base_url: str) -> None:
    """Make requests to ``base_url``'s host count as provider ``name`` (self-hosted servers)."""
    _spec(name)
    netloc = urlsplit(base_url).netloc.lower()
    if not netloc:
        raise ValueError(f"base_url {base_url!r} has no host")
    _custom_hosts[netloc] = name
    _host_cache.clear()


def _resolve_host(host: str) -> str | None:
    bare, _, port = host.partition(":")
    candidates = (host, bare) if port in ("443", "80") else (host,)
    for candidate in candidates:
        custom = _custom_hosts.get(candidate)
        if custom is not None:
            return custom
        for spec in _TABLE:
            if candidate in spec.hosts or candidate.endswith(spec.host_suffixes or ("\0",)):
                return spec.name
    return None


def match_endpoint(host: str, path: str) -> EndpointMatch | None:
    """The provider, dialect, endpoint kind and model of a request, or ``None``.

    ``host`` is the request's host, with ``:port`` when not the scheme's default
    (``localhost:11434``); ``path`` may carry a query string.
    """
    provider = _host_cache.get(host, _MISS)
    if provider is _MISS:
        provider = _resolve_host(host.lower())
        if len(_host_cache) >= _HOST_CACHE_LIMIT:
            _host_cache.clear()
        _host_cache[host] = provider
    if provider is None:
        return None
    return _classify(str(provider), path)


_GEMINI_METHODS: Mapping[str, EndpointKind] = {
    "generateContent": "generate",
    "streamGenerateContent": "stream_generate",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",
}


@lru_cache(maxsize=2048)
def _classify(provider: str, path: str) -> EndpointMatch:
    path = path.partition("?")[0].rstrip("/")
    default = PROVIDERS[provider].dialect
    last = path.rpartition("/")[2]
    named, colon, method = last.partition(":")
    if colon and (method in _GEMINI_METHODS or default == "gemini"):
        # Gemini ``models/{model}:{method}``; elsewhere a colon is part of a model id
        return EndpointMatch(
            provider, "gemini", _GEMINI_METHODS.get(method, "other"), named or None
        )
    model: str | None = None
    if "/deployments/" in path:  # Azure legacy route names the deployment
        model = path.split("/deployments/", 1)[1].split("/", 1)[0] or None
    kind: EndpointKind
    dialect_name = "openai"
    if path.endswith("/chat/completions"):
        kind = "chat"
    elif path.endswith("/responses"):
        # (only creating one costs: what lies under it, ``/responses/input_tokens``,
        # a stored response, its items, cancelling or deleting it, is free)
        kind = "responses"
    elif last == "embeddings":
        kind = "embeddings"
    elif last == "messages":
        kind, dialect_name = "messages", "anthropic"
    elif last == "models" or "/models/" in path:
        kind, dialect_name = "models", default
    else:
        kind, dialect_name = "other", default
    return EndpointMatch(provider, dialect_name, kind, model)
