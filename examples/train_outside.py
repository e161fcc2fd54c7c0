"""A training run made outside memloc: plain PyTorch, no memloc imports.

It trains a small CNN (examples/outside_models.py) or a transformers ViT on digits or
Fashion-MNIST with a share of the training labels flipped to another class, and saves
what a researcher's own script typically leaves behind:

    OUT/data.npz                 x_train, y_train, x_test, y_test in training order
    OUT/labels.npy               the labels training used (noisy)
    OUT/true_labels.npy          the labels before the noise
    OUT/init.safetensors         the initialization            (--arch cnn)
    OUT/checkpoints/epoch_N.safetensors   one file per epoch    (--arch cnn)
    OUT/vit/                     config.json + model.safetensors of the init (--arch vit)
    OUT/checkpoints/checkpoint-STEP/      model.safetensors + trainer_state.json, one per epoch,
                                          as the Hugging Face Trainer writes them (--arch vit)

Then ``memloc import`` turns OUT into a memloc run folder (README, "Import a run
trained elsewhere"):

    python examples/train_outside.py --out outside --data digits --epochs 30
    memloc import outside/checkpoints --out runs/outside --model examples.outside_models:make_cnn \\
        --data outside/data.npz --labels outside/labels.npy --true-labels outside/true_labels.npy \\
        --init outside/init.safetensors
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

FASHION = Path(os.environ.get("MEMLOC_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def load_data(name: str, limit: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test), images float32 in [0, 1] of shape (N, H, W)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)
        x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.2, random_state=seed)
    elif name == "fashion-mnist":
        x_tr, y_tr = (
            _idx(FASHION / "train-images-idx3-ubyte.gz"),
            _idx(FASHION / "train-labels-idx1-ubyte.gz"),
        )
        x_te, y_te = _idx(FASHION / "t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
        x_tr, x_te = x_tr.astype(np.float32) / 255.0, x_te.astype(np.float32) / 255.0
    else:
        sys.exit(f"unknown data {name!r}; use digits or fashion-mnist")
    if limit is not None:
        keep = np.random.default_rng(seed).permutation(len(y_tr))[:limit]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def flip_labels(y: np.ndarray, share: float, classes: int, seed: int) -> np.ndarray:
    """Move ``share`` of the labels, chosen at random, to a different random class."""
    rng = np.random.default_rng(seed + 1)
    noisy = y.copy()
    chosen = rng.choice(len(y), size=round(share * len(y)), replace=False)
    noisy[chosen] = (y[chosen] + rng.integers(1, classes, size=len(chosen))) % classes
    return noisy


def make_model(arch: str, size: int, classes: int, width: int) -> torch.nn.Module:
    if arch == "cnn":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from examples.outside_models import make_cnn

        return make_cnn(1, classes, width)
    from transformers import ViTConfig, ViTForImageClassification

    # The same settings as examples.outside_models:make_vit's arguments (the README's import command).
    config = ViTConfig(**vit_settings(size, classes, width))
    return ViTForImageClassification(config)


def vit_settings(size: int, classes: int, width: int) -> dict:
    return {
        "image_size": size,
        "patch_size": 2 if size <= 8 else 4,
        "num_channels": 1,
        "hidden_size": width * 4,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": width * 8,
        "num_labels": classes,
    }


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def save_epoch(model: torch.nn.Module, out: Path, arch: str, epoch: int, step: int) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if arch == "cnn":
        name = out / "init.safetensors" if epoch == 0 else out / "checkpoints" / f"epoch_{epoch}.safetensors"
        save_file(state, str(name))
        return
    if epoch == 0:
        model.save_pretrained(out / "vit")  # config.json + model.safetensors: the --model folder and --init
        settings = {k: getattr(model.config, k) for k in vit_settings(8, 10, 8)}
        (out / "vit" / "model_args.json").write_text(json.dumps(settings))  # for --model-args
        return
    folder = out / "checkpoints" / f"checkpoint-{step}"
    model.save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": float(epoch)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--arch", choices=("cnn", "vit"), default="cnn")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_data(args.data, args.limit, args.seed)
    classes = int(max(y_tr.max(), y_te.max()) + 1)
    noisy = flip_labels(y_tr, args.noise, classes, args.seed)
    (args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "data.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    np.save(args.out / "labels.npy", noisy)
    np.save(args.out / "true_labels.npy", y_tr)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make_model(args.arch, x_tr.shape[-1], classes, args.width).to(device)
    x, y = torch.from_numpy(x_tr)[:, None].to(device), torch.from_numpy(noisy).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    save_epoch(model, args.out, args.arch, 0, 0)
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), device=device).split(args.batch_size):
            loss = F.cross_entropy(logits_of(model, x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        model.eval()
        with torch.no_grad():
            fit = (logits_of(model, x).argmax(1) == y).float().mean().item()
        print(f"epoch {epoch}: train accuracy on the given labels {fit:.3f}")
        save_epoch(model, args.out, args.arch, epoch, step)


if __name__ == "__main__":
    main()
