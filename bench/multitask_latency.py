"""Three dense outputs from one multi-task model against three single-task models, packed, on a CPU.

    python bench/multitask_latency.py [--method bireal] [--size 480x640] [--repeats 7] [--threads 2]
                                      [--heads slim,paper] [--json FILE]

For the slim DeepLabV3+ (``slim``: stride 16, 64 wide, the built-in rooms' head) and the paper's
DeepLabV3 (``paper``: stride 8, 256 wide), each with full-precision heads and with heads binarized by the ``--method``
recipe: the seg (40 classes), depth (1) and normals (3) models over one ``--method`` backbone,
packed for inference (binary convolutions on the XNOR-popcount path, BatchNorms fused), timed as

- ``single_ms``: the three single-task models called one after the other (three backbone forwards);
- ``multi_ms``: one :class:`~cmim_dense.dense.multitask.MultiTaskDenseModel` holding the same three
  heads over the same backbone (one backbone forward);

in interleaved rounds (:func:`common.interleaved_calls`, medians; ``speedup`` = single / multi of
the same round, its range the lowest and highest round).  The multi-task model is built from the
single-task models' own modules, so ``identical_outputs`` checks that it computes the very same
three outputs.  Random weights and BatchNorm statistics (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import interleaved_calls, write_record  # noqa: E402
from dense_latency import randomize  # noqa: E402

from cmim_dense.arguments import image_size  # noqa: E402
from cmim_dense.dense import create_dense_model  # noqa: E402
from cmim_dense.dense.multitask import multitask_from_models  # noqa: E402
from cmim_dense.packed import packed_inference_copy  # noqa: E402

HEAD_CONFIGS = {"slim": ("deeplabv3plus", 16, 64), "paper": ("deeplabv3", 8, 256)}
TASK_OUTPUTS = {"seg": 40, "depth": 1, "normals": 3}


def bench_config(method: str, head: str, stride: int, width: int, size: tuple[int, int], repeats: int,
                 binary_head: bool) -> dict:
    head_method = method if binary_head else None
    singles = {task: randomize(create_dense_model("resnet18", method, channels, head, stride, width,
                                                  binary_head=head_method)).eval()
               for task, channels in TASK_OUTPUTS.items()}
    first = next(iter(singles.values()))
    for model in singles.values():  # one backbone under the three heads
        model.encoder.load_state_dict(first.encoder.state_dict())
    packed_singles = {task: packed_inference_copy(model) for task, model in singles.items()}
    multi = packed_inference_copy(multitask_from_models(singles).eval())
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outputs = multi(x)
        identical = all(torch.equal(outputs[task], model(x)) for task, model in packed_singles.items())
        rounds = interleaved_calls({"single": lambda: [model(x) for model in packed_singles.values()],
                                    "multi": lambda: multi(x)}, repeats)
    ratios = [single / multi_ for single, multi_ in zip(rounds["single"], rounds["multi"])]
    return {"head": head, "output_stride": stride, "width": width, "binary_head": binary_head,
            "identical_outputs": identical,
            **{f"{name}_ms": 1e3 * statistics.median(seconds) for name, seconds in rounds.items()},
            "round_ms": {name: [1e3 * s for s in seconds] for name, seconds in rounds.items()},
            "speedup": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="bireal", help="the binary backbone's method (default bireal)")
    parser.add_argument("--size", type=image_size, default=(480, 640), help="input HxW (default 480x640)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--heads", default="slim,paper", help="head configurations: slim, paper or both (default)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random weights and the image (default 0)")
    parser.add_argument("--json", default="runs/bench/multitask_latency.json", help="where to write the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    unknown = sorted(set(args.heads.split(",")) - set(HEAD_CONFIGS))
    if unknown:
        parser.error(f"--heads: unknown {', '.join(unknown)}; valid: {', '.join(HEAD_CONFIGS)}")
    configs = [HEAD_CONFIGS[name] for name in args.heads.split(",")]
    rows = [bench_config(args.method, *config, args.size, args.repeats, binary_head)
            for binary_head in (False, True) for config in configs]
    print(f"{'heads':>26} {'3 single-task ms':>17} {'multi-task ms':>14} {'speedup (range)':>19} {'same outputs':>13}")
    for r in rows:
        name = f"{r['head']} os{r['output_stride']} w{r['width']}{' binary' if r['binary_head'] else ''}"
        low, high = r["speedup_range"]
        print(f"{name:>26} {r['single_ms']:>17.1f} {r['multi_ms']:>14.1f} "
              f"{r['speedup']:>8.2f}x ({low:.2f}-{high:.2f}) {str(r['identical_outputs']):>13}")
    print(f"1x3x{args.size[0]}x{args.size[1]}, {args.method} backbone packed, seg + depth + normals: three "
          f"single-task models vs one multi-task model, medians of {args.repeats} rounds; speedup > 1 = the "
          "multi-task model is faster")
    write_record(args.json, {"method": args.method, "size": list(args.size), "repeats": args.repeats,
                             "seed": args.seed, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
