"""Plot refined accuracy against the refine graph's round limit, with seconds per prompt beside it.

    seedx-agent eval mini --tasks refine --n 100 --seed 0 --json refine.json
    python scripts/plot_refine_rounds.py refine.json --png benchmarks/curves/refine_rounds.png

Reads the ``refine`` rows of an eval JSON (``refined_rN`` and ``seconds_rN`` for N in 0, 1, 2, 4) so a user can
pick the round limit: what each extra correction buys against what it costs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def rounds_table(values: dict[str, float]) -> list[tuple[int, float, float]]:
    """(round limit, refined accuracy, seconds per prompt) for every limit the eval recorded, in order."""
    limits = sorted(int(m.group(1)) for key in values if (m := re.fullmatch(r"refined_r(\d+)", key)))
    return [(r, values[f"refined_r{r}"], values[f"seconds_r{r}"]) for r in limits]


def main(argv: list[str] | None = None) -> None:
    """Write the PNG and print the table as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="JSON written by `seedx-agent eval ... --json` (needs the refine task)")
    parser.add_argument("--png", required=True, help="where to write the plot")
    args = parser.parse_args(argv)
    refine = json.loads(Path(args.report).read_text(encoding="utf-8"))["refine"]
    table = rounds_table(refine)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits = [r for r, _, _ in table]
    figure, accuracy_axis = plt.subplots(figsize=(6, 3.6))
    accuracy_axis.plot(limits, [100 * a for _, a, _ in table], "o-", color="tab:blue", label="refined (best version)")
    accuracy_axis.axhline(100 * refine["single_shot"], color="tab:blue", ls=":", label="single shot")
    accuracy_axis.set_xlabel("round limit (corrections allowed)")
    accuracy_axis.set_ylabel("all attributes right (%)", color="tab:blue")
    accuracy_axis.set_xticks(limits)
    time_axis = accuracy_axis.twinx()
    time_axis.plot(limits, [s for _, _, s in table], "s--", color="tab:red", label="seconds per prompt")
    time_axis.set_ylabel("seconds per prompt", color="tab:red")
    lines = accuracy_axis.get_legend_handles_labels()
    more = time_axis.get_legend_handles_labels()
    accuracy_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left", fontsize=8)
    figure.suptitle("refine on the miniature: held-out prompts, pixel-checked", fontsize=10)
    figure.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.png, dpi=120)
    print("| round limit | refined | seconds per prompt |\n|---:|---:|---:|")
    for limit, accuracy, seconds in table:
        print(f"| {limit} | {100 * accuracy:.0f} % | {seconds:.1f} |")


if __name__ == "__main__":
    main()
