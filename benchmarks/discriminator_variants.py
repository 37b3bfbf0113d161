"""Discriminator variants, each trained with the shipped schedule and seed and evaluated like the shipped one.

    python benchmarks/discriminator_variants.py --noise 0.0 --out runs/discriminator_noise0.keras
    python benchmarks/discriminator_variants.py --mismatched-share 0 --out runs/discriminator_generated_only.keras

``--noise``: std of the Gaussian input noise (shipped: 0.1). Does the noise hide the generator's errors?
``--mismatched-share``: share of each fake batch that is mismatched (shipped: 0.5). With 0, every fake is
generated: can it tell generated images from real ones when that is its only job?

Each run takes about 13 minutes on 2 CPU cores (`train_discriminator` against the shipped generator)
and prints the level-2 evaluation (500 train and 500 held-out texts) next to the shipped discriminator's,
from `models/discriminator.evaluation.json`.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import t2i_utils as u  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, default=0.1, help="std of the Gaussian input noise")
    parser.add_argument("--mismatched-share", type=float, default=0.5, help="share of fake batches mismatched")
    parser.add_argument("--out", required=True, help="where to save the variant (e.g. under runs/)")
    parser.add_argument("-n", type=int, default=500, help="texts per split in the evaluation")
    args = parser.parse_args()
    generator = u.load_generator()
    t0 = time.perf_counter()
    u.train_discriminator(generator, args.out, model=u.build_discriminator(noise=args.noise),
                          mismatched_share=args.mismatched_share, verbose=2)
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = u.evaluate_discriminator_levels(u.load_discriminator(args.out), generator, levels=(2,), n=args.n)
    shipped = [dict(r, split=f"{r['split']} (shipped)")
               for r in json.load(open(os.path.join(u.MODELS_DIR, "discriminator.evaluation.json")))
               if r["level"] == 2]
    print(f"noise {args.noise}, mismatched share {args.mismatched_share}:")
    print(u.format_discriminator_evaluation(rows + shipped))


if __name__ == "__main__":
    main()
