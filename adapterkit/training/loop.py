"""The training loop, on Accelerate: one process, or many under ``accelerate launch``.

Each optimizer step (step.py) takes the token mean of the global batch over ``grad_accum``
micro-batches; accel.py makes the ``Accelerator``, the log and the progress bar. Evaluation every ``eval.every`` steps, checkpoints every ``output.save_every`` steps, early
stopping on ``eval.metric``; the adapter is saved by the main process at the end, with
curves.png of the loss and learning rate. With ``stages`` (stages.py) each stage sets what
trains and gets a new optimizer and schedule when its first step comes (also after --resume).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from . import checkpoint, optim, sharding, stages
from . import resume as resume_mod
from ..errors import ConfigError
from .accel import Log, accelerator_for, progress, shutdown
from .adaptive import hooks_for
from .batches import BatchPlan
from .state import RunState
from .step import optimizer_step
from .config import TrainConfig
from .data import collate, tokenize
from .evaluate import evaluate
from .metrics import HIGHER_IS_BETTER
from .setup import build_model, generation_set, model_task, read_data


@dataclasses.dataclass
class TrainResult:
    """What a run leaves: the model (adapter attached), where the adapter went, the metrics."""

    model: torch.nn.Module
    tokenizer: object
    output_dir: Path
    steps: int
    first_eval: Optional[dict]
    last_eval: Optional[dict]
    history: list
    stopped_early: bool = False
    train_tokens: int = 0
    train_seconds: float = 0.0


def _improved(value: float, best: Optional[float], metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if HIGHER_IS_BETTER[metric] else value < best - min_delta


def _prepare(config: TrainConfig, accelerator):
    """Model, tokenizer, examples and the batch plan."""
    task = model_task(config)
    train_records, eval_records, names, num_labels = read_data(config)
    model, tokenizer = build_model(config, task, num_labels or None)
    d = config.data
    train_set = tokenize(train_records, tokenizer, d, d.train, names)
    eval_set = tokenize(eval_records, tokenizer, d, d.eval or d.train, names) if eval_records else []
    o = config.optim
    plan = BatchPlan(len(train_set), o.batch_size, accelerator.num_processes, o.grad_accum, o.seed)
    plan.check()
    gen = generation_set(config, tokenizer, eval_records)
    return task, model, tokenizer, train_set, eval_set, plan, gen, names


def train(
    config: Union[TrainConfig, dict, str],
    resume: Union[bool, str] = False,
    callbacks: Sequence[Callable[[int, dict], None]] = (),
) -> TrainResult:
    """Train an adapter as ``config`` says; returns a TrainResult (the adapter is saved too).

    ``config``: a TrainConfig, a dict of sections, or a YAML path. ``resume``: True continues from
    the newest checkpoint in ``output.dir`` (an error if there is none); ``"auto"`` does when there
    is one and otherwise starts fresh (saying so on stderr). The checkpoint is read and checked
    whole before training starts (resume.py). ``callbacks``: called as ``f(step, logs)`` after each step.
    """
    from accelerate.utils import set_seed

    from ..paths import check_output_folder

    resume_mod.check_mode(resume)
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_yaml(config) if isinstance(config, (str, Path)) else TrainConfig.from_dict(config)
    check_output_folder(config.output.dir, "output.dir")
    accelerator = accelerator_for(config)
    try:
        sharding.check(config, accelerator)
        set_seed(config.optim.seed)
        return _run(config, accelerator, resume, callbacks)
    finally:
        shutdown(accelerator)


class _Run:
    """One run's pieces: model, data, optimizer, schedule, log and early-stopping state."""

    def __init__(self, config: TrainConfig, accelerator):
        self.config, self.acc, self.out = config, accelerator, Path(config.output.dir)
        (self.task, model, self.tokenizer, self.train_set, self.eval_set, self.plan, self.gen, self.names) = _prepare(
            config, accelerator
        )
        o = config.optim
        self.adapter_params = {n for n, p in model.named_parameters() if p.requires_grad}
        self.stage, self.saved_names = -1, None
        if config.stages:
            self._prepare_stages(model)
        else:
            self.total = o.max_steps or self.plan.steps_per_epoch * o.epochs
            self.model, self.optimizer = self._prepare_model(model)
        self.model.train()
        self.hooks = hooks_for(accelerator.unwrap_model(self.model), self.total)
        if accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers("adapterkit", config={"steps": self.total, "lr": o.lr})
        self.state = RunState(config=config.to_dict())  # step, stage and history are kept here
        self.log = Log(accelerator, self.out, self.state.history)

    @property
    def step(self) -> int:
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    def _prepare_model(self, model):
        """(prepared model, optimizer) and the schedule; FSDP builds the optimizer after sharding."""
        o = self.config.optim

        def make_optimizer(m):
            optimizer = optim.build_optimizer(m, o)
            self.scheduler = optim.build_schedule(optimizer, o, self.total)
            return optimizer

        if sharding.requested():
            return sharding.prepare(self.acc, model, make_optimizer)
        return self.acc.prepare(model, make_optimizer(model))

    def _prepare_stages(self, model) -> None:
        """Stage bounds; the names every stage trains (what checkpoints hold); stage 0 set up."""
        self.stage_ends = stages.ends(self.config.stages, self.config.optim, self.plan.steps_per_epoch)
        self.total = self.stage_ends[-1]
        names: set[str] = set()
        for k, stage in enumerate(self.config.stages):  # checks every stage before the first step
            names |= set(stages.apply(model, stage, self.adapter_params, f"stages[{k}]"))
        self.saved_names, self.model = names, model
        self.enter_stage(0)

    def enter_stage(self, k: int) -> None:
        """Stage ``k``: its parameters trainable, a new optimizer and schedule over its length; the
        model is prepared again (DDP registers the parameters that train when it wraps a model)."""
        stage, model = self.config.stages[k], self.acc.unwrap_model(self.model)
        stages.apply(model, stage, self.adapter_params, f"stages[{k}]")
        self.model = self.acc.prepare(model)
        o = stage.optim(self.config.optim)
        groups = None
        if stage.layer_decay is not None:
            if o.loraplus_ratio is not None:
                raise ConfigError(f"stages[{k}].layer_decay does not combine with optim.loraplus_ratio; drop one.")
            groups = stages.decayed_groups(model, o.lr, stage.layer_decay)
        optimizer = optim.build_optimizer(model, o, groups)
        start = self.stage_ends[k - 1] if k else 0
        self.scheduler = optim.build_schedule(optimizer, o, self.stage_ends[k] - start)
        self.optimizer = self.acc.prepare(optimizer)
        self.stage = k

    def fresh_start(self) -> None:
        """A run without --resume starts a new log and drops checkpoints of an earlier run there."""
        if self.acc.is_main_process:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        self.acc.wait_for_everyone()

    def resume(self, saved) -> None:
        """Continue from checkpoint ``saved`` (read and checked against the config already)."""
        if self.hooks is not None:
            raise ConfigError(
                "--resume: this run trains an AdaLoRA adapter, and checkpoints do not hold its rank "
                "allocator (sensitivity averages, masks); train again without --resume."
            )
        same = True
        if self.config.stages:  # a checkpoint at a stage's end: the next stage starts afresh
            k = stages.stage_at(saved.step, self.stage_ends)
            same = saved.state.stage == k
            if k != self.stage:
                self.enter_stage(k)
        optimizer = self.optimizer if same else None
        resume_mod.check_fit(saved, self.acc.unwrap_model(self.model), optimizer, self.scheduler, self.saved_names)
        got = checkpoint.restore(saved, self.acc, self.model, optimizer, self.scheduler)
        self.state.step, self.state.best, self.state.bad_evals = got.step, got.best, got.bad_evals
        self.state.first_eval = got.first_eval
        self.state.history.extend(got.history)

    def evaluate(self) -> dict:
        e = self.config.eval
        result = evaluate(
            self.acc,
            self.model,
            self.task,
            self.eval_set,
            e.batch_size or self.config.optim.batch_size,
            self.tokenizer.pad_token_id,
            e.max_batches,
            self.gen,
        )
        self.log(self.step, {f"eval_{k}": v for k, v in result.items()})
        return result

    def should_stop(self, result: dict) -> bool:
        """Early stopping: ``eval.patience`` evaluations in a row without improvement."""
        e, state = self.config.eval, self.state
        if _improved(result[e.metric], state.best, e.metric, e.min_delta):
            state.best, state.bad_evals = result[e.metric], 0
        else:
            state.bad_evals += 1
        return e.patience is not None and state.bad_evals >= e.patience

    def batches(self) -> list[dict]:
        pad, device = self.tokenizer.pad_token_id, self.acc.device
        return [
            {k: v.to(device) for k, v in collate([self.train_set[i] for i in idx], pad).items()}
            for idx in self.plan.micro_batches(self.step, self.acc.process_index)
        ]

    def checkpoint(self) -> None:
        self.state.stage = self.stage
        checkpoint.save(
            self.acc,
            self.out / "checkpoints",
            self.model,
            self.optimizer,
            self.scheduler,
            self.state,
            self.config.output.keep,
            self.saved_names,
        )


def _open_checkpoint(config: TrainConfig, accelerator, resume):
    """The checkpoint to resume from, read and checked against the config before the model loads."""
    found = resume_mod.find(Path(config.output.dir), resume, config.output.save_every, accelerator.is_main_process)
    if found is None:
        return None
    saved = resume_mod.read(found, accelerator.process_index)
    resume_mod.check_config(saved, config)
    return saved


def _run(config: TrainConfig, accelerator, resume, callbacks) -> TrainResult:
    saved = _open_checkpoint(config, accelerator, resume)
    run = _Run(config, accelerator)
    if saved is not None:
        run.resume(saved)
    else:
        run.fresh_start()
    e, out_cfg = config.eval, config.output
    if run.eval_set and e.at_start and run.step == 0:
        run.state.first_eval = run.evaluate()
    last_eval, stopped = None, False
    bar = progress(accelerator, config, run.total, run.step)
    started, tokens_run = time.perf_counter(), 0
    while run.step < run.total:
        if config.stages and stages.stage_at(run.step, run.stage_ends) != run.stage:
            run.enter_stage(stages.stage_at(run.step, run.stage_ends))
        loss, tokens = optimizer_step(
            accelerator,
            run.model,
            run.optimizer,
            run.scheduler,
            run.batches(),
            run.task,
            config.optim.max_grad_norm,
            run.hooks,
            run.step + 1,
        )
        run.step += 1
        tokens_run += tokens
        logs = {
            "loss": loss,
            "lr": run.scheduler.get_last_lr()[0],
            "tokens": tokens_run,
            "tokens_per_s": tokens_run / max(1e-9, time.perf_counter() - started),
        }
        if config.stages:
            logs["stage"] = run.stage
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{logs['lr']:.2e}", tok_s=f"{logs['tokens_per_s']:.0f}")
        if run.step % out_cfg.log_every == 0 or run.step == run.total:
            run.log(run.step, logs)
        if run.eval_set and e.every and (run.step % e.every == 0 or run.step == run.total):
            last_eval = run.evaluate()
            stopped = run.should_stop(last_eval)
        if out_cfg.save_every and (run.step % out_cfg.save_every == 0 or stopped):
            run.checkpoint()
        for callback in callbacks:
            callback(run.step, logs)
        if stopped:
            break
    bar.close()
    seconds = time.perf_counter() - started
    if run.eval_set and last_eval is None:
        last_eval = run.evaluate()
    model = accelerator.unwrap_model(run.model)
    _save_final(accelerator, model, config, run.out, run.names, run.saved_names, run.adapter_params)
    return TrainResult(
        model,
        run.tokenizer,
        run.out,
        run.step,
        run.state.first_eval,
        last_eval,
        run.state.history,
        stopped,
        tokens_run,
        seconds,
    )


def _save_final(accelerator, model, config: TrainConfig, out: Path, names, staged=None, adapter_params=()) -> None:
    """The adapter (PEFT layout), the config it was trained with, the class names, the curves
    (curves.png): main process only."""
    import yaml

    import adapterkit as ak

    accelerator.wait_for_everyone()
    whole = None  # a sharded model's adapter tensors, gathered whole by all processes
    if config.adapter is not None and sharding.is_sharded(model):
        whole = sharding.gather(model, sharding.adapter_tensor_names(model))
    if accelerator.is_main_process:
        if config.adapter is not None:
            ak.save_adapter(model, str(out), overwrite=True, state_dict=whole)  # this run's output folder
        elif hasattr(model, "save_pretrained"):
            model.save_pretrained(out)  # no adapter: the whole fine-tuned model
        if staged:  # weights the stages trained outside the adapter
            from safetensors.torch import save_file

            save_file(
                checkpoint.trainable_state(model, set(staged) - set(adapter_params)), str(out / "trained.safetensors")
            )
        (out / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if names:
            (out / "labels.json").write_text(json.dumps(names))
        if config.output.plot:
            from .plot import plot_run

            plot_run(out, f"{Path(config.model.name).name} -> {out.name}")
    accelerator.wait_for_everyone()
