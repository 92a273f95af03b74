"""``ServeSettings``: what ``seedx-agent serve`` serves and its limits (no FastAPI import, so the CLI's parser
can read the defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """What the server serves and its limits (``seedx-agent serve`` flags)."""

    model: str = "mini"  # spec for SeedX.from_pretrained (mini, a preset, or a folder)
    # ChatSeedX's image memory: the API stores nothing in it, and its own folder keeps it from locking the one
    # ``seedx-agent chat`` uses (a memory folder is open in one process at a time).
    memory_dir: str = "~/.cache/seedx-agent/serve-memory"
    # HOST:PORT[/PREFIX] of a chroma server: the memory opens in shared mode there, one folder for every process
    # and Ray replica (None: SEEDX_CHROMA if set, else single-process, one folder per Ray replica).
    chroma: str | None = None
    served_model_name: str | None = None  # the id in /v1/models and the "model" requests name (default: model)
    api_key: str | None = None  # None: no authentication
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8  # input images per request
    max_tokens: int = 1024  # largest max_tokens a request may ask for
    max_n: int = 4  # images per generation/edit request
    max_image_size: int = 1024  # largest output side in pixels
    max_inference_steps: int = 200
    num_inference_steps: int | None = None  # default diffusion steps (None: the model's)
    workers: int = 4  # threads running model work
    max_pending: int = 64  # requests running or waiting for a worker; more get 503
    namespace: str = "api:openai"  # memory namespace of ChatSeedX

    @property
    def model_id(self) -> str:
        return self.served_model_name or str(self.model)
