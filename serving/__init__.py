"""Serving SEED-X over HTTP (``seedx_agent.serving``): an OpenAI-compatible API (``openai_api``, FastAPI +
uvicorn) started by ``seedx-agent serve``.

This floor sits above the tools and graphs (it uses ``ChatSeedX`` and the shared engine of
``seedx_agent.graphs.runtime``); nothing below imports it. ``cli_serve`` (the ``serve`` sub-command) imports
FastAPI and uvicorn only when the command runs, so ``seedx-agent --help`` stays cheap.
"""
