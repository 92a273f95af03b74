"""The SEED-X chat agent: describe -> ground -> reviewed edit -> recall, with progress events.

    python examples/chat_agent.py [--model mini|tiny-random|PATH] [--out DIR] [--planner scripted|seedx]

``--planner scripted`` (default): a ``ScriptedPlanner`` makes the tool calls, so the run is deterministic on
any model. ``--planner seedx``: the model plans for itself through ``ChatSeedX`` (needs a trained model; the
bundled miniature is agent-tuned for the compact tool protocol), one request per user turn. Either way the
edit waits for a (here automatic) human approval.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from seedx_agent.graphs.chat_agent import create_chat_agent, seedx_agent_options, seedx_planner
from seedx_agent.graphs.runtime import load_engine, open_memory
from seedx_agent.graphs.scripted import LAST_IMAGE_ID, ScriptedPlanner
from seedx_agent.tools import make_seedx_tools

from seedx_agent.miniature import world


def call(name: str, **args: object) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": None}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="mini", help="mini (the bundled trained miniature), tiny-random (random weights) or a folder"
    )
    parser.add_argument("--out", default=None, help="memory folder (default: a temporary one)")
    parser.add_argument(
        "--num-inference-steps", "--steps", type=int, default=None, help="diffusion steps per picture (model default)"
    )
    parser.add_argument("--planner", choices=("scripted", "seedx"), default="scripted", help="who plans the calls")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="seedx-chat-"))

    engine = load_engine(args.model)
    with open_memory(root / "memory", engine) as memory:
        # a scene of the miniature's world: a large red circle at the top left, a small green square bottom right
        scene = world.Scene(
            shapes=(world.Shape("circle", "red", "large", (0, 0)), world.Shape("square", "green", "small", (2, 2)))
        )
        picture = world.render(scene, 64)
        image_id = memory.add(picture, kind="input", namespace="user:demo", caption=world.describe(scene)).id
        planner = ScriptedPlanner(
            turns=[
                call("comprehend", image_ids=[image_id], question="describe the picture"),
                call("ground", image_id=image_id, phrase="the red circle"),
                call("edit_image", image_id=LAST_IMAGE_ID, instruction="make the red circle blue", seed=0),
                call("recall_images", query="blue circle", k=3),
                AIMessage("Done: the circle was recoloured; the new version is stored with its lineage."),
            ]
        )
        requests = [f"Describe {image_id}, find the circle, make it blue."]
        options: dict[str, object] = {}
        if args.planner == "seedx":  # the model's own planning, one request per turn (the miniature's form)
            planner = seedx_planner(engine, memory, "user:demo")
            options = seedx_agent_options(engine)
            requests = [
                f"Describe {image_id}.",
                f"Where is the red circle in {image_id}?",
                f"Edit {image_id}: make the red circle blue",
                "Find earlier images of a blue circle at the top left.",
            ]
        tools = make_seedx_tools(engine, memory, namespace="user:demo", default_steps=args.num_inference_steps)
        graph = create_chat_agent(planner, tools, checkpointer=InMemorySaver(), approve_edits=True, **options)
        config = {"configurable": {"thread_id": "demo"}}
        for request in requests:
            print("user:", request)
            graph_input: object = {"messages": [HumanMessage(request)]}
            while graph_input is not None:
                for mode, chunk in graph.stream(
                    graph_input, config, stream_mode=["custom", "updates"], durability="sync"
                ):
                    if mode == "custom":
                        print("progress:", chunk)
                state = graph.get_state(config)
                graph_input = None
                if state.interrupts:  # a human would look at the request here
                    print("review requested:", state.interrupts[0].value)
                    graph_input = Command(resume={"approved": True})
            print("assistant:", state.values["messages"][-1].content)
        final = state.values["messages"]
        edited = next(m.artifact["image_id"] for m in final if getattr(m, "name", None) == "edit_image")
        print("lineage:", " -> ".join(record.id for record in memory.lineage(edited)))
        print("memory folder:", root / "memory")


if __name__ == "__main__":
    main()
