"""Write docs/benchmarks.md and its figures (docs/figures/) from benchmarks/results/*.json.

    python -m benchmarks.report          # after the benchmark scripts (make bench runs them all, then this)
"""
from __future__ import annotations

import json

from benchmarks import common, flow_encoding, report_repro, report_scale

DOC = common.REPO / "docs" / "benchmarks.md"
FIGURES = common.REPO / "docs" / "figures"
READING = common.REPO / "benchmarks" / "reading.md"  # the hand-written reading of the last full run


def _load(name: str) -> dict | None:
    path = common.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _pm(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f} (one run)"


def machine_section(results: list[dict]) -> list[str]:
    m = results[0]["machine"]
    v = m["versions"]
    lines = ["## Machine", "", f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB memory "
             f"(torch uses {m['torch_threads']} threads)", f"- GPU: {m['gpu'] or 'none'}",
             f"- Python {m['python']} on {m['os']}",
             "- " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
             "Sessions get different machines of this kind (the VM build in the OS string changes, and so can the "
             "CPU's speed): each ratio below compares runs of one script on one machine; the table says which.", "",
             "| benchmark | date | wall time | machine | command |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['date']} | {_time(r)} | {_where(r)} | `{r['command']}` |" for r in results]
    return lines + [""]


def _where(r: dict) -> str:
    """The machine a result was measured on; for one written from a ledger, the CPUs its rows name (the machine
    that wrote the file only gathered them)."""
    if r.get("cpus"):
        return "; ".join(f"{cpu} ({n} rows)" for cpu, n in r["cpus"].items())
    return f"{r['machine']['cpu']}, {r['machine']['os']}"


def _time(r: dict) -> str:
    """A result's wall time; for one written from a ledger (the reproduction), the compute its rows took."""
    if "compute_s" in r:
        return f"{r['compute_s'] / 3600:.1f} h (its ledger rows' training and scoring)"
    return f"{r['wall_s'] / 60:.1f} min"


def train_section(r: dict) -> list[str]:
    lines = ["## 1-2. Train-step overhead and the loader", "",
             "Samples/s of the same model, loss and number of steps (median of the repeats, each variant from a "
             "fresh model): a bare loop over batches already in memory, the training loop reading the webdataset "
             "shards in this process, and one Ray Train worker running the real training entry. Ratios are step "
             "times against the in-memory loop of the same run; ms/step added is what Ray Train and the loader add "
             "to every step (issue 35's target: ≤ 2 ms for the student, ≤ 7 % of a 30 ms GPU step).", "",
             "| stage | arch | steps x batch | in memory | loader | Ray Train | loader ratio (≤ 1.05) "
             "| Ray Train ratio (≤ 1.10) | ms/step added: all (loader) | Ray Train start-up + validation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        m = row["median_samples_per_s"]
        added = (f"{row['overhead_ms_per_step']:+.1f} ({row['loader_ms_per_step']:+.1f}) "
                 f"({_verdict(row['overhead_ms_per_step'] <= 2.0)})" if "overhead_ms_per_step" in row else
                 "not measured")
        lines.append(f"| {row['stage']} | {row['arch']} | {row['steps']} x {row['batch_size']} | {m['in_memory']:.1f} "
                     f"| {m['loader']:.1f} | {m['ray_train']:.1f} | {row['loader_ratio']:.3f} "
                     f"({_verdict(row['loader_ratio'] <= 1.05)}) | {row['ray_train_ratio']:.3f} "
                     f"({_verdict(row['ray_train_ratio'] <= 1.10)}) | {added} | {row['ray_fixed_s']:.1f} s |")
    profiles = [row for row in r["rows"] if row.get("profile", {}).get("worker_ms_per_step")]
    if profiles:
        parts = sorted({k for row in profiles for k in row["profile"]["worker_ms_per_step"]} - {"outside the epoch"})
        lines += ["", "Where a Ray Train step's time goes: py-spy (`--nonblocking --idle`) sampled the training "
                  "thread of one more Ray Train run of each stage, not timed; wall ms per step of the epoch in each "
                  "part of the loop, next to the in-memory loop's whole step, and the CPU ms per step that Ray's own "
                  "processes (raylet, GCS, dashboard, agents, the Train controller) took meanwhile on the same cores, "
                  "over the whole fit (its start-up included).", "",
                  "| stage | in-memory step | " + " | ".join(parts) + " | epoch (sampled) | Ray's processes, CPU |",
                  "|---|---|" + "---|" * len(parts) + "---|---|"]
        for row in profiles:
            p = row["profile"]
            lines.append(f"| {row['stage']} | {row['ms_per_step']['in_memory']:.1f} | " +
                         " | ".join(f"{p['worker_ms_per_step'].get(k, 0.0):.1f}" for k in parts) +
                         f" | {p['epoch_ms_per_step']:.1f} | {p['ray_processes_cpu_ms_per_step']:.1f} |")
    lines += ["", *_repeat_spread(r)] if any("overhead_ms_per_step" in row for row in r["rows"]) else []
    return lines + [""]


def _repeat_spread(r: dict) -> list[str]:
    """Ray Train minus the bare loop in each repeat, and how far the bare loop itself moved between repeats: the noise
    a per-step figure is read against on this machine."""
    parts = []
    for row in r["rows"]:
        ms = {k: [1000 * row["batch_size"] / v for v in vals] for k, vals in row["samples_per_s"].items()}
        added = ", ".join(f"{ray - mem:+.0f}" for ray, mem in zip(ms["ray_train"], ms["in_memory"]))
        parts.append(f"{row['stage']} {added} ms/step (the bare loop itself: "
                     f"{', '.join(f'{v:.0f}' for v in ms['in_memory'])} ms/step)")
    return [f"Repeat by repeat, Ray Train minus the bare loop: {'; '.join(parts)}. The target is read against this "
            f"spread: on {r['machine']['cores']} cores the loader decodes in the training thread (loader_workers "
            "0), Ray's processes share the cores torch uses, and a difference smaller than the spread between "
            "repeats is not resolved. The loop's own work per step is the profile's `loop` column (and `reading "
            "values`, where py-spy sampled any)."]


def _flow_rows(rows: dict) -> list[str]:
    lines = ["| run | pairs | pairs/s end to end | steady pairs/s | start-up | driver CPU / wall | worker s: read, flow, "
             "write |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        p = row["profile"]  # empty for the sequential loop: all its work is the driver's
        work = f"{p['read_s']:.1f}, {p['flow_s']:.1f}, {p['write_s']:.1f}" if p else "(all in one process)"
        driver = f"{100 * row['driver_cpu_fraction']:.0f} %" if p else "-"
        lines.append(f"| {name} | {row['pairs']} | {row['pairs_per_s']:.2f} | {row['steady_pairs_per_s']:.2f} "
                     f"| {row['startup_s']:.1f} s | {driver} | {work} |")
    return lines


def _flow_why(r: dict) -> list[str]:
    """Where the time went, from the profile: what the CPU-bound rows could and could not gain on this machine."""
    gt, pt = r["ground_truth"]["rows"], r["ptlflow"]["rows"]
    seq, one, two = pt["sequential"], pt["1 actor"], pt["2 actors"]
    w1 = gt["1 worker"]["profile"]
    per_pair = [1000 * row["profile"]["flow_s"] / row["pairs"] for row in (one, two)]
    return [f"Where the time goes ({r['machine']['cores']} cores): the sequential loop's process used "
            f"{seq['driver_cpu_fraction']:.2f} cores on average (CPU time / wall: torch's own threads), so the "
            f"stage had little idle CPU to claim from it; the flow model's time per pair was {per_pair[0]:.0f} ms "
            f"in one actor and {per_pair[1]:.0f} ms in each of two (they share the cores with the write tasks and "
            "Ray's processes). With ground-truth flow, encoding and writing the shards is "
            f"{100 * w1['write_s'] / (w1['read_s'] + w1['flow_s'] + w1['write_s']):.0f} % of the workers' time. On "
            "this machine the stage is bound by its CPUs, not by its driver (whose share is the figure above); the "
            "rows that need more cores or GPUs to show a gain are measured when a machine with them is lent."]


def flow_section(r: dict) -> list[str]:
    gt, pt = r["ground_truth"], r["ptlflow"]
    lines = ["## 3. Flow stage", "",
             "The stage on Ray Data: the driver plans the shards and writes the manifest; Ray workers read, estimate, "
             "encode and write. End to end = the stage's compute phase (actor start-up included), steady = after the "
             "first shard was written; start-up = the slowest flow actor's ptlflow import and model build (the "
             "loop's: its model build); worker seconds are summed over shards.", "",
             f"Ground-truth flow (no model: reading, encoding and writing), {gt['pairs']} pairs of "
             f"{gt['frame'][0]}x{gt['frame'][1]} frames, the stage on 1 and 2 CPUs (`flow.max_cpus`):", "",
             *_flow_rows(gt["rows"]), "",
             f"- 2 workers vs 1: **{gt['two_vs_one']:.2f}x** (target ≥ 1.6: {_verdict(gt['two_vs_one'] >= 1.6)})",
             f"- the driver's CPU time: **{100 * gt['driver_cpu_fraction']:.1f} %** of the stage's wall time (target "
             f"≤ 10 %: {_verdict(gt['driver_cpu_fraction'] <= 0.10)})", "",
             f"{pt['model']} ({pt['weights']}), {pt['pairs']} pairs of {pt['frame'][0]}x{pt['frame'][1]} frames; "
             "each actor holds 1 CPU (one torch thread), the sequential loop runs in one process with torch's "
             "default threads and writes the same shards:", "", *_flow_rows(pt["rows"]), "",
             f"- stage (2 actors) vs the sequential loop: **{pt['stage_vs_sequential']:.2f}x** (target ≥ 1.1: "
             f"{_verdict(pt['stage_vs_sequential'] >= 1.1)})",
             f"- 2 actors vs 1 actor: **{pt['two_vs_one_actor']:.2f}x** (target ≥ 1.6: "
             f"{_verdict(pt['two_vs_one_actor'] >= 1.6)})", "", *_flow_why(r), "", *_dis_rows(r.get("dis")),
             "GPU, pairs/s per GPU through the stage:", ""]
    if r["gpu"]:
        lines += ["| model | actors on one GPU | fp16 | pairs/s end to end | steady pairs/s | start-up |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {g['model']} | {g['actors']} | {'yes' if g['half'] else 'no'} | {g['pairs_per_s']:.1f} "
                  f"| {g['steady_pairs_per_s']:.1f} | {g['startup_s']:.1f} s |" for g in r["gpu"]]
    else:
        lines.append("not yet measured: no GPU was lent to the run above (the script measures "
                     "rapidflow_it1 and raft_small when `torch.cuda.is_available()`).")
    return lines + ["", "![throughput vs workers](figures/throughput_workers.png)", ""]


def _dis_rows(dis: dict | None) -> list[str]:
    """The DIS rows: the stage at its defaults against the plain loop with the same estimator (issue 35, item 4)."""
    if not dis:
        return ["DIS (a CPU estimator), the stage at its defaults against the plain loop: not yet measured.", ""]
    return [f"DIS ({dis['preset']}), {dis['pairs']} pairs of {dis['frame'][0]}x{dis['frame'][1]} frames: the stage at "
            "its defaults (DIS in the read tasks, one CPU and one cv2 thread each) against the plain loop in one "
            "process (cv2 with torch's threads), writing the same shards:", "", *_flow_rows(dis["rows"]), "",
            f"- stage (defaults) vs the sequential loop: **{dis['stage_vs_sequential']:.2f}x** (target ≥ 1.0: "
            f"{_verdict(dis['stage_vs_sequential'] >= 1.0)})", ""]


def flow_epe_section(r: dict) -> list[str]:
    """DIS flow against the generated data's exact flow (benchmarks/flow_epe.py), one table per dataset."""
    lines = ["## DIS flow against the exact flow", "",
             f"`flow.source=dis` (OpenCV {r['opencv']}'s DIS, `flow.dis_preset`) and zero flow (the control: its EPE "
             f"is the mean motion) on the {r['split']} split of the generated data, every pair (t, t+k) for k in "
             "`shards.k`. EPE: end-point error against the generator's exact flow, px, over all pixels and over the "
             "valid ones (visible in both frames); > 1 px, > 3 px: share of pixels; ms per pair: one cv2 thread, as in "
             "the flow stage's Ray tasks, grey conversion included (CPU time of that thread; wall time beside it, "
             "on a machine shared with other work).", ""]
    for name, d in r["datasets"].items():
        ks = list(d["flow_px_by_k"])
        best = min((n for n in d["rows"] if n.startswith("dis")), key=lambda n: d["rows"][n]["epe"])
        lines += [f"**{name}** (`{d['config']}`): {d['clips']} clips, {d['pairs']} pairs of {d['frame'][0]}x"
                  f"{d['frame'][1]} frames. The exact flow moves a median {d['flow_px']['median']:.2f} px (90th "
                  f"percentile {d['flow_px']['p90']:.2f} px); by k: " +
                  ", ".join(f"{k}: {v['median']:.2f} px" for k, v in d["flow_px_by_k"].items()) +
                  f". Lowest mean EPE of the presets: {best}.", "",
                  "| flow | EPE px | EPE valid px | > 1 px | > 3 px | EPE by k (" + ", ".join(ks) +
                  ") | ms/pair CPU | ms/pair wall |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {row['epe']:.2f} | {row['epe_valid']:.2f} | {row['over_1px']:.1f} % | "
                  f"{row['over_3px']:.1f} % | " + ", ".join(f"{row['epe_by_k'][k]:.2f}" for k in ks) +
                  f" | {row['ms_per_pair']:.2f} | {row['wall_ms_per_pair']:.2f} |" for n, row in d["rows"].items()]
        lines.append("")
    lines += [f"{name}: not measured ({why})." for name, why in r.get("skipped", {}).items()]
    return lines + ([""] if r.get("skipped") else [])


def inference_section(r: dict) -> list[str]:
    lines = ["## 4. Inference speed", "",
             f"Batch 1, {r['device']} ({r['threads']} threads), 19 classes, random weights (speed does not depend "
             "on them); median latency, uint8 frame in, class ids out.", "",
             "| size | arch | role | latency ms | FPS | speed-up vs teacher |", "|---|---|---|---|---|---|"]
    lines += [f"| {a['size'][0]}x{a['size'][1]} | {a['arch']} | {a['role']} | {a['latency_ms']:.1f} | "
              f"{a['fps']:.2f} | {a['speedup_vs_teacher']:.1f}x |" for a in r["architectures"]]
    source = r["etc_vs_baseline"][0].get("source", "the seed-0 +TL+KD and baseline students of the reproduction "
                                                   f"run that stood on {r['date']}, before the one of section 5")
    lines += ["", f"ETC-trained student vs the same architecture trained without ETC ({source}; the ETC terms change "
              "a student's weights, never its network, and a network's speed does not depend on its weights; timed "
              "in alternation):", "",
              "| size | ETC ms (rounds) | baseline ms (rounds) | ETC / baseline |", "|---|---|---|---|"]
    lines += [f"| {e['size'][0]}x{e['size'][1]} | {', '.join(f'{x:.1f}' for x in e['etc_ms'])} | "
              f"{', '.join(f'{x:.1f}' for x in e['baseline_ms'])} | **{e['etc_over_baseline']:.3f}** |"
              for e in r["etc_vs_baseline"]]
    return lines + [""]


def soak_section(r: dict) -> list[str]:
    lines = ["## Soak (issue 12): the pipeline three times in one process", "",
             f"`{r['command']}`: {r['description']}", "",
             "| iteration | seconds | RSS MiB | open files | threads | children |", "|---|---|---|---|---|---|"]
    lines += [f"| {i['iteration']} | {i['seconds']:.0f} | {i['rss_mib']:.0f} | {i['open_files']} | {i['threads']} | "
              f"{i['children']} |" for i in r["iterations"]]
    return lines + ["", f"Growth from iteration 1 to {len(r['iterations'])}: RSS {r['rss_growth_mib']:+.0f} MiB, "
                    f"open files {r['fd_growth']:+d}.", ""]


def figures(repro: dict | None, flow: dict | None, train: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    if flow:
        fig, axes = plt.subplots(1, 2 if train else 1, figsize=(9 if train else 4.5, 3.6), squeeze=False)
        m = {k: v["pairs_per_s"] for k, v in flow["ptlflow"]["rows"].items()}
        g = {k: v["pairs_per_s"] for k, v in flow["ground_truth"]["rows"].items()}
        ax = axes[0][0]
        ax.plot([1, 2], [m["1 actor"], m["2 actors"]], "o-", label=f"{flow['ptlflow']['model']}: flow actors")
        ax.plot([1, 2], [g["1 worker"], g["2 workers"]], "s-", label="ground truth: CPUs")
        ax.plot([1, 2], [m["1 actor"], 2 * m["1 actor"]], ":", color="gray", label="linear")
        ax.axhline(m["sequential"], color="tab:red", ls="--", label="sequential loop (all cores)")
        ax.set_xticks([1, 2])
        ax.set_xlabel("flow actors / CPUs")
        ax.set_ylabel("pairs/s")
        ax.set_title("flow stage (Ray Data)")
        ax.legend(fontsize=8)
        if train:
            ax = axes[0][1]
            names = ["in_memory", "loader", "ray_train"]
            for i, row in enumerate(train["rows"]):
                vals = [row["median_samples_per_s"][n] for n in names]
                ax.bar([j + 0.4 * i for j in range(3)], vals, width=0.4, label=f"{row['stage']} ({row['arch']})")
            ax.set_xticks([j + 0.2 for j in range(3)], ["in memory", "webdataset", "Ray Train\n(1 worker)"])
            ax.set_ylabel("samples/s")
            ax.set_title("training throughput")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(FIGURES / "throughput_workers.png", dpi=120)
        plt.close(fig)


def gpu_section(r: dict) -> list[str]:
    """Figures measured on a lent GPU (benchmarks/results/gpu.json: rows of what, value, unit), with the card."""
    lines = ["## GPU", "", f"Measured on {r['machine'].get('gpu')} by `{r['command']}`, {r['date']}.", "",
             "| what | value |", "|---|---|"]
    return lines + [f"| {row['what']} | {row['value']:.1f} {row['unit']} |" for row in r["rows"]] + [""]


NOT_MEASURED = {"flow_stage": "3. Flow stage (`python -m benchmarks.flow_stage`): not yet measured since the stage moved "
                               "to Ray Data (issue 19); the run of 2026-11-25 measured the stage before it (git "
                               "history).",
                "flow_epe": "DIS flow against the exact flow (`python -m benchmarks.flow_epe`): not yet measured.",
                "reproduce": "5. Reproduction with controls (`python -m benchmarks.reproduce --sweep`, then "
                              "`python -m benchmarks.reproduce`): not yet measured on the accepted data.",
                "data_acceptance_motion": "Data acceptance of the motion data (`python -m benchmarks.data_acceptance "
                                          "--config configs/reproduce_motion.yaml`): not yet measured.",
                "reproduce_motion": "6. The motion study (`python -m benchmarks.reproduce --config "
                                    "configs/reproduce_motion.yaml`): not yet measured; it waits for the motion data's "
                                    "acceptance.",
                "reproduce_kd_sweep": "7a. The KD weights, swept on val (`python -m benchmarks.reproduce --study kd "
                                      "--sweep`): not yet measured.",
                "reproduce_kd": "7. The distillation study (`python -m benchmarks.reproduce --study kd`): not yet "
                                "measured.",
                "gpu": "GPU (issues 32 and 35): **not measured**. No GPU machine has been lent to this work, so there "
                       "is no figure per GPU yet: the flow stage's pairs/s with a ptlflow model on CUDA, one Ray Train "
                       "worker's samples/s and added ms per step with `train.use_gpu=true` and `train.amp=true`, the "
                       "loader's samples/s beside it, and the pyfunc model's frames/s on CUDA. docs/scale.md's "
                       "training rows are estimates until then."}
# Each result file (benchmarks/results/NAME.json) and its section of the page, in page order.
SECTIONS = {"train_overhead": train_section, "flow_stage": flow_section, "flow_epe": flow_epe_section,
            "flow_encoding": flow_encoding.report_section,
            "inference": inference_section,
            "data_acceptance": report_repro.acceptance_section, "reproduce_sweep": report_repro.sweep_section,
            "reproduce": report_repro.reproduce_section,
            "data_acceptance_motion": report_repro.acceptance_section, "reproduce_motion": report_repro.reproduce_section,
            "reproduce_kd_sweep": report_repro.kd_sweep_section, "reproduce_kd": report_repro.reproduce_section,
            "soak": soak_section, "gpu": gpu_section}
NAMES = tuple(SECTIONS)


def bench_scripts() -> list[str]:
    """The scripts `make bench` runs, in order: the Makefile's BENCH."""
    import re

    return re.search(r"^BENCH := (.*)$", (common.REPO / "Makefile").read_text(), re.M).group(1).split()


def render(results: dict[str, dict | None]) -> str:
    """docs/benchmarks.md's text for the loaded results (None: not measured)."""
    present = [r for r in results.values() if r]
    if not present:
        raise SystemExit(f"{common.RESULTS}: no results; run make bench")
    walls = {name: r.get("compute_s", r["wall_s"]) for name, r in results.items() if r and "wall_s" in r}
    spent = ", ".join(f"{name} {s / 3600:.1f} h" if s >= 3600 else f"{name} {s / 60:.0f} min"
                      for name, s in walls.items())
    bench = bench_scripts()
    separate = [f"{name} (`{r['command']}`)" for name, r in results.items() if r and name not in bench]
    lines = ["# Benchmarks", "", "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`. "
             "`make bench` empties `runs/bench/`, then runs `python -m benchmarks.<script>` for each of "
             f"{', '.join(bench)}, in that order (the Makefile's `BENCH`), then this report. "
             + (f"Not run by `make bench`, each by its own command: {'; '.join(separate)}; the reproduction's sweep "
                "chose the recipe that `make bench` then reproduces. " if separate else "")
             + f"Each script's last run took {spent} (the machine table below says where). The reproduction trains "
             "only the models its ledger (`benchmarks/results/reproduce_ledger.json`) has no row for (`--remeasure` "
             "trains them all), so with a complete ledger it takes minutes; the data acceptance trains its baselines "
             "every time. Every figure here was measured by those scripts; ratios compare against a baseline "
             "measured in the same run.", "", *machine_section(present)]
    for name, section in SECTIONS.items():
        missing = [f"## {name}", "", NOT_MEASURED.get(name, "not yet measured."), ""]
        lines += section(results[name]) if results.get(name) else missing
    if READING.exists():
        lines += [READING.read_text().rstrip(), ""]
    return "\n".join(lines)


def main() -> None:
    results = {n: _load(n) for n in NAMES}
    text = render(results)
    figures(results["reproduce"], results["flow_stage"], results["train_overhead"])
    if results["data_acceptance"]:
        report_repro.acceptance_figure(results["data_acceptance"], FIGURES)
    for name in ("reproduce", "reproduce_motion", "reproduce_kd"):
        if results[name]:
            report_repro.reproduce_figure(results[name], FIGURES)
    if results["data_acceptance_motion"]:
        report_repro.acceptance_figure(results["data_acceptance_motion"], FIGURES)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(common.REPO)}")
    report_scale.write(_load("scale"))


if __name__ == "__main__":
    main()
