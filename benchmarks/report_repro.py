"""The sections of docs/benchmarks.md about the method's claims: data acceptance (issues 16, 33) and the reproduction
with controls (issues 17, 33), with their figures, for each bench config (configs/reproduce.yaml; the motion study's
configs/reproduce_motion.yaml). Called by benchmarks/report.py."""
from __future__ import annotations

import statistics

from benchmarks import common

METRICS = ("miou", "tc", "tc_noc", "flicker_interior", "flicker_boundary", "mvc8")
TITLES = ("mIoU", "TC", "TC-noc", "flicker interior %", "flicker boundary %", "mVC8")


def _mean_std(values: list[float]) -> str:
    if len(values) > 1:
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
    return f"{values[0]:.2f}"


def _row(name: str, rows: list[dict]) -> str:
    cells = []
    for k in METRICS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        cells.append(_mean_std(vals) if vals else "-")
    return f"| {name} | " + " | ".join(cells) + " |"


def _config(r: dict) -> str:
    """The bench config a result was measured on (its command's --config; configs/reproduce.yaml before it had one)."""
    words = r["command"].split()
    return words[words.index("--config") + 1] if "--config" in words else "configs/reproduce.yaml"


def _suffix(r: dict) -> str:
    """'' for the reproduction, '_motion' for the motion study, '_kd' for the distillation study (file names)."""
    if r.get("study"):
        return {"reproduce": ""}.get(r["study"], "_" + r["study"])
    return common.suffix(_config(r))


def acceptance_section(r: dict) -> list[str]:
    d = r["config"]["data"]
    t = r["config"]["train"]
    motion = bool(_suffix(r))
    camera = (f" plus a camera panning {d['camera_pan']:g} px per frame and zooming up to {d['camera_zoom']:g} "
              "per frame" if motion else "")
    lines = [f"## Data acceptance{' of the motion data (issue 33)' if motion else ' (issue 16)'}: judged on the "
             "per-frame baseline alone", "",
             f"`{_config(r)}`{camera}: {d['num_videos']} clips of {d['num_frames']} frames at "
             f"{d['height']}x{d['width']}, {d['num_classes']} classes in look-alike pairs, every nuisance of "
             f"docs/data.md at its default; train frames labelled every {d['label_every']}; val and test fully "
             f"labelled. The baseline ({r['config']['student']['arch']}, cross-entropy only, {t['max_steps']} steps "
             f"of batch {t['batch_size']}, checkpoint with the best val mIoU) is scored on **{r['split']}**, seeds "
             f"{r['seeds']}. No ETC model was trained or looked at before these criteria were written into "
             "docs/data.md and judged here.", "",
             "| row | " + " | ".join(TITLES) + " |", "|---|" + "---|" * len(METRICS)]
    base = [x for x in r["runs"] if x["variant"] == "baseline"]
    lines += [_row(f"baseline, seed {x['seed']}", [x]) for x in base]
    lines.append(_row(f"**baseline, mean ± std over {len(base)} seeds**", base))
    lines += [_row(x["variant"], [x]) for x in r["runs"] if x["seed"] is None]
    lines += ["", "| criterion (docs/data.md) | value | verdict |", "|---|---|---|"]
    lines += [f"| {c['criterion']} | {c['value']:.2f} | {'holds' if c['holds'] else '**fails**'} |"
              for c in r["criteria"]]
    if "motion" in r:
        m = r["motion"]
        lines += ["", f"The loss's pairs ({m['pairs']} pairs at the train pairs' positions on the val clips, exact flow): "
                  f"flow median {m['flow_median_px']:.1f} px, 90th percentile {m['flow_p90_px']:.1f} px; labels change "
                  f"on {m['label_change_unwarped']:.1f} % of pixels without warping and "
                  f"{m['label_change_warped']:.2f} % after exact warping."]
    lines += ["", "Val mIoU of the baseline by training step (the checkpoint kept is the best of these):", ""]
    for seed, curve in r["val_curves"].items():
        lines.append(f"- seed {seed}: " + ", ".join(f"{int(s)}: {v:.1f}" for s, v in curve))
    return lines + ["", f"![val mIoU by step](figures/acceptance_val_curves{_suffix(r)}.png)", ""]


def acceptance_figure(r: dict, figures) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for seed, curve in r["val_curves"].items():
        ax.plot([s for s, _ in curve], [v for _, v in curve], "o-", label=f"baseline, seed {seed}")
    refs = {x["variant"]: x for x in r["runs"] if x["seed"] is None}
    for name, style in (("stride-8 oracle", "--"), ("colour classifier", ":")):
        if name in refs:
            ax.axhline(refs[name]["miou"], ls=style, color="gray", label=f"{name} (test)")
    ax.set_xlabel("training step")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("per-frame baseline on the accepted data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figures / f"acceptance_val_curves{_suffix(r)}.png", dpi=120)
    plt.close(fig)


def _ci(d: dict) -> str:
    return f"{d['mean']:+.2f} ± {d['ci95']:.2f}"


def sweep_section(r: dict) -> list[str]:
    """The sweep of the temporal weight and form (benchmarks/reproduce.py --sweep) on val: every trial, the choice."""
    c = r["chosen"]
    lines = ["## 5a. Sweep of the temporal weight and form, on val (issue 17)", "",
             f"Each trial fine-tunes seed 0's baseline (val mIoU {r['baseline_val_miou']:.2f}) without KD; rule: "
             f"{r['rule']}. Chosen: **{c['tc_on']}, λ = {c['tc_weight']:g}**"
             + ("" if c["within_rule"] else " (no trial met the rule: the best val mIoU)") + ".", "",
             "| form | λ | " + " | ".join(TITLES) + " |", "|---|---|" + "---|" * len(METRICS)]
    for t in r["trials"]:
        cells = " | ".join("error" if t["error"] else "-" if t.get(k) is None else f"{t[k]:.2f}" for k in METRICS)
        lines.append(f"| {t['tc_on']} | {t['tc_weight']:g} | {cells} |")
    return lines + [""]


def _paired_table(paired: dict[str, dict]) -> list[str]:
    lines = ["| difference | mIoU | TC | TC-noc | flicker interior |", "|---|---|---|---|---|"]
    return lines + [f"| {name} | " + " | ".join(_ci(d[k]) for k in METRICS[:4]) + " |" for name, d in paired.items()]


def reproduce_section(r: dict) -> list[str]:
    """Section 5 (configs/reproduce.yaml) or 6 (the motion study) from benchmarks/reproduce.py's result."""
    s = r["config"]["student"]["loss"]
    motion, kd = _suffix(r) == "_motion", _suffix(r) == "_kd"
    ledger = f"benchmarks/results/reproduce{_suffix(r)}_ledger.json"
    weights = ", ".join(f"{k} {v:g}" for k, v in r.get("kd_weights", {}).items()) or "the config's (no KD sweep yet)"
    head = (["## 7. The distillation study: a teacher with something to pass on (issue 33)", "",
             f"`{_config(r)}`'s data; the teacher ({r['config']['teacher']['arch']}, seed 0) trains on every frame of "
             "the train clips labelled (the generator gives them; the students see every 4th), on the baseline's "
             f"schedule. Seeds {r['seeds']}; every arm fine-tunes its seed's baseline for {r['finetune_steps']} "
             f"steps: λ = 0, +TL ({s['tc_on']}, {s['tc_weight']:g}), KD only and +TL+KD, with the KD weights the KD "
             f"sweep chose on val ({weights}). Scored on **test**."]
            if kd else
            ["## 6. The motion study: motion guidance with exact and estimated flow (issue 33)", "",
             f"`{_config(r)}` (the accepted data plus a moving camera, accepted on the baseline alone above). "
             f"Seeds {r['seeds']}; every student fine-tunes its seed's baseline for {r['finetune_steps']} steps with "
             f"section 5's recipe unchanged (temporal loss on {s['tc_on']} at weight {s['tc_weight']:g}, no KD); "
             "`+TL dis flow` trains on the flow OpenCV's DIS estimates (`flow.source=dis`) instead of the exact flow. "
             "Every row is scored on **test** with the exact flow. Controls: λ = 0 (the baseline trained for the same "
             "extra steps), the temporal loss with zero flow, and test-time blur of the λ = 0 control's logits."]
            if motion else
            ["## 5. Reproduction on the accepted generated video (issue 17)", "",
             f"Seeds {r['seeds']}; every student fine-tunes its seed's baseline for {r['finetune_steps']} steps with "
             f"the temporal loss on {s['tc_on']} at weight {s['tc_weight']:g} (chosen by the sweep on val, "
             "`benchmarks/results/reproduce_sweep.json`); scored on **test**. Controls: λ = 0 (the baseline trained "
             "for the same extra steps), the temporal loss with zero flow, and test-time blur of the logits. "
             f"Baseline and students: {r['config']['student']['arch']}; the teacher: "
             f"{r['config']['teacher']['arch']}, one (seed 0), on the baseline's schedule."])
    equal = {k: d for k, d in r["paired"].items() if "baseline" not in k.split(" - ")}
    unequal = {k: d for k, d in r["paired"].items() if k not in equal}
    lines = [*head, "", "**At equal steps** (these isolate the method), paired differences on test, mean ± 95 % CI "
             "half-width over seeds:", "", *_paired_table(equal), "",
             "| row | " + " | ".join(TITLES) + " |", "|---|" + "---|" * len(METRICS)]
    names = list(dict.fromkeys(x["variant"] for x in r["runs"]))
    for name in names:
        rows = [x for x in r["runs"] if x["variant"] == name]
        label = (name if rows[0]["seed"] is None else f"{name} (seed {rows[0]['seed']})" if len(rows) == 1
                 else f"{name} (mean ± std, {len(rows)} seeds)")
        lines.append(_row(label, rows))
    lines += ["", "Per seed, on test (blur: the logits of the baseline, or of the λ = 0 control where measured, blurred "
              "at test time, Gaussian σ in pixels):", "",
              "| seed | row | " + " | ".join(TITLES) + " |", "|---|---|" + "---|" * len(METRICS)]
    for seed in r["seeds"]:
        rows = [x for x in r["runs"] if x["seed"] == seed]
        rows += [{"variant": f"baseline, blur σ = {c['sigma']:g}", **c} for c in r["smoothing"].get(str(seed), [])[1:]]
        rows += [{"variant": f"λ = 0, blur σ = {c['sigma']:g}", **c}
                 for c in r.get("smoothing_lambda0", {}).get(str(seed), [])[1:]]
        lines += [f"| {seed} " + _row(x["variant"], [x]) for x in rows]
    lines += ["", "Secondary, **at unequal steps** (every student trains the fine-tune steps more than the baseline):",
              "", *_paired_table(unequal)]
    gap = {s: g for s, g in r["kd_gap_closure"].items() if g == g}
    for arm, d in r.get("gap_closure_vs_lambda0", {}).items():
        per_seed = ", ".join(f"{s}: {g:.2f}" for s, g in d["per_seed"].items())
        lines.append(f"- {arm}: gap closure (S − S_λ=0) / (T − S_λ=0) in test mIoU "
                     + (f"{_ci(d['ci'])}" if "ci" in d else "(one seed)") + f"; per seed: {per_seed or '-'}")
    if not motion and not kd:
        lines += ["", "- KD gap closure (S_KD − S_TL) / (T − S_TL) in mIoU: "
                  + (f"{statistics.fmean(gap.values()):.2f} (per seed: "
                     + ", ".join(f"{s}: {g:.2f}" for s, g in r["kd_gap_closure"].items()) + ")"
                     if gap else "undefined (no seed has +TL, +TL+KD and a teacher above +TL)")]
    else:
        lines.append("")
    for name, vals in r["tc_noc_above_smoothing_curve"].items():
        shown = ", ".join(f"{s}: " + ("outside the curve" if v is None else f"{v:+.2f}") for s, v in vals.items())
        which = "the λ = 0 control's" if r.get("smoothing_lambda0") else "the baseline's"
        lines.append(f"- {name}: TC-noc above {which} blur curve at equal mIoU, per seed: {shown or '-'}")
    if not r["complete"]:
        by_variant: dict[str, list] = {}
        for m in r["missing"]:
            by_variant.setdefault(m["variant"] + (f", {m['reason']}" if "reason" in m else ""), []).append(m["seed"])
        lines.append("- **Not complete**: no row yet for " + "; ".join(
            f"{v} (seeds {', '.join(map(str, s))})" for v, s in by_variant.items())
            + ". The statistics above are over the seeds that have both rows.")
    lines.append(f"- Rows measured at commits {', '.join(r['measured_at'])} ({ledger} keeps every row with its "
                 "commit and date); training and scoring them took "
                 f"{r['compute_s'] / 3600:.1f} h in all. Rows by CPU: " + "; ".join(
                     f"{n} on {cpu}" for cpu, n in r.get("cpus", {}).items())
                 + " (rows name their CPU since 2026-12-02 16:35).")
    for group in r.get("superseded", []):
        seeds = sorted({x["seed"] for x in group["rows"]})
        lines.append(f"- Set aside on {group['date']} ({len(group['rows'])} rows of seeds "
                     f"{', '.join(map(str, seeds))}, kept in the ledger's `superseded` list): {group['reason']}.")
    return lines + ["", f"![mIoU vs TC-noc](figures/repro_miou_tc{_suffix(r)}.png)", ""]


def reproduce_figure(r: dict, figures) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.8, 4.3))
    for key, label, colour in (("smoothing", "baseline + test-time blur", "gray"),
                               ("smoothing_lambda0", "λ = 0 control + test-time blur", "tab:purple")):
        for i, (seed, curve) in enumerate(r.get(key, {}).items()):
            ax.plot([c["miou"] for c in curve], [c["tc_noc"] for c in curve], ":", color=colour,
                    label=label if i == 0 else None)
    colours = {"baseline": "black", "+TL": "tab:blue", "+TL+KD": "tab:red", "teacher": "tab:green",
               "control: lambda=0": "tab:gray", "control: TL zero flow": "tab:orange", "+TL dis flow": "tab:cyan"}
    for name, colour in colours.items():
        pts = [x for x in r["runs"] if x["variant"] == name]
        if pts:
            ax.scatter([p["miou"] for p in pts], [p["tc_noc"] for p in pts], color=colour, s=20, label=name)
    ax.set_xlabel("test mIoU (%)")
    ax.set_ylabel("test TC-noc (%)")
    seeds = {x["seed"] for x in r["runs"] if x["seed"] is not None}
    ax.set_title(f"{len(seeds)} seeds so far, dots: one per seed" if not r.get("complete", True)
                 else f"{len(seeds)} seeds, dots: one per seed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / f"repro_miou_tc{_suffix(r)}.png", dpi=120)
    plt.close(fig)


def kd_sweep_section(r: dict) -> list[str]:
    """The distillation study's sweep of the KD weights on val (benchmarks/reproduce.py --study kd --sweep)."""
    keys = list(r["chosen"])
    lines = ["## 7a. The KD weights, swept on val (issue 33)", "",
             f"Each trial fine-tunes seed 0's baseline (val mIoU {r['baseline_val_miou']:.2f}) with the KD terms alone "
             f"from the study's teacher (val mIoU {r['teacher_val_miou']:.2f}); rule: {r['rule']}. Chosen: **"
             + ", ".join(f"{k} {v:g}" for k, v in r["chosen"].items()) + "**.", "",
             "| " + " | ".join(keys) + " | " + " | ".join(TITLES[:5]) + " |", "|---" * (len(keys) + 5) + "|"]
    for t in r["trials"]:
        cells = " | ".join("error" if t["error"] else f"{t[k]:.2f}" for k in METRICS[:5])
        lines.append("| " + " | ".join(f"{t[k]:g}" for k in keys) + f" | {cells} |")
    return lines + [""]
