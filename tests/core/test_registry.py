"""The provider registry: defaults, configs, dialect lookup and endpoint matching."""

from __future__ import annotations

import subprocess
import sys

import pytest

from routing_middleware.providers import registry
from routing_middleware.providers.openai import OPENAI_DIALECT
from routing_middleware.providers.openai_caller import OPENAI_CALLER
from routing_middleware.providers.registry import (
    PROVIDERS,
    EndpointMatch,
    api_key_env,
    caller_dialect,
    dialect,
    match_endpoint,
    provider_config,
    register_base_url,
)

CANONICAL = {
    "openai", "azure", "anthropic", "gemini", "deepseek", "qwen", "mistral", "xai", "groq",
    "together", "fireworks", "openrouter", "cerebras", "deepinfra", "moonshot", "zai", "minimax",
    "perplexity", "cohere", "vllm", "ollama",
}  # fmt: skip


def test_table_uses_canonical_ids() -> None:
    # bedrock is a canonical id with its own (not yet written) dialect; see the report
    assert set(PROVIDERS) == CANONICAL


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("openai", "OPENAI_API_KEY"),
        ("azure", "AZURE_OPENAI_API_KEY"),
        ("anthropic", "ANTHROPIC_API_KEY"),
        ("gemini", "GEMINI_API_KEY"),
        ("deepseek", "DEEPSEEK_API_KEY"),
        ("qwen", "DASHSCOPE_API_KEY"),
        ("mistral", "MISTRAL_API_KEY"),
        ("openrouter", "OPENROUTER_API_KEY"),
        ("ollama", "OLLAMA_API_KEY"),
    ],
)
def test_api_key_env(name: str, variable: str) -> None:
    assert api_key_env(name) == variable


def test_importing_the_registry_reads_nothing_and_imports_no_dialect() -> None:
    code = (
        "import os, sys\n"
        "os.environ['OPENAI_API_KEY'] = 'sk-from-env'\n"
        "from routing_middleware.providers import registry\n"
        "assert 'routing_middleware.providers.openai' not in sys.modules, 'eager import'\n"
        "assert registry.provider_config('openai').api_key is None, 'read the environment'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_provider_config_defaults_and_overrides() -> None:
    config = provider_config("mistral", api_key="sk-m", max_tokens_field="max_completion_tokens")
    assert config.name == "mistral"
    assert config.dialect == "openai"
    assert config.base_url == "https://api.mistral.ai/v1"
    assert config.options["max_tokens_field"] == "max_completion_tokens"  # caller wins
    assert config.options["seed_field"] == "random_seed"  # table default kept
    assert config.auth_headers() == {"authorization": "Bearer sk-m"}
    assert "sk-m" not in repr(config)


def test_provider_config_azure_needs_a_resource() -> None:
    with pytest.raises(ValueError, match="resource"):
        provider_config("azure")
    config = provider_config("azure", api_key="k", resource="contoso")
    assert config.base_url == "https://contoso.openai.azure.com/openai/v1"
    assert config.auth_headers() == {"api-key": "k"}


def test_provider_config_custom_base_url_wins() -> None:
    config = provider_config("vllm", base_url="http://gpu:9000/v1/")
    assert config.base_url == "http://gpu:9000/v1"
    assert config.auth_headers() == {}


def test_provider_config_rejects_unknowns() -> None:
    with pytest.raises(ValueError, match="unknown provider 'openia'"):
        provider_config("openia")
    with pytest.raises(ValueError, match="region"):
        provider_config("qwen", region="mars")


def test_openrouter_attribution_headers() -> None:
    config = provider_config("openrouter", referer="https://a.test", title="A")
    assert dict(config.headers) == {"HTTP-Referer": "https://a.test", "X-OpenRouter-Title": "A"}


def test_dialect_lookup() -> None:
    assert dialect("openai") is OPENAI_DIALECT
    assert dialect("groq") is OPENAI_DIALECT  # a provider name resolves to its dialect
    assert caller_dialect("openai") is OPENAI_CALLER
    with pytest.raises(ValueError, match="caller dialect"):
        caller_dialect("mistral")


@pytest.mark.parametrize("name", ["anthropic", "gemini"])
def test_other_dialects_resolve_by_name(name: str) -> None:
    found = dialect(name)
    assert found.name == name
    assert callable(found.encode_request)
    assert caller_dialect(name).name == name


# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.openai.com", "/v1/chat/completions", ("openai", "openai", "chat", None)),
        ("api.openai.com", "/v1/responses", ("openai", "openai", "responses", None)),
        (
            "api.openai.com",
            "/v1/responses/resp_1/input_items",
            ("openai", "openai", "other", None),
        ),
        (
            "api.openai.com",
            "/v1/responses/input_tokens",
            ("openai", "openai", "other", None),
        ),
        ("api.openai.com", "/v1/responses/resp_1", ("openai", "openai", "other", None)),
        ("api.openai.com", "/v1/embeddings", ("openai", "openai", "embeddings", None)),
        ("api.openai.com", "/v1/models", ("openai", "openai", "models", None)),
        ("api.openai.com", "/v1/models/ft:gpt-4o:acme::abc", ("openai", "openai", "models", None)),
        ("api.openai.com", "/v1/files", ("openai", "openai", "other", None)),
        (
            "contoso.openai.azure.com",
            "/openai/v1/chat/completions",
            ("azure", "openai", "chat", None),
        ),
        (
            "contoso.openai.azure.com",
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
            ("azure", "openai", "chat", "gpt-4o-prod"),
        ),
        (
            "contoso.openai.azure.com",
            "/openai/deployments/embed-small/embeddings?api-version=2024-10-21",
            ("azure", "openai", "embeddings", "embed-small"),
        ),
        (
            "contoso.cognitiveservices.azure.com",
            "/openai/v1/responses",
            ("azure", "openai", "responses", None),
        ),
        ("api.anthropic.com", "/v1/messages", ("anthropic", "anthropic", "messages", None)),
        (
            "api.anthropic.com",
            "/v1/messages/count_tokens",
            ("anthropic", "anthropic", "other", None),
        ),
        ("api.anthropic.com", "/v1/models", ("anthropic", "anthropic", "models", None)),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("gemini", "gemini", "generate", "gemini-2.5-flash"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            ("gemini", "gemini", "stream_generate", "gemini-2.5-pro"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/text-embedding-004:embedContent",
            ("gemini", "gemini", "embeddings", "text-embedding-004"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:countTokens",
            ("gemini", "gemini", "other", "gemini-2.5-pro"),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/openai/chat/completions",
            ("gemini", "openai", "chat", None),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models",
            ("gemini", "gemini", "models", None),
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
            ("gemini", "gemini", "generate", "gemini-2.5-pro"),
        ),
        ("api.deepseek.com", "/chat/completions", ("deepseek", "openai", "chat", None)),
        ("api.deepseek.com", "/v1/chat/completions", ("deepseek", "openai", "chat", None)),
        ("api.deepseek.com", "/anthropic/v1/messages", ("deepseek", "anthropic", "messages", None)),
        (
            "dashscope-intl.aliyuncs.com",
            "/compatible-mode/v1/chat/completions",
            ("qwen", "openai", "chat", None),
        ),
        (
            "dashscope-us.aliyuncs.com",
            "/compatible-mode/v1/chat/completions",
            ("qwen", "openai", "chat", None),
        ),
        (
            "dashscope.aliyuncs.com",
            "/compatible-mode/v1/chat/completions",
            ("qwen", "openai", "chat", None),
        ),
        ("api.mistral.ai", "/v1/chat/completions", ("mistral", "openai", "chat", None)),
        ("api.mistral.ai", "/v1/fim/completions", ("mistral", "openai", "other", None)),
        ("api.x.ai", "/v1/chat/completions", ("xai", "openai", "chat", None)),
        ("api.x.ai", "/v1/messages", ("xai", "anthropic", "messages", None)),
        ("api.groq.com", "/openai/v1/chat/completions", ("groq", "openai", "chat", None)),
        ("api.together.xyz", "/v1/chat/completions", ("together", "openai", "chat", None)),
        (
            "api.fireworks.ai",
            "/inference/v1/chat/completions",
            ("fireworks", "openai", "chat", None),
        ),
        ("openrouter.ai", "/api/v1/chat/completions", ("openrouter", "openai", "chat", None)),
        ("openrouter.ai", "/api/v1/models", ("openrouter", "openai", "models", None)),
        ("api.cerebras.ai", "/v1/chat/completions", ("cerebras", "openai", "chat", None)),
        ("api.deepinfra.com", "/v1/openai/chat/completions", ("deepinfra", "openai", "chat", None)),
        ("api.moonshot.ai", "/v1/chat/completions", ("moonshot", "openai", "chat", None)),
        ("api.moonshot.cn", "/v1/chat/completions", ("moonshot", "openai", "chat", None)),
        ("api.z.ai", "/api/paas/v4/chat/completions", ("zai", "openai", "chat", None)),
        ("open.bigmodel.cn", "/api/paas/v4/chat/completions", ("zai", "openai", "chat", None)),
        ("api.minimax.io", "/v1/chat/completions", ("minimax", "openai", "chat", None)),
        ("api.perplexity.ai", "/chat/completions", ("perplexity", "openai", "chat", None)),
        ("api.cohere.ai", "/compatibility/v1/chat/completions", ("cohere", "openai", "chat", None)),
        ("localhost:11434", "/v1/chat/completions", ("ollama", "openai", "chat", None)),
        ("127.0.0.1:11434", "/v1/models", ("ollama", "openai", "models", None)),
        ("api.openai.com:443", "/v1/chat/completions", ("openai", "openai", "chat", None)),
        ("API.OpenAI.com", "/v1/chat/completions", ("openai", "openai", "chat", None)),
    ],
)
def test_match_endpoint_on_real_url_shapes(host: str, path: str, expected: tuple) -> None:
    match = match_endpoint(host, path)
    assert match is not None
    assert (match.provider, match.dialect, match.kind, match.model) == expected


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("example.com", "/v1/chat/completions"),
        ("localhost", "/v1/chat/completions"),
        ("localhost:8000", "/v1/chat/completions"),  # a dev server, not vLLM, unless registered
        ("evil-openai.com", "/v1/chat/completions"),
        ("api.openai.com.evil.test", "/v1/chat/completions"),
        ("openai.azure.com.evil.test", "/v1/chat/completions"),
        ("api.openai.com:8443", "/v1/chat/completions"),
    ],
)
def test_match_endpoint_unknown_hosts(host: str, path: str) -> None:
    assert match_endpoint(host, path) is None


def test_is_llm() -> None:
    chat = match_endpoint("api.openai.com", "/v1/chat/completions")
    models = match_endpoint("api.openai.com", "/v1/models")
    assert chat is not None
    assert models is not None
    assert chat.is_llm
    assert not models.is_llm
    assert EndpointMatch("x", "openai", "other").is_llm is False


def test_registered_base_url_matches_its_host() -> None:
    assert match_endpoint("gpu-7.internal:8000", "/v1/chat/completions") is None
    register_base_url("vllm", "http://gpu-7.internal:8000/v1")
    try:
        match = match_endpoint("gpu-7.internal:8000", "/v1/chat/completions")
        assert match == EndpointMatch("vllm", "openai", "chat")
    finally:
        registry._custom_hosts.pop("gpu-7.internal:8000")
        registry._host_cache.clear()
    with pytest.raises(ValueError, match="unknown provider"):
        register_base_url("nope", "http://x")
    with pytest.raises(ValueError, match="no host"):
        register_base_url("vllm", "not a url")


def test_non_llm_hosts_are_cached_after_first_sight() -> None:
    registry._host_cache.clear()
    assert match_endpoint("static.example.net", "/a.js") is None
    assert registry._host_cache == {"static.example.net": None}
    # the second request to the same host is the single dict lookup
    assert match_endpoint("static.example.net", "/b.js") is None
