"""``seedx-agent serve``: the OpenAI-compatible HTTP API (``seedx_agent.serving.openai_api``) under uvicorn.

``register(subparsers)`` adds the sub-command; FastAPI and uvicorn are imported only when it runs, and cheap
arguments (model spec, memory folder, numbers) are checked before the model loads. The model loads once, at
start-up, in a worker thread; the server answers once it is loaded (``GET /health``). With ``--ray`` the same API
runs on Ray Serve (``seedx_agent.serving.ray_serve``): the LLM+ViT and the de-tokenizer as separate deployments,
each with its own replicas and GPUs per replica.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["cmd_serve", "ray_options_from_args", "register"]

API_KEY_ENV = "SEEDX_API_KEY"


def register(subparsers: Any) -> None:
    """Add ``serve`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from seedx_agent.cli.chat import MODEL_HELP, add_chroma_flag, add_steps_flag, positive_int
    from seedx_agent.serving.settings import ServeSettings

    defaults = ServeSettings()
    serve = subparsers.add_parser(
        "serve",
        help="serve an OpenAI-compatible HTTP API (chat completions, image generations and edits)",
        description="An OpenAI-compatible API: POST /v1/chat/completions (text, data-URL images, streaming, "
        "tool calls), POST /v1/images/generations and /v1/images/edits (b64_json), GET /v1/models, GET /health.",
    )
    serve.add_argument("--model", default="mini", help=MODEL_HELP)
    add_steps_flag(serve)
    serve.add_argument("--quiet", action="store_true", help="no access log lines")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--memory",
        default=defaults.memory_dir,
        help=f"image memory folder of the chat model (default {defaults.memory_dir})",
    )
    add_chroma_flag(serve)
    serve.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set, else no key)",
    )
    serve.add_argument(
        "--served-model-name", default=None, help="the model id clients send and /v1/models lists (default: --model)"
    )
    limits = serve.add_argument_group("limits (a request over one gets a 4xx error)")
    limits.add_argument(
        "--max-body-bytes", type=positive_int, default=defaults.max_body_bytes, help="request body size (413)"
    )
    limits.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=defaults.max_image_pixels,
        help=f"pixels of an input image, from its header (default {defaults.max_image_pixels})",
    )
    limits.add_argument(
        "--max-images", type=positive_int, default=defaults.max_images, help="input images per chat request"
    )
    limits.add_argument(
        "--max-tokens", type=positive_int, default=defaults.max_tokens, help="largest max_tokens a request may ask"
    )
    limits.add_argument("--max-n", type=positive_int, default=defaults.max_n, help="images per generation/edit")
    limits.add_argument(
        "--max-image-size", type=positive_int, default=defaults.max_image_size, help="largest output side (pixels)"
    )
    limits.add_argument(
        "--max-inference-steps",
        type=positive_int,
        default=defaults.max_inference_steps,
        help="largest num_inference_steps a request may ask",
    )
    limits.add_argument(
        "--workers", type=positive_int, default=defaults.workers, help="threads running model work (default 4)"
    )
    limits.add_argument(
        "--max-pending",
        type=positive_int,
        default=defaults.max_pending,
        help="requests running or waiting; more get 503 (default 64)",
    )
    scale = serve.add_argument_group("Ray Serve scale-out (--ray; pip install 'seedx-agent[ray]')")
    scale.add_argument(
        "--ray",
        action="store_true",
        help="serve the same API on Ray Serve: the LLM+ViT and the de-tokenizer as separate deployments",
    )
    scale.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join ('auto', 'ray://HEAD:10001'); default: start a local Ray instance",
    )
    scale.add_argument("--llm-replicas", type=positive_int, default=1, help="LLM+ViT replicas, 1 CPU each (default 1)")
    scale.add_argument(
        "--detok-replicas", type=positive_int, default=1, help="de-tokenizer replicas, 1 CPU each (default 1)"
    )
    scale.add_argument("--llm-gpus", type=_gpus, default=0.0, help="GPUs per LLM+ViT replica (default 0: CPU)")
    scale.add_argument("--detok-gpus", type=_gpus, default=0.0, help="GPUs per de-tokenizer replica (default 0: CPU)")
    scale.add_argument(
        "--replica-cpus",
        type=_cpus,
        default=1.0,
        help="CPUs Ray reserves per LLM or de-tokenizer replica (default 1; 0.5 fits two replicas per core)",
    )
    scale.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads per replica (default: Ray's, 1 per reserved CPU)",
    )
    scale.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=8,
        help="images per de-tokenizer call, batched across requests (default 8)",
    )
    serve.set_defaults(func=cmd_serve)


_RAY_FLAGS = {
    "ray_address": None,
    "llm_replicas": 1,
    "detok_replicas": 1,
    "llm_gpus": 0.0,
    "detok_gpus": 0.0,
    "max_batch_size": 8,
    "replica_cpus": 1.0,
    "threads": None,
}


def _cpus(text: str) -> float:
    """CPUs per replica: a number > 0 (fractions pack several replicas on a core)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of CPUs > 0, got {text!r}") from None
    if not 0 < value <= 1024:
        raise argparse.ArgumentTypeError(f"expected a number of CPUs in (0, 1024], got {text!r}")
    return value


def _gpus(text: str) -> float:
    """A GPU count per replica: a number >= 0 (fractions share a GPU between replicas)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs >= 0, got {text!r}") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs in [0, 64], got {text!r}")
    return value


def ray_options_from_args(args: argparse.Namespace) -> Any:
    """``ray_serve.RayOptions`` from the ``--ray`` flags (imports Ray)."""
    from seedx_agent.serving.ray_serve import RayOptions

    cpus = args.replica_cpus

    def actor(gpus: float) -> dict[str, Any]:
        return {"num_cpus": cpus, "num_gpus": gpus} if gpus else {"num_cpus": cpus}

    return RayOptions(
        llm_replicas=args.llm_replicas,
        detok_replicas=args.detok_replicas,
        llm_actor_options=actor(args.llm_gpus),
        detok_actor_options=actor(args.detok_gpus),
        max_batch_size=args.max_batch_size,
        torch_threads=args.threads,
    )


def settings_from_args(args: argparse.Namespace) -> Any:
    """``ServeSettings`` from parsed arguments, after the cheap checks (no model is loaded here)."""
    from seedx_agent.cli.chat import check_chroma, check_model, check_output_folder
    from seedx_agent.errors import ConfigError
    from seedx_agent.serving.settings import ServeSettings

    check_model(args.model)
    check_output_folder(args.memory, "--memory")
    check_chroma(args.chroma)  # a malformed address fails here, before any model loads
    if not getattr(args, "ray", False):
        changed = [name for name, default in _RAY_FLAGS.items() if getattr(args, name, default) != default]
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise ConfigError(f"{flags} only apply with --ray (Ray Serve scale-out)")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeSettings(
        model=args.model,
        memory_dir=args.memory,
        chroma=args.chroma,
        served_model_name=args.served_model_name,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        max_tokens=args.max_tokens,
        max_n=args.max_n,
        max_image_size=args.max_image_size,
        max_inference_steps=args.max_inference_steps,
        num_inference_steps=args.num_inference_steps,
        workers=args.workers,
        max_pending=args.max_pending,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the arguments, then run uvicorn (or Ray Serve with ``--ray``) until interrupted (the model loads at
    start-up)."""
    settings = settings_from_args(args)
    if getattr(args, "ray", False):
        try:
            from seedx_agent.serving.ray_serve import run_ray
        except ImportError as error:
            from seedx_agent.errors import DependencyMissingError

            raise DependencyMissingError(
                f"seedx-agent serve --ray needs Ray Serve ({error}); install it with: pip install 'seedx-agent[ray]'"
            ) from error
        run_ray(settings, ray_options_from_args(args), address=args.ray_address, host=args.host, port=args.port)
        return 0
    try:
        import uvicorn

        from seedx_agent.serving.openai_api import create_app
    except ImportError as error:
        from seedx_agent.errors import DependencyMissingError

        raise DependencyMissingError(
            f"seedx-agent serve needs FastAPI and uvicorn ({error}); install them with: "
            "pip install 'seedx-agent[serve]'"
        ) from error
    verbosity = getattr(args, "verbose", 0)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="debug" if verbosity >= 2 else "warning" if args.quiet else "info",
        access_log=not args.quiet,
        timeout_graceful_shutdown=10,
    )
    return 0
