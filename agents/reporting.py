"""Where the metrics go while an agent trains: the run folder, TensorBoard and Weights & Biases.

    from agents.callbacks import EvalCallback
    from agents.reporting import RunLogger

    logger = RunLogger("runs/mine", report_to="tensorboard")
    agent.learn(100_000, callback=[EvalCallback(eval_every=10), logger])

:class:`RunLogger` is a callback (put it after any callback that adds metrics, such as the evaluation) that
appends each iteration's metrics to ``metrics.jsonl``, rewrites ``metrics.csv``, redraws ``curves.png``
after each evaluation (and every ``plot_every`` iterations), and sends every metric to the loggers that
``report_to`` names, under the names of the README's metric table (``objective/scores``, ``eval/gold``,
...), against the step ``charts/timesteps`` (response tokens so far), as the curves are drawn.

The loggers are optional extras: ``pip install "textenv[tensorboard]"`` or ``"textenv[wandb]"``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.callbacks import BaseCallback

REPORT_TO = ("none", "tensorboard", "wandb")


def parse_report_to(report_to: str | Sequence[str] | None) -> list[str]:
    """``"tensorboard,wandb"``, ``["wandb"]``, ``"none"`` or None as a list of logger names."""
    if report_to is None:
        return []
    names = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = sorted(set(names) - set(REPORT_TO))
    if unknown:
        raise ValueError(f"report_to: unknown {', '.join(unknown)}; choose from {', '.join(REPORT_TO)}")
    return [n for n in dict.fromkeys(names) if n != "none"]


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir`` (``torch.utils.tensorboard``)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                'report_to="tensorboard" needs the tensorboard package: pip install "textenv[tensorboard]"'
            ) from error
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Metrics to a Weights & Biases run; the same ``run_id`` (the training command keeps one per run
    folder, in ``config.json``) continues the same W&B run."""

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "textenv",
        config: dict[str, Any] | None = None,
        run_id: str | None = None,
    ):
        try:
            import wandb
        except ImportError as error:
            raise ImportError(
                'report_to="wandb" needs the wandb package: pip install "textenv[wandb]"'
            ) from error
        run_dir = Path(run_dir)
        run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in (run_id or run_dir.resolve().name))
        self.run = wandb.init(
            project=project,
            name=run_dir.name,
            id=run_id[-64:],
            resume="allow",
            dir=str(run_dir),
            config=config or {},
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def csv_columns(rows: list[dict[str, float]]) -> list[str]:
    """Every key of any row, in order of first appearance."""
    return list(dict.fromkeys(k for row in rows for k in row))


def write_csv(rows: list[dict[str, float]], path: Path) -> list[str]:
    """Rows of metrics as CSV (written whole, then renamed into place); returns the columns."""
    keys = csv_columns(rows)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return keys


class RunLogger(BaseCallback):
    """Writes the run folder as training goes and feeds the loggers (see the module docstring).

    Args:
        run_dir: the folder (made if need be).
        report_to: ``"none"``, ``"tensorboard"``, ``"wandb"``, or several (``"tensorboard,wandb"``).
        title: the curves' title.
        plot_every: redraw ``curves.png`` every N iterations as well as after each evaluation (0: only then
            and at the end).
        config: the run's settings, for W&B.
        wandb_project: the W&B project.
        run_id: the W&B run's id (default: the folder's name); a resumed run passes the same.
        print_line: a function that turns the metrics into the line printed per iteration (None: silent).
    """

    def __init__(
        self,
        run_dir: str | Path,
        report_to: str | Sequence[str] | None = "none",
        title: str = "",
        plot_every: int = 0,
        config: dict[str, Any] | None = None,
        wandb_project: str = "textenv",
        print_line: Any = None,
        run_id: str | None = None,
    ):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.names = parse_report_to(report_to)
        self.title = title
        self.plot_every = plot_every
        self.config = config
        self.wandb_project = wandb_project
        self.run_id = run_id
        self.print_line = print_line
        self.loggers: list[Any] = []
        self.csv_keys: list[str] = []  # the columns metrics.csv has now

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def _init_callback(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # the metrics of the iterations the agent has (a resumed run drops any logged after its checkpoint)
        from textenv.atomic import write_text

        write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in self.agent.history))
        self.csv_keys = write_csv(self.agent.history, self.csv_path)
        for name in self.names:
            if name == "tensorboard":
                self.loggers.append(TensorBoardLogger(self.run_dir / "tensorboard"))
            elif name == "wandb":
                self.loggers.append(WandbLogger(self.run_dir, self.wandb_project, self.config, self.run_id))

    def _on_step(self) -> bool:
        metrics = self.locals["metrics"]
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if set(metrics) <= set(self.csv_keys):  # the usual case: one more row
            with self.csv_path.open("a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.csv_keys).writerow(metrics)
        else:  # a new column (the first evaluation, say): the file again, with it
            self.csv_keys = write_csv(self.agent.history, self.csv_path)
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        for logger in self.loggers:
            logger.log(numbers, step=int(metrics["charts/timesteps"]))
        evaluated = any(k.startswith("eval/") for k in metrics)
        if evaluated or (self.plot_every and self.agent.iterations % self.plot_every == 0):
            self.plot()
        if self.print_line is not None:
            self.print_line(metrics)
        return True

    def plot(self) -> Path:
        from agents import evaluation

        label = type(self.agent).__name__
        return evaluation.plot_curves(
            {label: self.agent.history}, self.run_dir / "curves.png", title=self.title
        )

    def _on_training_end(self) -> None:
        if self.agent.history:
            self.plot()
        for logger in self.loggers:
            logger.close()
        self.loggers = []


__all__ = ["REPORT_TO", "RunLogger", "TensorBoardLogger", "WandbLogger", "parse_report_to", "write_csv"]
