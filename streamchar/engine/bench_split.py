"""``streamchar bench stream --split``: the benchmark's rows, then its overlap-on rows again with the decoders
in a second process (:func:`streamchar.engine.split_run.run_split`), each with its ratio to the single-process row."""

from __future__ import annotations

from streamchar.engine.bench import bench_stream
from streamchar.engine.split_run import run_split


def bench_with_split(cfg, **options) -> dict:
    """:func:`~streamchar.engine.bench.bench_stream` of the ``--config`` preset with ``options``, plus one row
    per step count with the decoders on rank 1 (``rtf_single_over_split``: how much faster the split runs)."""
    result = bench_stream(cfg, **options)
    single = {r["steps"]: r for r in result["rows"] if r["row"] == "all on" and r["overlap"]}
    split = run_split(cfg, _split_rank0, options, random_init=options.get("random_init", False))
    for row in split["rows"]:
        row["row"] = "decoders on rank 1"
        if row["steps"] in single:
            row["rtf_single_over_split"] = round(
                single[row["steps"]]["real_time_factor"] / row["real_time_factor"], 3
            )
    result["rows"] += split["rows"]
    return result


def _split_rank0(engine, options: dict) -> dict:
    """Rank 0 of ``bench stream --split``: the overlap-on rows with the decoders on the other rank."""
    split = {**options, "overlap": "on", "ablate": False, "profile": None, "presets": None}
    return bench_stream(engine.cfg, **split, engine=engine)
