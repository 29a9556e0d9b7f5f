"""Where ``masking="in_place"`` spends its training step: the shipped masks against parts of them.

Every variant starts from one 50%-pruned model (layer-wise L1), steps the same fixed batch with
SGD (momentum 0.9) and is timed against a dense copy with the pruned weights zeroed, side by side
in interleaved rounds. The variants other than ``in_place`` put plain hooks on such a copy:

- ``dense_again``: a second dense copy, the noise floor;
- ``unpruned``: the model before pruning (the baseline of ``bench_step.py``);
- ``in_place``: ``InPlaceMasks`` as the callback uses it;
- ``no_op_hooks``: a tensor hook and a post-accumulate hook per weight that do nothing;
- ``mask_float32``: one post-accumulate hook per weight, ``grad.mul_(float mask)``;
- ``mask_uint8``, ``mask_bfloat16``: the same with a narrower mask (fewer bytes to read);
- ``same_bytes``: a post-accumulate hook per weight multiplying, in place, an unrelated tensor of
  the weight's size and dtype by another (ones): the float mask's memory traffic (read two, write
  one) on tensors that backward did not just write, without any masking;
- ``fused_after_backward``: no hooks, one ``torch._foreach_mul_`` over the gradients after
  ``backward()``;
- ``out_of_place_hook``: one tensor hook per weight returning ``grad * mask`` (a new tensor, which
  the gradient's accumulation then takes as it is), in place of the two hooks: one Python call
  less per weight, a write to fresh memory instead of in place.

    python benchmarks/bench_inplace.py [--rounds 41] [--round-seconds 0.04]
    python benchmarks/bench_inplace.py --quick   # 2 rounds of 1 step, LeNet-300-100 only

On Linux it runs itself again with glibc's malloc thresholds fixed, as ``bench_step.py`` does.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from bench_step import (
    MODELS,
    Stepper,
    make_steppers,
    make_variants,
    run_with_fixed_heap,
    timed_rounds,
    timing,
    timing_arguments,
)
from torch import Tensor, nn

from lightning_prune.targets import resolve_targets

BASE = "dense"
MASKING = ("in_place", "mask_float32", "mask_uint8", "mask_bfloat16", "fused_after_backward", "out_of_place_hook")


def _hooked(pruned: nn.Module, factors: dict[str, Any], hook: Callable[[Tensor, Any], None]) -> nn.Module:
    """A copy of ``pruned`` (its weights already zero where pruned) with ``hook(weight, factor)``
    after each weight's gradient is accumulated; ``factors`` gives each weight's factor by name."""
    model = copy.deepcopy(pruned)
    for target in resolve_targets(model):
        factor = factors[target.qualname]

        def post(weight: Tensor, factor: Any = factor) -> None:
            hook(weight, factor)

        target.parameter.register_post_accumulate_grad_hook(post)
    return model


def _out_of_place_hooks(pruned: nn.Module, factors: dict[str, Tensor]) -> nn.Module:
    model = copy.deepcopy(pruned)
    for target in resolve_targets(model):
        target.parameter.register_hook(lambda grad, factor=factors[target.qualname]: grad * factor)
    return model


def _no_op_hooks(pruned: nn.Module) -> nn.Module:
    model = copy.deepcopy(pruned)
    for target in resolve_targets(model):
        target.parameter.register_hook(lambda grad: None)
        target.parameter.register_post_accumulate_grad_hook(lambda weight: None)
    return model


class FusedAfterBackward(Stepper):
    """Masks every gradient with one fused multiply between ``backward()`` and the step."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, factors: dict[str, Tensor]) -> None:
        super().__init__(model, x, y)
        targets = resolve_targets(model)
        self.weights = [t.parameter for t in targets]
        self.factors = [factors[t.qualname] for t in targets]

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        torch._foreach_mul_([w.grad for w in self.weights], self.factors)
        self.opt.step()


def still_zero(stepper: Stepper, masks: dict[str, Tensor]) -> bool:
    """Whether every pruned weight of the stepper's model is still zero."""
    return all(not t.parameter[~masks[t.qualname]].any() for t in resolve_targets(stepper.model))


def variants(name: str, warmup: int) -> tuple[dict[str, Stepper], dict[str, Tensor]]:
    """The steppers of model ``name`` (``dense``: pruned weights zeroed, no hooks; then the variants)
    and its bool masks."""
    built = make_variants(MODELS[name][0])
    shipped = built["in_place"]
    masks = shipped.in_place_masks
    pruned = copy.deepcopy(shipped)
    del pruned.in_place_masks  # a plain model whose pruned weights are zero
    bools = dict(masks.masks)
    floats = {n: m.float() for n, m in bools.items()}
    unrelated = {n: (torch.ones_like(f), torch.ones_like(f)) for n, f in floats.items()}

    def mask(weight: Tensor, factor: Tensor) -> None:
        if weight.grad is not None:
            weight.grad.mul_(factor)

    def same_bytes(weight: Tensor, pair: tuple[Tensor, Tensor]) -> None:
        pair[0].mul_(pair[1])

    models = {
        BASE: pruned,
        "dense_again": copy.deepcopy(pruned),
        "unpruned": built["dense"],
        "in_place": shipped,
        "no_op_hooks": _no_op_hooks(pruned),
        "mask_float32": _hooked(pruned, floats, mask),
        "mask_uint8": _hooked(pruned, {n: m.to(torch.uint8) for n, m in bools.items()}, mask),
        "mask_bfloat16": _hooked(pruned, {n: m.to(torch.bfloat16) for n, m in bools.items()}, mask),
        "same_bytes": _hooked(pruned, unrelated, same_bytes),
        "out_of_place_hook": _out_of_place_hooks(pruned, floats),
    }
    fused_model = copy.deepcopy(pruned)  # before the warm-up steps move the dense copy's pruned weights
    steppers = make_steppers(name, models, warmup)
    first = next(iter(steppers.values()))
    steppers["fused_after_backward"] = fused = FusedAfterBackward(fused_model, first.x, first.y, floats)
    for _ in range(warmup):
        fused.step()
    return steppers, bools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_arguments(parser, rounds=41, round_seconds=0.04, warmup=5)
    args = parser.parse_args(argv)
    if sys.platform.startswith("linux"):
        run_with_fixed_heap(sys.argv[1:] if argv is None else argv, __file__)
    rounds, round_seconds, min_steps, warmup, max_load = timing(args)
    print(
        f"Training step of a 50%-pruned model, masking variants against a dense copy with the pruned weights "
        f"zeroed; {rounds} interleaved rounds, torch {torch.__version__}, {torch.get_num_threads()} threads, cpu"
    )
    for name in ("LeNet-300-100",) if args.quick else ("LeNet-300-100", "MLP 4x2048"):
        steppers, masks = variants(name, warmup)
        per_step = min(s.time_steps(1) for s in steppers.values() for _ in range(3))
        n_steps = max(min_steps, math.ceil(round_seconds / per_step))
        times, _, discarded = timed_rounds(steppers, rounds, n_steps, max_load)
        print()
        print(f"{name}: {rounds} rounds x {n_steps} steps, {discarded} disturbed round(s) rerun")
        print()
        print("| variant | ms per step | / dense | quartiles | added us per step |")
        print("|---|---:|---:|---:|---:|")
        for variant, seconds in times.items():
            ratios = [a / b for a, b in zip(seconds, times[BASE])]
            q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
            added = 1e6 * statistics.median(a - b for a, b in zip(seconds, times[BASE]))
            print(
                f"| {variant} | {1e3 * statistics.median(seconds):.3f} | {statistics.median(ratios):.3f} "
                f"| {q1:.3f} to {q3:.3f} | {added:+.1f} |"
            )
        print()
        kept = ", ".join(f"{v} {'yes' if still_zero(steppers[v], masks) else 'NO'}" for v in MASKING)
        print(f"Pruned weights still zero after the timed steps: {kept}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
