"""What each command does, as plain Python functions: they take a Config or a path and return a
result; the CLI only parses, calls, renders and picks the exit code.

One module per command of the CLI, named after it (``eval`` -> ``evaluate``):

- ``train``: ``train``, ``resume``, ``prepare_config``, ``default_run_dir``, ``make_run_dir``
- ``presets``: ``preset_descriptions``, ``preset_text``, ``copy_preset``, ``validate_preset``
- ``evaluate``: ``evaluate_checkpoint``, ``delta_against``, ``load_metrics``, ``result_of``,
  ``metric_directions``
- ``compare``: ``compare``
- ``prune``: ``prune``, ``prune_iteratively``, ``dense_copy`` (and the tensor-only path for
  checkpoints saved from Python without a config)
- ``finetune``: ``finetune``, ``default_finetune_dir``
- ``_common``: what several commands share (the data a checkpoint is evaluated or scored on)

``inspect`` and ``export`` read or write one file and need no workflow: the CLI calls
``io.inspect.inspect_file`` and ``io.export.export_checkpoint``. Nothing here renders: tables,
Markdown and CSV are in ``adapmtl_cli.report``. Import a workflow from its module
(``from adapmtl_cli.workflows.prune import prune``): the package re-exports nothing, so
``adapmtl_cli.workflows.prune`` is always the module, never a function of the same name.
"""
