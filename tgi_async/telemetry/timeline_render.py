"""Draw a `Timeline`: a self-contained HTML page (inline SVG, hover for details), an SVG, or a PNG
(matplotlib, a main dependency, imported only for PNG)."""

from __future__ import annotations

import html
from pathlib import Path

from tgi_async.telemetry.timeline import Lane, Timeline

COLORS = {
    "queued": "#c7c7c7",
    "prefilling": "#f4b183",
    "decoding": "#9dc3e6",
    "stall": "#e03131",
    "prefill": "#e8590c",
    "decode": "#1c7ed6",
    "mixed": "#9c36b5",
    "filter": "#2b8a3e",
}
LEGEND = (
    ("queued", "queued"),
    ("prefilling", "prefilling (admitted, no token yet)"),
    ("decoding", "decoding"),
    ("stall", "stall (gap between tokens >> usual)"),
    ("prefill", "shard: prefill"),
    ("decode", "shard: decode"),
    ("mixed", "shard: decode + prompt chunk"),
    ("filter", "shard: filter / clear"),
)
LABEL_W, PLOT_W, LANE_H, TOP = 190, 1200, 16, 40
MAX_REQUEST_LANES = 400


class PngUnavailableError(RuntimeError):
    """PNG output asked for where matplotlib is missing (an install that skipped dependencies)."""


def render(timeline: Timeline, path: str | Path) -> None:
    """Write `timeline` to `path`; the extension picks the format (.html, .svg, .png)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        render_png(timeline, path)
    elif suffix == ".svg":
        path.write_text(render_svg(timeline))
    else:
        path.write_text(render_html(timeline))


def _lanes(timeline: Timeline) -> list[Lane]:
    return timeline.shard_lanes + timeline.request_lanes[:MAX_REQUEST_LANES]


def render_svg(timeline: Timeline) -> str:
    lanes = _lanes(timeline)
    span = max(1, timeline.end_ns - timeline.start_ns)
    height = TOP + LANE_H * (len(lanes) + 1) + 10

    def x(t: int) -> float:
        return LABEL_W + (t - timeline.start_ns) / span * PLOT_W

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_W + PLOT_W + 20}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for i in range(11):  # time axis
        t = timeline.start_ns + span * i // 10
        out.append(
            f'<line x1="{x(t):.1f}" y1="{TOP - 6}" x2="{x(t):.1f}" y2="{height - 10}" stroke="#e9ecef"/>'
        )
        ms = (t - timeline.start_ns) / 1e6
        out.append(f'<text x="{x(t):.1f}" y="{TOP - 10}" text-anchor="middle">{ms:.0f} ms</text>')
    for row, lane in enumerate(lanes):
        y = TOP + row * LANE_H
        if row == len(timeline.shard_lanes):
            out.append(f'<line x1="0" y1="{y - 1}" x2="{LABEL_W + PLOT_W}" y2="{y - 1}" stroke="#868e96"/>')
        out.append(f'<text x="4" y="{y + LANE_H - 4}">{html.escape(lane.name)}</text>')
        for seg in lane.segments:
            x0, x1 = x(seg.start_ns), x(seg.end_ns)
            inset = 4 if seg.kind == "stall" else 1
            out.append(
                f'<rect x="{x0:.2f}" y="{y + inset}" width="{max(x1 - x0, 0.6):.2f}" '
                f'height="{LANE_H - 2 * inset}" '
                f'fill="{COLORS.get(seg.kind, "#000")}"><title>{html.escape(seg.label)}</title></rect>'
            )
        for t in lane.ticks:
            out.append(
                f'<line x1="{x(t):.2f}" y1="{y + 2}" x2="{x(t):.2f}" y2="{y + LANE_H - 2}" '
                'stroke="#1d3557" stroke-width="0.6"/>'
            )
    out.append("</svg>")
    return "\n".join(out)


def render_html(timeline: Timeline) -> str:
    duration = (timeline.end_ns - timeline.start_ns) / 1e6
    requests = timeline.request_lanes
    legend = " ".join(
        f'<span><i style="background:{COLORS[k]}"></i>{html.escape(text)}</span>' for k, text in LEGEND
    )
    rows = "\n".join(
        f"<tr><td>{html.escape(', '.join(s.requests))}</td>"
        f"<td>{(s.start_ns - timeline.start_ns) / 1e6:.1f}</td>"
        f"<td>{(s.end_ns - s.start_ns) / 1e6:.1f}</td><td>{html.escape(s.busy_with)}</td></tr>"
        for s in timeline.stalls[:50]
    )
    clipped = (
        f"<p>Showing the first {MAX_REQUEST_LANES} of {len(requests)} requests.</p>"
        if len(requests) > MAX_REQUEST_LANES
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tgi-async timeline</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
.legend span {{ margin-right: 14px; white-space: nowrap; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }}
table {{ border-collapse: collapse; margin-top: 12px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; }}
</style></head><body>
<h2>tgi-async timeline</h2>
<p>{duration:.1f} ms, {len(timeline.shard_lanes)} shard lane(s), {len(requests)} request(s),
{len(timeline.stalls)} stall(s). Hover a bar for details; ticks on a request mark its tokens.</p>
<div class="legend">{legend}</div>
{clipped}
{render_svg(timeline)}
<h3>Longest stalls</h3>
<table><tr><th>requests held up</th><th>at (ms)</th><th>stalled (ms)</th><th>the shards meanwhile</th></tr>
{rows}
</table>
</body></html>
"""


def render_png(timeline: Timeline, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise PngUnavailableError(
            "PNG output needs matplotlib (pip install matplotlib); use .html or .svg"
        ) from None
    lanes = _lanes(timeline)
    fig, ax = plt.subplots(figsize=(16, max(3.0, 0.22 * len(lanes) + 1.5)), dpi=100)
    for row, lane in enumerate(lanes):
        for kind in COLORS:
            bars = [
                ((s.start_ns - timeline.start_ns) / 1e6, (s.end_ns - s.start_ns) / 1e6)
                for s in lane.segments
                if s.kind == kind
            ]
            if bars:
                inset = 0.25 if kind == "stall" else 0.05
                ax.broken_barh(bars, (row + inset, 1 - 2 * inset), facecolors=COLORS[kind])
        if lane.ticks:
            ticks = [(t - timeline.start_ns) / 1e6 for t in lane.ticks]
            ax.vlines(ticks, row + 0.15, row + 0.85, colors="#1d3557", linewidth=0.4)
    ax.set_yticks([i + 0.5 for i in range(len(lanes))], [lane.name for lane in lanes], fontsize=7)
    ax.set_ylim(len(lanes), 0)
    ax.set_xlabel("ms")
    ax.axhline(len(timeline.shard_lanes), color="#868e96", linewidth=0.8)
    ax.legend(
        handles=[Patch(color=COLORS[k], label=t) for k, t in LEGEND],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=5,
        fontsize=7,
        frameon=False,
    )
    ax.set_title(
        f"tgi-async timeline: {len(timeline.request_lanes)} requests, {len(timeline.stalls)} stalls",
        fontsize=9,
        pad=30,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
