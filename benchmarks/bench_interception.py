"""What interception adds to an LLM call: latency, CPU and time to first chunk.

Setup: a local fake OpenAI-compatible upstream in a subprocess
(``benchmarks/_fake_upstream.py``: raw asyncio, canned answers, no delay). The
engine is configured with ``openai`` at that server and a hint that keeps the
requested model, so a routed call makes exactly one upstream round trip, like the
raw call: the difference is llmroute's own work (parse, decide, dispatch, decode,
re-encode, meter) plus its upstream client.

Compared, per library (``httpx``, ``httpx2``) and per shape (JSON, stream):

- ``raw``: a plain client;
- ``explicit``: the same client with ``RoutingTransport`` around its default transport;
- ``instrument``: a plain client under global :func:`instrument`.

Sequential calls use the sync client; ``--concurrency`` calls in flight use the
async client. Paths alternate in batches so drift hits all of them alike. Reported:
p50/p99 latency and the amount added over raw, CPU per call (``time.process_time``
of this process; the server runs elsewhere) and, for streams, time to the first
``data:`` line. Targets (added over raw): p50 <= 0.25 ms, p99 <= 1 ms, CPU <= 0.3 ms
per call, time to first chunk <= 0.5 ms.

``--stages`` measures the CPU of each stage of a routed call in process (mock
upstream, no sockets): the least noisy view of where the time goes. ``--profile``
profiles routed calls (explicit, httpx2, JSON, sequential) and prints
where their time goes, by module.

Usage: ``python benchmarks/bench_interception.py [--calls N] [--concurrency C]
[--rounds R] [--stages] [--profile] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import httpx2  # noqa: E402

from routing_middleware.context import route_hint  # noqa: E402
from routing_middleware.engine import LLMRoute  # noqa: E402
from routing_middleware.metering import MemorySink  # noqa: E402
from routing_middleware.providers.registry import register_base_url  # noqa: E402
from routing_middleware.transport import (  # noqa: E402
    AsyncRoutingTransport,
    RoutingTransport,
    instrument,
    uninstrument,
)

LIBS: dict[str, Any] = {"httpx": httpx, "httpx2": httpx2}
PATHS = ("raw", "explicit", "instrument")
MODEL = "gpt-4o-mini"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
).encode()
STREAM_BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()
HEADERS = {"authorization": "Bearer sk-caller", "content-type": "application/json"}


def start_upstream() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_fake_upstream.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError("the fake upstream did not start")
    return process, int(line.split()[1])


def make_engine(base: str) -> LLMRoute:
    register_base_url("openai", base)
    return LLMRoute(
        {
            "providers": {"openai": {"api_key": "sk-engine", "base_url": base}},
            "offline": "never",
            "cache": {"enabled": False},
            "mode": "enforce",
        },
        sink=MemorySink(maxlen=1000),
    )


# ----------------------------------------------------------------------------- one call


def call_sync(client: Any, url: str, stream: bool) -> tuple[float, float | None]:
    """One call; ``(latency, time to first data line or None)`` in seconds."""
    start = time.perf_counter()
    if not stream:
        response = client.post(url, content=BODY, headers=HEADERS)
        response.read()
        assert response.status_code == 200, response.text
        return time.perf_counter() - start, None
    first = None
    with client.stream("POST", url, content=STREAM_BODY, headers=HEADERS) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if first is None and line.startswith("data:"):
                first = time.perf_counter() - start
    return time.perf_counter() - start, first


async def call_async(client: Any, url: str, stream: bool) -> tuple[float, float | None]:
    start = time.perf_counter()
    if not stream:
        response = await client.post(url, content=BODY, headers=HEADERS)
        await response.aread()
        assert response.status_code == 200, response.text
        return time.perf_counter() - start, None
    first = None
    async with client.stream("POST", url, content=STREAM_BODY, headers=HEADERS) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if first is None and line.startswith("data:"):
                first = time.perf_counter() - start
    return time.perf_counter() - start, first


# ----------------------------------------------------------------------------- runs


class Samples:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.cpu = 0.0
        self.calls = 0

    def add(self, latency: float, ttft: float | None) -> None:
        self.latency.append(latency)
        if ttft is not None:
            self.ttft.append(ttft)

    def summary(self) -> dict[str, float | None]:
        lat = sorted(self.latency)
        ttft = sorted(self.ttft)
        return {
            "p50_ms": _pct(lat, 50) * 1000,
            "p99_ms": _pct(lat, 99) * 1000,
            "cpu_ms": self.cpu / self.calls * 1000,
            "ttft_p50_ms": _pct(ttft, 50) * 1000 if ttft else None,
        }


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, round(pct / 100 * (len(values) - 1)))
    return values[index]


def _client(lib: Any, path: str, engine: LLMRoute, is_async: bool) -> Any:
    limits = lib.Limits(max_connections=200, max_keepalive_connections=200)
    if path != "explicit":
        return lib.AsyncClient(limits=limits) if is_async else lib.Client(limits=limits)
    if is_async:
        inner = lib.AsyncHTTPTransport(limits=limits)
        return lib.AsyncClient(transport=AsyncRoutingTransport(inner, engine=engine))
    inner = lib.HTTPTransport(limits=limits)
    return lib.Client(transport=RoutingTransport(inner, engine=engine))


def run_sequential(
    lib: Any, stream: bool, url: str, engine: LLMRoute, calls: int, rounds: int
) -> dict[str, Samples]:
    samples = {path: Samples() for path in PATHS}
    clients = {path: _client(lib, path, engine, False) for path in PATHS}
    batch = max(1, calls // rounds)
    try:
        for path in PATHS:  # warm up connections and caches
            with _instrumented(path, engine):
                for _ in range(50):
                    call_sync(clients[path], url, stream)
        for _ in range(rounds):
            for path in PATHS:
                with _instrumented(path, engine):
                    gc.collect()
                    cpu = time.process_time()
                    for _ in range(batch):
                        samples[path].add(*call_sync(clients[path], url, stream))
                    samples[path].cpu += time.process_time() - cpu
                    samples[path].calls += batch
    finally:
        for client in clients.values():
            client.close()
    return samples


def run_concurrent(
    lib: Any, stream: bool, url: str, engine: LLMRoute, calls: int, rounds: int, width: int
) -> dict[str, Samples]:
    async def main() -> dict[str, Samples]:
        samples = {path: Samples() for path in PATHS}
        clients = {path: _client(lib, path, engine, True) for path in PATHS}
        batch = max(width, calls // rounds)

        async def wave(path: str, total: int, record: bool) -> None:
            client = clients[path]
            per_worker = max(1, total // width)

            async def worker() -> None:
                for _ in range(per_worker):
                    result = await call_async(client, url, stream)
                    if record:
                        samples[path].add(*result)

            await asyncio.gather(*(worker() for _ in range(width)))

        try:
            for path in PATHS:
                with _instrumented(path, engine):
                    await wave(path, width * 4, record=False)
            for _ in range(rounds):
                for path in PATHS:
                    with _instrumented(path, engine):
                        gc.collect()
                        cpu = time.process_time()
                        await wave(path, batch, record=True)
                        samples[path].cpu += time.process_time() - cpu
                        samples[path].calls += (batch // width) * width
        finally:
            for client in clients.values():
                await client.aclose()
            await engine.dispatcher.aclose()
        return samples

    with route_hint(allow_models=[f"openai/{MODEL}"]):
        return asyncio.run(main())


class _instrumented:
    def __init__(self, path: str, engine: LLMRoute) -> None:
        self.on = path == "instrument"
        self.engine = engine

    def __enter__(self) -> None:
        if self.on:
            instrument(self.engine)

    def __exit__(self, *exc: object) -> None:
        if self.on:
            uninstrument()


# ----------------------------------------------------------------------------- profile


def profile(url: str, engine: LLMRoute, calls: int) -> str:
    client = _client(httpx2, "explicit", engine, False)
    raw = _client(httpx2, "raw", engine, False)
    for _ in range(100):
        call_sync(client, url, False)
        call_sync(raw, url, False)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call_sync(client, url, False)
    profiler.disable()
    rawprof = cProfile.Profile()
    rawprof.enable()
    for _ in range(calls):
        call_sync(raw, url, False)
    rawprof.disable()
    client.close()
    raw.close()
    lines = [f"profile of {calls} routed httpx2 JSON calls (explicit transport)"]
    for title, prof in (("routed", profiler), ("raw", rawprof)):
        stats = pstats.Stats(prof)
        by_module: dict[str, float] = {}
        for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            by_module[_module(filename)] = by_module.get(_module(filename), 0.0) + tottime
        total = sum(by_module.values())
        lines.append(
            f"\n{title}: {total / calls * 1e6:.0f} us per call (profiled), own time by module:"
        )
        for name, seconds in sorted(by_module.items(), key=lambda kv: -kv[1])[:22]:
            lines.append(f"  {seconds / calls * 1e6:8.1f} us  {name}")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative")
    lines.append("\nrouted, top functions by cumulative time (us per call):")
    rows = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: -kv[1][3],
    )
    shown = 0
    for (filename, line, name), (_, _, _, cumtime, _) in rows:
        module = _module(filename)
        if not module.startswith("routing_middleware") and shown > 3:
            continue
        lines.append(f"  {cumtime / calls * 1e6:8.1f}  {module}:{line} {name}")
        shown += 1
        if shown >= 30:
            break
    return "\n".join(lines)


def _module(filename: str) -> str:
    path = filename.replace("\\", "/")
    for marker in ("site-packages/", "/routing_middleware/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            if marker == "/routing_middleware/":
                tail = "routing_middleware/" + tail
            parts = tail.split("/")
            return "/".join(parts[:2]) if parts[0] != "routing_middleware" else tail
    if path.startswith("<"):
        return "builtins"
    return "stdlib/" + path.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------- stages


def _best_batches(
    fns: dict[str, Callable[[], object]], repeats: int, batch: int
) -> dict[str, float]:
    """CPU seconds per call of each of ``fns``: batches of ``batch`` calls, the
    functions taking turns ``repeats`` times, the least disturbed batch's mean."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            for _ in range(batch):
                fn()
            best[name] = min(best[name], (time.process_time() - start) / batch)
    return best


def stages(repeats: int = 30, batch: int = 100) -> str:
    """CPU per stage of a routed JSON call, in process (mock upstream, no sockets).

    Each stage runs in ``repeats`` batches interleaved with the others; the minimum
    batch mean is reported (the least disturbed by other work on the machine).
    """
    from _fake_upstream import canned

    from routing_middleware import _intercept
    from routing_middleware.providers.registry import caller_dialect, dialect
    from routing_middleware.relay import Relay

    answer = canned()[0].split(b"\r\n\r\n", 1)[1]
    base = "http://127.0.0.1:9/v1"
    url = f"{base}/chat/completions"
    register_base_url("openai", base)

    def upstream(request: Any) -> Any:
        return httpx.Response(200, headers={"content-type": "application/json"}, content=answer)

    def caller_side(request: Any) -> Any:
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=answer)

    engine = LLMRoute(
        {
            "providers": {"openai": {"api_key": "sk-engine", "base_url": base}},
            "offline": "never",
            "cache": {"enabled": False},
        },
        sink=MemorySink(maxlen=100),
        client=httpx.Client(transport=httpx.MockTransport(upstream)),
    )
    relay = Relay(engine)
    raw = httpx2.Client(transport=httpx2.MockTransport(caller_side))
    routed = httpx2.Client(
        transport=RoutingTransport(httpx2.MockTransport(caller_side), engine=engine)
    )
    path = "/v1/chat/completions"
    with route_hint(allow_models=[f"openai/{MODEL}"]):
        request = relay.parse("openai", BODY, path, "openai")
        decision = engine.decide(request)
        done = engine.complete(request, decision=decision)
        relayed = relay.handle("openai", BODY, path, provider="openai")
        wire = dialect("openai")
        provider = engine.providers["openai"]
        caller = caller_dialect("openai")
        kit = _intercept.kit_for(httpx2.Request("POST", url))
        upstream_client = engine.dispatcher.sync_client()
        small = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        fns: dict[str, Callable[[], object]] = {
            "raw httpx2 call (mock transport)": lambda: raw.post(url, content=BODY).read(),
            "routed httpx2 call (mock transport)": lambda: routed.post(url, content=BODY).read(),
            "  Relay.handle": lambda: relay.handle("openai", BODY, path, provider="openai"),
            "    Relay.parse": lambda: relay.parse("openai", BODY, path, "openai"),
            "    LLMRoute.decide": lambda: engine.decide(request),
            "    LLMRoute.complete": lambda: engine.complete(request, decision=decision),
            "      dispatcher's httpx client call": lambda: upstream_client.send(
                upstream_client.build_request("POST", url, json=small)
            ).read(),
            "      openai encode_request": lambda: wire.encode_request(request, provider, MODEL),
            "      openai decode_response": lambda: wire.decode_response(answer, provider),
            "    caller encode_response + json": lambda: json.dumps(
                caller.encode_response(done.response, MODEL)
            ).encode(),
            "  interception: relay answer -> httpx2.Response": lambda: kit.relay_response(relayed),
            "  interception: endpoint match": lambda: _intercept._match(
                routed.build_request("POST", url, content=BODY)
            ),
            "  (building that request, for reference)": lambda: routed.build_request(
                "POST", url, content=BODY
            ),
        }
        best = _best_batches(fns, repeats, batch)
    lines = ["CPU per call by stage (in process, mock upstream; min of batch means):"]
    lines += [f"  {best[name] * 1e6:8.1f} us  {name}" for name in fns]
    other = httpx2.Client()
    target = httpx2.URL("https://example.com/v1/chat/completions")
    hook: dict[bool, float] = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for on in (False, True):
            with _instrumented("instrument" if on else "raw", engine):
                start = time.process_time()
                for _ in range(batch * 10):
                    other._transport_for_url(target)
                hook[on] = min(hook[on], (time.process_time() - start) / (batch * 10))
    lines.append(
        f"  {(hook[True] - hook[False]) * 1e6:8.2f} us  instrument() on a non-LLM request "
        f"(transport lookup {hook[False] * 1e6:.2f} -> {hook[True] * 1e6:.2f} us)"
    )
    return "\n".join(lines)


def stream_stages(repeats: int = 30, batch: int = 50) -> str:
    """CPU per streamed call in process (mock transports both sides, the fake
    upstream's 44 events one per read): raw, routed to a caller of the upstream's
    dialect (events forwarded as bytes), and routed from an Anthropic caller to the
    OpenAI-compatible upstream (every event decoded and encoded again)."""
    from _fake_upstream import canned

    body = canned()[1].split(b"\r\n\r\n", 1)[1]
    events: list[bytes] = []
    while True:  # the chunked body's chunks: one event each
        size, body = body.split(b"\r\n", 1)
        if not int(size, 16):
            break
        events.append(body[: int(size, 16)])
        body = body[int(size, 16) + 2 :]
    sse = {"content-type": "text/event-stream"}

    def replaying(lib: Any) -> Any:
        class Events(lib.SyncByteStream):  # type: ignore[misc]
            def __iter__(self) -> Any:
                return iter(events)

        return lambda request: lib.Response(200, headers=sse, stream=Events())

    base = "http://127.0.0.1:9/v1"
    register_base_url("openai", base)
    engine = LLMRoute(
        {
            "providers": {
                "openai": {"api_key": "sk-engine", "base_url": base},
                "anthropic": {"api_key": "sk-engine"},
            },
            "offline": "never",
            "cache": {"enabled": False},
        },
        sink=MemorySink(maxlen=100),
        client=httpx.Client(transport=httpx.MockTransport(replaying(httpx))),
    )
    raw = httpx2.Client(transport=httpx2.MockTransport(replaying(httpx2)))
    routed = httpx2.Client(
        transport=RoutingTransport(httpx2.MockTransport(replaying(httpx2)), engine=engine)
    )
    anthropic_body = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "stream": True,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        }
    ).encode()
    anthropic_headers = {"x-api-key": "sk-caller", "anthropic-version": "2023-06-01"}

    def read(client: Any, url: str, content: bytes, headers: dict[str, str]) -> None:
        with client.stream("POST", url, content=content, headers=headers) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                pass

    openai_url = f"{base}/chat/completions"
    anthropic_url = "https://api.anthropic.com/v1/messages"
    fns: dict[str, Callable[[], object]] = {
        "raw httpx2 stream (OpenAI dialect)": lambda: read(raw, openai_url, STREAM_BODY, HEADERS),
        "routed, OpenAI caller (forwarded)": lambda: read(routed, openai_url, STREAM_BODY, HEADERS),
        "routed, Anthropic caller -> OpenAI upstream": lambda: read(
            routed, anthropic_url, anthropic_body, anthropic_headers
        ),
    }
    with route_hint(allow_models=[f"openai/{MODEL}"]):
        best = _best_batches(fns, repeats, batch)
    lines = [f"CPU per streamed call ({len(events)} events), in process, mock transports:"]
    lines += [f"  {best[name] * 1e6:8.1f} us  {name}" for name in fns]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- LiteLLM

_LITELLM_DRIVER = """
import asyncio, json, os, sys, time
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm
from litellm import Router
litellm.telemetry = False
port, calls, width = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
router = Router(model_list=[{"model_name": "gpt-4o-mini", "litellm_params": {
    "model": "openai/gpt-4o-mini", "api_key": "sk-x",
    "api_base": f"http://127.0.0.1:{port}/v1"}}])
messages = [{"role": "user", "content": "Say hello to the benchmark."}]

async def one():
    start = time.perf_counter()
    await router.acompletion(model="gpt-4o-mini", messages=messages)
    return time.perf_counter() - start

async def run(width, total):
    lat = []
    async def worker():
        for _ in range(max(1, total // width)):
            lat.append(await one())
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(width)))
    return lat, time.process_time() - cpu

async def main():
    await run(1, 50)
    out = {}
    for name, w in (("sequential", 1), ("concurrent", width)):
        lat, cpu = await run(w, calls)
        out[name] = (sorted(lat), cpu / len(lat))
    print(json.dumps(out))

asyncio.run(main())
"""


def sdk_comparison(port: int, engine: LLMRoute, calls: int, width: int, python: str) -> str:
    """The openai SDK raw, the openai SDK under instrument(), and LiteLLM's Router."""
    import openai

    base = f"http://127.0.0.1:{port}/v1"
    messages = [{"role": "user", "content": "Say hello to the benchmark."}]

    async def measure(instrumented: bool) -> dict[str, tuple[list[float], float]]:
        client = openai.AsyncOpenAI(api_key="sk-caller", base_url=base, max_retries=0)

        async def one() -> float:
            start = time.perf_counter()
            await client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
            return time.perf_counter() - start

        async def run(w: int, total: int) -> tuple[list[float], float]:
            lat: list[float] = []

            async def worker() -> None:
                for _ in range(max(1, total // w)):
                    lat.append(await one())

            cpu = time.process_time()
            await asyncio.gather(*(worker() for _ in range(w)))
            return sorted(lat), (time.process_time() - cpu) / len(lat)

        with _instrumented("instrument" if instrumented else "raw", engine):
            await run(1, 50)
            out = {"sequential": await run(1, calls), "concurrent": await run(width, calls)}
        await client.close()
        return out

    with route_hint(allow_models=[f"openai/{MODEL}"]):
        rows = {
            "openai SDK, raw": asyncio.run(measure(False)),
            "openai SDK, instrument()": asyncio.run(measure(True)),
        }
    env = {"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [python, "-c", _LITELLM_DRIVER, str(port), str(calls), str(width)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    if done.returncode == 0:
        data = json.loads(done.stdout.strip().splitlines()[-1])
        rows["LiteLLM Router.acompletion"] = {k: (v[0], v[1]) for k, v in data.items()}
    else:
        print(done.stderr[-2000:], file=sys.stderr)
    lines = [
        f"{'':28} {'seq p50':>8} {'seq p99':>8} {'seq cpu':>8} | "
        f"{width} conc: {'p50':>8} {'p99':>8} {'cpu':>8}   (ms)"
    ]
    for name, shapes in rows.items():
        cells = []
        for shape in ("sequential", "concurrent"):
            lat, cpu = shapes[shape]
            cells += [_pct(lat, 50) * 1000, _pct(lat, 99) * 1000, cpu * 1000]
        seq = " ".join(f"{c:8.3f}" for c in cells[:3])
        conc = " ".join(f"{c:8.3f}" for c in cells[3:])
        lines.append(f"{name:28} {seq} | {'':9}{conc}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _fmt(value: float | None) -> str:
    return "    -" if value is None else f"{value:6.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per path and scenario")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stages", action="store_true", help="CPU per stage, in process")
    parser.add_argument(
        "--litellm",
        metavar="PYTHON",
        help="compare the openai SDK (raw, instrumented) with LiteLLM's Router.acompletion, "
        "run by this interpreter (a venv with litellm installed)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.stages:
        sys.path.insert(0, str(Path(__file__).parent))
        print(stages())
        print(stream_stages())
        return

    process, port = start_upstream()
    base = f"http://127.0.0.1:{port}/v1"
    url = f"{base}/chat/completions"
    engine = make_engine(base)
    try:
        with route_hint(allow_models=[f"openai/{MODEL}"]):
            check = httpx.Client(transport=RoutingTransport(engine=engine))
            served = check.post(url, content=BODY, headers=HEADERS).headers["x-llmroute-model"]
            check.close()
            assert served == f"openai/{MODEL}", served
            if args.profile:
                print(profile(url, engine, min(args.calls, 2000)))
                return
            if args.litellm:
                print(sdk_comparison(port, engine, args.calls, args.concurrency, args.litellm))
                return
            results: list[dict[str, Any]] = []
            runs: list[tuple[str, Callable[[Any, bool], dict[str, Samples]]]] = [
                (
                    "sequential",
                    lambda lib, s: run_sequential(lib, s, url, engine, args.calls, args.rounds),
                ),
                (
                    f"{args.concurrency} concurrent",
                    lambda lib, s: run_concurrent(
                        lib, s, url, engine, args.calls, args.rounds, args.concurrency
                    ),
                ),
            ]
            for shape_name, run in runs:
                for lib_name, lib in LIBS.items():
                    for stream in (False, True):
                        samples = run(lib, stream)
                        base_summary = samples["raw"].summary()
                        for path in PATHS:
                            summary = samples[path].summary()
                            row: dict[str, Any] = {
                                "shape": shape_name,
                                "lib": lib_name,
                                "stream": stream,
                                "path": path,
                                **summary,
                            }
                            if path != "raw":
                                for key in ("p50_ms", "p99_ms", "cpu_ms", "ttft_p50_ms"):
                                    a, b = summary[key], base_summary[key]
                                    row[f"added_{key}"] = None if a is None or b is None else a - b
                            results.append(row)
    finally:
        process.terminate()
        process.wait(timeout=10)
        engine.close()

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{'shape':<14} {'lib':<7} {'kind':<6} {'path':<10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>7} {'ttft ms':>7} | "
        f"{'+p50':>7} {'+p99':>7} {'+cpu':>7} {'+ttft':>7}"
    )
    for row in results:
        added = [row.get(f"added_{k}") for k in ("p50_ms", "p99_ms", "cpu_ms", "ttft_p50_ms")]
        tail = " ".join(_fmt(a) for a in added) if row["path"] != "raw" else ""
        print(
            f"{row['shape']:<14} {row['lib']:<7} {'stream' if row['stream'] else 'json':<6} "
            f"{row['path']:<10} {_fmt(row['p50_ms'])}  {_fmt(row['p99_ms'])}  "
            f"{_fmt(row['cpu_ms'])}  {_fmt(row['ttft_p50_ms'])} | {tail}"
        )


if __name__ == "__main__":
    main()
