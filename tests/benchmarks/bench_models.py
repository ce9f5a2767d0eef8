"""Forward throughput of EnhancedUNet vs plain UNet (a script; prints, asserts nothing).

    python tests/benchmarks/bench_models.py [--batch 16] [--size 128] [--repeats 5]
                                            [--threads N] [--width 16] [--depth 4]

Both networks are timed side by side in one run, alternating repeat by repeat (the
machines are noisy; compare the ratio, not the absolute numbers), under
``torch.inference_mode()`` in eval mode, on CPU and, when CUDA is available, on GPU
(fp32 and fp16 autocast). The paper reports 21.66 FPS for 128×128 chips on an RTX 3060 Ti
with its ~15 M-parameter network; "FPS" there is chips per second.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.networks import EnhancedUNet, UNet, count_parameters

PAPER_FPS = 21.66


def _time(model, x, device, amp=False):
    def run():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def bench(device: torch.device, args, amp: bool = False) -> None:
    torch.manual_seed(0)
    models = {
        cls.__name__: cls(base_width=args.width, depth=args.depth).to(device).eval()
        for cls in (EnhancedUNet, UNet)
    }
    x = torch.randn(args.batch, 7, args.size, args.size, device=device)
    for m in models.values():  # warm-up (kernel selection, allocator)
        _time(m, x, device, amp)
        _time(m, x, device, amp)
    times = {k: [] for k in models}
    for _ in range(args.repeats):
        for k, m in models.items():
            times[k].append(_time(m, x, device, amp))
    label = f"{device.type}{' fp16' if amp else ''}"
    if device.type == "cpu":
        label += f", {torch.get_num_threads()} threads"
    print(f"\n[{label}] batch {args.batch} × 7 × {args.size} × {args.size}, "
          f"width {args.width}, depth {args.depth}, median of {args.repeats}")
    print(f"{'model':<14}{'params':>12}{'s/batch':>10}{'chips/s':>10}{'Mpx/s':>9}{'vs paper':>10}")
    chips = {}
    for k, m in models.items():
        t = statistics.median(times[k])
        chips[k] = args.batch / t
        mpx = args.batch * args.size**2 / t / 1e6
        print(f"{k:<14}{count_parameters(m):>12,}{t:>10.3f}{chips[k]:>10.1f}{mpx:>9.2f}"
              f"{chips[k] / PAPER_FPS:>9.2f}×")
    print(f"ratio EnhancedUNet/UNet throughput: {chips['EnhancedUNet'] / chips['UNet']:.2f}")
    print(f"paper: {PAPER_FPS} FPS (128×128 chips, RTX 3060 Ti, ~15 M parameters)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    for cls in (EnhancedUNet, UNet):
        for w in (args.width, 32):
            print(f"parameters {cls.__name__} width {w} depth {args.depth}: "
                  f"{count_parameters(cls(base_width=w, depth=args.depth)):,}")
    bench(torch.device("cpu"), args)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        bench(torch.device("cuda"), args)
        bench(torch.device("cuda"), args, amp=True)


if __name__ == "__main__":
    main()
