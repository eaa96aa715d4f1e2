"""The random-walker baseline at several edge penalties (beta): is the classical floor under-tuned?

    python benchmarks/baseline_beta.py train 500,2000,16000   # select on the training structures
    python benchmarks/baseline_beta.py test 2000              # then report the chosen one held out
    python benchmarks/baseline_beta.py train 8000 /tmp/b8000.json   # another output file

Protocol ``cvpr25`` (5 clicks, no box) on ``data/real``; prints one line per beta and writes
``benchmarks/results/baseline_beta_<split>.json`` (or the third argument), keeping the betas
already in it that this run does not repeat.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model import summarise  # noqa: E402

from voxprompt.data.readers import load_target, open_dataset  # noqa: E402
from voxprompt.eval.baseline import RandomWalkerConfig  # noqa: E402
from voxprompt.eval.report import add_groups  # noqa: E402
from voxprompt.eval.runner import evaluate, random_walker_factory  # noqa: E402

split, betas = sys.argv[1], [float(b) for b in sys.argv[2].split(",")]
targets = list(open_dataset("data/real", split=split))
out = {}
for beta in betas:
    rows = evaluate(targets, random_walker_factory(RandomWalkerConfig(beta=beta)), "cvpr25", 0, use_box=False,
                    loader=load_target, progress=True)
    add_groups(rows)
    r = out[f"{beta:g}"] = summarise(rows)
    print(f"{split} beta {beta:g}: DSC AUC {r['dsc_auc']:.3f} NSD AUC {r['nsd_auc']:.3f} final DSC "
          f"{r['final_dice']:.3f} final NSD {r['final_nsd']:.3f} s/click {r['median_click_s']:.3f}", flush=True)
default = Path(__file__).resolve().parent / "results" / f"baseline_beta_{split}.json"
path = Path(sys.argv[3]) if len(sys.argv) > 3 else default
doc = json.loads(path.read_text()) if path.is_file() else {}
if doc.get("targets") != split:
    doc = {}
merged = {**doc.get("results", {}), **out}
doc.update({"protocol": "cvpr25 (5 clicks, no box)", "data": "data/real", "targets": split,
            "results": dict(sorted(merged.items(), key=lambda kv: float(kv[0])))})
path.write_text(json.dumps(doc, indent=2) + "\n")
