"""The shared training loop: exact resume, non-finite losses, accumulation, several optimizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from face_pipelines.image_tensors import to_device_normalised as normalise
from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.io.packed import PackedImages
from face_pipelines.losses.gan import frozen_parameters
from face_pipelines.training.data import AugmentationConfig, PackedFaceDataset, make_loader
from face_pipelines.training.engine import NonFiniteLossError, TrainState, fit
from face_pipelines.training.schedule import build_scheduler

from .helpers import TinyNet, make_packed

EPOCHS, BATCH = 3, 8  # 48 images -> 6 steps per epoch


class Stop(Exception):
    """Simulates the process dying (raised from the log callback)."""


@pytest.fixture(scope="module")
def packed_root(tmp_path_factory):
    return make_packed(tmp_path_factory.mktemp("engine") / "packed", n=48, size=8)


def classify_step(batch, state):
    images, labels = batch
    with state.autocast():
        logits = state.model(normalise(images, state.device))
        loss = nn.functional.cross_entropy(logits, labels)
    state.backward_and_step(loss)
    return {"loss": loss, "acc": (logits.argmax(1) == labels).float().mean()}


def build(packed_root, init_seed=0, grad_accum_steps=1, batch=BATCH, accum_lr_steps=None):
    torch.manual_seed(init_seed)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = accum_lr_steps or EPOCHS * (48 // BATCH)
    sched = build_scheduler(opt, "poly", total_steps=steps, warmup_steps=2)
    state = TrainState.create(
        model, opt, sched, device="cpu", grad_clip=5.0, grad_accum_steps=grad_accum_steps
    )
    ds = PackedFaceDataset(PackedImages(packed_root), augmentation=AugmentationConfig.hsface())
    loader = make_loader(ds, batch_size=batch, seed=7, num_workers=0)
    return state, loader


def recorder(store: dict, stop_at: int | None = None):
    def log(metrics, step):
        if "loss" in metrics:
            store[step] = (metrics["loss"], metrics["lr"])
            if stop_at is not None and step == stop_at:
                raise Stop
        else:
            store[f"epoch{step}"] = metrics

    return log


def test_resume_reproduces_the_uninterrupted_run(packed_root, tmp_path):
    reference: dict = {}
    state, loader = build(packed_root)
    history = fit(
        classify_step,
        state,
        loader,
        EPOCHS,
        tmp_path / "a",
        log=recorder(reference),
        log_every=1,
        progress=False,
    )
    assert len(history) == EPOCHS and state.step == EPOCHS * 6
    assert {"epoch/loss", "epoch/acc", "epoch/images_per_s", "epoch/time_s"} <= set(history[0])
    assert reference[18][0] < reference[1][0]  # it learns
    # The logged lr is the one the step used: warm-up 2 steps, then poly over the other 16.
    assert [reference[s][1] for s in (1, 2, 3, 4)] == pytest.approx(
        [0.05, 0.1, 0.1, 0.1 * (1 - 1 / 16) ** 2]
    )
    final = {k: v.clone() for k, v in state.model.state_dict().items()}

    # Epoch-granular: die at step 9 (epoch 2), resume from the end-of-epoch-1 checkpoint.
    partial: dict = {}
    state, loader = build(packed_root)
    with pytest.raises(Stop):
        fit(
            classify_step,
            state,
            loader,
            EPOCHS,
            tmp_path / "b",
            log=recorder(partial, 9),
            log_every=1,
            progress=False,
        )
    assert load_checkpoint(tmp_path / "b" / "last.pt")["meta"]["step"] == 6
    resumed: dict = {}
    state, loader = build(packed_root, init_seed=123)  # different init: the checkpoint must win
    fit(
        classify_step,
        state,
        loader,
        EPOCHS,
        tmp_path / "b",
        log=recorder(resumed, None),
        log_every=1,
        progress=False,
    )
    assert sorted(k for k in resumed if isinstance(k, int)) == list(range(7, 19))
    for step in range(7, 19):
        assert resumed[step][0] == pytest.approx(reference[step][0], abs=1e-6, rel=0)
        assert resumed[step][1] == pytest.approx(reference[step][1], abs=1e-12)
    assert resumed["epoch3"]["epoch/loss"] == pytest.approx(
        reference["epoch3"]["epoch/loss"], abs=1e-6
    )
    for k, v in state.model.state_dict().items():
        torch.testing.assert_close(v, final[k], atol=1e-6, rtol=0)

    # Mid-epoch: checkpoint every 2 steps, die at step 11, resume at step 10 inside epoch 2.
    state, loader = build(packed_root)
    with pytest.raises(Stop):
        fit(
            classify_step,
            state,
            loader,
            EPOCHS,
            tmp_path / "c",
            log=recorder({}, 11),
            log_every=1,
            checkpoint_every_steps=2,
            progress=False,
        )
    meta = load_checkpoint(tmp_path / "c" / "last.pt")["meta"]
    assert (meta["step"], meta["epoch"], meta["batch_in_epoch"]) == (10, 1, 4)
    resumed = {}
    state, loader = build(packed_root, init_seed=5)
    fit(
        classify_step,
        state,
        loader,
        EPOCHS,
        tmp_path / "c",
        log=recorder(resumed),
        log_every=1,
        checkpoint_every_steps=2,
        progress=False,
    )
    assert min(k for k in resumed if isinstance(k, int)) == 11
    for step in range(11, 19):
        assert resumed[step][0] == pytest.approx(reference[step][0], abs=1e-6, rel=0)
    assert resumed["epoch2"]["epoch/loss"] == pytest.approx(
        reference["epoch2"]["epoch/loss"], abs=1e-6
    )

    # A finished run resumes to nothing.
    state, loader = build(packed_root)
    assert fit(classify_step, state, loader, EPOCHS, tmp_path / "a", progress=False) == []
    assert state.step == 18


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(packed_root, tmp_path):
    epoch_end_weights = {}

    def poisoned_step(batch, state):
        out = classify_step(batch, state) if state.step != 9 else None
        if out is None:  # step 9 (epoch 2): the loss blows up
            images, labels = batch
            loss = nn.functional.cross_entropy(state.model(normalise(images, "cpu")), labels)
            state.backward_and_step(loss * float("nan"))
        return out

    def remember(state, metrics):
        epoch_end_weights[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    state, loader = build(packed_root)
    with pytest.raises(NonFiniteLossError, match="step 9, epoch 1") as info:
        fit(poisoned_step, state, loader, EPOCHS, tmp_path, epoch_end_fn=remember, progress=False)
    assert info.value.step == 9 and info.value.epoch == 1
    assert all(torch.isfinite(p).all() for p in state.model.parameters())  # never updated with NaN
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["meta"]["epoch"] == 1 and ckpt["meta"]["step"] == 6
    for k, v in ckpt["state_dict"]["model"].items():
        assert torch.equal(v, epoch_end_weights[1][k])

    # The engine's own check catches a step function that does its own backward.
    def manual_step(batch, state):
        return {"loss": torch.tensor(float("inf"))}

    state, loader = build(packed_root)
    with pytest.raises(NonFiniteLossError, match="step 0, epoch 0"):
        fit(manual_step, state, loader, 1, None, progress=False)


def test_gradient_accumulation_matches_the_big_batch(packed_root):
    def plain_step(batch, state):  # no dropout randomness between the two runs
        state.model.eval()
        images, labels = batch
        loss = nn.functional.cross_entropy(state.model(normalise(images, "cpu")), labels)
        state.backward_and_step(loss)
        return {"loss": loss}

    big, loader = build(packed_root, batch=8)
    fit(plain_step, big, loader, 1, None, progress=False)
    small, loader = build(packed_root, batch=4, grad_accum_steps=2)
    fit(plain_step, small, loader, 1, None, progress=False)
    assert big.step == small.step == 6
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_two_optimizers_gan_style(packed_root, tmp_path):
    def build_gan(seed=0):
        torch.manual_seed(seed)
        gen = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Tanh())
        disc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
        opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-3, betas=(0.9, 0.99))
        opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-3, betas=(0.9, 0.99))
        state = TrainState.create(
            {"gen": gen, "disc": disc},
            {"gen": opt_g, "disc": opt_d},
            {"gen": build_scheduler(opt_g, "cosine", 12, 2)},
            device="cpu",
            grad_clip={"gen": 2.0, "disc": None},
        )
        ds = PackedFaceDataset(PackedImages(packed_root))
        return state, make_loader(ds, batch_size=8, seed=1)

    def gan_step(batch, state):
        real = normalise(batch[0], "cpu")
        code = nn.functional.one_hot(batch[1], 4).float()
        gen, disc = state.models["gen"], state.models["disc"]
        fake = gen(code).view_as(real)
        d_loss = 0.5 * ((disc(real) - 1) ** 2).mean() + 0.5 * (disc(fake.detach()) ** 2).mean()
        state.backward_and_step(d_loss, "disc")
        with frozen_parameters(disc):
            g_loss = ((fake - real) ** 2).mean() + 0.1 * ((disc(fake) - 1) ** 2).mean()
            assert not any(p.requires_grad for p in disc.parameters())
        state.backward_and_step(g_loss, "gen")
        return {"loss": g_loss + d_loss, "g_loss": g_loss, "d_loss": d_loss}

    logs: dict = {}
    state, loader = build_gan()
    fit(
        gan_step,
        state,
        loader,
        1,
        tmp_path,
        log=lambda m, s: logs.setdefault(s, m),
        log_every=1,
        progress=False,
    )
    assert {"lr/gen", "lr/disc", "g_loss", "d_loss"} <= set(logs[3])
    assert logs[6]["lr/disc"] == pytest.approx(1e-3)  # no scheduler on D
    assert logs[6]["lr/gen"] < logs[3]["lr/gen"]  # cosine decay on G
    assert all(p.requires_grad for p in state.models["disc"].parameters())
    # Resume a second epoch from the saved G/D/optimizer states.
    reference = {k: v.clone() for k, v in state.models["gen"].state_dict().items()}
    state2, loader2 = build_gan(seed=9)
    fit(gan_step, state2, loader2, 1, tmp_path, progress=False)
    for k, v in state2.models["gen"].state_dict().items():
        assert torch.equal(v, reference[k])
    fit(gan_step, state2, loader2, 2, tmp_path, progress=False)
    assert state2.step == 12
