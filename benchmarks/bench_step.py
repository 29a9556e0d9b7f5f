"""Training-step overhead of a 50%-pruned model: lightning_prune vs ``torch.nn.utils.prune``.

One step is forward, backward and an SGD (momentum 0.9) update on a fixed random batch.
Three variants of each model start from the same weights: ``dense`` (no pruning),
``torch`` (``prune.l1_unstructured(amount=0.5)`` on every Linear/Conv weight) and ``ours``
(layer-wise L1 at 0.5 through ``compute_masks``/``commit_masks``). The variants take turns in
rounds; each round times several steps per variant, back to back, and the table shows
medians over rounds.

    python benchmarks/bench_step.py
    python benchmarks/bench_step.py --device cuda
    python benchmarks/bench_step.py --quick
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from cpuload import cpu_ticks
from memory import ExtraPeak, report, run_child
from torch import Tensor, nn
from torch.nn.utils import prune

from lightning_prune.core import commit_masks, compute_masks
from lightning_prune.inplace import InPlaceMasks
from lightning_prune.methods import resolve_method
from lightning_prune.targets import resolve_targets

SPARSITY = 0.5
VARIANTS = ("dense", "torch", "ours", "in_place")
HEADER = (
    "| model | batch | dense ms | torch ms | ours ms | in_place ms | torch / dense | ours / dense | ours / torch "
    "| in_place / dense | in_place / torch | other load |"
)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: stem, three stages of two basic blocks (16/32/64 channels), linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def lenet_300_100() -> nn.Module:
    """LeNet-300-100: a 784-300-100-10 MLP."""
    layers = [nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)]
    return nn.Sequential(nn.Flatten(), *layers)


def mlp_4x2048() -> nn.Module:
    """Four 2048x2048 Linear layers, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(2048, 2048), nn.ReLU()]
    return nn.Sequential(*layers)


# name -> (constructor, input shape without batch, number of classes, batch size)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, int]] = {
    "LeNet-300-100": (lenet_300_100, (1, 28, 28), 10, 128),
    "MLP 4x2048": (mlp_4x2048, (2048,), 2048, 256),
    "ResNet-ish CNN": (SmallResNet, (3, 32, 32), 10, 64),
}


def prune_torch(model: nn.Module) -> None:
    """``prune.l1_unstructured(amount=0.5)`` on every Linear/Conv weight."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            prune.l1_unstructured(module, "weight", amount=SPARSITY)


def prune_ours(model: nn.Module) -> None:
    """Layer-wise L1 at 0.5 with lightning_prune's reparametrization."""
    targets = resolve_targets(model)
    commit_masks(targets, compute_masks(targets, resolve_method("l1_unstructured"), SPARSITY, scope="layer"))


def prune_in_place(model: nn.Module) -> None:
    """Layer-wise L1 at 0.5 with ``masking="in_place"``: plain weights, masked gradients, weights kept at zero."""
    targets = resolve_targets(model)
    masks = InPlaceMasks()
    masks.commit(targets, compute_masks(targets, resolve_method("l1_unstructured"), SPARSITY, scope="layer"))
    model.in_place_masks = masks  # the Stepper attaches it to its optimizer


PRUNERS: dict[str, Callable[[nn.Module], None]] = {
    "dense": lambda model: None,
    "torch": prune_torch,
    "ours": prune_ours,
    "in_place": prune_in_place,
}


def make_variants(build: Callable[[], nn.Module], device: str = "cpu") -> dict[str, nn.Module]:
    """The variants of one model, all from the same initial weights."""
    torch.manual_seed(0)
    dense = build().to(device)
    models = {v: copy.deepcopy(dense) for v in VARIANTS}
    prune_torch(models["torch"])
    prune_ours(models["ours"])
    prune_in_place(models["in_place"])
    check_same_pruning(models)
    return models


def check_same_pruning(models: dict[str, nn.Module]) -> None:
    """Raise unless ``torch``, ``ours`` and ``in_place`` prune the same entries and mask the same weights.

    Where torch's ``topk`` and ours break a tie at a layer's threshold differently, the entries in
    question may differ; ``ours`` and ``in_place`` run the same selection and must agree exactly.
    """
    ours, plain = dict(models["ours"].named_modules()), dict(models["in_place"].named_parameters())
    held = models["in_place"].in_place_masks.masks
    pruned = {f"{n}.weight": m for n, m in models["torch"].named_modules() if hasattr(m, "weight_mask")}
    if not pruned or set(pruned) != set(held):
        raise RuntimeError(f"torch pruned {sorted(pruned)}, in_place {sorted(held)}")
    for key, module in pruned.items():
        mine = ours[key.removesuffix(".weight")]
        mask, magnitudes = module.weight_mask.bool(), mine.weight_orig.detach().abs()
        if not (torch.equal(mine.weight_mask, held[key]) and torch.equal(mine.weight, plain[key])):
            raise RuntimeError(f"{key}: in_place differs from ours")
        other = mask != mine.weight_mask
        if other.any():
            threshold = magnitudes[~mine.weight_mask].max()
            if int(mask.sum()) != int(mine.weight_mask.sum()) or not (magnitudes[other] == threshold).all():
                raise RuntimeError(f"{key}: the masks differ from torch's away from a tie at the threshold")
        if not torch.equal(module.weight[~other], mine.weight[~other]):
            raise RuntimeError(f"{key}: the masked weights differ from torch's")


def _tensors_in(value: object) -> list[Tensor]:
    """Tensors in ``value``, looking into tuples, lists and dicts."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []


def held_bytes(model: nn.Module) -> int:
    """Bytes of parameters, buffers, tensor attributes of modules and tensors the forward pre-hooks keep.

    The module attributes are the masked weights the pruning hooks set; a hook may also keep
    tensors of its own (a converted mask, say). Shared storage counts once.
    """
    tensors: list[Tensor] = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tensors += [v for v in vars(module).values() if isinstance(v, Tensor)]
        for hook in module._forward_pre_hooks.values():
            tensors += _tensors_in(getattr(hook, "__dict__", {}))
    in_place = getattr(model, "in_place_masks", None)
    if in_place is not None:
        tensors += _tensors_in(in_place.__dict__)
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class Stepper:
    """One model, its optimizer and a fixed batch."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        self.model, self.x, self.y = model.train(), x, y
        self.faults = self.steps = 0
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        in_place = getattr(model, "in_place_masks", None)
        if in_place is not None:
            in_place.attach([self.opt])

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def time_steps(self, n: int) -> float:
        """Mean seconds per step over ``n`` steps (waiting for the GPU, if any, at both ends).

        The page faults of those steps are added to :attr:`faults`, their number to :attr:`steps`.
        """
        sync = torch.cuda.synchronize if self.x.is_cuda else (lambda: None)
        sync()
        faults, start = minor_faults(), time.perf_counter()
        for _ in range(n):
            self.step()
        sync()
        elapsed = time.perf_counter() - start
        self.faults += minor_faults() - faults
        self.steps += n
        return elapsed / n


def minor_faults() -> int:
    """Minor page faults of this process so far: fresh pages it touched, each zeroed by the kernel."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def foreign_cores(start: tuple[int, int], end: tuple[int, int], seconds: float) -> float:
    """CPU cores used by other processes between two :func:`cpu_ticks` readings."""
    busy, own = end[0] - start[0], end[1] - start[1]
    return max(0, busy - own) / os.sysconf("SC_CLK_TCK") / seconds


def timed_rounds(
    steppers: dict[str, Stepper], rounds: int, n_steps: int, max_other_load: float, pause: float = 2.0
) -> tuple[dict[str, list[float]], list[float], int]:
    """Seconds per step of every stepper in ``rounds`` interleaved rounds.

    A round during which other processes used more than ``max_other_load`` CPU cores is
    discarded and, after a pause of ``pause`` seconds, run again (at most ``3 * rounds``
    discarded rounds in all). Returns the per-round times, the other processes' load in each
    kept round, and the number of discarded rounds.
    """
    names = list(steppers)
    times: dict[str, list[float]] = {v: [] for v in names}
    loads: list[float] = []
    discarded = 0
    r = 0
    while len(loads) < rounds:
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        r += 1
        ticks, start = cpu_ticks(), time.perf_counter()
        this = {v: steppers[v].time_steps(n_steps) for v in order}
        load = foreign_cores(ticks, cpu_ticks(), time.perf_counter() - start)
        if load > max_other_load and discarded < 3 * rounds:
            discarded += 1
            time.sleep(pause)
            continue
        loads.append(load)
        for v in names:
            times[v].append(this[v])
    return times, loads, discarded


@dataclass
class Result:
    """Per-round seconds per step of each variant, bytes held, page faults per step, and CPU used by
    other processes."""

    times: dict[str, list[float]]
    held: dict[str, int]
    n_steps: int
    loads: list[float]
    discarded: int
    faults: dict[str, float]

    def median_ms(self, variant: str) -> float:
        return 1e3 * statistics.median(self.times[variant])

    def ratio(self, variant: str, base: str) -> float:
        """Median over rounds of the per-round ratio (the variants of one round run back to back)."""
        return statistics.median(a / b for a, b in zip(self.times[variant], self.times[base]))

    def ratio_quartiles(self, variant: str, base: str) -> tuple[float, float]:
        """First and third quartiles over rounds of the per-round ratio."""
        ratios = sorted(a / b for a, b in zip(self.times[variant], self.times[base]))
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        return q1, q3


def make_steppers(name: str, models: dict[str, nn.Module], warmup: int, device: str = "cpu") -> dict[str, Stepper]:
    """A stepper per model on the same fixed batch of model ``name``'s shape, warmed up."""
    _, in_shape, classes, batch = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *in_shape, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    steppers = {v: Stepper(m, x, y) for v, m in models.items()}
    for s in steppers.values():
        for _ in range(warmup):
            s.step()
    return steppers


def steps_per_round(steppers: dict[str, Stepper], round_seconds: float, min_steps: int) -> int:
    """Steps that make one variant's turn last about ``round_seconds``."""
    per_step = min(s.time_steps(1) for s in steppers.values() for _ in range(3))
    return max(min_steps, math.ceil(round_seconds / per_step))


def bench_model(
    name: str, rounds: int, round_seconds: float, min_steps: int, warmup: int, max_other_load: float, device: str
) -> Result:
    """Time every variant of one model in interleaved rounds."""
    steppers = make_steppers(name, make_variants(MODELS[name][0], device), warmup, device)
    n_steps = steps_per_round(steppers, round_seconds, min_steps)
    for s in steppers.values():
        s.faults = s.steps = 0
    times, loads, discarded = timed_rounds(steppers, rounds, n_steps, max_other_load)
    held = {v: held_bytes(s.model) for v, s in steppers.items()}
    faults = {v: s.faults / s.steps for v, s in steppers.items()}
    return Result(times, held, n_steps, loads, discarded, faults)


def peak_child(name: str, variant: str, device: str, steps: int = 5) -> dict[str, float | None]:
    """In this process: build the dense model and a batch, then measure the extra peak memory of
    pruning it as ``variant`` and taking ``steps`` training steps (masks, gradients, optimizer
    state, activations and every temporary), after the same work once on another model (so the
    pages of code it runs for the first time are not counted)."""
    build, in_shape, classes, batch = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *in_shape, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)

    def prune_and_step(model: nn.Module) -> None:
        PRUNERS[variant](model)
        stepper = Stepper(model, x, y)
        for _ in range(steps):
            stepper.step()

    prune_and_step(build().to(device))  # once untimed, on another model: the code it runs is paged in
    torch.manual_seed(0)
    model = build().to(device)
    with ExtraPeak(device) as peak:
        prune_and_step(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"extra": peak.extra, "weights": weights}


def peak_table(names: list[str], device: str, jobs: int) -> dict[str, dict[str, float | None]]:
    """Extra peak bytes of every variant of every model, each in a fresh process, ``jobs`` at a time.

    A process's peak is its own (its resident set, or its CUDA allocator's), so processes that run
    side by side do not change each other's figures; on a GPU each one's start (a CUDA context)
    takes seconds, and run one after another they took longer than the rest of the benchmark.
    """

    def child(name: str, variant: str) -> float | None:
        start = time.perf_counter()
        extra = run_child(__file__, "--peak-child", name, variant, "--device", device)["extra"]
        print(f"# peak of {name} {variant}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        return extra

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {(n, v): pool.submit(child, n, v) for n in names for v in VARIANTS}
        return {n: {v: futures[n, v].result() for v in VARIANTS} for n in names}


# glibc's malloc, fixed for the timing: blocks up to 32 MiB (the most it allows) come from the heap,
# and the heap is never trimmed. Otherwise its thresholds move as blocks are freed, and where each
# variant's freed blocks land (kept, or handed back to the system and faulted in again, zeroed)
# differs between variants that share the one process: thousands of page faults per step for one
# and none for another, as large as the differences measured.
FIXED_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def print_peak_table(peaks: dict[str, dict[str, float | None]]) -> None:
    """The table of :func:`peak_table`'s extra peaks by model and variant."""
    print("Peak memory of pruning and 5 training steps, each variant in a fresh process after the same work")
    print("once on another model, over the dense weights (peak resident memory, or the CUDA allocator's):")
    print()
    print("| model | dense MiB | torch MiB | ours MiB | in_place MiB | ours / torch | in_place / torch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, peak in peaks.items():
        if any(v is None for v in peak.values()):
            print(f"| {name} | peak not measurable here (no /proc/self/clear_refs) | | | | | |")
            continue
        mib = [f"{peak[v] / 2**20:.1f}" for v in VARIANTS]  # type: ignore[operator]
        ratios = [f"{peak[v] / peak['torch']:.2f}" for v in ("ours", "in_place")]  # type: ignore[operator]
        print(f"| {name} | " + " | ".join([*mib, *ratios]) + " |")
    print()


def run_with_fixed_heap(argv: list[str], script: str = __file__) -> None:
    """Run ``script`` (this one by default) again with :data:`FIXED_HEAP` in its environment, unless it is there.

    glibc reads the variables when the process starts; they are taken out of the environment
    again at once, so the fresh processes of the peak-memory table run with the defaults.
    """
    if all(os.environ.get(k) == v for k, v in FIXED_HEAP.items()):
        for key in FIXED_HEAP:
            del os.environ[key]
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(script), *argv], {**os.environ, **FIXED_HEAP})


def timing_arguments(parser: argparse.ArgumentParser, rounds: int, round_seconds: float, warmup: int) -> None:
    """The options of interleaved timing rounds, with these defaults, and ``--quick``."""
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds in which every variant takes a turn")
    parser.add_argument(
        "--round-seconds", type=float, default=round_seconds, help="approximate time per variant per round"
    )
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps per variant first")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="discard and rerun a round during which other processes used more CPU cores than this",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 step (a smoke test)")


def timing(args: argparse.Namespace) -> tuple[int, float, int, int, float]:
    """Rounds, seconds per turn, least steps per turn, warm-up steps and the most other load allowed."""
    if args.quick:
        return 2, 0.0, 1, 1, math.inf
    return args.rounds, args.round_seconds, 3, args.warmup, args.max_other_load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_arguments(parser, rounds=11, round_seconds=0.5, warmup=3)
    parser.add_argument("--device", default="cpu", help="where models and batches live: cpu (default) or cuda")
    parser.add_argument("--peak-jobs", type=int, default=4, help="fresh processes of the peak-memory table at a time")
    parser.add_argument(
        "--allocator-defaults",
        action="store_true",
        help="time with glibc's malloc as it comes, instead of fixed thresholds (see FIXED_HEAP)",
    )
    parser.add_argument("--peak-only", action="store_true", help="only the peak-memory table (fresh processes)")
    parser.add_argument("--peak-child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        report(peak_child(*args.peak_child, args.device))
        return 0
    if args.peak_only:
        print_peak_table(peak_table(list(MODELS)[:1] if args.quick else list(MODELS), args.device, args.peak_jobs))
        return 0
    fixed_heap = not args.allocator_defaults and sys.platform.startswith("linux")
    if fixed_heap:
        run_with_fixed_heap(sys.argv[1:] if argv is None else argv)
    rounds, round_seconds, min_steps, warmup, max_load = timing(args)

    print(
        f"Training step (forward + backward + SGD momentum 0.9) at {SPARSITY:.0%} sparsity, "
        f"{rounds} interleaved rounds, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {args.device}"
        + (f" ({torch.cuda.get_device_name(args.device)})" if args.device != "cpu" else "")
        + (", malloc thresholds fixed" if fixed_heap else ", malloc as it comes")
    )
    print()
    results = {}
    for name in MODELS:
        results[name] = res = bench_model(name, rounds, round_seconds, min_steps, warmup, max_load, args.device)
        print(
            f"# {name}: {rounds} rounds x {res.n_steps} steps per variant, {res.discarded} disturbed round(s) rerun",
            file=sys.stderr,
            flush=True,
        )
    print(HEADER)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in results.items():
        ms = [f"{res.median_ms(v):.2f}" for v in VARIANTS]
        pairs = (("torch", "dense"), ("ours", "dense"), ("ours", "torch"), ("in_place", "dense"), ("in_place", "torch"))
        ratios = [f"{res.ratio(a, b):.3f}" for a, b in pairs]
        print(f"| {name} | {MODELS[name][3]} | " + " | ".join([*ms, *ratios, f"{max(res.loads):.2f}"]) + " |")
    print()
    print("torch, ours and in_place pruned the same entries of every model (but for ties at a threshold, which")
    print("torch's topk breaks otherwise), with the same masked weights.")
    print("ms: median milliseconds per step over rounds; ratios: median over rounds of the per-round ratio;")
    print("other load: most CPU cores used by other processes during a kept round.")
    discarded = ", ".join(f"{name} {res.discarded}" for name, res in results.items())
    print(f"Rounds discarded because other processes used more than {max_load} cores: {discarded}.")
    print()
    print("Spread of the per-round ratios (first and third quartile over rounds):")
    print()
    print("| model | ours / torch | in_place / dense | in_place / torch |")
    print("|---|---:|---:|---:|")
    for name, res in results.items():
        spreads = [
            res.ratio_quartiles(a, b) for a, b in (("ours", "torch"), ("in_place", "dense"), ("in_place", "torch"))
        ]
        print(f"| {name} | " + " | ".join(f"{lo:.3f} to {hi:.3f}" for lo, hi in spreads) + " |")
    print()
    memory = results["MLP 4x2048"].held
    print("Memory held by the MLP 4x2048 after a step (parameters, buffers, masked weights, tensors kept by hooks):")
    print()
    print("| variant | MiB | vs dense |")
    print("|---|---:|---:|")
    for v in VARIANTS:
        print(f"| {v} | {memory[v] / 2**20:.1f} | {memory[v] / memory['dense']:.2f} |")
    print()
    print_peak_table(peak_table(list(MODELS)[:1] if args.quick else list(MODELS), args.device, args.peak_jobs))
    print("Minor page faults per step (fresh pages the kernel maps and zeroes; all variants share one heap:")
    print("with malloc's thresholds fixed they stop after the first rounds, whose pages the heap keeps, and")
    print("with its defaults where it hands freed blocks back to the system moves them between variants):")
    print()
    print("| model | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---:|" * len(VARIANTS))
    for name, res in results.items():
        print(f"| {name} | " + " | ".join(f"{res.faults[v]:.0f}" for v in VARIANTS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
