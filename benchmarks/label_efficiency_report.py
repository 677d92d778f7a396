"""The label-efficiency benchmark's numbers and pictures: per-model summaries, mean ± std over seeds, the
issue's bars, the markdown table, the learning curve and the grid of test predictions.

Everything here reads the result dictionary that :class:`benchmarks.label_efficiency.Benchmark` builds, so a
table can be redrawn from ``result.json`` without training anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.reporting import write_report
from phantoms.phantom import TUMOR_PREVALENCE


def summarise_cases(cases: list[dict]) -> dict:
    """Mean per-case Dice, global tumour Dice and mean tumour Dice per tumour type of one trained model."""
    inter = sum(c["tumor_intersection"] for c in cases)
    size = sum(c["tumor_predicted"] + c["tumor_true"] for c in cases)
    per_type = {}
    for kind in TUMOR_PREVALENCE:
        values = [c["dice_tumor"] for c in cases if c["tumor_type"] == kind]
        if values:
            per_type[kind] = float(np.mean(values))
    return {"dice_tumor": float(np.mean([c["dice_tumor"] for c in cases])),
            "dice_tumor_global": 2.0 * inter / size if size else 1.0,
            "dice_liver": float(np.mean([c["dice_liver"] for c in cases])), "dice_tumor_per_type": per_type}


def _stat(values) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def aggregate(runs: list[dict]) -> dict:
    """Mean ± std over seeds of one (strategy or method, budget) cell."""
    types = sorted({k for r in runs for k in r["dice_tumor_per_type"]}, key=list(TUMOR_PREVALENCE).index)
    return {
        "seeds": [r["seed"] for r in runs],
        **{k: _stat([r[k] for r in runs]) for k in ("dice_tumor", "dice_tumor_global", "dice_liver", "train_seconds")},
        "dice_tumor_per_type": {t: _stat([r["dice_tumor_per_type"][t] for r in runs if t in r["dice_tumor_per_type"]])
                                for t in types},
        "trainable_percent_of_backbone": runs[0]["parameters"]["trainable_percent_of_backbone"],
        "runs": [r["key"] for r in runs],
    }


def type_counts(groups: list[list[str]]) -> dict[str, float]:
    """Mean count of each tumour type over groups (e.g. the scans one strategy picked, per seed)."""
    return {t: float(np.mean([g.count(t) for g in groups])) for t in TUMOR_PREVALENCE}


def paired_difference(a_runs: list[dict], b_runs: list[dict], resamples: int = 2000, seed: int = 0) -> dict:
    """Tumour Dice per case of ``a`` minus ``b``, paired by seed and test case: the mean difference, each
    seed's, and a 95% percentile bootstrap interval over test cases (a resample draws the same cases for
    every seed). ``better`` only where the interval excludes 0 from below."""
    if [r["seed"] for r in a_runs] != [r["seed"] for r in b_runs]:
        raise ValueError(f"runs are not paired by seed: {[r['seed'] for r in a_runs]} vs {[r['seed'] for r in b_runs]}")
    a = np.array([[c["dice_tumor"] for c in r["cases"]] for r in a_runs])
    b = np.array([[c["dice_tumor"] for c in r["cases"]] for r in b_runs])
    if a.shape != b.shape or [c["seed"] for c in a_runs[0]["cases"]] != [c["seed"] for c in b_runs[0]["cases"]]:
        raise ValueError("runs are not paired by test case")
    per_case = (a - b).mean(axis=0)
    draws = np.random.default_rng(seed).integers(0, len(per_case), size=(resamples, len(per_case)))
    low, high = np.percentile(per_case[draws].mean(axis=1), [2.5, 97.5])
    return {"difference": float(per_case.mean()), "per_seed": [float(d) for d in (a - b).mean(axis=1)],
            "low": float(low), "high": float(high), "better": bool(low > 0)}


BASELINES = ("random", "foreground_random", "mc_dropout", "top_uncertainty", "coreset")


PAPER_PERCENT = 94.0  # of full-data Dice at 5% labels: the SLPT paper's claim, the bar
GOAL_PERCENT = 96.0  # this project's goal
WALL_HOURS = 6.0  # the whole run on the 2-core machine, over every invocation


def bars(strategies: dict, methods: dict, full: dict, comparisons: dict | None = None) -> dict:
    """The issue's bars, computed (the markdown says which hold). ``comparisons``: TESLA minus each
    alternative, from :func:`paired_difference`; TESLA beats one only where the interval excludes 0."""
    comparisons = comparisons or {}
    def final(name):
        return strategies[name]["rounds"][-1]["dice_tumor"]["mean"] if name in strategies else None
    out = {}
    tesla, ref = final("tesla"), full["slpt_k3"]["dice_tumor"]["mean"]
    if tesla is not None:
        percent = 100.0 * tesla / ref if ref else None
        out["tesla_slpt_percent_of_full_data"] = {
            "value": percent, "bar": PAPER_PERCENT, "goal": GOAL_PERCENT,
            "holds": percent is not None and percent >= PAPER_PERCENT,
            "goal_holds": percent is not None and percent >= GOAL_PERCENT}
        out["tesla_beats"] = {n: {"tesla": tesla, "other": final(n), **comparisons[n],
                                  "holds": comparisons[n]["better"]} for n in BASELINES if n in comparisons}
    if "status_quo" in comparisons:
        out["tesla_slpt_beats_status_quo"] = {**comparisons["status_quo"], "holds": comparisons["status_quo"]["better"]}
    if {"slpt_k3", "full_finetune"} <= set(methods):
        slpt, ft = methods["slpt_k3"], methods["full_finetune"]
        out["slpt_vs_full_finetune"] = {
            "slpt": slpt["dice_tumor"]["mean"], "full_finetune": ft["dice_tumor"]["mean"],
            "trainable_percent": slpt["trainable_percent_of_backbone"],
            "holds": (slpt["dice_tumor"]["mean"] >= ft["dice_tumor"]["mean"]
                      and slpt["trainable_percent_of_backbone"] <= 6.0)}
    ablations = {"feature_aware_updater": ("slpt_k3", "plain_prompts", methods),
                 "k_greater_than_1": ("slpt_k3", "slpt_k1", methods),
                 "stage_1": ("tesla", "tesla_stage2", None), "stage_2": ("tesla", "tesla_stage1", None)}
    for name, (with_, without, table) in ablations.items():
        a = table[with_]["dice_tumor"]["mean"] if table is not None and with_ in table else final(with_)
        b = table[without]["dice_tumor"]["mean"] if table is not None and without in table else final(without)
        if a is not None and b is not None:
            out[f"ablation_{name}"] = {"with": a, "without": b, "earns_its_place": a > b}
    return out


def selection_notes(result: dict) -> list[str]:
    """What the picks themselves show: strategies whose whole budget was the same scans for every seed (their
    last rows are then the same cached trainings), strategies whose picks do not depend on the seed, and how
    much of the pool foreground-aware random can tell apart from the rest."""
    label = {name: v["label"] for name, v in result["strategies"].items()}
    picked = {name: [tuple(sorted(p)) for p in v["selected_seeds"]] for name, v in result["strategies"].items()}
    alike: dict[tuple, list[str]] = {}
    for name, sets in picked.items():
        alike.setdefault(tuple(sets), []).append(name)
    notes = [f"- {' and '.join(label[n] for n in group)} picked the same scans as each other, seed by seed: "
             "their last rows are the same trainings." for group in alike.values() if len(group) > 1]
    notes += [f"- {label[name]} picked the same scans under every seed (it draws nothing at random): its "
              "seeds differ only in training." for name, sets in picked.items()
              if len(sets) > 1 and sets.count(sets[0]) == len(sets)]
    if "foreground_random" in picked and "pool_with_liver" in result:
        n, pool = result["pool_with_liver"], result["pool_size"]
        notes.append(f"- The backbone finds a liver in {n} of the {pool} pool scans, and foreground-aware random draws "
                     "among those" + (": on this pool it is uniform random." if n == pool else "."))
    return notes


def _ms(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def _interval(d: dict) -> str:
    return f"{d['difference']:+.4f} (95% interval {d['low']:+.4f} to {d['high']:+.4f})"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _code_line(code: list[dict] | None) -> str:
    if not code:
        return ""
    names = [f"`{(c.get('commit') or '?')[:7]}`{' with uncommitted changes' if c.get('dirty') else ''}" for c in code]
    return f" Code: {', '.join(names)}."


def markdown(result: dict) -> str:
    s, quick = result["settings"], result.get("quick")
    types = list(TUMOR_PREVALENCE)
    lines = [
        "# Label-efficiency benchmark (written by `python -m benchmarks.label_efficiency`)",
        "",
        *(["**Quick mode: a pipeline check on a tiny setting; these numbers say nothing about quality.**", ""]
          if quick else []),
        (f"Pool of {result['pool_size']} phantoms (seeds {s['pool_seeds'][0]}-{s['pool_seeds'][1] - 1}), "
        f"{result['test_size']} test phantoms (seeds {s['test_seeds'][0]}-{s['test_seeds'][1] - 1}); budget "
        f"{result['budget']} scans ({100 * s['budget_fraction']:.0f}% of the pool) in {s['rounds']} rounds of up to "
        f"{result['round_size']}. Seeds {s['run_seeds']}; {s['epochs']} epochs x {s['iterations_per_epoch']} steps; "
        + ("best epoch on a fixed validation split of each labelled set" if s.get("keep", "best") == "best" else
           "trained on each whole labelled set, last epoch kept")
        + "; the test set is used for nothing else. "
        "Tumour Dice per case counts an empty prediction on a tumour-free case as 1 (LiTS). Mean ± std over seeds. "
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['device']}."
        + (f" Wall time of the run: {result['wall']['seconds'] / 3600:.2f} h over {result['wall']['invocations']} "
           f"invocation(s) (cached work is not repeated; the protocol's bar: <= {WALL_HOURS:.0f} h on 2 cores)."
           if result.get("wall") else "")
        + _code_line(result.get("wall", {}).get("code"))),
        "",
        "## Selection strategies (each followed by SLPT K=3 tuning)",
        "",
        "| strategy | labelled | tumour Dice per case | tumour global Dice | liver Dice | % of full-data SLPT |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in result["strategies"].values():
        for r in v["rounds"]:
            lines.append(f"| {v['label']} | {r['labelled']} ({r['percent_labelled']:.1f}%) | {_ms(r['dice_tumor'])} | "
                         f"{_ms(r['dice_tumor_global'])} | {_ms(r['dice_liver'])} | "
                         f"{_pct(r['percent_of_full_data_slpt'])} |")
    lines += ["", "Tumour types picked (mean count per seed over the whole budget; pool shares in the header):", "",
              "| strategy | " + " | ".join(f"{t} ({result['pool_types'][t]:.0f})" for t in types) + " |",
              "| --- |" + " --- |" * len(types)]
    for v in result["strategies"].values():
        lines.append(f"| {v['label']} | " + " | ".join(f"{v['selected_types'][t]:.1f}" for t in types) + " |")
    notes = selection_notes(result)
    lines += ["", *notes] if notes else []
    lines += ["", f"## Tuning methods on TESLA's {result['budget']} labelled scans", "",
              ("| method | trainable % of backbone | tumour Dice per case | tumour global Dice | liver Dice | "
              "% of full-data SLPT | train time (s) |"), "| --- | --- | --- | --- | --- | --- | --- |"]
    for block in (result["methods"], result["full_data"]):
        for m in block.values():
            label = m["label"] + (" — 100% of the pool" if block is result["full_data"] else "")
            lines.append(f"| {label} | {m['trainable_percent_of_backbone']:.2f} | {_ms(m['dice_tumor'])} | "
                         f"{_ms(m['dice_tumor_global'])} | {_ms(m['dice_liver'])} | "
                         f"{_pct(m['percent_of_full_data_slpt'])} | {m['train_seconds']['mean']:.0f} |")
    if result.get("status_quo"):
        m = result["status_quo"]
        lines.append(f"| {m['label']} (what MONAI Label users do today) | {m['trainable_percent_of_backbone']:.2f} | "
                     f"{_ms(m['dice_tumor'])} | {_ms(m['dice_tumor_global'])} | {_ms(m['dice_liver'])} | "
                     f"{_pct(m['percent_of_full_data_slpt'])} | {m['train_seconds']['mean']:.0f} |")
    if result.get("tesla_minus"):
        lines += ["", "## TESLA + SLPT minus each alternative at the full budget, paired by seed and test case", "",
                  "Tumour Dice per case; the interval is a 95% bootstrap over test cases. \"better\" only where it "
                  "excludes 0.", "",
                  "| alternative | per seed | mean (95% interval) | verdict |", "| --- | --- | --- | --- |"]
        for name, d in result["tesla_minus"].items():
            verdict = "TESLA better" if d["better"] else ("TESLA worse" if d["high"] < 0 else "no difference shown")
            lines.append(f"| {name} | {', '.join(f'{x:+.4f}' for x in d['per_seed'])} | {_interval(d)} | {verdict} |")
    lines += ["", "## Tumour Dice per case by tumour type (test cases per type in the header)", "",
              "| run | " + " | ".join(f"{t} ({result['test_types'][t]:.0f})" for t in types) + " |",
              "| --- |" + " --- |" * len(types)]
    rows = [(f"{v['label']} @ {v['rounds'][-1]['labelled']}", v["rounds"][-1]) for v in result["strategies"].values()]
    rows += [(f"TESLA + {m['label']}", m) for m in result["methods"].values()]
    rows += [(f"100%: {m['label']}", m) for m in result["full_data"].values()]
    for label, block in rows:
        per = block["dice_tumor_per_type"]
        lines.append(f"| {label} | " + " | ".join(f"{per[t]['mean']:.3f}" if t in per else "—" for t in types) + " |")
    lines += ["", "## Bars", ""]
    lines += bar_lines(result["bars"], quick)
    lines += ["", "Learning curve: `learning_curve.png`; predictions on test scans: `predictions.png`.", ""]
    if result.get("estimate"):
        e = result["estimate"]
        lines += [(f"Estimated cost of the full run on this machine: about {e['hours']:.1f} h "
                   f"({e['trainings']} trainings; one unit of each kind of work timed at the full settings as the "
                   "last invocation started)."), ""]
    return "\n".join(lines)


def bar_lines(b: dict, quick: bool) -> list[str]:
    if quick:
        return ["Not judged in quick mode."]

    def verdict(ok):
        return "holds" if ok else "does NOT hold"
    lines = []
    if "tesla_slpt_percent_of_full_data" in b:
        v = b["tesla_slpt_percent_of_full_data"]
        lines.append(f"- TESLA + SLPT at the budget reaches {_pct(v['value'])} of full-data SLPT tumour Dice per case "
                     f"(the paper's bar >= {v['bar']:.0f}%: {verdict(v['holds'])}; our goal >= {v['goal']:.0f}%: "
                     f"{verdict(v['goal_holds'])}).")
    if "slpt_vs_full_finetune" in b:
        v = b["slpt_vs_full_finetune"]
        lines.append(f"- SLPT {v['slpt']:.4f} vs full fine-tuning {v['full_finetune']:.4f} at the budget, with "
                     f"{v['trainable_percent']:.2f}% trainable (bar: >= and <= 6%): {verdict(v['holds'])}.")
    if "tesla_slpt_beats_status_quo" in b:
        v = b["tesla_slpt_beats_status_quo"]
        lines.append(f"- TESLA + SLPT minus full fine-tuning on random picks: {_interval(v)} (bar: the interval "
                     f"excludes 0 from below): {verdict(v['holds'])}.")
    for name, v in b.get("tesla_beats", {}).items():
        lines.append(f"- TESLA {v['tesla']:.4f} vs {name} {v['other']:.4f}, difference {_interval(v)}: "
                     f"{verdict(v['holds'])}.")
    for key, v in b.items():
        if key.startswith("ablation_"):
            lines.append(f"- ablation {key[len('ablation_'):]}: with {v['with']:.4f}, without {v['without']:.4f}: "
                         f"{'earns its place' if v['earns_its_place'] else 'does NOT earn its place'}.")
    return lines


def plot_learning_curve(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for v in result["strategies"].values():
        x = [r["percent_labelled"] for r in v["rounds"]]
        ax.errorbar(x, [r["dice_tumor"]["mean"] for r in v["rounds"]],
                    yerr=[r["dice_tumor"]["std"] for r in v["rounds"]], marker="o", capsize=3, label=v["label"])
    for (name, m), style in zip(result["full_data"].items(), ("-", "--")):
        ax.axhline(m["dice_tumor"]["mean"], color="black", linestyle=style, linewidth=1,
                   label=f"100% labelled: {m['label']}")
    ax.set_xlabel("% of the pool labelled")
    ax.set_ylabel("test tumour Dice per case (SLPT K=3)")
    ax.set_title("Label efficiency" + (" — QUICK MODE, not a result" if result.get("quick") else ""), fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_grid(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    def axial(sl) -> np.ndarray:  # backbone space is RAS: anterior up, the patient's right on the image's left
        return np.asarray(sl).T[::-1, ::-1]

    rows = result["grid"]["rows"]
    names = ["image", "ground truth", *(rows[0]["predictions"] if rows else [])]
    fig, axes = plt.subplots(max(1, len(rows)), len(names), figsize=(2.2 * len(names), 2.2 * max(1, len(rows))),
                             squeeze=False)
    labels = ListedColormap([(0, 0, 0, 0), (0.2, 0.9, 0.2, 0.45), (1.0, 0.1, 0.1, 0.8)])
    for r, row in enumerate(rows):
        image = axial(row["image"])
        maps = [None, row["truth"], *row["predictions"].values()]
        for c, (name, lab) in enumerate(zip(names, maps)):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            if lab is not None:
                ax.imshow(axial(lab), cmap=labels, vmin=0, vmax=2, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{row['seed']}\n{row['tumor_type']}", fontsize=7)
    fig.suptitle("Test predictions, seed-0 runs: liver green, tumour red"
                 + (" — QUICK MODE" if result.get("quick") else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- cost estimate -------------------------------------------------------------------------------------


def write_outputs(out: Path, result: dict) -> None:
    write_report(out, result, markdown(result))
    plot_learning_curve(result, out / "learning_curve.png")
    plot_grid(result, out / "predictions.png")
