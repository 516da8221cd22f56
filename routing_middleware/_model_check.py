"""The gateways' check of the model a call names, before it reaches the relay.

One check for the Starlette gateway and the Django views, so both refuse the same
names the same way: a model the catalog does not know is a 404 with suggestions
(:class:`~routing_middleware.schema.UnknownModel`), not a call passed through to
a provider that cannot be priced, which would answer a retryable 503.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .schema import InvalidRequest, UnknownModel

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["check_model"]


def check_model(body: bytes, provider: str | None, catalog: Catalog) -> None:
    """Raise :class:`UnknownModel` (with suggestions) when ``body`` names a model
    ``catalog`` does not know, either as sent or, for a bare name, qualified with
    ``provider`` (the provider the endpoint speaks for, as the relay qualifies it).

    Only a well-formed body naming a model is checked; anything else is left to the
    relay, which answers 400 naming the field. A body nested deeper than the JSON
    parser goes raises :class:`InvalidRequest`.
    """
    try:
        model = json.loads(body).get("model")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return
    except RecursionError:  # the parser's own limit: no caller needs that depth
        raise InvalidRequest(
            "The request body is nested too deeply to be read.", retryable=False
        ) from None
    if not isinstance(model, str) or not model:
        return
    if model in catalog or (provider and "/" not in model and f"{provider}/{model}" in catalog):
        return
    raise UnknownModel(model, catalog.suggest(model))
