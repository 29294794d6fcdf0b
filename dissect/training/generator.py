"""Train the shipped toy generator from scratch: ``dissect train toy-generator``.

A DCGAN-style generator trained against a spectrally normalized discriminator with the hinge
loss (SN-GAN; Adam 2e-4, betas (0.0, 0.9), batch 32) on toy-world scenes
with seeds ``30_000_000 + i`` (disjoint from every probe and classifier seed), flipped
left-right at random. The shipped weights are an exponential moving average of the
generator's (decay 0.999), whose BatchNorm statistics are then re-estimated over fresh
samples, the usual way to get clean samples in eval mode.

Training checkpoints every ``checkpoint_every`` steps to ``<out>/toy_generator.ckpt`` and
resumes from it (``--resume``), so an interrupted run loses at most that many steps. The
checkpoint is read with ``weights_only=True`` like every other file this tool loads.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dissect.data.toyworld import LABEL_NUMBER, render_batch, render_scene
from dissect.errors import DissectError
from dissect.models.latents import sample_z
from dissect.models.weights import WEIGHTS_DIR
from dissect.models.zoo.toy import TOYGAN_WIDTH, TOYGAN_Z_DIM, ToyGenerator
from dissect.segmenters.registry import load_segmenter
from dissect.version import __version__

GAN_TRAIN_SEED_BASE = 30_000_000
TOYGAN_DISC_WIDTH = 32


class ToyDiscriminator(nn.Module):
    """Mirror of :class:`~dissect.models.zoo.toy.ToyGenerator`: 64x64 image -> one logit
    (real vs generated).

    ``spectral=True``: spectral normalization on every conv instead of BatchNorm (SN-GAN).
    """

    def __init__(self, width: int = TOYGAN_DISC_WIDTH, spectral: bool = False):
        super().__init__()
        w = width
        sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)

        def down(cin, cout, bn=True):
            bn = bn and not spectral
            mods: list[nn.Module] = [sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=not bn))]
            if bn:
                mods.append(nn.BatchNorm2d(cout))
            mods.append(nn.LeakyReLU(0.2 if not spectral else 0.1))
            return mods

        self.net = nn.Sequential(*down(3, w, bn=False), *down(w, 2 * w), *down(2 * w, 4 * w),
                                 *down(4 * w, 8 * w), sn(nn.Conv2d(8 * w, 1, 4, 1, 0)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's initialization: conv weights N(0, 0.02), BN weights N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _render_scenes(n: int, progress: bool) -> torch.Tensor:
    out = torch.empty(n, 3, 64, 64, dtype=torch.uint8)
    chunk = 500
    for i in tqdm(range(0, n, chunk), desc="training scenes", disable=not progress, leave=False):
        a, _ = render_batch(range(GAN_TRAIN_SEED_BASE + i, GAN_TRAIN_SEED_BASE + min(n, i + chunk)), 64)
        out[i:i + len(a)] = torch.from_numpy(a).permute(0, 3, 1, 2)
    return out


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


@torch.no_grad()
def recalibrate_batchnorm(gen: torch.nn.Module, seed: int = 12345, batches: int = 40,
                          batch_size: int = 128) -> None:
    """Replace every BatchNorm's running statistics by their average over fresh samples."""
    bns = [m for m in gen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        gen(torch.randn(batch_size, gen.z_dim, generator=g))
    for m in bns:
        m.momentum = 0.1
    gen.eval()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save images in [-1, 1] as one PNG grid (for watching training)."""
    from PIL import Image
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    n, h, w, _ = x.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + 2), nrow * (w + 2), 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = x[i]
    Image.fromarray(grid).save(path)


WEIGHTS_DTYPE = torch.float16  # the shipped generator's storage: half the file, the same samples


def save_generator(gen: torch.nn.Module, path: str | Path, dtype: torch.dtype = WEIGHTS_DTYPE) -> None:
    """Save ``gen``'s state as safetensors with its floating tensors stored as ``dtype``, and
    load those rounded values back into ``gen`` (kept float32), so that whatever is measured
    on ``gen`` afterwards is measured on exactly the weights that were written."""
    from safetensors.torch import save_file
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
             for k, v in gen.state_dict().items()}
    save_file(state, str(path))
    gen.load_state_dict(state)  # copy_ casts back to the module's float32


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path,
                      dtype: torch.dtype = WEIGHTS_DTYPE) -> ToyGenerator:
    """The EMA generator of a training checkpoint, BatchNorm re-estimated, saved as safetensors."""
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    gen = ToyGenerator(width=int(ck.get("width", TOYGAN_WIDTH)))
    gen.load_state_dict(ck["ema"])
    recalibrate_batchnorm(gen)
    save_generator(gen, out_path, dtype)
    return gen


OBJECT_MIN_FRACTION = 0.005  # an object is "found" in an image when it covers >= 0.5% of it


@torch.no_grad()
def evaluate_generator(gen: torch.nn.Module, n: int = 1000, seed: int = 99,
                       batch_size: int = 100) -> dict:
    """How often the toy segmenter finds each object in ``n`` generated images, next to how
    often it finds it in ``n`` real toy scenes and how often the scenes really hold it."""
    seg = load_segmenter("toy")
    objects = [name for name, cat in seg.concepts if cat == "object"]
    counts = {k: np.zeros(len(objects)) for k in ("generated", "real_segmented", "real_truth")}

    def found(lab_obj: torch.Tensor) -> np.ndarray:   # [B, H, W] label numbers -> [B, objects]
        px = lab_obj[0].numel()
        return np.stack([((lab_obj == seg.number(o)).flatten(1).sum(1) / px >= OBJECT_MIN_FRACTION).cpu().numpy()
                         for o in objects], 1)

    gen.eval()
    for i in range(0, n, batch_size):
        z = sample_z(min(batch_size, n - i), seed, gen.z_dim, i)
        x = ((gen(z) + 1) / 2).clamp(0, 1)
        x = (x * 255).round() / 255
        counts["generated"] += found(seg.segment(x)[:, 0]).sum(0)
        scenes = [render_scene(60_000_000 + j, 64) for j in range(i, i + len(z))]
        real = torch.from_numpy(np.stack([sc.image for sc in scenes])).permute(0, 3, 1, 2).float() / 255
        counts["real_segmented"] += found(seg.segment(real)[:, 0]).sum(0)
        truth = torch.from_numpy(np.stack([sc.layers["object"] for sc in scenes]))
        lut = torch.zeros(int(truth.max()) + 1, dtype=torch.long)
        for o in objects:
            if LABEL_NUMBER[o] < len(lut):
                lut[LABEL_NUMBER[o]] = seg.number(o)
        counts["real_truth"] += found(lut[truth]).sum(0)
    return {"images": n, "latent_seed": seed, "real_scene_seeds": f"60000000..{60_000_000 + n - 1}",
            "segmenter_sha256": seg.weights_sha256,
            "rule": f"an object is found when it covers >= {100 * OBJECT_MIN_FRACTION:g}% of the image",
            "objects": {o: {k: round(float(v[j]) / n, 4) for k, v in counts.items()}
                        for j, o in enumerate(objects)}}


def reevaluate_record(out_dir: str | Path | None = None) -> dict:
    """Measure again how often the (current) toy segmenter finds the objects of the generator
    in ``out_dir`` (default: the shipped one), and update ``segmenter_finds`` in its record:
    ``dissect train toy-generator --evaluate-only`` after the segmenter is retrained."""
    from safetensors.torch import load_file
    out = Path(out_dir) if out_dir else WEIGHTS_DIR
    missing = [n for n in ("toy_generator.safetensors", "toy_generator.json") if not (out / n).is_file()]
    if missing:
        raise DissectError(f"{out} has no {' or '.join(missing)}; pass the --out of a finished "
                           "`dissect train toy-generator` run")
    state = load_file(str(out / "toy_generator.safetensors"))
    gen = ToyGenerator.for_state_dict(state)
    gen.load_state_dict(state)
    record_path = out / "toy_generator.json"
    record = json.loads(record_path.read_text())
    record["segmenter_finds"] = evaluate_generator(gen)
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(record_path)
    return record


def train_generator(out_dir: str | Path | None = None, seed: int = 0, train_size: int = 24000,
                    steps: int = 22500, batch_size: int = 32, lr: float = 2e-4,
                    ema_decay: float = 0.999, checkpoint_every: int = 250, resume: bool = False,
                    progress: bool = True, variant: str = "sngan", width: int = TOYGAN_WIDTH,
                    disc_width: int = TOYGAN_DISC_WIDTH) -> dict:
    """``variant``: ``"sngan"`` (spectrally normalized discriminator, hinge loss, Adam betas
    (0.0, 0.9); the shipped weights) or ``"dcgan"`` (BatchNorm discriminator, non-saturating
    loss, Adam betas (0.5, 0.999): draws fewer, blurrier trees on the toy world)."""
    if variant not in ("dcgan", "sngan"):
        raise ValueError(f"variant must be dcgan or sngan, not {variant!r}")

    out = Path(out_dir) if out_dir else WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "toy_generator.ckpt"
    t0 = time.time()
    data = _render_scenes(train_size, progress)
    torch.manual_seed(seed)
    gen = ToyGenerator(width=width)
    disc = ToyDiscriminator(width=disc_width, spectral=variant == "sngan")
    dcgan_init(gen)
    if variant == "dcgan":
        dcgan_init(disc)
    ema = copy.deepcopy(gen).eval()
    betas = (0.5, 0.999) if variant == "dcgan" else (0.0, 0.9)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
    rng = torch.Generator().manual_seed(seed)
    step, history, elapsed = 0, [], 0.0
    train_threads = torch.get_num_threads()
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        ck_widths = (int(ck.get("width", TOYGAN_WIDTH)), int(ck.get("disc_width", TOYGAN_DISC_WIDTH)))
        if ck_widths != (width, disc_width):
            raise ValueError(f"the checkpoint {ckpt_path} was trained with --width {ck_widths[0]} "
                             f"--disc-width {ck_widths[1]}; resume with those")
        gen.load_state_dict(ck["gen"])
        disc.load_state_dict(ck["disc"])
        ema.load_state_dict(ck["ema"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        rng.set_state(ck["rng"])
        step, history, elapsed = int(ck["step"]), list(ck["history"]), float(ck["elapsed"])
        train_threads = int(ck.get("threads", torch.get_num_threads()))
    fixed_z = torch.randn(64, TOYGAN_Z_DIM, generator=torch.Generator().manual_seed(7))
    bar = tqdm(total=steps, initial=step, desc="toy generator", disable=not progress)
    t_run = time.time()
    d_sum = g_sum = 0.0
    while step < steps:
        idx = torch.randint(0, train_size, (batch_size,), generator=rng)
        real = data[idx]
        flip = torch.rand(batch_size, generator=rng) < 0.5
        real = torch.where(flip.view(-1, 1, 1, 1), real.flip(3), real).float() / 127.5 - 1.0
        z = torch.randn(batch_size, TOYGAN_Z_DIM, generator=rng)
        fake = gen(z)
        # discriminator: real -> 1, fake -> 0
        if variant == "sngan":  # hinge loss
            d_loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake.detach())).mean()
        else:
            d_loss = (F.softplus(-disc(real)).mean() + F.softplus(disc(fake.detach())).mean())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # generator: non-saturating loss
        g_loss = -disc(fake).mean() if variant == "sngan" else F.softplus(-disc(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        _ema_update(ema, gen, ema_decay if step > 500 else 0.0)
        step += 1
        d_sum += d_loss.item()
        g_sum += g_loss.item()
        bar.update(1)
        if step % checkpoint_every == 0 or step == steps:
            history.append({"step": step, "d_loss": round(d_sum / checkpoint_every, 4),
                            "g_loss": round(g_sum / checkpoint_every, 4)})
            d_sum = g_sum = 0.0
            now = time.time()
            elapsed += now - t_run
            t_run = now
            for b_ema, b_gen in zip(ema.buffers(), gen.buffers()):
                b_ema.copy_(b_gen)
            torch.save({"gen": gen.state_dict(), "disc": disc.state_dict(), "ema": ema.state_dict(),
                        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                        "rng": rng.get_state(), "step": step, "history": history,
                        "elapsed": elapsed, "threads": torch.get_num_threads(),
                        "width": width, "disc_width": disc_width}, str(ckpt_path) + ".tmp")
            Path(str(ckpt_path) + ".tmp").replace(ckpt_path)
            if progress:
                tqdm.write(f"step {step}: d {history[-1]['d_loss']}, g {history[-1]['g_loss']}, "
                           f"{elapsed:.0f} s")
            if step % (4 * checkpoint_every) == 0 or step == steps:
                with torch.no_grad():
                    ema.eval()
                    save_grid(ema(fixed_z), out / "toy_generator_progress.png")
    bar.close()
    final = copy.deepcopy(ema)
    recalibrate_batchnorm(final)
    save_generator(final, out / "toy_generator.safetensors")
    with torch.no_grad():
        save_grid(final(fixed_z), out / "toy_generator_samples.png")
    record = {
        "model": "ToyGenerator", "z_dim": TOYGAN_Z_DIM, "width": width, "disc_width": disc_width,
        "weights_dtype": str(WEIGHTS_DTYPE).replace("torch.", ""),
        "command": f"dissect train toy-generator --seed {seed} --train-size {train_size} --steps {steps} "
                   f"--batch-size {batch_size} --variant {variant} --width {width} --disc-width {disc_width}",
        "seed": seed, "train_size": train_size,
        "train_scene_seeds": f"{GAN_TRAIN_SEED_BASE}..{GAN_TRAIN_SEED_BASE + train_size - 1}",
        "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
        "variant": variant,
        "loss": "non-saturating (softplus) DCGAN loss" if variant == "dcgan" else "hinge loss, spectral-norm discriminator",
        "history": history,
        "train_seconds": round(elapsed + time.time() - t_run), "total_seconds": round(time.time() - t0),
        "tool_version": __version__, "torch_version": torch.__version__,
        "platform": platform.platform(), "threads": train_threads,
    }
    try:
        record["segmenter_finds"] = evaluate_generator(final)
    except Exception as exc:  # no toy segmenter yet: train it, then rerun with --resume
        record["segmenter_finds"] = {"error": f"{type(exc).__name__}: {exc}"}
    (out / "toy_generator.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
