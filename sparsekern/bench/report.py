"""Tables, saved results (JSON, CSV), the plot and the comparison with an earlier run."""

from __future__ import annotations

import csv
import json
import os

from .cases import PASSES
from .optional import optional_module

CSV_FIELDS = ("pass", "impl", "kind", "dtype", "m", "n", "k", "block", "block_out", "block_in", "density",
              "block_density", "element_density", "nnz_blocks", "nnz_elements", "useful_flops", "time_ms",
              "min_ms", "max_ms", "samples", "tflops", "speedup", "ideal", "floor_ms", "roofline", "of_roofline",
              "verified", "rel_error", "tolerance",
              "status", "note")


def _fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def _table(header: list[str], lines: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(line) for line in lines)])


def _case_label(row: dict) -> list[str]:
    shape = f"{row['n']}x{row['k']}" if row["pass"] == "projection" else f"{row['m']}x{row['n']}x{row['k']}"
    return [row["dtype"], shape, row["block"], f"{row['density']:g}"]


def pass_tables(rows: list[dict]) -> str:
    """One table per pass: time, useful TFLOP/s, speedup over the baseline next to the ideal."""
    out = []
    for pass_ in PASSES:
        these = [r for r in rows if r["pass"] == pass_]
        if not these:
            continue
        projection = pass_ == "projection"
        if projection:  # no FLOPs and no ideal for a selection: time and speedup only
            header = ["dtype", "NxK", "block", "density", "impl", "ms", "x torch-topk", "check"]
        else:
            header = ["dtype", "MxNxK", "block", "density", "impl", "ms", "useful TFLOP/s", "x dense", "ideal",
                      "roofline", "% roofline", "check"]
        lines, previous, notes = [], None, {}
        for r in these:
            label = _case_label(r)
            shown = label if label != previous else [""] * len(label)
            previous = label
            if r["status"] == "ok":
                share = r.get("of_roofline")
                tail = [_fmt(r["time_ms"], ".4g"), _fmt(r["tflops"], ".3g"), _fmt(r["speedup"], ".2f"),
                        _fmt(r["ideal"], ".1f"), _fmt(r.get("roofline"), ".1f"),
                        _fmt(share and 100 * share, ".0f"), "ok"]
            else:  # n/a, WRONG or ERROR: the reason once, under the table
                mark = notes.setdefault((r["impl"], r["status"], r["note"]), len(notes) + 1)
                tail = ["-", "", "", "", "", "", f"{r['status']} [{mark}]"]
            if projection:
                tail = [tail[0], tail[2], tail[6]]
            lines.append(shown + [r["impl"], *tail])
        title = {"forward": "forward: y = x W^T",
                 "backward": "backward: dx = g W and dW = g^T x on active blocks (the forward not timed)",
                 "forward+backward": "forward+backward",
                 "projection": "projection: top-k in place (block = blocks by L2 norm, element = entries)"}[pass_]
        text = f"== {title}\n" + _table(header, lines, right={3, 5, 6} if projection else {3, 5, 6, 7, 8, 9, 10})
        text += "".join(f"\n  [{mark}] {impl} {status}: {note}" for (impl, status, note), mark in notes.items())
        out.append(text)
    return "\n\n".join(out)


def save(rows: list[dict], meta: dict, out_dir: str, stem: str) -> dict[str, str]:
    """Write ``stem.json`` (meta + rows) and ``stem.csv`` (rows; the meta as leading comment lines)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, stem + ".json"), "csv": os.path.join(out_dir, stem + ".csv")}
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        for key, value in meta.items():
            if not isinstance(value, (dict, list)):
                f.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return paths


def row_key(row: dict) -> tuple:
    return (row["pass"], row["impl"], row["dtype"], row["m"], row["n"], row["k"], row["block"],
            round(float(row["density"]), 6))


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path} is not a sparsekern-bench JSON result (no 'rows')")
    return data


def compare_tables(rows: list[dict], old: dict) -> str:
    """Row by row: the old and new median times and old/new (above 1: faster now)."""
    previous = {row_key(r): r for r in old["rows"] if r.get("time_ms")}
    out = []
    for pass_ in PASSES:
        lines = []
        for r in rows:
            if r["pass"] != pass_ or not r.get("time_ms"):
                continue
            before = previous.get(row_key(r))
            ratio = before["time_ms"] / r["time_ms"] if before else None
            base = "x torch-topk" if pass_ == "projection" else "x dense"
            lines.append(_case_label(r) + [r["impl"], _fmt(before and before["time_ms"], ".3f"),
                                          _fmt(r["time_ms"], ".3f"), _fmt(ratio, ".2f", "new"),
                                          _fmt(before and before.get("speedup"), ".2f"), _fmt(r.get("speedup"), ".2f")])
        if lines:
            # Times move with the machine's load; the speedups, measured side by side, much less.
            header = ["dtype", "NxK" if pass_ == "projection" else "MxNxK", "block", "density", "impl",
                      "old ms", "new ms", "old/new",
                      f"{base} old", f"{base} new"]
            out.append(f"== {pass_}: against the earlier run (old/new above 1: faster now)\n"
                       + _table(header, lines, right={3, 5, 6, 7, 8, 9}))
    return "\n\n".join(out) or "nothing in common with the earlier run"


def plot(rows: list[dict], meta: dict, path: str) -> str | None:
    """Speedup over dense against density, a line per implementation and block size, and the ideal;
    None when nothing was timed or matplotlib is missing (then after a note)."""
    timed = [r for r in rows if r["pass"] != "projection" and r.get("speedup") and r["kind"] != "dense"]
    if not timed:
        return None
    matplotlib = optional_module("matplotlib", "no plot")
    if matplotlib is None:
        return None
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = [p for p in PASSES if any(r["pass"] == p for r in timed)]
    dtypes = sorted({r["dtype"] for r in timed})
    shape = (timed[0]["m"], timed[0]["n"], timed[0]["k"])  # one shape per figure: the sweep's first
    fig, axes = plt.subplots(len(dtypes), len(passes), figsize=(5 * len(passes), 4 * len(dtypes)),
                             squeeze=False, sharey=True)
    impls = list(dict.fromkeys(r["impl"] for r in timed))
    blocks = list(dict.fromkeys(r["block"] for r in timed))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    for i, dtype in enumerate(dtypes):
        for j, pass_ in enumerate(passes):
            ax = axes[i][j]
            sel = [r for r in timed if r["pass"] == pass_ and r["dtype"] == dtype
                   and (r["m"], r["n"], r["k"]) == shape]
            dens = sorted({r["density"] for r in sel})  # as asked; the ideal uses the exact kept fraction
            if dens:
                ideal = {r["density"]: r["ideal"] for r in sel}
                ax.plot(dens, [ideal[d] for d in dens], color="black", lw=1, label="ideal 1/density")
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            for a, impl in enumerate(impls):
                for b, block in enumerate(blocks):
                    mine = [r for r in sel if r["impl"] == impl and r["block"] == block]
                    pts = sorted((r["density"], r["speedup"]) for r in mine)
                    if pts:  # sparsekern's backends bold, torch's sparse paths thin
                        ax.plot(*zip(*pts), color=colors[b % len(colors)], ls=styles[a % len(styles)],
                                lw=2 if mine[0]["kind"] == "sparsekern" else 1,
                                marker=markers[a % len(markers)], ms=4, label=f"{impl} {block}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            if dens:  # the measured densities as ticks, written plainly
                ax.set_xticks(dens, [f"{d:.3g}" for d in dens])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{pass_}, {dtype}, M x N x K = {shape[0]}x{shape[1]}x{shape[2]}", fontsize=9)
            ax.set_xlabel("density (fraction of weights kept)")
            if j == 0:
                ax.set_ylabel("speedup over dense F.linear")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:  # union of the legends
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    where = meta.get("gpu") or f"{meta.get('cpu')}, {meta.get('threads')} threads"
    commit = (meta.get("commit") or "unknown")[:10] + ("+dirty" if meta.get("dirty") else "")
    load = meta.get("load_average")
    busy = f"; load {load[0]:g} at start" if load and meta.get("device") == "cpu" else ""
    fig.suptitle(f"sparsekern: speedup over dense ({where}; torch {meta.get('torch')}; commit {commit}; "
                 f"{str(meta.get('date', ''))[:10]}{busy})", fontsize=10)
    rows_of_legend = -(-len(labels) // 6)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * rows_of_legend, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
