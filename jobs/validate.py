"""`batchscore validate CONFIG [--date D]`: config, input schema and model, without scoring.

Runs no Ray job: checks the config, lists and reads the footers of the input partitions, loads
the model (sha256 verified) and runs one forward pass on a handful of rows of the first file, so a
model/feature mismatch shows up now rather than at 2 a.m.
"""

from __future__ import annotations

import argparse
import sys


def validate(config: str, overrides: list[str], args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from jobs.cli import resolve_dates
    from pipeline.config import load_config
    from pipeline.run.preflight import prepare
    from pipeline.stages.predict import Predictor
    from pipeline.stages.preprocess import Preprocessor

    cfg = load_config(config, overrides)
    print(f"config   {config}: ok ({cfg.name}, config hash {cfg.digest()})")
    dates = resolve_dates(args, cfg)
    p = prepare(cfg, dates)
    meta = p.model_meta
    print(f"model    {cfg.model.uri}: ok ({meta.format}, version {meta.version}, sha256 {meta.sha256[:12]}…)")
    for part in p.inputs.partitions:
        print(f"input    {part.uri}: ok ({len(part.files)} files, {part.rows} rows)")
    print(f"columns  {p.requirements.columns}: present with usable types in every file")

    first = p.inputs.partitions[0].files[0]
    with p.inputs.root.fs.open_input_file(first.path) as f:
        sample = (
            pq.ParquetFile(f)
            .read_row_group(0, columns=[c for c in p.requirements.columns if c != cfg.input.partition_column])
            .slice(0, 16)
        )
    import pyarrow as pa

    sample = sample.append_column(
        cfg.input.partition_column, pa.array([p.inputs.partitions[0].date] * sample.num_rows)
    )
    spec = meta.spec() if not cfg.preprocessing.function else None
    batch = Preprocessor(
        spec,
        p.passthrough,
        cfg.preprocessing.function,
        required=p.requirements.columns,
        device_transforms=True,  # as in `score`: the predictor applies the numeric transforms
    )(sample)
    out = Predictor(
        p.source,
        p.passthrough,
        run_id="validate",
        score_column=cfg.output.score_column,
        device="cpu",
    )(batch)
    scores = out.column(cfg.output.score_column).to_numpy()
    print(
        f"forward  {sample.num_rows} rows of {first.uri}: ok (scores {scores.min():.4f}..{scores.max():.4f})"
    )


def main() -> int:
    from jobs.cli import main as cli_main

    return cli_main(["validate", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
