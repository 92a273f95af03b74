"""The SEED-X chat agent on a scripted planner: describe -> ground -> reviewed edit -> recall, with progress events.

    python examples/chat_agent.py [--model tiny-random|mini|PATH] [--out DIR]

A ``ScriptedPlanner`` stands in for the planner so the run is deterministic; swap in ``ChatSeedX`` or any chat
model with ``bind_tools`` for a live agent. The edit waits for a (here automatic) human approval.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from PIL import Image, ImageDraw
from seedx_agent.graphs.chat_agent import create_chat_agent
from seedx_agent.graphs.runtime import load_engine, open_memory
from seedx_agent.graphs.scripted import LAST_IMAGE_ID, ScriptedPlanner
from seedx_agent.tools import make_seedx_tools


def call(name: str, **args: object) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": None}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random", help="mini | tiny-random | checkpoint folder")
    parser.add_argument("--out", default=None, help="memory folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=2, help="diffusion steps")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="seedx-chat-"))

    engine = load_engine(args.model)
    with open_memory(root / "memory", engine) as memory:
        scene = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(scene).ellipse((4, 4, 24, 24), fill=(200, 20, 20))
        image_id = memory.add(scene, kind="input", namespace="user:demo", caption="a red circle at the top left").id
        planner = ScriptedPlanner(
            turns=[
                call("comprehend", image_ids=[image_id], question="describe the picture"),
                call("ground", image_id=image_id, phrase="the red circle"),
                call("edit_image", image_id=LAST_IMAGE_ID, instruction="make the red circle blue", seed=0),
                call("recall_images", query="blue circle", k=3),
                AIMessage("Done: the circle was recoloured; the new version is stored with its lineage."),
            ]
        )
        tools = make_seedx_tools(engine, memory, namespace="user:demo", default_steps=args.steps)
        graph = create_chat_agent(planner, tools, checkpointer=InMemorySaver(), approve_edits=True)
        config = {"configurable": {"thread_id": "demo"}}
        graph_input: object = {"messages": [HumanMessage(f"Describe {image_id}, find the circle, make it blue.")]}
        while graph_input is not None:
            for mode, chunk in graph.stream(graph_input, config, stream_mode=["custom", "updates"], durability="sync"):
                if mode == "custom":
                    print("progress:", chunk)
            state = graph.get_state(config)
            graph_input = None
            if state.interrupts:  # a human would look at the request here
                print("review requested:", state.interrupts[0].value)
                graph_input = Command(resume={"approved": True})
        final = state.values["messages"]
        edited = next(m.artifact["image_id"] for m in final if getattr(m, "name", None) == "edit_image")
        print("assistant:", final[-1].content)
        print("lineage:", " -> ".join(record.id for record in memory.lineage(edited)))
        print("memory folder:", root / "memory")


if __name__ == "__main__":
    main()
