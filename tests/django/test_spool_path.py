"""The default spool file belongs to one database: two projects (or a project's staging
and production) on one host never replay each other's records."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from django_llmroute.sinks import DjangoSink, SinkOptions
from django_llmroute.spool import default_spool_path


@pytest.fixture
def no_spool_setting():
    unset = {k: v for k, v in settings.LLMROUTE.items() if k != "SPOOL_PATH"}
    with override_settings(LLMROUTE=unset):
        yield


def _database(name: str, host: str = "") -> dict[str, object]:
    return {"ENGINE": "django.db.backends.postgresql", "NAME": name, "HOST": host}


@pytest.mark.usefixtures("no_spool_setting")
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # only its names are read
def test_each_database_has_its_own_default_spool():
    databases = {
        "default": _database("shop"),
        "other": _database("blog"),
        "staging": _database("shop", host="staging.internal"),
        "same": _database("shop"),
    }
    with override_settings(DATABASES=databases):
        paths = {alias: default_spool_path(alias) for alias in databases}
        assert default_spool_path() == paths["default"]  # SINK["DATABASE"]'s
        assert DjangoSink(SinkOptions(database="other")).spool.path == paths["other"]
    assert len({paths["default"], paths["other"], paths["staging"]}) == 3
    assert paths["same"] == paths["default"]  # the same database, whatever its alias
    for path in paths.values():
        # In this user's private directory of the temp dir, not the shared dir itself.
        assert path.parent.parent == Path(tempfile.gettempdir())
        assert path.name.startswith("llmroute-spool-")
        assert path.suffix == ".jsonl"


@pytest.mark.usefixtures("no_spool_setting")
def test_a_configured_spool_path_wins(tmp_path):
    chosen = str(tmp_path / "mine.jsonl")
    with override_settings(LLMROUTE={**settings.LLMROUTE, "SPOOL_PATH": chosen}):
        assert default_spool_path() == Path(chosen)
        assert default_spool_path("other") == Path(chosen)
