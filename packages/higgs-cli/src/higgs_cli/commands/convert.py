"""`higgs convert`: an MLX-quantized copy of a model."""

import shutil
from pathlib import Path

import click

from higgs_cli.commands.common import fail, friendly

# convert ---------------------------------------------------------------------------

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


@click.command()
@click.argument("src")
@click.argument("dst", type=click.Path())
@click.option("--bits", type=click.Choice(["4", "6", "8"]), required=True, help="Bits per weight.")
@click.option(
    "--group-size",
    type=click.Choice(["32", "64", "128"]),
    default="64",
    show_default=True,
    help="Weights sharing one scale and bias (smaller: closer to bf16, larger file).",
)
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
@friendly
def convert(src, dst, bits, group_size, force):
    """Quantize model SRC (hub id or folder) into folder DST."""

    from higgs_core import ModelNotFoundError, load_model, quantize, resolve_path, save_model

    out = Path(dst)
    try:
        src_path = resolve_path(src)
    except ModelNotFoundError as e:  # SRC is the argument here, not --model
        fail(f"{e} (the SRC to convert)")
    here, there = out.resolve(), src_path.resolve()
    if here == there or there in here.parents:
        fail(f"{dst} is the source model {src} or inside it: write the copy somewhere else")
    if out.exists() and not out.is_dir():
        fail(f"{dst} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        fail(f"{dst} is not empty (pass --force to write into it)")
    model = load_model(src_path)
    quantize(model, bits=int(bits), group_size=int(group_size))
    save_model(model, out)
    for name in TOKENIZER_FILES:
        if (src_path / name).is_file():
            shutil.copyfile(src_path / name, out / name)
    click.echo(f"wrote {bits}-bit model to {dst}", err=True)
