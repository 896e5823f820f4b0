"""Settings: declared once with defaults and help, built once from DARKROOM_* variables and flags."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PINNED_COMFYUI_COMMIT = "fc0cb10bcbee6e73ed3caf34c27f7bde4559a07f"
PINNED_COMFYUI_VERSION = "0.8.0"

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_cache_dir(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "darkroom")


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Each field's metadata carries its env variable and help text."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address the facade listens on."})
    port: int = field(default=8000, metadata={"help": "Port the facade listens on."})
    workers: int = field(
        default=0,
        metadata={"help": "ComfyUI workers to run; 0 = one per visible GPU, or one on CPU."},
    )
    device: str = field(
        default="auto",
        metadata={"help": "auto (GPU if one is visible), cpu, or cuda."},
    )
    data_dir: str = field(
        default="data",
        metadata={
            "help": "Root for models, outputs, worker state, the job store and the managed ComfyUI "
            "install (<data>/comfyui/)."
        },
    )
    database_url: str = field(
        default="",
        metadata={
            "help": "PostgreSQL URL (postgresql://user:password@host/db) of a job store shared by several "
            "hosts; empty = SQLite under the data dir (one host)."
        },
    )
    storage_url: str = field(
        default="",
        metadata={
            "help": "s3://bucket/prefix: keep outputs, uploads and downloaded LoRAs in this S3 bucket, "
            "shared by several hosts; empty = files under the data dir (one host). The AWS SDK reads "
            "the endpoint, region and credentials itself (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or its config files or an instance role)."
        },
    )
    models_dir: str = field(
        default="",
        metadata={
            "help": "Model folders (diffusion_models/, text_encoders/, vae/, loras/); "
            "default <data_dir>/models."
        },
    )
    cache_dir: str = field(
        default="",
        metadata={"help": "Download cache (ComfyUI archives); default $XDG_CACHE_HOME/darkroom."},
    )
    comfyui_dir: str = field(
        default="",
        metadata={"help": "Use this existing ComfyUI install instead of the managed one."},
    )
    comfyui_commit: str = field(
        default=PINNED_COMFYUI_COMMIT,
        metadata={"help": "Upstream ComfyUI commit the managed install uses."},
    )
    worker_base_port: int = field(
        default=8188,
        metadata={"help": "First loopback port for ComfyUI workers; worker i uses base+i."},
    )
    worker_start_timeout_s: float = field(
        default=180.0,
        metadata={"help": "How long a worker may take to answer before start-up fails."},
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Wrap each diffusion model in torch.compile (inductor): faster steps on a GPU after a "
            "first run that compiles (its time is logged, as is each recompile for a new size)."
        },
    )
    fp8_matmul: str = field(
        default="auto",
        metadata={
            "help": "auto: fp8 weights are multiplied in fp8 on GPUs of compute capability >= 8.9 (held as "
            "fp8, computed in bf16 elsewhere); off: darkroom's loaders compute fp8 layers in bf16."
        },
    )
    attention: str = field(
        default="pytorch",
        metadata={
            "help": "pytorch, sage (SageAttention) or flash (FlashAttention): used when its package "
            "imports in the workers' Python; otherwise a start-up warning and PyTorch's attention."
        },
    )
    metrics_public: bool = field(
        default=False,
        metadata={"help": "Serve /metrics without a key (for a scraper on a trusted network)."},
    )
    gpu_hourly_usd: str = field(
        default="",
        metadata={
            "help": "What an hour of a worker costs you, in USD, for /usage's cost and the keys' "
            "monthly_usd budgets, stored with each usage row when written: '2.49' (any worker), "
            "'cuda=2.49,cpu=0' (per device kind), 'worker1=0.75' (per worker) or 'H100=2.49' (per part of "
            "the device's name); the worker entry wins, then the longest name part, the kind, the plain "
            "price. Empty: costs are 0."
        },
    )
    session_ttl_s: float = field(
        default=43200.0,
        metadata={"help": "How long a browser stays signed in to the editor after signing in with a key."},
    )
    run_timeout_s: float = field(
        default=1800.0,
        metadata={
            "help": "Longest a run may hold a worker; past it the run is interrupted and fails with 504 "
            "(an endpoint's mapping may set a shorter run_timeout_s, as the CPU demos do)."
        },
    )
    train_timeout_s: float = field(
        default=4 * 3600.0,
        metadata={
            "help": "run_timeout_s for the LoRA trainers (a training run holds its worker for minutes to "
            "hours); past it the run is interrupted and fails with 504."
        },
    )
    train_device_memory_gb: float = field(
        default=0.0,
        metadata={
            "help": "The device memory (GiB) a LoRA training run may plan for, when lower than the worker "
            "device's total (0: the total; on CPU the RAM); a run estimated to need more is refused "
            "with a 422 before it trains."
        },
    )
    worker_hang_timeout_s: float = field(
        default=60.0,
        metadata={
            "help": "A worker that does not answer for this long (hung, stopped) is killed and restarted."
        },
    )
    worker_restart_backoff_max_s: float = field(
        default=30.0,
        metadata={"help": "Cap on the back-off between restarts of a crashed worker."},
    )
    hf_endpoint: str = field(
        default="https://huggingface.co",
        metadata={
            "help": "Hugging Face endpoint (the hub, or an HF-compatible mirror) that `darkroom models "
            "fetch` and hf:// LoRAs download from; unset: HF_ENDPOINT, else this default."
        },
    )
    hf_token: str = field(
        default="",
        metadata={
            "help": "Token for gated Hugging Face repositories (FLUX.2 [dev] is gated); unset: HF_TOKEN, "
            "else the token `hf auth login` stored."
        },
    )
    public_url: str = field(
        default="",
        metadata={
            "help": "Base URL clients use to reach this server (for returned file URLs); "
            "default: taken from each request's Host."
        },
    )

    files_url: str = field(
        default="",
        metadata={
            "help": "Base URL of a host name of its own for user files (https://files.example.com, routed "
            "to this server by a proxy), as fal serves files from its CDN: the URLs of outputs and uploads "
            "use it, so a file can never share an origin (cookies, storage) with darkroom's pages; "
            "default: the API's own base URL."
        },
    )

    api_keys: str = field(
        default="",
        repr=False,
        metadata={
            "help": "Comma-separated API keys clients send as `Authorization: Key <key>` (or Bearer); "
            "fal's KEY_ID:KEY_SECRET form works; `<key> <user id>` names the user its webhooks are "
            "signed for. No keys: loopback only, unless open_access."
        },
    )
    api_keys_file: str = field(
        default="",
        metadata={
            "help": "File of API keys, one per line (# comments); a `sha256:<hex>` line holds a key's "
            "hash instead of the key; `<key> <user id>` names the user its webhooks are signed for."
        },
    )
    open_access: bool = field(
        default=False,
        metadata={"help": "Serve without API keys even when listening beyond loopback (refused otherwise)."},
    )
    tls_cert: str = field(
        default="",
        metadata={"help": "PEM certificate (chain) to serve https/wss directly; needs tls_key."},
    )
    tls_key: str = field(
        default="",
        metadata={"help": "PEM private key for tls_cert."},
    )
    body_max_bytes: int = field(
        default=160 * 1024 * 1024,
        metadata={
            "help": "Largest request body (JSON), checked while it streams in: room for an input of "
            "input_max_bytes sent as a base64 data: URI. Uploads have their own limit."
        },
    )
    client_timeout_s: float = field(
        default=60.0,
        metadata={
            "help": "A client whose body brings less than 64 KiB in this long gets 408 and is disconnected; "
            "one that has not finished its request headers this long after connecting is disconnected "
            "(also the idle time of a keep-alive connection)."
        },
    )
    upload_max_bytes: int = field(
        default=2 * 1024 * 1024 * 1024,
        metadata={
            "help": "Largest file a client may upload through the /storage API (SDKs send files over "
            "90-100 MB in parts; the parts together count)."
        },
    )
    input_max_bytes: int = field(
        default=100 * 1024 * 1024,
        metadata={"help": "Largest input file (image_url etc.) fetched from a URL or data: URI."},
    )
    input_max_pixels: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "Largest input image in pixels (width x height, 8192 x 8192 by default), read from its "
            "header before anything decodes it."
        },
    )
    input_max_media_s: float = field(
        default=120.0,
        metadata={
            "help": "Longest audio or video input (video_url, audio_url) in seconds: the header's claim is "
            "checked before decoding, then the decoded frames or samples."
        },
    )
    input_max_frames: int = field(
        default=3600,
        metadata={"help": "Most frames a video input (video_url) may have, counted while decoding it."},
    )
    lora_max_bytes: int = field(
        default=2 * 1024 * 1024 * 1024,
        metadata={"help": "Largest LoRA file downloaded from a URL or hf:// reference."},
    )
    input_timeout_s: float = field(
        default=60.0,
        metadata={"help": "Time limit for fetching one input URL, redirects included."},
    )
    inputs_allow_http: bool = field(
        default=False,
        metadata={"help": "Also fetch plain http:// input URLs (https:// and data: only by default)."},
    )
    outbound_allow_cidrs: str = field(
        default="",
        metadata={
            "help": "Comma-separated networks that input fetches may reach although non-public "
            "(loopback, private...); metadata addresses only if named exactly."
        },
    )

    upload_retention_s: float = field(
        default=7 * 86400.0,
        metadata={"help": "How long an uploaded file (/storage uploads) stays fetchable before deletion."},
    )
    storage_quota_bytes: int = field(
        default=0,
        metadata={
            "help": "Most bytes the outputs and uploads may hold together on local disk (with a "
            "storage_url: uploads while they arrive); past it writes fail with 507 until results expire "
            "(0: no quota)."
        },
    )
    disk_min_free_bytes: int = field(
        default=512 * 1024 * 1024,
        metadata={
            "help": "Free disk space outputs and uploads always leave (for the job store and logs); "
            "a write that would go below it fails with 507."
        },
    )
    interrupt_grace_s: float = field(
        default=30.0,
        metadata={
            "help": "How long a cancelled or timed-out prompt may run on after its interrupt (a node that "
            "never checks for one); past it the worker is restarted before it takes another request."
        },
    )
    result_retention_s: float = field(
        default=3600.0,
        metadata={
            "help": "How long a finished request's result and files stay fetchable (queue and sync runs)."
        },
    )
    queue_max_length: int = field(
        default=1000,
        metadata={"help": "Most requests waiting in the queue, all apps together; more are refused (429)."},
    )
    shutdown_grace_s: float = field(
        default=30.0,
        metadata={
            "help": "On shutdown, how long running queue requests may finish; the rest run again at "
            "the next start."
        },
    )
    host_lease_s: float = field(
        default=30.0,
        metadata={
            "help": "Fleet (DARKROOM_DATABASE_URL): a host that has not renewed its lease for this long "
            "is taken for dead, and its running requests run again on another host."
        },
    )
    previews_per_s: float = field(
        default=2.0,
        metadata={"help": "Most live preview images sent per second per request; 0 sends none."},
    )
    webhook_timeout_s: float = field(
        default=15.0,
        metadata={"help": "Time limit for one webhook delivery attempt."},
    )
    webhook_max_attempts: int = field(
        default=10,
        metadata={"help": "Webhook delivery attempts before giving up."},
    )
    webhook_backoff_base_s: float = field(
        default=10.0,
        metadata={"help": "Wait after the first failed webhook attempt; doubles after each failure."},
    )
    webhook_backoff_max_s: float = field(
        default=1800.0,
        metadata={"help": "Cap on the wait between webhook attempts."},
    )
    webhook_allow_cidrs: str = field(
        default="",
        metadata={
            "help": "Comma-separated networks webhooks may reach although non-public (loopback, "
            "private...); metadata addresses only if named exactly."
        },
    )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).resolve() if self.models_dir else self.data_path / "models"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).resolve()

    @property
    def outputs_path(self) -> Path:
        return self.data_path / "outputs"

    @property
    def uploads_path(self) -> Path:
        return self.data_path / "uploads"

    @property
    def host_name(self) -> str:
        """This host among a fleet's: its machine's name and its port (a restart keeps it)."""
        return f"{socket.gethostname()}:{self.port}"

    @property
    def published_path(self) -> Path:
        """Workflows published from the editor or the API, one folder per owner/name."""
        return self.data_path / "workflows"

    @property
    def inputs_path(self) -> Path:
        return self.data_path / "inputs"

    @property
    def jobs_db_path(self) -> Path:
        return self.data_path / "jobs.sqlite3"

    @property
    def webhook_key_path(self) -> Path:
        return self.data_path / "webhook_ed25519.key"

    @property
    def token_secret_path(self) -> Path:
        return self.data_path / "token_hmac.key"

    @property
    def managed_comfyui_path(self) -> Path:
        return self.data_path / "comfyui" / f"ComfyUI-{self.comfyui_commit}"

    @property
    def folders(self) -> tuple[Path, ...]:
        """darkroom's folders on this host (ComfyUI's, the models', the data dir), the deepest first:
        error messages name files relative to them, never where they are."""
        found = {self.managed_comfyui_path, self.models_path, self.data_path, self.cache_path}
        if self.comfyui_dir:
            found.add(Path(self.comfyui_dir).resolve())
        return tuple(sorted((p for p in found if len(p.parts) > 1), key=lambda p: len(str(p)), reverse=True))


def env_name(field_name: str) -> str:
    return f"DARKROOM_{field_name.upper()}"


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from DARKROOM_* variables, then explicit overrides (flags) on top."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(env_name(f.name))
        if raw is not None and raw != "":
            values[f.name] = _coerce(f, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not values.get("cache_dir"):
        values["cache_dir"] = _default_cache_dir(env)
    if "hf_endpoint" not in values and env.get("HF_ENDPOINT"):  # huggingface_hub's own variable
        values["hf_endpoint"] = env["HF_ENDPOINT"]
    return Settings(**values)


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, type) else str(f.type)
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (bool, "bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
    except ValueError as e:
        raise ValueError(f"{env_name(f.name)}={raw!r}: expected {kind}") from e
    return raw


def describe() -> list[tuple[str, str, str]]:
    """(env variable, default, help) for every setting: the README's table is checked against it."""
    return [(env_name(f.name), repr(f.default), f.metadata["help"]) for f in dataclasses.fields(Settings)]
