"""A budget given to an API key holds that key's calls, each key on its own."""

# ruff: noqa: F811  (fixtures imported from llmroute_helpers are test arguments)

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from django_llmroute.budgets import database_budgets
from django_llmroute.models import ApiKey, Budget

from .llmroute_helpers import llmroute, make_user  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/llm/v1/chat/completions"


def ask(client: Client, plaintext: str) -> Any:
    body = json.dumps(
        {"model": "gpt-5.4", "messages": [{"role": "user", "content": "Summarise this."}]}
    )
    auth = {"authorization": f"Bearer {plaintext}"}
    return client.post(CHAT, body, content_type="application/json", headers=auth)


def test_a_keys_budget_holds_its_calls_and_no_other_keys(client, llmroute, make_user):
    owner = make_user("team")
    # its own scope covers nobody's calls: only the key given it is held to it
    tiny = Budget.objects.create(
        name="trial", scope="user", scope_value="nobody", limit_usd=Decimal("0.000001")
    )
    roomy = Budget.objects.create(name="roomy", limit_usd=Decimal("100"))
    held, held_plain = ApiKey.objects.create_key(owner, "held", budget=tiny)
    free, free_plain = ApiKey.objects.create_key(owner, "free", budget=roomy)
    plain, plain_plain = ApiKey.objects.create_key(owner, "plain")

    refused = ask(client, held_plain)
    assert refused.status_code == 402, refused.content
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert f"trial@key-{held.pk}" in error["message"]
    assert ask(client, free_plain).status_code == 200
    assert ask(client, plain_plain).status_code == 200
    names = {b.name: b for b in database_budgets()}
    assert names[f"trial@key-{held.pk}"].scope == "api_key"
    assert names[f"trial@key-{held.pk}"].value == str(held.pk)
    assert names[f"roomy@key-{free.pk}"].limit_usd == Decimal("100")
    assert not any(name.endswith(f"@key-{plain.pk}") for name in names)


def test_giving_and_taking_a_keys_budget_takes_effect_on_the_next_call(client, llmroute, make_user):
    owner = make_user("team")
    tiny = Budget.objects.create(
        name="trial", scope="user", scope_value="nobody", limit_usd=Decimal("0.000001")
    )
    key, plaintext = ApiKey.objects.create_key(owner, "k")
    assert ask(client, plaintext).status_code == 200
    key.budget = tiny
    key.save()
    assert ask(client, plaintext).status_code == 402
    tiny.active = False
    tiny.save()
    assert ask(client, plaintext).status_code == 200
    tiny.active = True
    tiny.save()
    key.revoked = True
    key.save()
    assert not any(b.name.startswith("trial@key-") for b in database_budgets())
