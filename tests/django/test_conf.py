"""``LLMROUTE``: mapping onto the core config, defaults, validation, caching, overrides."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_llmroute import runtime
from django_llmroute.conf import (
    CORE_KEYS,
    DjangoOptions,
    get_settings,
    problems,
    reload_settings,
)


def redact_digits(text: str) -> str:
    """A ``REDACT`` hook for the tests."""
    return "".join("#" if c.isdigit() else c for c in text)


NOT_CALLABLE = 42


@pytest.fixture(autouse=True)
def _fresh_engine():
    runtime.reset()
    yield
    runtime.reset(close_sink=True)


def test_uppercase_keys_map_onto_the_core_config():
    value = {
        "PROVIDERS": {"openai": {"api_key_env": "MY_OPENAI"}},
        "ROUTING": {
            "strategy": "balanced",
            "budgets": [{"name": "all", "limit_usd": "5"}],
        },
        "MODE": "observe",
        "OFFLINE": "always",
        "OFFLINE_LATENCY": "none",
        "REDIS_URL": None,
        "STORE_CONTENT": True,
        "FAIL_OPEN": False,
        "SERVER_TIMING": True,
        "RETRY": {"max_retries": 0},
    }
    with override_settings(LLMROUTE=value):
        found = get_settings()
    core = found.core
    assert core.providers["openai"].api_key_env == "MY_OPENAI"
    assert core.routing.strategy == "balanced"
    assert core.routing.budgets[0].limit_usd == Decimal("5")
    assert core.effective_mode == "observe"
    assert core.offline == "always"
    assert core.store_content is True
    assert core.fail_open is False
    assert core.server_timing is True
    assert core.retry.max_retries == 0
    assert found.django == DjangoOptions()  # no Django-only key given


def test_defaults_without_the_setting():
    with override_settings():
        del settings.LLMROUTE  # sends no setting_changed: forget the cache by hand
        reload_settings()
        found = get_settings()
    reload_settings()
    assert found.core.offline == "auto"
    assert found.core.instrument_httpx is False
    assert found.django.BUDGETS_FROM_DB is True
    assert found.django.SINK.BATCH_SIZE == 500
    assert found.django.BUDGET_CACHE == "default"
    assert found.user_id is None
    assert found.spool_path is None


def test_django_only_options_and_dotted_paths_resolved_once():
    value = {
        "SINK": {"BATCH_SIZE": 50, "DURABILITY": "sync", "SPOOL_PATH": "/tmp/a.jsonl"},
        "SPOOL_PATH": "/tmp/b.jsonl",
        "REDACT": "tests.django.test_conf.redact_digits",
        "USER_ID": "tests.django.test_middleware.user_from_header",
        "BUDGETS_FROM_DB": False,
    }
    with override_settings(LLMROUTE=value):
        found = get_settings()
        assert get_settings() is found  # cached
    assert found.django.SINK.BATCH_SIZE == 50
    assert found.django.SINK.DURABILITY == "sync"
    assert found.spool_path == "/tmp/a.jsonl"  # SINK's wins over the top-level one
    assert found.redact is redact_digits
    assert found.user_id.__name__ == "user_from_header"
    assert found.django.BUDGETS_FROM_DB is False


def test_override_settings_is_seen_and_undone():
    before = get_settings()
    with override_settings(LLMROUTE={**settings.LLMROUTE, "MODE": "observe"}):
        inside = get_settings()
        assert inside.core.mode == "observe"
    after = get_settings()
    assert after.core.mode is None
    assert before is not inside
    assert after is not inside


@pytest.mark.django_db
def test_engine_follows_the_settings():
    first = runtime.get_engine()
    assert runtime.get_engine() is first
    with override_settings(LLMROUTE={**settings.LLMROUTE, "MODE": "observe"}):
        observing = runtime.get_engine()
        assert observing is not first
        assert observing.router.config.mode == "observe"
    assert runtime.get_engine().router.config.mode == "enforce"


@pytest.mark.django_db
def test_settings_are_never_written():
    value = {"OFFLINE": "always"}
    with override_settings(LLMROUTE=value):
        get_settings()
        runtime.get_engine()
        assert settings.LLMROUTE == {"OFFLINE": "always"}
        assert value == {"OFFLINE": "always"}


@pytest.mark.parametrize(
    ("value", "key", "words"),
    [
        ({"MODE": "sometimes"}, "LLMROUTE['MODE']", "enforce"),
        ({"PROVIDERS": {"openia": {}}}, "LLMROUTE['PROVIDERS']", "unknown provider(s) openia"),
        ({"SINK": {"BATCH_SIZE": 0}}, "LLMROUTE['SINK'] BATCH_SIZE", "greater than or equal to 1"),
        ({"SINKS": {}}, "LLMROUTE['SINKS']", "unknown key"),
        ({"mode": "observe"}, "LLMROUTE['mode']", "UPPERCASE"),
        (
            {"ROUTING": {"rules": [{"name": "r", "then": {"tier": "gold"}}]}},
            "LLMROUTE['ROUTING']",
            "unknown tier name 'gold'",
        ),
        ({"USER_ID": "nodots"}, "LLMROUTE['USER_ID']", "dotted path"),
    ],
)
def test_invalid_values_name_the_key(value, key, words):
    with override_settings(LLMROUTE=value):
        invalid, imports = problems()
        with pytest.raises(ImproperlyConfigured) as raised:
            get_settings()
    assert not imports
    assert any(p.key == key and words in p.message for p in invalid), invalid
    assert key in str(raised.value)


def test_imports_that_fail_are_reported():
    with override_settings(
        LLMROUTE={
            "REDACT": "tests.django.test_conf.nope",
            "TAGS": "tests.django.test_conf.NOT_CALLABLE",
        }
    ):
        invalid, imports = problems()
    assert not invalid
    assert {p.key for p in imports} == {"LLMROUTE['REDACT']", "LLMROUTE['TAGS']"}
    assert any("not callable" in p.message for p in imports)


def test_not_a_dict():
    with override_settings(LLMROUTE=["OFFLINE"]):
        invalid, _ = problems()
    assert invalid[0].key == "LLMROUTE"
    assert "must be a dict" in invalid[0].message


def test_api_keys_never_appear_in_errors():
    value = {"PROVIDERS": {"openai": {"api_key": "sk-very-secret", "bogus": 1}}}
    with override_settings(LLMROUTE=value), pytest.raises(ImproperlyConfigured) as raised:
        get_settings()
    assert "sk-very-secret" not in str(raised.value)
    assert "bogus" in str(raised.value)


def test_core_keys_are_the_core_configs_fields():
    from routing_middleware.settings import LLMRouteConfig

    assert {k.lower() for k in CORE_KEYS} == set(LLMRouteConfig.model_fields)
