"""System checks: one test per id, and the checks are registered under the ``llmroute`` tag."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

from django_llmroute.checks import (
    MIDDLEWARE_PATH,
    check_middleware,
    check_providers,
    check_settings,
)
from routing_middleware.providers.registry import PROVIDERS

AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_valid_settings_pass():
    assert check_settings() == []
    assert check_middleware() == []


def test_e001_invalid_value_names_the_key_with_pydantics_message():
    with override_settings(LLMROUTE={"OFFLINE": "sometimes", "SINK": {"BATCH_SIZE": -1}}):
        found = check_settings()
    assert ids(found) == ["django_llmroute.E001", "django_llmroute.E001"]
    assert found[0].msg.startswith("LLMROUTE['OFFLINE']: Input should be 'auto', 'always'")
    assert "LLMROUTE['SINK'] BATCH_SIZE" in found[1].msg


def test_e001_unknown_key_lists_the_known_ones():
    with override_settings(LLMROUTE={"OFLINE": "always"}):
        [error] = check_settings()
    assert error.id == "django_llmroute.E001"
    assert "LLMROUTE['OFLINE']: unknown key" in error.msg
    assert "OFFLINE" in error.hint


def test_e002_dotted_path_that_does_not_import():
    with override_settings(LLMROUTE={"USER_ID": "myproject.nowhere.user_id"}):
        [error] = check_settings()
    assert error.id == "django_llmroute.E002"
    assert "LLMROUTE['USER_ID']" in error.msg
    assert "cannot import" in error.msg


def test_e003_budget_cache_missing():
    with override_settings(LLMROUTE={"BUDGET_CACHE": "budgets"}):
        [error] = check_settings()
    assert error.id == "django_llmroute.E003"
    assert "'budgets'" in error.msg


def test_e004_budget_cache_is_a_dummy():
    caches = {
        **settings.CACHES,
        "dummy": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    }
    with override_settings(CACHES=caches, LLMROUTE={"BUDGET_CACHE": "dummy"}):
        [error] = check_settings()
    assert error.id == "django_llmroute.E004"


def test_w001_middleware_missing():
    with override_settings(MIDDLEWARE=[SESSIONS, AUTH]):
        [warning] = check_middleware()
    assert warning.id == "django_llmroute.W001"


def test_w002_middleware_twice():
    with override_settings(MIDDLEWARE=[SESSIONS, AUTH, MIDDLEWARE_PATH, MIDDLEWARE_PATH]):
        assert ids(check_middleware()) == ["django_llmroute.W002"]


def test_w003_middleware_before_authentication():
    with override_settings(MIDDLEWARE=[SESSIONS, MIDDLEWARE_PATH, AUTH]):
        assert ids(check_middleware()) == ["django_llmroute.W003"]


def test_w002_and_w003_together():
    with override_settings(MIDDLEWARE=[MIDDLEWARE_PATH, SESSIONS, AUTH, MIDDLEWARE_PATH]):
        assert ids(check_middleware()) == ["django_llmroute.W002", "django_llmroute.W003"]


@pytest.fixture
def no_provider_keys(monkeypatch):
    for spec in PROVIDERS.values():
        monkeypatch.delenv(spec.api_key_env, raising=False)


def test_w004_no_provider_key_means_fakeprovider(no_provider_keys):
    with override_settings(LLMROUTE={"PROVIDERS": {"openai": {}, "anthropic": {}}}):
        [warning] = check_providers()
    assert warning.id == "django_llmroute.W004"
    assert "FakeProvider (anthropic, openai)" in warning.msg


def test_w004_silent_with_a_key(no_provider_keys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    with override_settings(LLMROUTE={"PROVIDERS": {"openai": {}, "anthropic": {}}}):
        assert check_providers() == []


def test_i001_offline_always_is_said_plainly():
    with override_settings(LLMROUTE={"OFFLINE": "always"}):
        [info] = check_providers()
    assert info.id == "django_llmroute.I001"


def test_provider_check_stays_quiet_when_settings_are_invalid():
    with override_settings(LLMROUTE={"OFFLINE": "sometimes"}):
        assert check_providers() == []


def test_checks_are_registered_under_the_llmroute_tag():
    with override_settings(
        LLMROUTE={"OFFLINE": "always", "MODE": "bogus"}, MIDDLEWARE=[SESSIONS, AUTH]
    ):
        found = ids(run_checks(tags=["llmroute"]))
    assert "django_llmroute.E001" in found
    assert "django_llmroute.W001" in found
