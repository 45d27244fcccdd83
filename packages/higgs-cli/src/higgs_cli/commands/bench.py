"""`higgs bench`: the model at its real size with random weights."""

import click

from higgs_cli import __version__
from higgs_cli.commands.common import friendly


@click.command()
@click.option(
    "--layers",
    type=click.IntRange(1, 28),
    default=28,
    show_default=True,
    help="Real-size layers to build (of 28); fewer for a quick look.",
)
@click.option(
    "--bits",
    type=click.Choice(["0", "4", "6", "8"]),
    multiple=True,
    default=("0", "8", "4"),
    show_default=True,
    help="Precisions to time: 0 is unquantized --dtype (repeatable).",
)
@click.option(
    "--dtype",
    type=click.Choice(["bfloat16", "float16", "float32"]),
    default="bfloat16",
    show_default=True,
    help="Float type of the random weights (and of activations).",
)
@click.option(
    "--group-size",
    type=click.Choice(["32", "64", "128"]),
    default="64",
    show_default=True,
    help="Quantization group size, with --bits.",
)
@click.option(
    "--frames", type=click.IntRange(2), default=16, show_default=True, help="Timed decode steps."
)
@click.option(
    "--prompt",
    "prompt_length",
    type=click.IntRange(8),
    default=256,
    show_default=True,
    help="Prompt positions for prefill.",
)
@click.option(
    "--batch",
    "batch_sizes",
    type=click.IntRange(1, 64),
    multiple=True,
    help="Time batched decoding at these batch sizes instead (repeatable: --batch 1 --batch 8).",
)
@friendly
def bench(layers, bits, dtype, group_size, frames, prompt_length, batch_sizes):
    """Time the model at its real size with random weights (no download)."""
    import mlx.core as mx

    from higgs_core.bench import run, run_batched

    click.echo(f"higgs {__version__}, mlx {mx.__version__}, device {mx.default_device()}")
    if batch_sizes:
        for b in bits:
            figures = run_batched(
                layers=layers,
                dtype=getattr(mx, dtype),
                bits=int(b),
                group_size=int(group_size),
                sizes=tuple(sorted(set(batch_sizes))),
                frames=frames,
                prompt_length=prompt_length,
            )
            click.echo("\n" + "\n".join(figures.lines()))
        return
    for b in bits:
        figures = run(
            layers=layers,
            dtype=getattr(mx, dtype),
            bits=int(b),
            group_size=int(group_size),
            frames=frames,
            prompt_length=prompt_length,
        )
        click.echo("\n" + "\n".join(figures.lines()))
