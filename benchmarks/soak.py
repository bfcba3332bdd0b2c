"""Soak: minutes of mixed load under a RAM budget that forces swaps, with faults injected.

    .venv/bin/python benchmarks/soak.py                 # 10 minutes, the bundled models
    .venv/bin/python benchmarks/soak.py --write-docs    # also rewrite its section of docs/benchmarks.md

What runs, by default on the bundled models (SmolLM2-135M-Instruct chat on vLLM, all-MiniLM-L6-v2 for
embeddings and, as a bi-encoder, for rerank):

1. A calibration start (no budget) loads each model once and measures what the server itself holds
   (``server_overhead_bytes``, and the process tree's RSS with nothing loaded) and what each model
   takes (harness.calibrate). The budget is then the server's own footprint, plus the chat model's
   need, plus half the embedder's: the chat model fits alone, the embedder fits alone, the two do not
   fit together, so traffic to both swaps them all the time. It is printed, with its parts;
   ``--ram-budget-gb`` sets it instead.

   The ledger counts MiniLM at its estimate (407 MiB, activations included) while it adds about 87 MiB
   to the tree's RSS, and the server reads its own footprint as the tree's RSS less what each model
   really added: the chat model alone has half the embedder's need to spare for the server's own
   footprint to grow over the run. Past that it can no longer load the chat model, and the soak
   reports its requests as hung.
2. The measured server starts with that LLM_AVAILABLE_RAM_GB; each model answers once (the start
   figures are taken then), and ``--duration-s`` of load follows: ``--chat-clients`` streaming chat
   requests, ``--embedding-clients`` embedding requests and ``--rerank-clients`` rerank requests,
   each client one request after another.
3. Every ``--fault-every-s``: ``--drops`` more clients start and go away mid-request (half close
   their socket once a chat stream has begun, half while an embedding request is being computed),
   and vLLM's engine process (``VLLM::EngineCore``, a child of the server) is SIGKILLed: once a
   stream flows through it, if one does within half an interval, else as soon as it runs at all
   (the chat model may be swapped out), never while it loads; a fault that finds no loaded engine
   within two intervals counts as none. A late kill delays the next fault, and the last one keeps
   the load going past ``--duration-s`` while it waits.
4. Once the load has ended, each model answers once more (the end figures are taken then) and every
   model must show no request in flight.

What the table counts:

- answered: HTTP 200 with the right number of results; for a stream, tokens and then ``data: [DONE]``.
- cut by a fault: a chat request in flight when an engine was killed (or started within
  ``CUT_GRACE_S`` before it) that ended as a killed engine's requests must: an OpenAI-shaped error
  ``{"error": {..., "code": "engine_failed"}}`` (as a last event before ``data: [DONE]``, or as the
  answer when nothing was streamed yet). Expected, so not failed.
- dropped: the clients this script closed on purpose; what they got is not judged.
- failed: every other answer: another error, an engine_failed with no kill near it, a stream that
  ends without ``data: [DONE]``, a wrong number of vectors or scores, a connection the server broke.
- hung: no complete answer within ``--hang-timeout-s`` (generous: a request may wait for a swap).
- recovered: per kill, the first chat request started after it that was answered, and how long
  after the kill that answer came.

The process tree's RSS (the server and all its children: engines, the reaper) is sampled twice a
second for the peak, and the server's own footprint (/admin/memory) is read at start and end: if it
grows over the run, something leaks. Exits 1 when any request failed or hung, a kill was never
recovered from, or a request was still in flight at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from corpus import build_corpus
from harness import (
    MIB,
    REPO,
    Calibration,
    calibrate,
    child_env,
    cpu_model,
    ram_gib,
    run_main,
    running_server,
    serve_argv,
    steady_tree_rss,
    version,
    vllm_processes,
    vllm_version,
    write_docs,
)
from local_llm.placement.probe import process_tree_rss

DOCS_START = "<!-- benchmarks/soak.py:start -->"
DOCS_END = "<!-- benchmarks/soak.py:end -->"
DATA_DIR = REPO / ".bench" / "soak-data"
CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# A request that began this long before a kill may still have been handed to the engine that died.
CUT_GRACE_S = 5.0
FAILED_ENGINE = "engine_failed"
PROMPTS = (
    "Explain retrieval-augmented generation to a new engineer.",
    "Write a short story about a lighthouse keeper.",
    "请用三句话介绍一下向量数据库。",
    "List five tips for writing clean Python code.",
)
# The longest Retry-After a client honours before its next request.
MAX_RETRY_AFTER_S = 10.0
# Inputs of a request that is dropped mid-embedding: enough that the server is still computing
# when the client goes away.
DROPPED_INPUTS = 512


class Kind(str, Enum):
    CHAT = "chat streams"
    EMBEDDING = "embeddings"
    RERANK = "rerank"


class Verdict(str, Enum):
    ANSWERED = "answered"
    CUT = "cut by a fault"
    DROPPED = "dropped"
    FAILED = "failed"
    HUNG = "hung"


@dataclass(frozen=True)
class Answer:
    """What a request got: answered or not, an error's code and message, and the Retry-After asked."""

    answered: bool
    code: str | None = None
    detail: str = ""
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """One request: what it was, when it ran, and what it got (``code``: an error's code, if any)."""

    kind: Kind
    started: float
    ended: float
    answered: bool
    code: str | None = None
    detail: str = ""
    dropped: bool = False
    hung: bool = False
    retry_after_s: float = 0.0


@dataclass
class Fault:
    """One fault time: the engine process killed (if one ran), and the clients dropped."""

    at: float
    killed_pid: int | None = None
    killed_at: float | None = None
    streams_flowing: int = 0

    @property
    def killed(self) -> bool:
        return self.killed_at is not None


@dataclass
class Snapshot:
    """The process tree's RSS and the server's own footprint, as /admin/memory reports it."""

    tree_bytes: int
    overhead_bytes: int


@dataclass
class Run:
    """Everything the load, the faults and the samplers recorded."""

    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    flowing: int = 0  # chat streams that have begun and not ended
    last_began: float = 0.0  # when the newest of them had its first token (monotonic)
    peak_tree_bytes: int = 0
    ledger_peak_bytes: int = 0
    ledger_over_budget: int = 0


@dataclass(frozen=True)
class Models:
    chat: str
    embedding: str
    rerank: str


# --- the requests ----------------------------------------------------------------------------------
def judge(outcome: Outcome, kills: Sequence[float]) -> Verdict:
    """Which column of the table a request counts in (the module's docstring defines them)."""
    if outcome.dropped:
        return Verdict.DROPPED
    if outcome.hung:
        return Verdict.HUNG
    if outcome.answered:
        return Verdict.ANSWERED
    near_a_kill = any(outcome.started - CUT_GRACE_S <= kill <= outcome.ended for kill in kills)
    if outcome.kind is Kind.CHAT and outcome.code == FAILED_ENGINE and near_a_kill:
        return Verdict.CUT
    return Verdict.FAILED


def refused(response: httpx.Response, payload: bytes) -> Answer:
    """A non-200 answer: its OpenAI error's code and message (or the body), and its Retry-After."""
    code, message = None, payload[:300].decode(errors="replace")
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        error = json.loads(payload)["error"]
        code, message = error.get("code"), str(error.get("message", ""))[:300]
    retry_after = 0.0
    with contextlib.suppress(ValueError):
        retry_after = float(response.headers.get("retry-after", 0))
    return Answer(False, code, f"HTTP {response.status_code}: {message}", retry_after)


async def stream_chat(
    client: httpx.AsyncClient, body: dict[str, Any], on_first_token: Callable[[], None]
) -> Answer:
    """One streamed chat request. ``on_first_token`` runs once the first content token is in, which
    is when a drop or a kill lands mid-stream."""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return refused(response, await response.aread())
        tokens, error, done = 0, None, False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if done:
                return Answer(False, None, "an event after data: [DONE]")
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]
            elif any(choice["delta"].get("content") for choice in event.get("choices", ())):
                tokens += 1
                if tokens == 1:
                    on_first_token()
        if not done:
            return Answer(False, None, f"the stream ended without data: [DONE] after {tokens} tokens")
        if error is not None:
            return Answer(
                False, error.get("code"), f"error event after {tokens} tokens: {error.get('message')}"
            )
        if not tokens:
            return Answer(False, None, "no tokens streamed")
        return Answer(True)


async def post_checked(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], results_key: str, expected: int
) -> Answer:
    """A JSON request whose answer must hold ``expected`` items under ``results_key``."""
    response = await client.post(path, json=body)
    if response.status_code != 200:
        return refused(response, response.content)
    got = len(response.json()[results_key])
    return Answer(True) if got == expected else Answer(False, None, f"{got} results for {expected} inputs")


@dataclass
class Load:
    """The clients' side: what they send and to whom, and how long a request may take."""

    base_url: str
    models: Models
    texts: list[str]
    chat_tokens: int
    hang_timeout_s: float
    run: Run
    # Set once the last fault has been injected: the load goes on until then.
    faults_done: asyncio.Event = field(default_factory=asyncio.Event)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self.hang_timeout_s)

    def chat_body(self, turn: int) -> dict[str, Any]:
        return {
            "model": self.models.chat,
            "messages": [{"role": "user", "content": PROMPTS[turn % len(PROMPTS)]}],
            "max_tokens": self.chat_tokens,
            "temperature": 0.7,
            "ignore_eos": True,
            "stream": True,
        }

    def texts_for(self, turn: int, count: int) -> list[str]:
        start = (turn * count) % len(self.texts)
        return [self.texts[(start + i) % len(self.texts)] for i in range(count)]

    async def timed(self, kind: Kind, request: Awaitable[Answer]) -> Outcome:
        """Run one request under the hang timeout and record what it got."""
        started = time.monotonic()
        try:
            got = await asyncio.wait_for(request, self.hang_timeout_s)
        except asyncio.TimeoutError:
            outcome = Outcome(kind, started, time.monotonic(), False, hung=True, detail="no answer in time")
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            outcome = Outcome(kind, started, time.monotonic(), False, detail=f"{type(exc).__name__}: {exc}")
        else:
            ended = time.monotonic()
            outcome = Outcome(
                kind, started, ended, got.answered, got.code, got.detail, retry_after_s=got.retry_after_s
            )
        self.run.outcomes.append(outcome)
        return outcome

    async def chat(self, client: httpx.AsyncClient, turn: int) -> Outcome:
        flowing = False

        def began() -> None:
            nonlocal flowing
            flowing = True
            self.run.flowing += 1
            self.run.last_began = time.monotonic()

        try:
            return await self.timed(Kind.CHAT, stream_chat(client, self.chat_body(turn), began))
        finally:
            if flowing:
                self.run.flowing -= 1

    async def embed(self, client: httpx.AsyncClient, turn: int) -> Outcome:
        body = {"model": self.models.embedding, "input": self.texts_for(turn, 8)}
        return await self.timed(Kind.EMBEDDING, post_checked(client, "/v1/embeddings", body, "data", 8))

    async def rerank(self, client: httpx.AsyncClient, turn: int) -> Outcome:
        query, *documents = self.texts_for(turn, 9)
        body = {"model": self.models.rerank, "query": query, "documents": documents}
        return await self.timed(Kind.RERANK, post_checked(client, "/v1/rerank", body, "results", 8))

    async def keep_sending(
        self, send: Callable[[httpx.AsyncClient, int], Awaitable[Outcome]], until: float
    ) -> None:
        """One client: a request, then the next, until ``until`` and the last fault are past; after a
        refusal with Retry-After it waits that long (at most MAX_RETRY_AFTER_S) first, as the OpenAI
        SDK does, so that a refusal counts once and not as many times as a loop can ask again."""
        async with self.client() as client:
            turn = 0
            while time.monotonic() < until or not self.faults_done.is_set():
                outcome = await send(client, turn)
                turn += 1
                if outcome.retry_after_s:
                    await asyncio.sleep(min(outcome.retry_after_s, MAX_RETRY_AFTER_S))

    # --- clients that go away ----------------------------------------------------------------------
    async def drop_mid_stream(self, turn: int, patience_s: float) -> None:
        """Open a chat stream and close the socket once its first token is in (or after
        ``patience_s`` without one: the client gives up while its request waits)."""
        began = asyncio.Event()
        started = time.monotonic()
        async with self.client() as client:
            request = asyncio.ensure_future(stream_chat(client, self.chat_body(turn), began.set))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(began.wait(), patience_s)
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
        detail = "closed mid-stream" if began.is_set() else "closed while waiting for a first token"
        self.run.outcomes.append(
            Outcome(Kind.CHAT, started, time.monotonic(), False, dropped=True, detail=detail)
        )

    async def drop_mid_embedding(self, turn: int, after_s: float) -> None:
        """Send a large embedding request and close the socket ``after_s`` later."""
        started = time.monotonic()
        body = {"model": self.models.embedding, "input": self.texts_for(turn, DROPPED_INPUTS)}
        async with self.client() as client:
            request = asyncio.ensure_future(client.post("/v1/embeddings", json=body))
            done, _ = await asyncio.wait({request}, timeout=after_s)
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
        detail = "answered before it could be dropped" if done else "closed mid-embedding"
        self.run.outcomes.append(
            Outcome(Kind.EMBEDDING, started, time.monotonic(), False, dropped=True, detail=detail)
        )


# --- faults ----------------------------------------------------------------------------------------
def engine_core_pid(server_pid: int) -> int | None:
    """The pid of vLLM's engine core process under the server, if one runs."""
    cores = [p for p in vllm_processes(server_pid) if p.name().startswith("VLLM::EngineCore")]
    return cores[0].pid if cores else None


async def chat_model_loaded(load: Load, client: httpx.AsyncClient) -> bool:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        card = (await client.get(f"/v1/models/{load.models.chat}")).json()
        return bool(card["state"] == "loaded")
    return False


# How recently a stream must have begun for a kill to be sure of cutting it (answers of hundreds of tokens).
FRESH_STREAM_S = 0.5


async def engine_to_kill(load: Load, server_pid: int, flowing_within: float, until: float) -> int | None:
    """The engine core's pid once a chat stream has just begun on it, if one does within
    ``flowing_within`` seconds, else as soon as the chat model is loaded; None when it has not been
    by ``until``. Never during a load: an engine killed while it starts is a failed load (503
    model_load_failed, then a backoff), another fault than the one measured here."""
    prefer_until = time.monotonic() + flowing_within
    async with httpx.AsyncClient(base_url=load.base_url, timeout=30) as client:
        while (now := time.monotonic()) < until:
            pid = engine_core_pid(server_pid)  # a process to poll: there is no event to await
            # A stream that began just now has most of its tokens to come: the kill cuts it, rather than
            # finding one whose last tokens are already on their way to the client.
            fresh = load.run.flowing and now - load.run.last_began < FRESH_STREAM_S
            wanted = fresh or now >= prefer_until
            if pid is not None and wanted and await chat_model_loaded(load, client):
                return pid
            await asyncio.sleep(0.05)
    return None


async def kill_engine(load: Load, server_pid: int, fault: Fault, flowing_within: float, until: float) -> None:
    """SIGKILL vLLM's engine core (see :func:`engine_to_kill` for when), as the OOM killer would."""
    run = load.run
    pid = await engine_to_kill(load, server_pid, flowing_within, until)
    if pid is None:
        return
    fault.streams_flowing = run.flowing
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        fault.killed_pid, fault.killed_at = pid, time.monotonic()
        print(f"  fault: SIGKILL to the engine core (pid {pid}), {run.flowing} stream(s) flowing", flush=True)


async def inject_faults(load: Load, server_pid: int, every_s: float, drops: int, until: float) -> None:
    """Every ``every_s`` before ``until``: ``drops`` clients go away mid-request, and the engine dies.

    A kill may wait up to two intervals for a loaded engine (the chat model is swapped out most of
    the time under this budget); the next fault is then due half an interval after it at the
    soonest, and the last one keeps the load going past ``until`` for as long as it waits
    (``load.faults_done``)."""
    turn = 0
    at = time.monotonic() + every_s
    pending: set[asyncio.Task[None]] = set()
    try:
        while at < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            fault = Fault(at)
            load.run.faults.append(fault)
            for index in range(drops):
                drop = (
                    load.drop_mid_stream(turn, every_s)
                    if index % 2 == 0
                    else load.drop_mid_embedding(turn, 0.3 + 0.2 * index)
                )
                pending.add(asyncio.ensure_future(drop))
                turn += 1
            await kill_engine(load, server_pid, fault, every_s / 2, at + 2 * every_s)
            at = max(at + every_s, time.monotonic() + every_s / 2)
    finally:
        load.faults_done.set()
    await asyncio.gather(*pending)


# --- memory ----------------------------------------------------------------------------------------
async def sample_memory(base_url: str, server_pid: int, run: Run, stop: asyncio.Event) -> None:
    """The tree's RSS twice a second (its peak), and the ledger against its budget every 2 s."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        ticks = 0
        while not stop.is_set():
            rss = await asyncio.to_thread(process_tree_rss, server_pid)
            run.peak_tree_bytes = max(run.peak_tree_bytes, rss)
            if ticks % 4 == 0:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    ram = (await client.get("/admin/memory")).json()["ram"]
                    run.ledger_peak_bytes = max(run.ledger_peak_bytes, ram["reserved_bytes"])
                    run.ledger_over_budget += ram["reserved_bytes"] > ram["budget_bytes"]
            ticks += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def snapshot(client: httpx.AsyncClient, server_pid: int) -> Snapshot:
    tree = await asyncio.to_thread(steady_tree_rss, server_pid)
    overhead = int((await client.get("/admin/memory")).json()["server_overhead_bytes"])
    return Snapshot(tree, overhead)


async def visit_each(load: Load) -> list[Outcome]:
    """One request to each model in turn (chat, embedding, rerank), as the start and the end do."""
    async with load.client() as client:
        return [await load.chat(client, 0), await load.embed(client, 0), await load.rerank(client, 0)]


async def in_flight_after(client: httpx.AsyncClient, timeout_s: float) -> dict[str, int]:
    """Requests each model still counts in flight once the load has ended (after up to ``timeout_s``
    for the last ones to finish); empty when none."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = {
            c["id"]: c["in_flight"] for c in (await client.get("/v1/models")).json()["data"] if c["in_flight"]
        }
        if not held or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.5)


@dataclass
class Result:
    run: Run
    start: Snapshot
    end: Snapshot
    left_in_flight: dict[str, int]
    seconds: float


async def soak(base_url: str, server_pid: int, models: Models, args: argparse.Namespace) -> Result:
    run = Run()
    load = Load(base_url, models, build_corpus(1024), args.chat_tokens, args.hang_timeout_s, run)
    print("  warm-up: one request to each model", flush=True)
    first = await visit_each(load)
    if not all(o.answered for o in first):
        raise RuntimeError(f"the warm-up failed: {[o.detail for o in first if not o.answered]}")
    run.outcomes.clear()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        start = await snapshot(client, server_pid)
        print(
            f"  start: tree {start.tree_bytes / MIB:,.0f} MiB, server {start.overhead_bytes / MIB:,.0f} MiB",
            flush=True,
        )
        stop_sampling = asyncio.Event()
        sampler = asyncio.ensure_future(sample_memory(base_url, server_pid, run, stop_sampling))
        began = time.monotonic()
        until = began + args.duration_s
        clients = (
            [load.keep_sending(load.chat, until) for _ in range(args.chat_clients)]
            + [load.keep_sending(load.embed, until) for _ in range(args.embedding_clients)]
            + [load.keep_sending(load.rerank, until) for _ in range(args.rerank_clients)]
        )
        print(f"  load: {len(clients)} clients for {args.duration_s:.0f} s", flush=True)
        await asyncio.gather(*clients, inject_faults(load, server_pid, args.fault_every_s, args.drops, until))
        seconds = time.monotonic() - began
        left = await in_flight_after(client, 30)
        await visit_each(load)  # counted: an answer here can be the recovery from the last kill
        end = await snapshot(client, server_pid)
        stop_sampling.set()
        await sampler
    return Result(run, start, end, left, seconds)


# --- the budget ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetChoice:
    bytes: int
    why: str


def choose_budget(calibration: Calibration, models: Models) -> BudgetChoice:
    """The server's own footprint + the chat model's need + half of the embedder's: either model fits
    alone, the two do not fit together (see Calibration.one_at_a_time)."""
    chat = calibration.needs[models.chat]
    embedder = calibration.needs[models.embedding]
    total = calibration.overhead_bytes + chat + embedder // 2
    why = (
        f"the server's own {calibration.overhead_bytes / MIB:,.0f} MiB + {models.chat}'s "
        f"{chat / MIB:,.0f} MiB + half of {models.embedding}'s {embedder / MIB:,.0f} MiB (it grows the "
        f"process tree by {calibration.grew[models.embedding] / MIB:,.0f} MiB)"
    )
    return BudgetChoice(total, why)


# --- report ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    table: str
    lines: list[str]
    ok: bool


def loads_in_log(log_path: Path, name: str) -> int:
    return len(re.findall(rf"loading {re.escape(name)} \(", log_path.read_text(errors="replace")))


def recoveries(run: Run) -> list[float | None]:
    """Per kill: seconds from it to the answer of the first chat request started after it."""
    answered_chats = sorted(
        (o for o in run.outcomes if o.kind is Kind.CHAT and o.answered and not o.dropped),
        key=lambda o: o.started,
    )
    found: list[float | None] = []
    for fault in run.faults:
        if fault.killed_at is None:
            continue
        after = [o.ended - fault.killed_at for o in answered_chats if o.started >= fault.killed_at]
        found.append(min(after) if after else None)
    return found


def report(
    result: Result, budget: BudgetChoice, args: argparse.Namespace, log_path: Path, models: Models
) -> Report:
    run = result.run
    kills = [f.killed_at for f in run.faults if f.killed_at is not None]
    counts: Counter[tuple[Kind, Verdict]] = Counter((o.kind, judge(o, kills)) for o in run.outcomes)
    columns = list(Verdict)
    rows = [
        "| requests | " + " | ".join(v.value for v in columns) + " | all |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for kind in Kind:
        cells = [counts[(kind, v)] for v in columns]
        rows.append(f"| {kind.value} | " + " | ".join(str(c) for c in cells) + f" | {sum(cells)} |")
    totals = [sum(counts[(k, v)] for k in Kind) for v in columns]
    rows.append("| all | " + " | ".join(str(c) for c in totals) + f" | {sum(totals)} |")

    recovered = recoveries(run)
    times = [t for t in recovered if t is not None]
    no_engine = sum(not f.killed for f in run.faults)
    drops = Counter(o.detail for o in run.outcomes if o.dropped)
    failed = totals[columns.index(Verdict.FAILED)]
    hung = totals[columns.index(Verdict.HUNG)]
    tree_budget = budget.bytes
    lines = [
        f"- Budget: LLM_AVAILABLE_RAM_GB = {tree_budget / MIB:,.0f} MiB ({budget.why}).",
        f"- Process tree RSS (the server and its children): start {result.start.tree_bytes / MIB:,.0f} MiB, "
        f"peak {run.peak_tree_bytes / MIB:,.0f} MiB ({run.peak_tree_bytes / tree_budget:.0%} of the budget), "
        f"end {result.end.tree_bytes / MIB:,.0f} MiB; the server's own (server_overhead_bytes): start "
        f"{result.start.overhead_bytes / MIB:,.0f} MiB, end {result.end.overhead_bytes / MIB:,.0f} MiB; "
        f"ledger peak {run.ledger_peak_bytes / MIB:,.0f} MiB, over its budget in {run.ledger_over_budget} "
        "readings.",
        f"- Faults every {args.fault_every_s:g} s: {len(kills)} engine kills (SIGKILL to VLLM::EngineCore), "
        f"{len(times)} recovered"
        + (
            f", the first good chat answer {statistics.median(times):.1f} s after a kill at the median, "
            f"{max(times):.1f} s at most"
            if times
            else ""
        )
        + (f"; {no_engine} found no engine running (the chat model was swapped out)" if no_engine else "")
        + ".",
        "- Clients dropped on purpose: "
        + (", ".join(f"{n} {what}" for what, n in sorted(drops.items())) or "none")
        + "; requests in flight at the end: "
        + (", ".join(f"{m} {n}" for m, n in result.left_in_flight.items()) or "none")
        + ".",
        f"- Swaps: {models.chat} loaded {loads_in_log(log_path, models.chat)} times, {models.embedding} "
        f"{loads_in_log(log_path, models.embedding)} times"
        + (
            f", {models.rerank} {loads_in_log(log_path, models.rerank)} times"
            if models.rerank not in (models.chat, models.embedding)
            else ""
        )
        + f" (the warm-up's and the end's included), in {result.seconds:.0f} s of load.",
    ]
    ok = not failed and not hung and None not in recovered and not result.left_in_flight
    return Report("\n".join(rows), lines, ok)


def failures(result: Result) -> list[str]:
    kills = [f.killed_at for f in result.run.faults if f.killed_at is not None]
    return [
        f"{o.kind.value}: {judge(o, kills).value}: {o.detail}"
        for o in result.run.outcomes
        if judge(o, kills) in (Verdict.FAILED, Verdict.HUNG)
    ]


def machine_line() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {ram_gib():.0f} GiB RAM; Python {sys.version.split()[0]}, "
        f"torch {version('torch')}, vLLM {vllm_version()}"
    )


def docs_section(command: str, models: Models, args: argparse.Namespace, made: Report) -> str:
    load = (
        f"{args.chat_clients} streaming chat clients ({args.chat_tokens} tokens an answer), "
        f"{args.embedding_clients} embedding clients (8 texts a request), {args.rerank_clients} rerank "
        f"clients (8 documents), one request after another, for {args.duration_s:.0f} s; every "
        f"{args.fault_every_s:g} s, {args.drops} clients that go away mid-request and a SIGKILL to vLLM's "
        "engine process"
    )
    return "\n".join(
        [
            DOCS_START,
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {machine_line()}.",
            f"Models: {models.chat} (chat, vLLM), {models.embedding} (embeddings), {models.rerank} (rerank).",
            f"Load: {load}.",
            f"Rerun: `{command}`",
            "",
            made.table,
            "",
            *made.lines,
            "- Counted as: answered (200, the right number of results, a stream's tokens then "
            "`data: [DONE]`); cut by a fault (a chat request in flight at a kill that ended with the "
            "error code `engine_failed`, as an error event before `data: [DONE]` or as the answer); "
            "dropped (closed by the client on purpose); failed (any other error or malformed answer); "
            f"hung (no answer in {args.hang_timeout_s:g} s). Recovered: the first chat request started "
            "after a kill and answered.",
            DOCS_END,
        ]
    )


# --- main ------------------------------------------------------------------------------------------
def server_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--data-dir", str(args.data_dir)]
    if args.models_dir:
        flags += ["--models-dir", str(args.models_dir), "--no-bundled-models"]
    if not args.compiled:
        flags.append("--vllm-enforce-eager")
    return flags + args.server_arg


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models-dir", type=Path, help="default: the bundled models")
    parser.add_argument("--chat-model", default=CHAT_MODEL)
    parser.add_argument("--embedding-model", default=EMBEDDING_MODEL)
    parser.add_argument("--rerank-model", help="default: the embedding model, as a bi-encoder")
    parser.add_argument("--duration-s", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument(
        "--fault-every-s", type=float, default=60.0, help="seconds between faults (default 60)"
    )
    parser.add_argument("--drops", type=int, default=2, help="clients that go away at each fault (default 2)")
    parser.add_argument("--chat-clients", type=int, default=2)
    parser.add_argument("--embedding-clients", type=int, default=2)
    parser.add_argument("--rerank-clients", type=int, default=1)
    parser.add_argument(
        "--chat-tokens",
        type=int,
        default=128,
        help="tokens per chat answer (default 128: seconds of streaming, for a kill or a drop to land in)",
    )
    parser.add_argument(
        "--hang-timeout-s",
        type=float,
        default=300.0,
        help="a request unanswered this long hung (default 300)",
    )
    parser.add_argument(
        "--ram-budget-gb", type=float, help="LLM_AVAILABLE_RAM_GB; default: calibrated (see above)"
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"the server's (default {DATA_DIR})")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="vLLM with torch.compile (default: eager, as reloads are many)",
    )
    parser.add_argument("--server-arg", action="append", default=[], help="another flag for local-llm serve")
    parser.add_argument("--port", type=int, default=15600)
    parser.add_argument("--write-docs", action="store_true", help="rewrite its section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.duration_s <= 0 or args.fault_every_s <= 0 or args.drops < 0:
        parser.error("--duration-s and --fault-every-s must be positive, --drops at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    models = Models(args.chat_model, args.embedding_model, args.rerank_model or args.embedding_model)
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join(
        [".venv/bin/python", "benchmarks/soak.py", *(a for a in given if a != "--write-docs")]
    )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    env = child_env()
    flags = server_flags(args)
    print(f"machine: {machine_line()}\nlogs: {logs}", flush=True)
    if args.ram_budget_gb is not None:
        budget = BudgetChoice(int(args.ram_budget_gb * 2**30), "given by --ram-budget-gb")
    else:
        print("calibration: each model once, no budget", flush=True)
        order = list(dict.fromkeys([models.chat, models.embedding, models.rerank]))
        budget = choose_budget(calibrate(flags, logs / "calibration.log", env, order), models)
    print(f"budget: LLM_AVAILABLE_RAM_GB = {budget.bytes / 2**30:.3f} GiB ({budget.why})", flush=True)

    log_path = logs / "server.log"
    argv_serve = serve_argv(args.port, *flags, "--available-ram-gb", f"{budget.bytes / 2**30:.3f}")
    with running_server("local-llm", argv_serve, args.port, log_path, env) as server:
        result = asyncio.run(soak(f"http://127.0.0.1:{args.port}", server.pid, models, args))
    made = report(result, budget, args, log_path, models)
    print("\n" + made.table + "\n\n" + "\n".join(made.lines))
    for line in failures(result)[:10]:
        print("  " + line)
    print(f"\nserver log: {log_path}")
    if args.write_docs:
        write_docs(docs_section(command, models, args, made), DOCS_START, DOCS_END)
    return 0 if made.ok else 1


if __name__ == "__main__":
    run_main(main)
