"""Serving SEED-X over HTTP (``seedx_agent.serving``): an OpenAI-compatible API (``openai_api``, FastAPI +
uvicorn) started by ``seedx-agent serve``.

This floor sits above the tools and graphs (it uses ``ChatSeedX`` and the shared engine of
``seedx_agent.graphs.runtime``); nothing below imports it. Also here: ``ray_serve`` (the same API as Ray Serve
deployments) and ``ui`` (the Gradio page). Their commands live in ``seedx_agent.cli`` and import FastAPI, Ray or
Gradio only when they run, so ``seedx-agent --help`` stays cheap.
"""
