"""`batchscore validate CONFIG [--date D]`: config, input schema and model, without scoring.

Runs no Ray job: checks the config, lists and reads the footers of the input partitions, loads
the model (sha256 verified) and runs one forward pass on a handful of rows of the first file, so a
model/feature mismatch shows up now rather than at 2 a.m.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import ChallengerConfig, JobConfig


def validate(config: str, overrides: list[str], args: argparse.Namespace) -> None:
    from jobs.common import resolve_dates
    from pipeline.config import load_config
    from pipeline.run.preflight import prepare

    cfg = load_config(config, overrides)
    print(f"config   {config}: ok ({cfg.name}, config hash {cfg.digest()})")
    dates = resolve_dates(args, cfg)
    p = prepare(cfg, dates)
    meta = p.model_meta
    pinned = f" = registry version {meta.registry.version}" if meta.registry is not None else ""
    print(
        f"model    {cfg.model.uri}{pinned}: ok ({meta.format}, version {meta.version}, "
        f"sha256 {meta.sha256[:12]}…)"
    )
    for part in p.inputs.partitions:
        print(f"input    {part.uri}: ok ({len(part.files)} files, {part.rows} rows)")
    print(f"columns  {p.requirements.columns}: present with usable types in every file")
    from pipeline.stages.duplicates import find_duplicates, refuse

    found = find_duplicates(p.inputs, cfg.output.key_columns)  # what `score` would find
    if cfg.output.duplicate_keys == "fail":
        refuse(found)
    repeats = ", ".join(f"{d}: {len(x.keys)} keys on {x.rows} rows" for d, x in sorted(found.dates.items()))
    print(
        f"keys     {cfg.output.key_columns}: "
        + (f"repeat ({repeats}), {cfg.output.duplicate_keys}" if repeats else "unique within each date")
    )

    from pipeline.run.preflight import probe_model_output

    probe = probe_model_output(p)
    shown = []
    for name, values in probe.values.items():
        if values.ndim == 2:
            shown.append(f"{name} [{probe.rows}, {values.shape[1]}]")
        else:
            shown.append(f"{name} {values.min():.4f}..{values.max():.4f}")
    print(f"forward  {probe.rows} rows of {probe.uri}: ok ({', '.join(shown)})")
    for ch in cfg.challengers:
        _validate_challenger(cfg, ch, dates)


def _validate_challenger(cfg: JobConfig, ch: ChallengerConfig, dates: list[str]) -> None:
    """A challenger's model loaded (sha256 verified) and run on the same rows as the champion."""
    from pipeline.config import challenger_job
    from pipeline.errors import UserError
    from pipeline.run.preflight import prepare, probe_model_output

    p = prepare(challenger_job(cfg, ch), dates)
    try:
        probe = probe_model_output(p)
    except UserError:
        raise
    except Exception as e:  # e.g. torch.jit.Error: what `score` would report as the challenger failing
        raise UserError(
            f"challenger {ch.name}: model {ch.model.uri} raised on the first rows: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[-1][:300]}"
        ) from None
    ranges = ", ".join(f"{n} {v.min():.4f}..{v.max():.4f}" for n, v in probe.values.items() if v.ndim == 1)
    meta = p.model_meta
    print(
        f"challenger {ch.name}: model {ch.model.uri} ok ({meta.format}, version {meta.version}, "
        f"sha256 {meta.sha256[:12]}…); forward on {probe.rows} rows ok ({ranges}); table {ch.output.uri}"
    )


if __name__ == "__main__":  # `python -m jobs.validate ARGS`: the program, above the module
    from jobs.cli import run_as

    run_as("validate")
