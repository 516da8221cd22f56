"""Secrets in the configuration never show in the config's or the engine's repr/str."""

from __future__ import annotations

from routing_middleware.engine import LLMRoute
from routing_middleware.settings import LLMRouteConfig

SECRETS = ("sk-live-KEY", "redispw", "basepw", "feedpw", "hdr-TOKEN")

CONFIG = {
    "offline_latency": "none",
    "redis_url": "redis://default:redispw@127.0.0.1:6379/15",
    "catalog_feed": "https://prices:feedpw@feeds.example/prices.json",
    "providers": {
        "openai": {
            "api_key": "sk-live-KEY",
            "base_url": "https://proxy:basepw@llm-proxy.example/v1",
            "options": {"headers": {"X-Proxy-Auth": "hdr-TOKEN"}},
        }
    },
}


def test_config_repr_and_str_hide_passwords_in_urls_and_header_values() -> None:
    config = LLMRouteConfig.model_validate(CONFIG)
    for text in (repr(config), str(config), repr(config.providers), str(config.providers)):
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, leaked
    shown = repr(config)
    # what is not secret still shows, to debug a config by
    assert "redis://default:***@127.0.0.1:6379/15" in shown
    assert "https://proxy:***@llm-proxy.example/v1" in shown
    assert "X-Proxy-Auth" in shown
    # and the values themselves are untouched
    assert config.redis_url == CONFIG["redis_url"]
    assert config.providers["openai"].options["headers"]["X-Proxy-Auth"] == "hdr-TOKEN"


def test_engine_repr_hides_the_configs_secrets() -> None:
    config = {key: value for key, value in CONFIG.items() if key != "redis_url"}
    engine = LLMRoute(config, environ={})
    try:
        text = f"{engine!r} {engine.config!r} {engine.config}"
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, leaked
    finally:
        engine.close()


def test_a_redis_password_given_as_a_query_parameter_is_hidden_too() -> None:
    config = LLMRouteConfig(redis_url="unix:///run/redis.sock?db=2&password=redispw")
    assert "redispw" not in repr(config)
    assert "db=2&password=***" in repr(config)
