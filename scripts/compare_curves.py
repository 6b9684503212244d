"""Compare the loss curves of two training runs (e.g. float32 vs bfloat16 matmuls).

  python scripts/compare_curves.py runs/precision_float32 runs/precision_bfloat16 [--metric=loss]

Prints a Markdown table of the metric at every logged step of both runs, the
largest absolute and relative difference, and the validation losses.
"""
import argparse
import json
import os


def events(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r for r in rows if r["split"] == split}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("a")
  parser.add_argument("b")
  parser.add_argument("--metric", default="loss")
  args = parser.parse_args()
  a, b = events(args.a, "train"), events(args.b, "train")
  steps = sorted(set(a) & set(b))
  if not steps:
    raise SystemExit("the two runs share no logged training step")
  name_a, name_b = os.path.basename(args.a.rstrip("/")), os.path.basename(args.b.rstrip("/"))
  print(f"| step | {name_a} | {name_b} | difference |\n|---|---|---|---|")
  worst_abs = worst_rel = 0.0
  for s in steps:
    x, y = a[s][args.metric], b[s][args.metric]
    worst_abs = max(worst_abs, abs(x - y))
    worst_rel = max(worst_rel, abs(x - y) / max(abs(x), 1e-9))
    print(f"| {s} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")
  print(f"\nlargest difference of train {args.metric}: {worst_abs:.4f} absolute, "
        f"{100 * worst_rel:.2f}% relative, over {len(steps)} logged steps")
  va, vb = events(args.a, "valid"), events(args.b, "valid")
  for s in sorted(set(va) & set(vb)):
    print(f"valid step {s}: recon_loss {va[s]['recon_loss']:.4f} vs {vb[s]['recon_loss']:.4f}, "
          f"kl_loss_raw {va[s]['kl_loss_raw']:.4f} vs {vb[s]['kl_loss_raw']:.4f}")


if __name__ == "__main__":
  main()
