"""The per-run quantization report: what was done, what it cost in size, accuracy and time (JSON + Markdown).

The JSON (`quantize_report.json`) is the record; the Markdown (`quantize_report.md`) is the same facts as tables a
README can paste. Schema (all sizes in bytes, accuracies as fractions in [0, 1]):
  method, settings{...}, versions{...}, seconds{env, prepare, quantize, evaluate, total},
  sizes{lm_blocks|lm_other|vision|lm|total: {bytes, bf16_bytes, ratio}},
  accuracy{examples, data, bf16, int4, delta_points, answer_agreement} (null when no held-out data was given),
  model, output

Run as: written by `vlmgate quantize`; `python -m vlmgate.quantize.report REPORT.json` re-renders the Markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

JSON_NAME = "quantize_report.json"
MD_NAME = "quantize_report.md"
_PART_LABELS = {
    "lm_blocks": "LM transformer blocks (quantized)",
    "lm_other": "LM embeddings + lm_head + norm (kept)",
    "lm": "language model, all",
    "vision": "vision tower + merger (kept)",
    "total": "whole checkpoint",
}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def to_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"## INT4 W4A16 ({report['method'].upper()}) of `{Path(report['model']).name}`",
        "",
        f"Settings: group size {s['group_size']}, {'symmetric' if s['symmetric'] else 'asymmetric'}, "
        f"{s['calibration_samples']} calibration samples, ignore {', '.join(s['ignore'])}; "
        f"device {s['device']}; llm-compressor {report['versions'].get('llmcompressor', '?')}.",
        "",
        "| weights | bf16 | INT4 checkpoint | ratio |",
        "|---|---|---|---|",
    ]
    for part, label in _PART_LABELS.items():
        size = report["sizes"][part]
        lines.append(f"| {label} | {_mb(size['bf16_bytes'])} | {_mb(size['bytes'])} | {size['ratio']:.1%} |")
    acc = report.get("accuracy")
    lines.append("")
    if acc:
        lines += [
            f"Held-out exact match on {acc['examples']} examples (`{Path(acc['data']).name}`), greedy decoding:",
            "",
            "| model | accuracy |",
            "|---|---|",
            f"| bf16 | {acc['bf16']:.1%} |",
            f"| INT4 {report['method'].upper()} | {acc['int4']:.1%} ({acc['delta_points']:+.1f} points) |",
            "",
            f"Same answer as bf16 on {acc['answer_agreement']:.1%} of the examples.",
        ]
    else:
        lines.append("Accuracy: not measured (no held-out data given; pass --heldout DATA.jsonl).")
    t = report["seconds"]
    lines += [
        "",
        f"Time: quantize {t['quantize']:.1f} s, evaluate {t['evaluate']:.1f} s, total {t['total']:.1f} s "
        f"(environment set-up {t['env']:.1f} s).",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], report_dir: str | Path) -> tuple[Path, Path]:
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(report, indent=2) + "\n")
    (out / MD_NAME).write_text(to_markdown(report))
    return out / JSON_NAME, out / MD_NAME


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vlmgate.quantize.report REPORT.json", file=sys.stderr)
        return 2
    print(to_markdown(json.loads(Path(args[0]).read_text())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
