"""``python -m progrpo_core bench``: does Pro-GRPO buy more reward per unit of compute?

Only the ``bench`` command imports this package (the library and the other commands never do):

* :mod:`.suite`      — the plan, the benchmarked methods, running them, aggregation, the command
* :mod:`.peers`      — ``--peers``: every method at its best stable rate against the faithful peers
* :mod:`.previews`   — ``--previews``: whether pooled (cheaper) pruning previews keep the proxy's ranking
* :mod:`.profiles`   — what each operation costs on real models (FLOPs), to price the bench's counts
* :mod:`.runs`       — budgeted training runs, driving the trainer's one loop
* :mod:`.probe`      — proxy fidelity (Spearman) and funnel replay on recorded groups
* :mod:`.auto`       — the fidelity-chosen ("auto") schedule
* :mod:`.efficiency` — wall-clock against compute on a wide denoiser
* :mod:`.report`     — tables, plots, ``report.md`` and ``results.json``
* :mod:`.rewards`    — sizes, memory and speed of the real reward models
  (``python -m progrpo_core.bench.rewards``)
"""


def main(argv: list[str] | None = None) -> int:
    if "--peers" in (argv or []):
        from .peers import main as peers

        return peers(argv)
    if "--previews" in (argv or []):
        from .previews import main as previews

        return previews(argv)
    from .suite import main as run

    return run(argv)
