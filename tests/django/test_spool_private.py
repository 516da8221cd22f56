"""The default spool lives in a private directory: another local user can neither
pre-create the spool file nor point it (or its directory) somewhere else."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest
from django.conf import settings
from django.test import override_settings

from django_llmroute.models import LLMCall
from django_llmroute.sinks import replay_spool
from django_llmroute.spool import Spool, default_spool_path

from .factories import make_record


@pytest.fixture
def shared_tmp(tmp_path, monkeypatch):
    """A stand-in for the shared temp dir, with no SPOOL_PATH configured."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    unset = {k: v for k, v in settings.LLMROUTE.items() if k != "SPOOL_PATH"}
    with override_settings(LLMROUTE=unset):
        yield shared


def test_the_default_spool_is_in_a_private_directory(shared_tmp):
    path = default_spool_path()
    assert path.parent != shared_tmp
    assert path.parent.parent == shared_tmp
    Spool(path).append([make_record()])
    info = os.lstat(path.parent)
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


def test_a_symlink_planted_at_the_spool_path_is_not_followed(shared_tmp, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    path = default_spool_path()
    # Where the file goes is predictable: plant a link there (and at the old place).
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.symlink_to(victim)
    path.with_name(path.name + ".rejected").symlink_to(victim)
    (shared_tmp / path.name).symlink_to(victim)
    with pytest.raises(OSError):
        Spool(path).append([make_record()])
    with pytest.raises(OSError):
        Spool(path).set_aside([make_record()])
    assert victim.read_bytes() == b"precious\n"


@pytest.mark.parametrize("how", ["open-to-all", "symlink", "someone-else's"])
def test_a_spool_directory_planted_by_someone_else_is_refused(shared_tmp, tmp_path, how):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    planted = default_spool_path().parent
    if how == "open-to-all":
        planted.mkdir()
        os.chmod(planted, 0o777)
    elif how == "symlink":
        planted.symlink_to(elsewhere, target_is_directory=True)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to make a directory owned by another user")
        planted.mkdir(mode=0o700)
        os.chown(planted, 65534, 65534)
    spool = Spool(default_spool_path())
    with pytest.raises(PermissionError, match="SPOOL_PATH"):
        spool.append([make_record()])
    with pytest.raises(PermissionError, match="SPOOL_PATH"):
        spool.pending()
    assert list(elsewhere.iterdir()) == []


def test_a_configured_spool_path_is_used_as_given(shared_tmp, tmp_path):
    chosen = tmp_path / "mine" / "records.jsonl"
    with override_settings(LLMROUTE={**settings.LLMROUTE, "SPOOL_PATH": str(chosen)}):
        assert default_spool_path() == chosen
        Spool(default_spool_path()).append([make_record()])
    assert chosen.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ["llmroute-spool.jsonl", "llmroute-spool.jsonl.replaying-1-2"])
def test_a_spool_left_at_the_old_default_place_is_still_replayed(shared_tmp, name):
    # The name every earlier version spooled to in the temp dir, for every database.
    old = shared_tmp / name
    mine = [make_record(), make_record()]
    Spool(old).append(mine)
    assert Spool(default_spool_path()).pending()
    result = replay_spool()
    assert result.inserted == 2
    assert set(LLMCall.objects.values_list("record_id", flat=True)) == {r.id for r in mine}
    assert not old.exists()


@pytest.mark.django_db(transaction=True)
def test_a_file_at_the_old_place_that_is_not_ours_is_not_replayed(shared_tmp, tmp_path):
    forged = tmp_path / "forged.jsonl"
    Spool(forged).append([make_record()])
    (shared_tmp / "llmroute-spool.jsonl").symlink_to(forged)
    assert not Spool(default_spool_path()).pending()
    assert replay_spool().inserted == 0
    assert LLMCall.objects.count() == 0
