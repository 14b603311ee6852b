"""The ``ddsd`` command line: each verb is a thin wrapper over the Python API."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ddsd",
    help="Dynamic dropout self-distillation: train, evaluate, compare, export small segmentation students.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Dynamic dropout self-distillation for small segmentation students."""


@app.command()
def demo(steps: int = typer.Option(20, min=1, help="optimiser steps"), seed: int = 0) -> None:
    """Train a tiny conv net for a few steps with DDSDLoss on random blobs and print the per-step stats."""
    import torch

    from ddsd import DDSDLoss

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    crit = DDSDLoss(num_classes=2)
    for step in range(steps):
        masks = (torch.rand(4, 1, 8, 8) > 0.7).float()
        masks = torch.nn.functional.interpolate(masks, size=(32, 32), mode="nearest")[:, 0].long()
        images = masks.unsqueeze(1).float().expand(-1, 3, -1, -1) + 0.8 * torch.randn(4, 3, 32, 32)
        out = crit(model(images), masks)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        crit.step()
        s = out.stats
        typer.echo(
            f"step {step:3d}  loss {out.loss.item():.4f}  rate {s['rate']:.3f}  "
            f"kept {s['kept_fraction']:.3f}  "
            f"class-acc {s['mean_class_acc']:.3f}"
        )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
