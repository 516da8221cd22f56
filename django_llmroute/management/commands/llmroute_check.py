"""``manage.py llmroute_check``: is llmroute set up right, and where would a call go?

1. validates ``LLMROUTE`` and the middleware (the system checks, with their ids);
2. lists the providers the engine serves, live (with a key) or offline (FakeProvider);
3. dry-runs one small call per provider against FakeProvider (no network, no key
   used, nothing recorded, no budget charged);
4. prints the routing decision for a sample request (``--sample``, ``--model``,
   ``--feature``, ``--user``, ``--tier``) with the engine's real budgets and rules.

Exits with status 1 when the settings are invalid or a dry run fails.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.checks import ERROR
from django.core.management.base import BaseCommand, CommandError, CommandParser

SAMPLE = "Summarise this support ticket in two sentences for the on-call engineer."


def _money(value: Decimal | None) -> str:
    return "?" if value is None else f"${format(value.normalize(), 'f')}"


class Command(BaseCommand):
    help = (
        "Validate the llmroute settings, list providers (live or offline), dry-run one "
        "call per provider against FakeProvider and show the decision for a sample request."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sample", default=SAMPLE, help="the sample prompt")
        parser.add_argument("--model", help="the model the sample asks for")
        parser.add_argument("--feature", help="the sample's feature")
        parser.add_argument("--user", help="the sample's user id")
        parser.add_argument("--tier", help="a tier hint for the sample")
        parser.add_argument("--no-dry-run", action="store_true", help="skip the dry runs")

    def handle(self, *args: Any, **options: Any) -> None:
        if not self._settings():
            raise CommandError("LLMROUTE is invalid; fix the errors above", returncode=1)
        from django_llmroute.runtime import get_engine

        engine = get_engine()
        self._providers(engine)
        failed = 0 if options["no_dry_run"] else self._dry_runs(engine)
        self._decision(engine, options)
        if failed:
            raise CommandError(f"{failed} dry run(s) failed", returncode=1)

    # -- 1 ----------------------------------------------------------------------------

    def _settings(self) -> bool:
        from django_llmroute.checks import check_middleware, check_providers, check_settings

        self.stdout.write(self.style.MIGRATE_HEADING("Settings"))
        found = check_settings()
        errors = [m for m in found if m.level >= ERROR]
        if not errors:
            found += check_middleware() + check_providers()
        if not found:
            self.stdout.write("  LLMROUTE is valid; the middleware is in place")
        for message in found:
            style = self.style.ERROR if message.level >= ERROR else self.style.WARNING
            self.stdout.write(style(f"  {message.id}: {message.msg}"))
            if message.hint:
                self.stdout.write(f"    hint: {message.hint}")
        return not errors

    # -- 2 ----------------------------------------------------------------------------

    def _providers(self, engine: Any) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING("Providers"))
        if not engine.providers:
            self.stdout.write("  none: every call will fail (OFFLINE is 'never' and no key is set)")
        for name in sorted(engine.providers):
            state = "offline (FakeProvider)" if name in engine.offline_providers else "live"
            self.stdout.write(f"  {name:<12} {state:<24} {engine.providers[name].base_url}")
        self.stdout.write(
            f"  mode {engine.config.effective_mode}; budgets: "
            + (", ".join(b.name for b in engine.budgets.budgets) or "none")
        )

    # -- 3 ----------------------------------------------------------------------------

    def _dry_runs(self, engine: Any) -> int:
        from routing_middleware.context import RouteContext
        from routing_middleware.engine import LLMRoute
        from routing_middleware.metering import MemorySink
        from routing_middleware.schema import ChatRequest, LLMError, Message
        from routing_middleware.settings import ProviderSettings

        self.stdout.write(self.style.MIGRATE_HEADING("Dry runs (FakeProvider)"))
        config = engine.config
        failed = 0
        for name in sorted(engine.providers):
            models = [m for m in engine.catalog if m.provider == name and m.mode == "chat"]
            if not models:
                self.stdout.write(f"  {name:<12} skipped: no chat model of it in the catalog")
                continue
            model = min(models, key=lambda m: (m.price.input + m.price.output, m.id))
            settings = config.providers.get(name)
            fake = LLMRoute(
                config.model_copy(
                    update={
                        "providers": {name: settings or ProviderSettings()},
                        "offline": "always",
                        "offline_latency": "none",
                        "routing": config.routing.model_copy(update={"budgets": ()}),
                    }
                ),
                catalog=engine.catalog,
                sink=MemorySink(maxlen=10),
            )
            request = ChatRequest(
                model=model.id, messages=[Message(role="user", content="Say hello.")], max_tokens=16
            )
            context = RouteContext(feature="llmroute-check", allow_providers=frozenset({name}))
            try:
                done = fake.complete(request, context)
            except LLMError as exc:
                failed += 1
                self.stdout.write(
                    self.style.ERROR(f"  {name:<12} FAILED {exc.kind}: {exc.message}")
                )
                continue
            except Exception as exc:
                failed += 1
                self.stdout.write(self.style.ERROR(f"  {name:<12} FAILED {type(exc).__name__}"))
                continue
            finally:
                fake.close()
            served = done.served_by
            usage = done.response.usage
            self.stdout.write(
                f"  {name:<12} ok  {served.chosen_model if served else model.id}  "
                f"{usage.input_tokens if usage else '?'} in / "
                f"{usage.output_tokens if usage else '?'} out  {_money(done.cost)}"
            )
        return failed

    # -- 4 ----------------------------------------------------------------------------

    def _decision(self, engine: Any, options: dict[str, Any]) -> None:
        from routing_middleware.context import RouteContext
        from routing_middleware.schema import ChatRequest, LLMError, Message

        self.stdout.write(self.style.MIGRATE_HEADING("Sample decision"))
        model = options["model"] or self._sample_model(engine)
        if model is None:
            self.stdout.write("  no model to ask for")
            return
        request = ChatRequest(
            model=model, messages=[Message(role="user", content=options["sample"])]
        )
        context = RouteContext().merged(
            feature=options["feature"], user_id=options["user"], tier=options["tier"]
        )
        try:
            decision = engine.decide(request, context)
        except LLMError as exc:
            self.stdout.write(self.style.ERROR(f"  {exc.kind}: {exc.message}"))
            return
        primary = decision.primary
        self.stdout.write(f"  asked for  {decision.requested_model}")
        self.stdout.write(f"  goes to    {primary.model} at {primary.provider} ({decision.mode})")
        self.stdout.write(
            f"  tier {decision.tier}; expected {_money(decision.estimated_cost)} "
            f"vs {_money(decision.requested_cost)} on the requested model"
        )
        if decision.fallbacks:
            self.stdout.write("  fallbacks  " + ", ".join(d.model for d in decision.fallbacks))
        for reason in decision.reasons:
            self.stdout.write(f"  - {reason.code}: {reason.message}")

    @staticmethod
    def _sample_model(engine: Any) -> str | None:
        served = [m for m in engine.catalog if m.provider in engine.providers and m.mode == "chat"]
        if not served:
            return None
        if "openai/gpt-5.4" in {m.id for m in served}:
            return "openai/gpt-5.4"
        return max(served, key=lambda m: (m.tier, m.price.output, m.id)).id
