"""Gateway throughput and added latency under load, against a baseline measured in the same run.

Setup: a local zero-latency OpenAI-compatible upstream in its own process (the raw
asyncio replayer of ``benchmarks/_fake_upstream.py``, or with ``--upstream uvicorn``
FakeProvider's ASGI app under uvicorn), and the gateway (``gateway_app``, one API key,
no rate limit) under one uvicorn worker in another process. The load generator is
``wrk`` (C, one thread) with ``--concurrency`` connections, POSTing a small
non-streamed chat completion.

Measured in the same run:

- ``baseline``: the upstream hit directly;
- ``gateway/<client>``: through the gateway, the engine's upstream client being
  ``httpx.AsyncClient``, ``httpx2.AsyncClient``, httpx with ``httpx-aiohttp``'s
  aiohttp transport (``httpx-aiohttp``), or aiohttp itself (``aiohttp``, the
  default when it is installed; every client allows ``--concurrency`` pooled
  connections or more);
- ``gateway/offline``: the engine's in-process FakeProvider (``offline: always``,
  ``offline_latency: none``): the gateway and engine alone, no upstream socket;
- ``gateway/floor``: a trivial ASGI app under the same uvicorn setup (what the
  server alone costs on this machine);
- with ``--litellm PYTHON``: the LiteLLM proxy (one worker, its master key, no
  database) on the same upstream and load, run by that interpreter.

Reported: requests per second, p50 and p99 latency, the p50 the gateway adds over
the baseline, and the gateway process's CPU time per request (user + system, from
``/proc``) with the requests per second one core could serve at that cost: on a
shared machine that figure is steadier than wall-clock throughput. At 50 concurrent
a single saturated worker queues requests, so its p50 is mostly waiting; the
latency the gateway adds to one request is measured again with one connection
("added p50, 1 conn").

``--profile`` instead drives the gateway app in-process (no server, no load
generator) against the upstream with ``--client`` and prints cProfile's top functions;
``--breakdown`` prints the CPU time per request of each layer (router, engine, relay,
the gateway's own work), in process, one request at a time.

Usage::

    python benchmarks/bench_gateway.py [--seconds 10] [--concurrency 50]
        [--clients floor,httpx,httpx2,httpx-aiohttp,aiohttp,offline]
        [--upstream raw|uvicorn] [--litellm PYTHON] [--json]
    python benchmarks/bench_gateway.py --profile [--client aiohttp] [--requests 3000]
    python benchmarks/bench_gateway.py --breakdown [--requests 3000]

Needs ``wrk`` on the PATH for the load runs; ``uvloop`` and ``httptools`` are used by
uvicorn when installed (the report says which loop and parser ran).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi in one word."}]}
)
CLIENTS = ("floor", "httpx", "httpx2", "httpx-aiohttp", "aiohttp", "offline")


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def _spawn(
    args: list[str],
    port: int,
    env: dict[str, str] | None = None,
    python: str | None = None,
    wait: float = 30.0,
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [python or sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(port, proc, wait)
    except Exception:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(err.decode(errors="replace")[-2000:]) from None
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_client(name: str, concurrency: int) -> Any:
    """The engine's upstream client ``name`` with ``concurrency`` pooled connections."""
    if name == "httpx":
        import httpx

        return httpx.AsyncClient(limits=_limits(httpx, concurrency), timeout=30)
    if name == "httpx2":
        import httpx2

        return httpx2.AsyncClient(limits=_limits(httpx2, concurrency), timeout=30)
    if name == "aiohttp":
        return "aiohttp"  # the engine's own aiohttp sender, a session per loop
    if name == "httpx-aiohttp":
        import httpx
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=_limits(httpx, concurrency))
        return httpx.AsyncClient(transport=transport, timeout=30)
    raise ValueError(f"unknown client {name!r}")


def _limits(lib: Any, concurrency: int) -> Any:
    # The libraries keep only 20 idle connections by default: at 50 concurrent calls
    # the rest would be opened and closed per call.
    return lib.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)


def build_gateway(
    client: str, upstream: str | None, concurrency: int, key: str | None = None
) -> tuple[Any, str]:
    """The gateway app for ``client`` (``offline``: in-process fake) and its API key
    (``key`` when given, else a new one)."""
    from routing_middleware.auth import ApiKeyInfo, MemoryKeyStore, hash_key, key_id_of, new_key
    from routing_middleware.engine import LLMRoute
    from routing_middleware.gateway import gateway_app
    from routing_middleware.metering import MemorySink

    if client == "offline":
        engine = LLMRoute(
            {"offline": "always", "offline_latency": "none"}, sink=MemorySink(1000), environ={}
        )
    else:
        assert upstream is not None
        config = {
            "offline": "never",
            "providers": {"openai": {"api_key": "sk-bench", "base_url": f"{upstream}/v1"}},
        }
        engine = LLMRoute(
            config,
            sink=MemorySink(1000),
            async_client=make_client(client, concurrency),
            environ={},
        )
    keys = MemoryKeyStore()
    key_id, plaintext = new_key() if key is None else (key_id_of(key), key)
    assert key_id is not None
    keys.add(ApiKeyInfo(key_id=key_id, owner="bench"), hash_key(plaintext))
    return gateway_app(engine, authenticator=keys), plaintext


async def _floor_app(scope: Any, receive: Any, send: Any) -> None:
    """The least an ASGI app can do: read the body, answer a fixed JSON."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = b'{"object": "chat.completion", "choices": []}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_gateway(args: argparse.Namespace) -> None:
    """Child process: the gateway under one uvicorn worker (``floor``: a trivial app)."""
    import uvicorn

    if args.client == "floor":
        uvicorn.run(_floor_app, host="127.0.0.1", port=args.port, log_level="warning")
        return
    key = os.environ["LLMROUTE_BENCH_KEY"]
    app, _ = build_gateway(args.client, args.upstream_url, args.concurrency, key)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def serve_upstream(args: argparse.Namespace) -> None:
    """Child process: FakeProvider's ASGI app under uvicorn."""
    import uvicorn

    from routing_middleware.testing import FakeModel, FakeProvider

    fake = FakeProvider(default_model=FakeModel("default", output_tokens=40))
    uvicorn.run(fake.asgi_app(), host="127.0.0.1", port=args.port, log_level="warning")


# --------------------------------------------------------------------------- load


def _wrk(url: str, key: str | None, seconds: float, concurrency: int) -> dict[str, float]:
    script = "\n".join(
        [
            'wrk.method = "POST"',
            f"wrk.body = {json.dumps(BODY)}",
            'wrk.headers["Content-Type"] = "application/json"',
            *([f'wrk.headers["Authorization"] = "Bearer {key}"'] if key else []),
            "done = function(summary, latency, requests)",
            '  io.write(string.format("P50 %d\\nP99 %d\\n", latency:percentile(50),'
            " latency:percentile(99)))",
            "end",
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds
                "--timeout",
                "10s",
                "-s",
                handle.name,
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = int(re.search(r"P50 (\d+)", out).group(1)) / 1000  # type: ignore[union-attr]
    p99 = int(re.search(r"P99 (\d+)", out).group(1)) / 1000  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the load runs (apt-get install wrk)")
    up_port = _free_port()
    if args.upstream == "raw":
        upstream = _spawn(["benchmarks/_fake_upstream.py", "--port", str(up_port)], up_port)
    else:
        upstream = _spawn([__file__, "--serve-upstream", "--port", str(up_port)], up_port)
    upstream_url = f"http://127.0.0.1:{up_port}"
    from routing_middleware.auth import new_key

    _, key = new_key()
    results: dict[str, Any] = {}
    try:
        _wrk(f"{upstream_url}/v1/chat/completions", None, 2, args.concurrency)  # warm up
        results["baseline"] = _wrk(
            f"{upstream_url}/v1/chat/completions", None, args.seconds, args.concurrency
        )
        results["baseline"]["p50_1conn_ms"] = _wrk(
            f"{upstream_url}/v1/chat/completions", None, args.seconds / 2, 1
        )["p50_ms"]
        for client in args.clients:
            port = _free_port()
            gateway = _spawn(
                [
                    __file__,
                    "--serve-gateway",
                    "--client",
                    client,
                    "--port",
                    str(port),
                    "--upstream-url",
                    upstream_url,
                    "--concurrency",
                    str(args.concurrency),
                ],
                port,
                env={"LLMROUTE_BENCH_KEY": key},
            )
            try:
                results[f"gateway/{client}"] = _measure(args, gateway, port, key)
            finally:
                _stop(gateway)
        if args.litellm:
            results["litellm proxy"] = _litellm_proxy(args, upstream_url)
    finally:
        _stop(upstream)
    base = results["baseline"]["p50_ms"]
    alone = results["baseline"]["p50_1conn_ms"]
    for name, row in results.items():
        row["added_p50_ms"] = 0.0 if name == "baseline" else row["p50_ms"] - base
        row["added_p50_1conn_ms"] = 0.0 if name == "baseline" else row["p50_1conn_ms"] - alone
    return results


def _measure(
    args: argparse.Namespace, server: subprocess.Popen[bytes], port: int, key: str
) -> dict[str, float]:
    """Load the server on ``port``: throughput and latency at ``--concurrency``, its CPU
    per request, then the p50 of one connection alone."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    _wrk(url, key, 2, args.concurrency)  # warm up
    before = _cpu_seconds(server.pid)
    row = _wrk(url, key, args.seconds, args.concurrency)
    used = _cpu_seconds(server.pid) - before
    row["gateway_cpu_us_per_req"] = used / max(row["rps"] * args.seconds, 1) * 1e6
    row["p50_1conn_ms"] = _wrk(url, key, args.seconds / 2, 1)["p50_ms"]
    return row


_LITELLM_CONFIG = """
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-bench
      api_base: {upstream}/v1
litellm_settings:
  telemetry: false
"""


def _litellm_proxy(args: argparse.Namespace, upstream_url: str) -> dict[str, float]:
    """The LiteLLM proxy (one worker, no database, its master key) on the same upstream
    and load."""
    import secrets

    port = _free_port()
    master = f"sk-{secrets.token_hex(32)}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(_LITELLM_CONFIG.format(upstream=upstream_url))
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": master,
    }
    proxy = _spawn(
        ["-m", "litellm.proxy.proxy_cli", "--config", handle.name, "--port", str(port)],
        port,
        env=env,
        python=args.litellm,
        wait=180.0,
    )
    try:
        return _measure(args, proxy, port, master)
    finally:
        _stop(proxy)
        os.unlink(handle.name)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _environment() -> dict[str, str]:
    import platform

    import uvicorn

    found = []
    for module in ("uvloop", "httptools"):
        try:
            __import__(module)
            found.append(module)
        except ImportError:
            continue
    return {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "uvicorn": uvicorn.__version__,
        "uvicorn_extras": ",".join(found) or "none (asyncio loop, h11 parser)",
    }


# --------------------------------------------------------------------------- profile


async def _profile_load(app: Any, key: str, requests: int, concurrency: int) -> float:
    headers = [
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {key}".encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    body = BODY.encode()
    statuses: list[int] = []

    async def one() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(dict(scope), receive, send)

    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed, e.g. status {bad[0]}")
    return elapsed


def profile(args: argparse.Namespace) -> None:
    import cProfile
    import pstats

    up_port = _free_port()
    upstream = None
    if args.client != "offline":
        upstream = _spawn(["benchmarks/_fake_upstream.py", "--port", str(up_port)], up_port)
    try:
        app, key = build_gateway(args.client, f"http://127.0.0.1:{up_port}", args.concurrency)

        async def main() -> None:
            await _profile_load(app, key, 300, args.concurrency)  # warm up
            profiler = cProfile.Profile()
            profiler.enable()
            elapsed = await _profile_load(app, key, args.requests, args.concurrency)
            profiler.disable()
            print(
                f"{args.requests} requests in {elapsed:.2f}s under cProfile "
                f"({args.requests / elapsed:.0f} req/s with profiling overhead), "
                f"client={args.client}"
            )
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)

        asyncio.run(main())
    finally:
        if upstream is not None:
            _stop(upstream)


# --------------------------------------------------------------------------- breakdown


def breakdown(args: argparse.Namespace) -> None:
    """CPU time per request of each layer, in process, one request at a time."""
    from routing_middleware.engine import LLMRoute
    from routing_middleware.relay import Relay, RelayResponse
    from routing_middleware.schema import ChatRequest, Message

    n = args.requests
    body = BODY.encode()
    request = ChatRequest(
        model="openai/gpt-4o-mini", messages=[Message(role="user", content="Say hi in one word.")]
    )
    engine = LLMRoute({"offline": "always", "offline_latency": "none"}, environ={})
    relay = Relay(engine)
    fake = engine.fake_network.providers["api.openai.com"]
    app, key = build_gateway("offline", None, 1)
    stub, stub_key = build_gateway("offline", None, 1)
    canned = RelayResponse(200, {"content-type": "application/json"}, b'{"ok": true}')

    async def answer(*_: Any, **__: Any) -> RelayResponse:
        return canned

    for route in stub.routes:  # the gateway's own work: the relay answers at once
        handler = getattr(getattr(route, "app", None), "handler", None)
        if handler is not None:
            handler.__self__.relay.ahandle = answer
            break

    async def measure(label: str, work: Any) -> None:
        for _ in range(max(n // 10, 50)):
            await work()
        started = time.process_time()
        for _ in range(n):
            await work()
        print(f"{label:<52} {(time.process_time() - started) / n * 1e6:>8.0f} us CPU")

    async def decide() -> None:
        engine.decide(request)

    async def fake_handle() -> None:
        fake.handle("POST", "/v1/chat/completions", body=body)

    async def main() -> None:
        await measure("engine.decide (router)", decide)
        await measure("FakeProvider.handle (the in-process upstream)", fake_handle)
        await measure(
            "engine.acomplete (decide+dispatch+meter, fake)", partial_call(engine, request)
        )
        await measure(
            "relay.ahandle (parse+acomplete+encode, fake)",
            lambda: relay.ahandle("openai", body, provider="openai"),
        )
        await measure(
            "gateway app, relay stubbed (gateway's own work)",
            lambda: _profile_load(stub, stub_key, 1, 1),
        )
        await measure("gateway app, whole (offline engine)", lambda: _profile_load(app, key, 1, 1))

    asyncio.run(main())


def partial_call(engine: Any, request: Any) -> Any:
    async def call() -> None:
        await engine.acomplete(request)

    return call


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--upstream", choices=("raw", "uvicorn"), default="raw")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--litellm",
        metavar="PYTHON",
        help="also run the LiteLLM proxy on the same upstream and load, with this "
        "interpreter (a venv with 'litellm[proxy]' installed)",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--client", default="aiohttp", choices=CLIENTS)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_gateway:
        serve_gateway(args)
        return
    if args.serve_upstream:
        serve_upstream(args)
        return
    if args.profile:
        profile(args)
        return
    if args.breakdown:
        breakdown(args)
        return
    args.clients = [c for c in args.clients.split(",") if c]
    unknown = set(args.clients) - set(CLIENTS)
    if unknown:
        raise SystemExit(f"unknown client(s): {', '.join(sorted(unknown))}")
    results = run(args)
    env = _environment()
    if args.json:
        print(json.dumps({"environment": env, "results": results}, indent=2))
        return
    print(
        f"gateway benchmark: {args.concurrency} concurrent, {args.seconds:g}s each, "
        f"upstream={args.upstream}, one uvicorn worker; {env}"
    )
    print(
        f"{'run':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} "
        f"{'non-2xx':>8} {'CPU us/req':>11} {'req/s per core':>15} {'added p50, 1 conn':>18}"
    )
    for name, row in results.items():
        cpu = row.get("gateway_cpu_us_per_req")
        per_core = f"{1e6 / cpu:>15.0f}" if cpu else f"{'':>15}"
        print(
            f"{name:<20} {row['rps']:>9.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
            f"{row['added_p50_ms']:>10.2f} {row['non_2xx']:>8.0f} "
            f"{cpu if cpu else 0:>11.0f} {per_core} {row['added_p50_1conn_ms']:>18.2f}"
        )


if __name__ == "__main__":
    main()
