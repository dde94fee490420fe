"""Calibration check for FaceWorld: is the world hard enough, and is identity really in the faces?

1. Materialises the default FaceWorld (cached) under --root.
2. Trains a small CNN with a CosFace head (plain torch, 2 threads) on the `train` pool for a fixed
   wall-clock budget, holding out one image per identity.
3. Reports verification accuracy (insightface protocol: flip test, squared L2, 10 contiguous folds,
   threshold from the other 9 folds) on fw_lfw, fw_cfp and fw_age, plus identification accuracy on
   the held-out train images.
4. Cheap-cue baselines: linear classifiers on per-image mean colour (and on a 4x4 grid of mean
   colours): identification on the same held-out images, and verification on fw_lfw pairs with
   logistic regression on |colour difference| features (10-fold).

Target: the recognizer lands between 85% and 98% on every protocol, and the mean-colour classifier
stays far below it. Results go to benchmarks/results/faceworld_calibration.json.

Accuracy follows the number of training samples, so on a shared (busy) CPU the wall-clock budget
buys fewer samples than on an idle laptop: the JSON records samples_seen; --max-samples caps it.

    python benchmarks/calibrate_faceworld.py [--root data/01_raw/faceworld] [--minutes 4]
        [--threads 2] [--max-samples 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from face_pipelines.faceworld import FaceWorldConfig, materialise_faceworld
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.io.verification_bin import read_verification_bin

RESULTS = Path(__file__).resolve().parent / "results" / "faceworld_calibration.json"


class ResBlock(nn.Module):
    """conv3x3(stride) -> BN -> PReLU -> conv3x3 -> BN, plus a 1x1 shortcut when the shape changes."""

    def __init__(self, c_in: int, c: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.PReLU(c),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.short = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return self.body(x) + self.short(x)


class SmallFaceNet(nn.Module):
    """The project's CPU-sized recognizer shape: stride-2 stem (16) + 4 stride-2 residual stages
    (32/64/128/256) -> BN2d -> flatten -> Linear -> BatchNorm1d, about 15M MACs at 64 px."""

    def __init__(self, size: int, dim: int = 256):
        super().__init__()
        layers, c_in = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16)], 16
        for c in (32, 64, 128, 256):
            layers.append(ResBlock(c_in, c, 2))
            c_in = c
        layers.append(nn.BatchNorm2d(c_in))
        self.features = nn.Sequential(*layers)
        side = size // 32
        self.fc = nn.Linear(c_in * side * side, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.bn(self.fc(self.features(x).flatten(1)))


class CosFaceHead(nn.Module):
    """Normalised class weights; target logit cos(theta) - m, all logits scaled by s."""

    def __init__(self, dim: int, n_classes: int, s: float = 32.0, m: float = 0.35):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, emb, labels):
        cos = F.linear(F.normalize(emb), F.normalize(self.weight))
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return F.cross_entropy(self.s * (cos - self.m * onehot), labels), cos


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,H,W] in [-1, 1] (insightface normalisation)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Flip-test embeddings (image + mirrored image, summed, L2-normalised)."""
    model.eval()
    out = []
    for s in range(0, len(images), batch):
        x = to_tensor(images[s : s + batch]).contiguous(memory_format=torch.channels_last)
        e = model(x) + model(torch.flip(x, dims=[3]))
        out.append(F.normalize(e).numpy())
    return np.concatenate(out)


def verification_accuracy(
    emb: np.ndarray, issame: np.ndarray, folds: int = 10
) -> tuple[float, float]:
    """insightface protocol: squared L2 on normalised embeddings, threshold from the other folds."""
    d = ((emb[0::2] - emb[1::2]) ** 2).sum(1)
    thr = np.arange(0, 4, 0.01)
    fold_of = np.repeat(np.arange(folds), int(np.ceil(len(d) / folds)))[: len(d)]
    accs = []
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        acc_tr = [((d[tr] < t) == issame[tr]).mean() for t in thr]
        t_best = thr[int(np.argmax(acc_tr))]
        accs.append(((d[te] < t_best) == issame[te]).mean())
    return float(np.mean(accs)), float(np.std(accs))


def fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, steps: int = 300) -> nn.Linear:
    """Multinomial logistic regression (standardised inputs, L-BFGS)."""
    xt = torch.from_numpy(x).float()
    yt = torch.from_numpy(y).long()
    lin = nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xt), yt) + 1e-4 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def colour_features(images: np.ndarray, grid: int) -> np.ndarray:
    """Mean colour per image (grid=1) or per cell of a grid x grid layout, in [0, 1]."""
    n, h, w, _ = images.shape
    x = images.reshape(n, grid, h // grid, grid, w // grid, 3).astype(np.float32) / 255.0
    return x.mean(axis=(2, 4)).reshape(n, -1)


def standardise(train: np.ndarray, *others: np.ndarray):
    """Scale features by the training mean/std."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return [(a - mu) / sd for a in (train, *others)]


def colour_verification(images: np.ndarray, issame: np.ndarray, folds: int = 10) -> float:
    """Logistic regression on |mean-colour difference| features of each pair, 10-fold."""
    c = colour_features(images, 1)
    diff = np.abs(c[0::2] - c[1::2])
    feats = np.concatenate([diff, diff**2, c[0::2] * c[1::2]], 1)
    fold_of = np.repeat(np.arange(folds), int(np.ceil(len(feats) / folds)))[: len(feats)]
    accs = []
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        a, b = standardise(feats[tr], feats[te])
        lin = fit_linear(a, issame[tr].astype(int), 2, steps=100)
        with torch.no_grad():
            pred = lin(torch.from_numpy(b).float()).argmax(1).numpy()
        accs.append((pred == issame[te]).mean())
    return float(np.mean(accs))


def load_pool(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All images of a folder pool, their identities and image index within the identity."""
    labels = pd.read_parquet(root / "labels.parquet")
    imgs = np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p in labels["path"]])
    index = labels["path"].str.slice(7, 10).astype(int).to_numpy()
    return imgs, labels["identity"].to_numpy(), index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--root", default="data/01_raw/faceworld", help="FaceWorld root (materialised if needed)"
    )
    ap.add_argument("--minutes", type=float, default=4.0, help="training wall-clock budget")
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 is faster on a busy CPU)"
    )
    ap.add_argument(
        "--max-samples", type=int, default=0, help="also stop after this many samples (0: no cap)"
    )
    ap.add_argument("--workers", type=int, default=2, help="render workers if materialising")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    config = FaceWorldConfig()
    t0 = time.perf_counter()
    info = materialise_faceworld(config, args.root, num_workers=args.workers, progress=True)
    t_mat = time.perf_counter() - t0
    root = Path(args.root)
    images, ident, index = load_pool(root / "train")
    n_cls = int(ident.max()) + 1
    last = pd.Series(index).groupby(ident).transform("max").to_numpy()
    test = index == last  # one held-out image per identity
    x_tr, y_tr = images[~test], ident[~test]
    print(f"train pool: {len(images)} images, {n_cls} identities, {test.sum()} held out")

    model, head = SmallFaceNet(config.image_size), CosFaceHead(256, n_cls)
    model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    budget, batch, step, seen = args.minutes * 60.0, 128, 0, 0
    t_start = time.perf_counter()
    model.train()
    while True:
        frac = (time.perf_counter() - t_start) / budget
        if args.max_samples:
            frac = max(frac, seen / args.max_samples)
        if frac >= 1.0:
            break
        lr = 0.1 * min(1.0, (step + 1) / 200) * (1.0 - frac) ** 2
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(x_tr), batch)
        x = to_tensor(x_tr[idx]).contiguous(memory_format=torch.channels_last)
        flip = torch.from_numpy(rng.random(batch) < 0.5)
        x[flip] = torch.flip(x[flip], dims=[3])
        loss, _ = head(model(x), torch.from_numpy(y_tr[idx]).long())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        step, seen = step + 1, seen + batch
        if step % 200 == 0:
            print(
                f"step {step} loss {loss.item():.3f} lr {lr:.4f} {seen / (time.perf_counter() - t_start):.0f} img/s"
            )
    t_train = time.perf_counter() - t_start

    # identification on held-out train images: recognizer vs mean colour
    emb_te = embed(model, images[test])
    w = F.normalize(head.weight.detach()).numpy()
    id_acc_rec = float(((emb_te @ w.T).argmax(1) == ident[test]).mean())
    id_acc_colour = {}
    for grid in (1, 4):
        a, b = standardise(colour_features(x_tr, grid), colour_features(images[test], grid))
        lin = fit_linear(a, y_tr, n_cls)
        with torch.no_grad():
            pred = lin(torch.from_numpy(b).float()).argmax(1).numpy()
        id_acc_colour[f"grid{grid}"] = float((pred == ident[test]).mean())

    results = {}
    for name in ("fw_lfw", "fw_cfp", "fw_age"):
        imgs, issame = read_verification_bin(root / "eval" / f"{name}.bin")
        acc, std = verification_accuracy(embed(model, imgs), issame)
        results[name] = {"recognizer_acc": acc, "recognizer_std": std}
        results[name]["mean_colour_linear_acc"] = colour_verification(imgs, issame)
        print(
            f"{name}: recognizer {acc:.4f} +- {std:.4f}   mean-colour linear {results[name]['mean_colour_linear_acc']:.4f}"
        )
    print(
        f"identification (held-out train images, {n_cls} classes): recognizer {id_acc_rec:.4f}, "
        f"mean-colour linear {id_acc_colour['grid1']:.4f}, 4x4 colour-grid linear {id_acc_colour['grid4']:.4f}"
    )

    out = {
        "device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} threads",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "faceworld": {
            "config_hash": info["config_hash"],
            "image_size": config.image_size,
            "materialise_s": round(t_mat, 1),
            "cached": info["cached"],
        },
        "recognizer": {
            "arch": "residual 16/32/64/128/256 -> 256 (stride 32), CosFace s=32 m=0.35",
            "train_s": round(t_train, 1),
            "steps": step,
            "samples_seen": seen,
            "batch": batch,
        },
        "verification": results,
        "identification_heldout": {
            "classes": n_cls,
            "recognizer": id_acc_rec,
            "mean_colour_linear": id_acc_colour["grid1"],
            "colour_grid4x4_linear": id_acc_colour["grid4"],
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
