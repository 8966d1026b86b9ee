"""``memnet.evaluation``: the former home of ``memnet evaluate``, now ``memnet.cli.evaluate``.

Kept so that ``python -m memnet.evaluation`` and imports from here keep working; it
belongs to the command floor (nothing below the commands may import it).
"""

from memnet.cli.evaluate import (  # noqa: F401  (the names callers use)
    COLUMNS,
    COSTLY_STEP_SLOTS,
    HEADERS,
    EvaluationError,
    build,
    cost_warning,
    default_config,
    evaluate_length,
    fit_only_keys,
    instantiate,
    load_checkpoint,
    main,
    markdown_table,
    parse_args,
    resolve_checkpoint,
    run,
    slots_for,
    takes_memory_size,
)

if __name__ == "__main__":
    main()
