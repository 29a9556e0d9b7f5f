"""One global L1 pruning event at 50% sparsity: lightning_prune vs ``torch.nn.utils.prune``.

Each measurement runs in a fresh child process (this script with ``--child``), so the peak
resident memory of one process belongs to one pruning event. The models are stacks of
bias-free ``nn.Linear`` layers 4000 wide, sized to the requested number of parameters. With
``--device cuda`` the model lives on the GPU and the extra memory is the peak of the CUDA
caching allocator's allocations during the event over what was allocated before it.

    python benchmarks/bench_global.py --sizes 10,50,200 --repeats 3
    python benchmarks/bench_global.py --device cuda --sizes 10,50,200,1000
    python benchmarks/bench_global.py --quick
    python benchmarks/bench_global.py --after 0.3   # the event from 30% to 50%, as in iterative pruning

With ``--after S`` an unmeasured first event prunes a fraction ``S`` of the weights, and the
measured event takes the model from there to 50%: torch's ``global_unstructured`` is given the
number of entries still to prune (it counts them among the surviving ones), ours the target.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any

import memory
from cpuload import cpu_ticks
from memory import peak_rss_bytes, reset_peak_rss, rss_bytes

WIDTH = 4000
SPARSITY = 0.5
VARIANTS = ("ours", "torch")
HEADER = "| size | torch s | ours s | time ratio (torch/ours) | torch B/param | ours B/param |"


def build_model(n_params: int, width: int = WIDTH) -> Any:
    """Bias-free ``nn.Linear`` layers ``width`` wide, square blocks plus one remainder block."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    rows = -(-n_params // width)
    layers = []
    while rows > 0:
        r = min(rows, width)
        layers.append(nn.Linear(width, r, bias=False))
        rows -= r
    return nn.Sequential(*layers)


def prune_ours(model: Any, sparsity: float = SPARSITY, already: int = 0) -> None:
    """Global L1 to ``sparsity`` of all weights with lightning_prune (which reads the current masks itself)."""
    from lightning_prune.core import commit_masks, compute_masks
    from lightning_prune.methods import resolve_method
    from lightning_prune.targets import resolve_targets

    targets = resolve_targets(model)
    masks = compute_masks(targets, resolve_method("l1_unstructured"), sparsity, scope="global")
    commit_masks(targets, masks, copy=False)  # the masks are handed over: no copy


def prune_torch(model: Any, sparsity: float = SPARSITY, already: int = 0) -> None:
    """Global L1 to ``sparsity`` of all weights with ``torch.nn.utils.prune.global_unstructured``.

    ``already`` entries are pruned before; torch is given the number still to prune, which it
    counts among the surviving entries.
    """
    from torch import nn
    from torch.nn.utils import prune

    params = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
    amount = round(sparsity * sum(m.weight.numel() for m, _ in params)) - already
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)


def count_pruned(model: Any) -> int:
    """Entries whose mask buffer is zero, over all layers."""
    import torch

    masks = [buf for name, buf in model.named_buffers() if name.endswith("weight_mask")]
    return sum(buf.numel() - int(torch.count_nonzero(buf).item()) for buf in masks)


def compare_masks(size_m: float, device: str = "cpu", after: float = 0.0) -> int:
    """Prune two copies of one model, ours and torch's, as the measured runs do; the entries whose
    masks differ, all at the final threshold's magnitude (a tie that torch breaks otherwise), or raise."""
    models = {v: build_model(round(size_m * 1e6)).to(device) for v in VARIANTS}
    for variant, model in models.items():
        prune = prune_ours if variant == "ours" else prune_torch
        if after:
            prune(model, after)
        prune(model, SPARSITY, count_pruned(model))
    if count_pruned(models["ours"]) != count_pruned(models["torch"]):
        raise RuntimeError("ours and torch pruned different numbers of entries")
    layers = list(zip(models["ours"], models["torch"]))
    magnitudes = [m.weight_orig.detach().abs() for m, _ in layers]
    threshold = max(float(a[~m.weight_mask].max()) for a, (m, _) in zip(magnitudes, layers) if not m.weight_mask.all())
    differ = 0
    for a, (mine, theirs) in zip(magnitudes, layers):
        other = mine.weight_mask != theirs.weight_mask.bool()
        if not (a[other] == threshold).all():
            raise RuntimeError("the masks differ from torch's away from the threshold")
        differ += int(other.sum())
    return differ


def warm_up(variant: str, device: str) -> None:
    """Not measured: imports and first-call setup of every kernel the event uses (above 131,072
    weights: small selections take another path)."""
    (prune_ours if variant == "ours" else prune_torch)(build_model(1 << 18, width=512).to(device))


def child(variant: str, size_m: float, device: str = "cpu", after: float = 0.0) -> dict[str, Any]:
    """Warm up, then :func:`measure` one event."""
    warm_up(variant, device)
    return measure(variant, size_m, device, after)


def same_process(order: list[str], size_m: float, device: str = "cpu", after: float = 0.0) -> dict[str, Any]:
    """Both variants' events one after the other in this process, each on a model of its own (freed
    before the next is built), as a comparison within one script runs them."""
    for variant in order:
        warm_up(variant, device)
    return {"runs": [measure(variant, size_m, device, after) for variant in order]}


def measure(variant: str, size_m: float, device: str = "cpu", after: float = 0.0) -> dict[str, Any]:
    """Build the model, prune it to ``after`` unmeasured, then measure time and peak memory of the event to 50%."""
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    prune = prune_ours if variant == "ours" else prune_torch
    model = build_model(round(size_m * 1e6)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    if after:
        prune(model, after)
    already = count_pruned(model)
    gc.collect()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    reset = reset_peak_rss() or cuda
    before = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    peak_before = peak_rss_bytes()
    busy0, own0 = cpu_ticks()
    start = time.perf_counter()
    prune(model, SPARSITY, already)
    sync()
    seconds = time.perf_counter() - start
    busy1, own1 = cpu_ticks()
    peak_after = torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes()
    pruned = count_pruned(model)
    # The first forward after the event: torch's reads the float mask its event made; ours casts its
    # bool masks to the float copy it multiplies by (4 B/param, kept from then on) there.
    x = torch.randn(1, WIDTH, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    sync()
    forward_seconds = time.perf_counter() - start
    peak_forward = torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes()
    return {
        "variant": variant,
        "size_m": size_m,
        "n_params": n_params,
        "seconds": seconds,
        "device": device,
        "memory_before": before,
        "peak_before": peak_before,
        "peak_after": peak_after,
        "peak_reset": reset,
        "extra_bytes_per_param": (peak_after - before) / n_params,
        "forward_seconds": forward_seconds,
        "forward_extra_bytes_per_param": (peak_forward - before) / n_params,
        "pruned": pruned,
        "expected_pruned": round(SPARSITY * n_params),
        "threads": torch.get_num_threads(),
        "foreign_cores": max(0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / seconds,
    }


def run_child(variant: str, size_m: float, device: str = "cpu", after: float = 0.0) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and parse its result line."""
    return memory.run_child(
        __file__, "--child", variant, "--size", str(size_m), "--device", device, "--after", str(after)
    )


def run_same_process(order: list[str], size_m: float, device: str = "cpu", after: float = 0.0) -> list[dict[str, Any]]:
    """Run both variants in ``order`` in one fresh interpreter and parse their results."""
    args = ["--same-process-child", ",".join(order), "--size", str(size_m), "--device", device, "--after", str(after)]
    return memory.run_child(__file__, *args)["runs"]


def format_size(size_m: float) -> str:
    return f"{size_m:g}M"


def log_run(res: dict[str, Any], run: str, disturbed: bool) -> None:
    """One measurement's line on stderr."""
    print(
        f"# {format_size(res['size_m'])} {res['variant']:5s} run {run}: {res['seconds']:.3f} s, "
        f"{res['extra_bytes_per_param']:.2f} B/param extra peak, "
        f"other processes {res['foreign_cores']:.2f} cores" + (" (disturbed)" if disturbed else ""),
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,200", help="comma-separated model sizes in millions of parameters")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per size and variant")
    parser.add_argument("--quick", action="store_true", help="one 1M-parameter run per variant (a smoke test)")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="rerun a measurement during which other processes used more CPU cores than this",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="reruns of a disturbed measurement at most (the least disturbed is kept)"
    )
    parser.add_argument("--retry-wait", type=float, default=10.0, help="seconds to wait before a rerun")
    parser.add_argument("--device", default="cpu", help="where the model lives: cpu (default) or cuda")
    parser.add_argument(
        "--after", type=float, default=0.0, help="first prune this fraction unmeasured, then measure the event to 50%%"
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run both variants in one process per repeat (order alternating), instead of one process per event",
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--same-process-child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        memory.report(child(args.child, args.size, args.device, args.after))
        return 0
    if args.same_process_child:
        memory.report(same_process(args.same_process_child.split(","), args.size, args.device, args.after))
        return 0
    if not 0 <= args.after < SPARSITY:
        parser.error(f"--after must be in [0, {SPARSITY}), got {args.after}")

    sizes = [1.0] if args.quick else [float(s) for s in args.sizes.split(",") if s.strip()]
    repeats, retries = (1, 0) if args.quick else (args.repeats, args.retries)
    results: dict[tuple[float, str], list[dict[str, Any]]] = {(s, v): [] for s in sizes for v in VARIANTS}
    discarded = 0
    for size_m in sizes:
        for r in range(repeats):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate which variant goes first
            if args.same_process:
                for res in run_same_process(list(order), size_m, args.device, args.after):
                    run = f"{r + 1}/{repeats} (one process, {' then '.join(order)})"
                    log_run(res, run, res["foreign_cores"] > args.max_other_load)
                    results[size_m, res["variant"]].append(res)
                continue
            for variant in order:
                tries: list[dict[str, Any]] = []
                for attempt in range(retries + 1):
                    res = run_child(variant, size_m, args.device, args.after)
                    tries.append(res)
                    disturbed = res["foreign_cores"] > args.max_other_load
                    log_run(res, f"{r + 1}/{repeats}", disturbed)
                    if not disturbed or attempt == retries:
                        break
                    time.sleep(args.retry_wait)
                discarded += len(tries) - 1
                results[size_m, variant].append(min(tries, key=lambda t: t["foreign_cores"]))

    def median(size_m: float, variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[size_m, variant])

    def disturbed(size_m: float) -> bool:
        """Whether a run kept for this size (the retries used up) shared the CPU with other processes."""
        return any(r["foreign_cores"] > args.max_other_load for v in VARIANTS for r in results[size_m, v])

    first = results[sizes[0], "ours"][0]
    start = f"from {args.after:.0%} " if args.after else ""
    where = (
        f"{repeats} process(es) running both, in alternating order"
        if args.same_process
        else f"{repeats} fresh process(es) per cell"
    )
    print(
        f"Global L1 pruning {start}to {SPARSITY:.0%} sparsity, median of {where}, "
        f"torch threads = {first['threads']}, device = {args.device}"
    )
    print()
    print(HEADER)
    print("|---:|---:|---:|---:|---:|---:|")
    for s in sizes:
        t_torch, t_ours = median(s, "torch", "seconds"), median(s, "ours", "seconds")
        b_torch, b_ours = median(s, "torch", "extra_bytes_per_param"), median(s, "ours", "extra_bytes_per_param")
        size = format_size(s) + (" *" if disturbed(s) else "")
        cells = [size, f"{t_torch:.3f}", f"{t_ours:.3f}", f"{t_torch / t_ours:.2f}", f"{b_torch:.2f}"]
        print("| " + " | ".join([*cells, f"{b_ours:.2f}"]) + " |")
    print()
    print("The event and the first forward after it (one sample, no_grad), where each side's forward hook")
    print("recomputes the weights, and ours makes the float copy of its bool masks that it multiplies by:")
    print()
    print("| size | torch s | ours s | time ratio (torch/ours) | torch B/param peak | ours B/param peak |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s in sizes:
        t_torch, t_ours = (median(s, v, "seconds") + median(s, v, "forward_seconds") for v in ("torch", "ours"))
        cells = [format_size(s) + (" *" if disturbed(s) else ""), f"{t_torch:.3f}", f"{t_ours:.3f}"]
        cells.append(f"{t_torch / t_ours:.2f}")
        cells += [f"{median(s, v, 'forward_extra_bytes_per_param'):.2f}" for v in ("torch", "ours")]
        print("| " + " | ".join(cells) + " |")
    print()
    print("What each side keeps from then on: torch a float mask and the recomputed weight, 8 B/param; ours the")
    print("bool mask, its float copy and the recomputed weight, 9 B/param.")
    print()
    print("| size | parameters | pruned (ours) | round(0.5 N) | exact | ours ms per M params |")
    print("|---:|---:|---:|---:|:---:|---:|")
    ok = True
    for s in sizes:
        runs = results[s, "ours"]
        n, expected = runs[0]["n_params"], runs[0]["expected_pruned"]
        exact = all(r["pruned"] == r["expected_pruned"] for r in runs)
        ok &= exact
        ms_per_m = 1e3 * median(s, "ours", "seconds") / (n / 1e6)
        cells = [format_size(s), str(n), str(runs[0]["pruned"]), str(expected), "yes" if exact else "NO"]
        print("| " + " | ".join([*cells, f"{ms_per_m:.1f}"]) + " |")
    print()
    torch_exact = all(r["pruned"] == r["expected_pruned"] for s in sizes for r in results[s, "torch"])
    print(f"torch pruned exactly round(0.5 N) in every run: {'yes' if torch_exact else 'NO'}.")
    checked = min(sizes)
    differ = compare_masks(checked, args.device, args.after)
    print(
        f"Masks compared with torch's at {format_size(checked)}, in this process: "
        + ("the same." if not differ else f"{differ} entries differ, all tied at the threshold (broken by position).")
    )
    if args.device.startswith("cuda"):
        print("Extra B/param = (peak CUDA allocation during the event - allocated right before it) / parameters.")
    else:
        print("Extra B/param = (peak RSS after the event - RSS right before it) / parameters.")
    foreign = max(r["foreign_cores"] for rs in results.values() for r in rs)
    print(
        f"Other processes used at most {foreign:.2f} CPU cores during any kept event; "
        f"{discarded} run(s) disturbed by more than {args.max_other_load} cores were rerun."
    )
    if any(disturbed(s) for s in sizes):
        print(
            f"* A run kept for this size, its retries used up, shared the CPU with other processes (more than "
            f"{args.max_other_load} cores): its times are not comparable, and the two variants slow down unequally."
        )
    if not all(r["peak_reset"] for rs in results.values() for r in rs):
        print("Note: the peak-RSS mark could not be reset before the event; B/param is an upper bound.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
