"""``export``: a model to an ONNX file, or into an index folder, for the torch-free ONNX runtime."""

from __future__ import annotations

import click

from prodsearch.choices import DEFAULT_MODEL
from prodsearch.cli.app import cli, echo_json, json_option
from prodsearch.cli.lifecycle import human_size


@cli.command()
@click.argument("model", required=False)
@click.option("--out", type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False),
              help="Instead of --out: export the index's own model again into its folder.")
@click.option("--img-size", type=click.IntRange(min=32, max=1024), default=None,
              help="Input resolution of a named model [default: the model's own, e.g. 224 for lite0].")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="With --index: int8 quantizes the index's model, calibrated on its own catalog photos.")
@json_option
def export(model, out, index_dir, img_size, precision, as_json):
    """Export MODEL (a name or a checkpoint) to ONNX, for --runtime onnx without torch.

    The file holds the whole embedder (backbone, head, normalisation) with a dynamic batch axis and
    describes itself (model, weights, preprocessing), so 'prodsearch index --model FILE.onnx' uses
    it as it is. Commands export on their own when they need to; an index keeps its export.

    \b
    Example:
        prodsearch export lite0 --out lite0.onnx
        prodsearch export runs/shop/model.pt --out shop.onnx
        prodsearch export --index shop/idx --precision int8
    """
    if (out is None) == (index_dir is None):
        raise click.UsageError("give one of --out FILE.onnx or --index DIR")
    if index_dir is not None:
        if model or img_size:
            raise click.UsageError("--index exports the index's own model: leave out MODEL and --img-size")
        from prodsearch.indexer.models import export_index_model

        path = export_index_model(index_dir, precision)
        if as_json:
            echo_json({"path": str(path)})
        else:
            click.echo(f"Exported the model of {index_dir} to {path}")
        return
    if precision == "int8":
        raise click.UsageError("--precision int8 needs catalog photos to calibrate on: use it with --index DIR")
    from prodsearch.retrieval.onnx_export import export_model

    report = export_model(model or DEFAULT_MODEL, out, img_size=img_size)
    if as_json:
        echo_json(report.to_dict())
    else:
        size = report.config.data_config["input_size"][-1]
        click.echo(f"Exported {report.config.label} ({report.config.embed_dim}-d, {size} px) to {report.path}: "
                   f"{human_size(report.size_bytes)} in {report.seconds:.1f}s; ONNX Runtime's embeddings "
                   f"differ from torch's by at most {report.max_difference:.1e}")
