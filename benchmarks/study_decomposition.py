"""Where the synthetic-to-real gap comes from: the same recognizer recipe trained on the real
training set as the generator would render it.

The default chain's synthetic set differs from the real one in two ways at once: it is *rendered*
(the generator's blur, its lost backgrounds) and it is *sampled* (new identities and their
within-identity spread drawn in feature space). This script separates the two on the real
recognizer instance's own training set (same images, same labels, same image count):

- recon: every real image x replaced by G(f(x)) - the generator's rendering of the teacher's
  feature of x. Real identities, real per-image variation as far as f carries it; only the
  rendering differs. recon vs synthetic isolates sampling; real vs recon isolates rendering.
- linear: every real image x replaced by the generator's linear path alone, W f(x) + b (generators
  trained with `model.linear_base`): what the image decoder's residual adds to a ridge map.
- blur: every real image blurred (Gaussian) until its high-frequency energy (mean squared
  Laplacian of the grey image) matches G(f)'s: the part of rendering that is sharpness alone.

Run after the default chain (`kedro run`): reads data/05_model_input/recognizer_real_packed, the
teacher and generator the chain trained, conf/base's recognizer recipe and the FaceWorld
benchmarks; trains one recognizer per set (~6 CPU minutes each on 2 quiet cores) in --work, and
writes benchmarks/results/decomposition.json with the real and synthetic rows of the chain's own
verification.json beside them.

    python benchmarks/study_decomposition.py [--sets recon,blur] [--data data] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torchvision.transforms.functional import gaussian_blur

from _env import machine  # benchmarks/_env.py (scripts run from benchmarks/)
from face_pipelines.image_tensors import images_to_uint8
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.io.packed import PackedImages, PackedWriter
from face_pipelines.metrics.benchmarks import verification_table
from face_pipelines.models.inference import extract_features, load_recognizer
from face_pipelines.models.vec2face import load_vec2face
from face_pipelines.synthesis.attrop import generate_images
from face_pipelines.training.recognizer import RecognizerConfig, train_recognizer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "decomposition.json"
SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


def sharpness(images: np.ndarray) -> float:
    """Mean squared Laplacian of the grey images (uint8 [N, H, W, 3]) on a 0-1 scale."""
    x = torch.from_numpy(images).float().mean(-1, keepdim=True).permute(0, 3, 1, 2) / 255.0
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return float(F.conv2d(x, k).pow(2).mean())


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    k = 2 * int(np.ceil(3 * sigma)) + 1
    out = gaussian_blur(x, [k, k], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).numpy()


def linear_render(gen: torch.nn.Module, feats: np.ndarray) -> np.ndarray:
    """The generator's linear path alone (W f + b) as uint8 [N, H, W, 3] images."""
    if getattr(gen, "linear_base", None) is None:
        raise SystemExit("--sets linear needs a generator trained with model.linear_base: true")
    size = gen.config.image_size
    with torch.no_grad():
        x = gen.linear_base(torch.as_tensor(feats, dtype=torch.float32)).view(-1, 3, size, size)
    return images_to_uint8(x)


def write_packed(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    if root.exists():  # PackedWriter renames its .partial folder into place when complete
        return root
    with PackedWriter(root, image_size=images.shape[1], num_classes=int(labels.max()) + 1) as w:
        w.add_batch(images, labels)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sets", default="recon,blur", help="comma list of recon, linear, blur")
    ap.add_argument("--data", default=str(REPO / "data"), help="the project's data/ folder")
    ap.add_argument("--work", default="/tmp/decomposition", help="training sets and recognizers")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--verification",
        default=None,
        help="the chain's verification.json (default: <data>/08_reporting/verification.json)",
    )
    ap.add_argument(
        "--generator",
        default=None,
        help="a Vec2Face checkpoint to render recon with (default: the chain's, from its report)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    real_root = data / "05_model_input" / "recognizer_real_packed"
    packed = PackedImages(real_root)
    images, labels = packed.get_batch(np.arange(len(packed)))
    teacher_ckpt = json.loads((data / "06_models/teacher/teacher_summary.json").read_text())
    v2f_report = json.loads((data / "08_reporting/vec2face_report.json").read_text())
    chain_file = Path(args.verification or data / "08_reporting/verification.json")
    chain = json.loads(chain_file.read_text())
    recipe = yaml.safe_load((REPO / "conf/base/parameters_recognizer.yml").read_text())
    cfg = RecognizerConfig(**recipe["recognizer"]["train"])

    t0 = time.perf_counter()
    teacher, _ = load_recognizer(teacher_ckpt["checkpoint"])
    feats = extract_features(teacher, real_root, progress=False)
    gen = load_vec2face(args.generator or v2f_report["checkpoint"]).eval()
    recon = generate_images(gen, feats, 64, torch.Generator().manual_seed(0))
    render_s = time.perf_counter() - t0
    s_real, s_recon = sharpness(images), sharpness(recon)
    blurred = {s: sharpness(blur(images[:512], s)) for s in SIGMAS}
    sigma = min(SIGMAS, key=lambda s: abs(np.log(blurred[s] / s_recon)))
    print(
        f"sharpness real {s_real:.5f}, G(f) {s_recon:.5f}; blur sigma {sigma} -> {blurred[sigma]:.5f}"
    )

    sets = {}
    for name in args.sets.split(","):
        if name == "recon":
            sets[name] = write_packed(work / "recon_packed", recon, labels)
        elif name == "linear":
            sets[name] = write_packed(work / "linear_packed", linear_render(gen, feats), labels)
        elif name == "blur":
            sets[name] = write_packed(work / "blur_packed", blur(images, sigma), labels)
        else:
            raise SystemExit(f"unknown set {name!r}; expected recon, linear or blur")
    checkpoints, seconds = {}, {}
    for name, root in sets.items():
        t = time.perf_counter()
        summary = train_recognizer(root, work / f"rec_{name}", cfg, "cpu", progress=False)
        checkpoints[name] = summary["checkpoint"]
        seconds[name] = round(time.perf_counter() - t, 1)
    bench = {b: str(p) for b, p in chain["benchmarks"].items()}
    table = verification_table(checkpoints, bench, torch.device("cpu"), progress=False)

    rows = {}
    for name, res in {**chain["results"], **table["results"]}.items():
        acc = {b: round(100 * r["accuracy"], 2) for b, r in res.items() if isinstance(r, dict)}
        rows[name] = {**acc, "mean": round(float(np.mean(list(acc.values()))), 2)}
    real_mean = rows["real"]["mean"]
    for row in rows.values():
        row["ratio_to_real"] = round(row["mean"] / real_mean, 3)
    print(f"{'training set':<12} " + " ".join(f"{b:>7}" for b in bench) + "    mean  ratio")
    for name in ("real", "blur", "recon", "linear", "synthetic"):
        if name in rows:
            r = rows[name]
            print(
                f"{name:<12} "
                + " ".join(f"{r[b]:>7.2f}" for b in bench)
                + f"  {r['mean']:>6.2f}  {r['ratio_to_real']:.3f}"
            )
    out = {
        "machine": machine(),
        "images": int(len(labels)),
        "identities": int(len(np.unique(labels))),
        "sharpness": {
            "real": s_real,
            "recon": s_recon,
            "blur_sigma": sigma,
            "blur": blurred[sigma],
            "blur_by_sigma": blurred,
        },
        "generator": args.generator or v2f_report["checkpoint"],
        "render_seconds": round(render_s, 1),
        "train_seconds": seconds,
        "recipe": cfg.model_dump(),
        "accuracy": rows,
    }
    write_text_atomic(Path(args.out), json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
