"""Build ``routing_middleware/data/catalog.json`` from the pinned LiteLLM price file.

Steps: ``pip download --no-deps litellm==<pin>`` into a temporary directory, read the
price file out of the wheel, check its md5 and sha256 against the pins in
``scripts/catalog_overlay.json``, convert the chat models llmroute can route to (and
OpenAI's embedding models) with the same converter feeds use, apply the overlay
(selection, aliases, tiers, quality estimates) and write the snapshot.

Usage: ``python scripts/build_catalog.py [--wheel PATH] [--out PATH] [--check]``.
``--check`` rebuilds in memory and fails if the committed snapshot differs.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from routing_middleware.catalog import ModelInfo, models_to_json, with_aliases  # noqa: E402
from routing_middleware.feeds import add_litellm_aliases, litellm_entry_to_model  # noqa: E402

OVERLAY = ROOT / "scripts" / "catalog_overlay.json"
OUT = ROOT / "routing_middleware" / "data" / "catalog.json"
DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|20\d{6})$")

#: OpenRouter's vendor prefix for each first-party provider, for OpenRouter-style aliases.
OPENROUTER_VENDOR = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "deepseek": "deepseek",
    "qwen": "qwen",
    "mistral": "mistralai",
    "xai": "x-ai",
    "moonshot": "moonshotai",
    "zai": "z-ai",
    "minimax": "minimax",
    "perplexity": "perplexity",
    "cohere": "cohere",
}


def fetch_price_file(overlay: dict[str, Any], wheel: Path | None) -> bytes:
    pin = overlay["litellm"]
    if wheel is None:
        tmp = Path(tempfile.mkdtemp(prefix="llmroute-litellm-"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                f"litellm=={pin['version']}",
                "-d",
                str(tmp),
            ],
            check=True,
        )
        wheel = next(tmp.glob("litellm-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(pin["file"])
    md5 = hashlib.md5(data).hexdigest()
    sha256 = hashlib.sha256(data).hexdigest()
    if md5 != pin["md5"] or sha256 != pin["sha256"]:
        raise SystemExit(f"price file hash mismatch: md5 {md5}, sha256 {sha256}")
    return data


def _matches(model_id: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(model_id, p) for p in patterns)


def _selected(model: ModelInfo, overlay: dict[str, Any], as_of: date) -> bool:
    if model.mode == "embedding":
        return model.id in overlay["embeddings"]
    if model.mode != "chat" or model.price.input <= 0 or model.price.output <= 0:
        return False
    if _matches(model.id, overlay["exclude"]):
        return False
    if model.provider in overlay["include_all"]:
        chosen = True
    else:
        chosen = model.name in overlay["include"].get(model.provider, ())
    if not chosen:
        return False
    if model.deprecation_date is not None and model.deprecation_date < as_of:
        return model.id in overlay["keep_deprecated"]
    return True


def _openrouter_alias(model: ModelInfo) -> str | None:
    vendor = OPENROUTER_VENDOR.get(model.provider)
    if vendor is None:
        return None
    name = model.name
    if model.provider == "anthropic":
        # claude-sonnet-4-6 -> claude-sonnet-4.6 (OpenRouter writes versions with dots)
        name = re.sub(r"-(\d)-(\d)(?=$|-)", r"-\1.\2", name)
    alias = f"{vendor}/{name}"
    return None if alias.lower() == model.id.lower() else alias


def build(data: bytes, overlay: dict[str, Any]) -> tuple[list[ModelInfo], dict[str, Any]]:
    as_of = date.fromisoformat(overlay["as_of"])
    pin = overlay["litellm"]
    document = json.loads(data, parse_float=Decimal)
    converted: dict[str, ModelInfo] = {}
    for key in sorted(document):
        if key == "sample_spec":
            continue
        model = litellm_entry_to_model(
            key, document[key], as_of=as_of, source=f"litellm {pin['version']}: {key}"
        )
        if model is None or not _selected(model, overlay, as_of):
            continue
        if model.id in converted:  # "deepseek-chat" and "deepseek/deepseek-chat"
            converted[model.id] = with_aliases(converted[model.id], model.aliases)
        else:
            converted[model.id] = model

    add_litellm_aliases(converted, document)

    # Fold dated snapshots priced like their undated model into aliases.
    for model_id in sorted(converted):
        model = converted.get(model_id)
        match = DATED.match(model.name) if model else None
        if model is None or match is None:
            continue
        base = converted.get(f"{model.provider}/{match['base']}")
        if base is not None and base.price == model.price:
            converted[base.id] = with_aliases(base, [model.name, *model.aliases, model.id])
            del converted[model_id]

    quality_rules = overlay["quality"]
    first_party = set(overlay["first_party"])
    models = []
    for model in converted.values():
        extra = []
        if model.provider in first_party:
            extra.append(model.name)
        openrouter = _openrouter_alias(model)
        if openrouter:
            extra.append(openrouter)
        for alias in list(model.aliases):
            dated = DATED.match(alias)
            if dated and model.provider in first_party and "/" not in alias:
                openrouter_dated = _openrouter_alias(replace(model, name=alias))
                if openrouter_dated:
                    extra.append(openrouter_dated)
        extra += overlay["aliases"].get(model.id, [])
        model = with_aliases(model, extra)
        if model.id in overlay["tiers"]:
            model = replace(model, tier=overlay["tiers"][model.id])
        if model.mode == "chat":
            for pattern, score in quality_rules:
                if fnmatch.fnmatchcase(model.id, pattern):
                    model = replace(model, quality=score, quality_source=overlay["quality_source"])
                    break
        models.append(model)

    # A bare alias claimed by two models is ambiguous; keep it only on the first-party one.
    owners: dict[str, list[str]] = {}
    for model in models:
        for alias in model.aliases:
            owners.setdefault(alias.lower(), []).append(model.id)
    ids = {m.id.lower() for m in models}
    cleaned = []
    for model in models:
        keep = tuple(
            a
            for a in model.aliases
            if a.lower() not in ids
            and (len(owners[a.lower()]) == 1 or model.provider in first_party)
        )
        cleaned.append(replace(model, aliases=keep))
    header = {
        "as_of": overlay["as_of"],
        "source": f"litellm {pin['version']} {pin['file']} (sha256 {pin['sha256']})",
    }
    return sorted(cleaned, key=lambda m: m.id), header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="use this litellm wheel instead of pip download")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if --out is not up to date")
    args = parser.parse_args(argv)
    overlay = json.loads(OVERLAY.read_text(encoding="utf-8"))
    models, header = build(fetch_price_file(overlay, args.wheel), overlay)
    text = models_to_json(models, **header)
    chat = [m for m in models if m.mode == "chat"]
    providers = sorted({m.provider for m in chat})
    print(f"{len(chat)} chat models, {len(models) - len(chat)} other, {len(providers)} providers")
    if args.check:
        if args.out.read_text(encoding="utf-8") != text:
            print(f"{args.out} is out of date", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
