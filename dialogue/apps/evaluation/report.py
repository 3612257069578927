"""The evaluation's report: `report.json` (everything) and a self-contained `report.html` (no script, no
external file: tables, and inline SVG plots of what changed, how similar the answers are, and latency
before and after). Turns rated down by users come first."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dialogue.apps.evaluation.compare import CHANGES, TurnComparison

BAR = "#3b6fd8"
OTHER = "#d8873b"


def write_report(folder: Path, result: dict[str, Any], turns: list[TurnComparison]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ordered = ordered_turns(turns)
    data = result | {"turns": [turn.model_dump(mode="json") for turn in ordered]}
    as_json = folder / "report.json"
    as_json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    as_html = folder / "report.html"
    as_html.write_text(_html(result, ordered))
    return as_json, as_html


def ordered_turns(turns: list[TurnComparison]) -> list[TurnComparison]:
    """Rated down first, then changed ones, then the rest; each group in conversation order."""
    return sorted(turns, key=lambda t: (t.rating != "down", not t.changes))


def _html(result: dict[str, Any], turns: list[TurnComparison]) -> str:
    summary = result["summary"]
    changed = [t for t in turns if t.changes]
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(name.replace('_', ' '))}</th><td>{e(_value(value))}</td></tr>"
        for name, value in summary.items()
        if name != "latency_ms"
    )
    sides = result.get("sides", {})
    side_rows = "".join(
        f"<tr><th>{e(what.replace('_', ' '))}</th>"
        f"<td>{e(', '.join(sides.get('recorded', {}).get(what, [])) or '-')}</td>"
        f"<td>{e(', '.join(sides.get('candidate', {}).get(what, [])) or '-')}</td></tr>"
        for what in ("nlu_models", "generators", "prompts", "documents")
    )
    counts = [(name, sum(1 for t in turns if name in t.changes)) for name in CHANGES]
    histogram = [0] * 10
    for turn in turns:
        histogram[min(9, int(turn.similarity * 10))] += 1
    latency = summary["latency_ms"]
    missing = latency["recorded"]["p50"] is None
    plots = (
        _bars("What changed (turns)", counts)
        + _bars("Answer similarity (turns per band)", [(f"{n / 10:.1f}", c) for n, c in enumerate(histogram)])
        + _paired(
            "Latency (ms): recorded vs candidate" + (" (not recorded by older answers)" if missing else ""),
            [
                ("p50", latency["recorded"]["p50"] or 0, latency["candidate"]["p50"] or 0),
                ("p90", latency["recorded"]["p90"] or 0, latency["candidate"]["p90"] or 0),
            ],
        )
    )
    gate = result.get("gate") or []
    gate_html = (
        "<p class='fail'>The gate fails: " + e("; ".join(gate)) + "</p>"
        if gate
        else "<p>The gate passes.</p>"
        if result.get("conditions")
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation on recorded conversations {e(str(result.get("run_id", "")))}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem; color: #1d2330; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border: 1px solid #d5d9e2; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }}
th {{ background: #f3f5f9; font-weight: 600; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1.5rem; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; margin-bottom: 0.3rem; }}
.changed {{ color: #b3261e; font-weight: 600; }} .down {{ color: #b3261e; }} .fail {{ color: #b3261e; font-weight: 600; }}
.reply {{ max-width: 28rem; white-space: pre-wrap; }}
</style></head><body>
<h1>Evaluation on recorded conversations</h1>
<p>Candidate <code>{e(str(result.get("candidate_bot", "")))}</code>, run <code>{e(str(result.get("run_id", "")))}</code>,
{summary["turns"]} turns of {summary["conversations"]} recorded conversations; {summary["changed_turns"]} changed.</p>
{gate_html}
<h2>Summary</h2><table>{rows}</table>
<h2>What each side was made of</h2>
<table><tr><th></th><th>recorded</th><th>candidate</th></tr>{side_rows}</table>
<div class="plots">{plots}</div>
<h2>Changed turns ({len(changed)}), rated down first</h2>
{_turn_table(changed)}
<details><summary>All {len(turns)} turns</summary>{_turn_table(turns)}</details>
</body></html>
"""


def _turn_table(turns: list[TurnComparison]) -> str:
    e = html.escape
    if not turns:
        return "<p>None.</p>"
    rows = []
    for t in turns:
        rating = f"<span class='down'>rated {e(t.rating)}</span>" if t.rating else ""
        judged = (
            f"<br>judge: {e(str(t.judge.get('verdict', t.judge.get('error', ''))))}"
            f"{'' if t.judge.get('supported', True) else ', unsupported'}"
            if t.judge
            else ""
        )
        rows.append(
            "<tr>"
            f"<td>{e(t.conversation)}<br>turn {t.turn_index} {rating}</td>"
            f"<td>{e(t.user_text)}</td>"
            f"<td>{e(str(t.recorded.intent))} / {e(str(t.recorded.action))}<br>{e(', '.join(t.recorded.sources))}"
            f"<div class='reply'>{e(t.recorded.reply)}</div></td>"
            f"<td>{e(str(t.candidate.intent))} / {e(str(t.candidate.action))}<br>{e(', '.join(t.candidate.sources))}"
            f"<div class='reply'>{e(t.candidate.reply)}</div></td>"
            f"<td class='changed'>{e(', '.join(t.changes)) or '-'}</td>"
            f"<td>{t.similarity:.2f}{judged}</td>"
            "</tr>"
        )
    return (
        "<table><tr><th>conversation</th><th>user</th><th>recorded</th><th>candidate</th><th>changed</th>"
        "<th>similarity</th></tr>" + "".join(rows) + "</table>"
    )


def _bars(title: str, values: Sequence[tuple[str, float]]) -> str:
    width, height, pad = 360, 180, 28
    top = max((v for _, v in values), default=0) or 1
    step = (width - pad) / max(1, len(values))
    bars = []
    for n, (label, value) in enumerate(values):
        h = (height - 2 * pad) * value / top
        x = pad + n * step
        bars.append(
            f'<rect x="{x + 2:.1f}" y="{height - pad - h:.1f}" width="{step - 4:.1f}" height="{h:.1f}" fill="{BAR}"/>'
            f'<text x="{x + step / 2:.1f}" y="{height - pad + 14}" font-size="10" text-anchor="middle">'
            f"{html.escape(label)}</text>"
            f'<text x="{x + step / 2:.1f}" y="{height - pad - h - 3:.1f}" font-size="10" text-anchor="middle">'
            f"{_value(value)}</text>"
        )
    return _figure(title, width, height, "".join(bars))


def _paired(title: str, values: list[tuple[str, float, float]]) -> str:
    width, height, pad = 360, 180, 28
    top = max((max(a, b) for _, a, b in values), default=0) or 1
    step = (width - pad) / max(1, len(values))
    parts = []
    for n, (label, before, after) in enumerate(values):
        x = pad + n * step
        for k, (value, colour) in enumerate(((before, BAR), (after, OTHER))):
            h = (height - 2 * pad) * value / top
            bx = x + 4 + k * (step / 2 - 4)
            parts.append(
                f'<rect x="{bx:.1f}" y="{height - pad - h:.1f}" width="{step / 2 - 8:.1f}" height="{h:.1f}" '
                f'fill="{colour}"/><text x="{bx + step / 4 - 4:.1f}" y="{height - pad - h - 3:.1f}" '
                f'font-size="10" text-anchor="middle">{value:.0f}</text>'
            )
        parts.append(
            f'<text x="{x + step / 2:.1f}" y="{height - pad + 14}" font-size="10" text-anchor="middle">{label}</text>'
        )
    legend = (
        f'<rect x="{width - 150}" y="4" width="10" height="10" fill="{BAR}"/><text x="{width - 136}" y="13" '
        f'font-size="10">recorded</text><rect x="{width - 80}" y="4" width="10" height="10" fill="{OTHER}"/>'
        f'<text x="{width - 66}" y="13" font-size="10">candidate</text>'
    )
    return _figure(title, width, height, "".join(parts) + legend)


def _figure(title: str, width: int, height: int, body: str) -> str:
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}"><line x1="28" y1="{height - 28}" x2="{width}" y2="{height - 28}" '
        f'stroke="#9aa3b5"/>{body}</svg></figure>'
    )


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)
