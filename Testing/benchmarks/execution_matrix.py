"""`certseg bench` over every execution choice on one device, as a Markdown table.

    python Testing/benchmarks/execution_matrix.py --device cuda --n 1000      # the GPU targets (>= 10x the reference loop, >= 40% of bf16 peak)
    python Testing/benchmarks/execution_matrix.py --device cpu --n 100        # the CPU table

Each row certifies the sample CR (256 x 256, n0 10, sigma 0.25, shipped models with the
denoiser) after a warm-up; the first row also times the research code's one-sample fp32 loop,
and every row's speed-up is against it.  Reduced precision rows report the labels they change
against fp32 on the same noise.
"""

import argparse

from certseg.model.execution import Execution
from certseg.request import CertificationRequest, RunOptions
from certseg.research.bench import run_bench


def configurations(device: str, compile_modes: list[str]) -> list[tuple[Execution, int | None]]:
    rows = [(Execution(), None), (Execution("bf16"), None), (Execution("bf16", channels_last=True), None)]
    if device == "cpu":
        rows += [(Execution(), 8), (Execution("bf16", channels_last=True), 8)]
    rows += [(Execution("bf16", True, mode), None) for mode in compile_modes]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", nargs="*", default=None,
                        help="torch.compile modes to try (default: default and reduce-overhead on CUDA, none on CPU)")
    args = parser.parse_args()
    modes = args.compile if args.compile is not None else (["default", "reduce-overhead"] if args.device == "cuda" else [])

    reference = None
    print("| precision | NHWC | compile | batch | s / image | samples / s | x reference | bf16 peak | "
          "sample labels flipped | certificate labels changed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for execution, batch_size in configurations(args.device, modes):
        result = run_bench(CertificationRequest(n=args.n, run_seed=0), RunOptions(device=args.device, batch_size=batch_size),
                           execution=execution, repeats=args.repeats, reference=reference is None)
        if reference is None:
            reference = result.reference_seconds_per_image
            print(f"reference loop (fp32, one sample per pass): {reference:.2f} s / image on {result.device}, "
                  f"{result.gflops_per_sample:.1f} GFLOP / sample", flush=True)
        peak = "-" if result.bf16_peak_fraction is None else f"{result.bf16_peak_fraction:.1%}"
        flips = "-" if result.sample_label_flips is None else f"{result.sample_label_flips:.3%}"
        changes = "-" if result.certificate_label_changes is None else f"{result.certificate_label_changes:.3%}"
        print(f"| {execution.precision} | {'yes' if execution.channels_last else 'no'} | {execution.compile} | "
              f"{result.batch_size} | {result.seconds_per_image:.2f} | {result.samples_per_second:.0f} | "
              f"{reference / result.seconds_per_image:.1f} | {peak} | {flips} | {changes} |", flush=True)


if __name__ == "__main__":
    main()
