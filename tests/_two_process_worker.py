"""The worker of tests/test_multiprocess.py, run on every process of

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/_two_process_worker.py \\
        --model DIR --out DIR --batch-size B

It unlearns the saved tiny model once per scenario of ``scenarios()`` with micro-batch B per process and writes,
per process, what it drew (forget and retain dataset indices of every micro-batch, the seeds and rows of every
BS-S refresh) to ``OUT/<scenario>.rank<i>.json``; process 0 also writes the final weights
(``OUT/<scenario>.pt``) and the step log (``OUT/<scenario>.jsonl``). Then every process evaluates its shard of
the forget and retain splits with ``bs_ref.protocol.distributed.evaluate_sharded`` on the NPO model; process 0 writes
``OUT/eval.json``. Last, NPO once more with ``bs_ref.hf.UnlearningTrainer`` (``OUT/trainer_npo.pt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny import RECORDS, eval_records  # noqa: E402
from accelerate import Accelerator, PartialState  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from bs_ref import unlearn as unlearn_module  # noqa: E402
from bs_ref.beliefs import BeliefCache  # noqa: E402
from bs_ref.methods import METHODS, make_method  # noqa: E402
from bs_ref.protocol.distributed import evaluate_sharded  # noqa: E402

FORGET, RETAIN = RECORDS[:8], RECORDS[8:]
EVAL_SPLITS = {"forget": eval_records(RECORDS[:5]), "retain": eval_records(RECORDS[8:15])}  # odd sizes: uneven shards


def scenarios() -> dict[str, tuple[str, dict]]:
    """name -> (method, its hyper-parameters and run settings); shared by the worker and the one-process runs."""
    return {
        "npo": ("npo", {}),
        "bs_t": ("bs_t", {}),
        "graddiff_kl": ("graddiff", {"retain_loss": "kl"}),
        "bs_s": ("bs_s", {"belief_max_new_tokens": 12}),  # off-policy: one cache, the same on every process
        "bs_s_per_step": ("bs_s", {"belief_max_new_tokens": 12, "regime": "on_policy", "refresh_epochs": 0.0}),
    }


def make_config(name: str, batch_size: int, log_path: str | None = None) -> unlearn_module.UnlearnConfig:
    method, settings = scenarios()[name]
    own = {f.name for f in dataclasses.fields(METHODS[method])}
    hyper = {k: v for k, v in settings.items() if k in own}
    run = {k: v for k, v in settings.items() if k not in own}
    return unlearn_module.UnlearnConfig(
        method=make_method(method, **hyper),
        lr=3e-3,
        epochs=2,
        batch_size=batch_size,
        warmup=0.5,
        seed=0,
        progress=False,
        log_path=log_path,
        **run,
    )


class Recorder:
    """Records what one unlearning run draws on this process: the micro-batches and the BS-S refreshes."""

    def __init__(self):
        self.micro_batches: list[dict] = []
        self.refreshes: list[dict] = []

    def install(self, monkey: dict) -> None:
        original_step, recorder = unlearn_module.micro_step, self

        def micro_step(cfg, model, forget_batch, retain_batch=None, belief_batch=None, **kwargs):
            recorder.micro_batches.append(
                {
                    "forget": forget_batch["index"].tolist(),
                    "retain": retain_batch["index"].tolist() if retain_batch is not None else None,
                    "belief_rows": belief_batch["input_ids"].tolist() if belief_batch is not None else None,
                }
            )
            return original_step(cfg, model, forget_batch, retain_batch, belief_batch, **kwargs)

        class RecordingCache(BeliefCache):
            def refresh(self, model, tokenizer, prompts_by_index, step=None, epoch=None):
                beliefs = super().refresh(model, tokenizer, prompts_by_index, step=step, epoch=epoch)
                recorder.refreshes.append(
                    {
                        "seed": self.seed + self.refreshes - 1,
                        "indices": sorted(prompts_by_index),
                        "beliefs": beliefs.input_ids,
                    }
                )
                return beliefs

        monkey["micro_step"], monkey["BeliefCache"] = unlearn_module.micro_step, unlearn_module.BeliefCache
        unlearn_module.micro_step, unlearn_module.BeliefCache = micro_step, RecordingCache

    def as_dict(self) -> dict:
        return {"micro_batches": self.micro_batches, "refreshes": self.refreshes}


def run(name: str, model_dir: str, batch_size: int, log_path: str | None = None, recorder: Recorder | None = None):
    """One scenario on this process (or on one process, from the test): returns the unlearned model."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    monkey: dict = {}
    if recorder is not None:
        recorder.install(monkey)
    try:
        return unlearn_module.unlearn(model, tokenizer, FORGET, RETAIN, make_config(name, batch_size, log_path))
    finally:
        for key, value in monkey.items():
            setattr(unlearn_module, key, value)


def run_trainer(name: str, model_dir: str, batch_size: int, output_dir: str) -> dict:
    """The scenario with ``bs_ref.hf.UnlearningTrainer`` (the loop's optimiser and schedule); the final weights."""
    from transformers import TrainingArguments

    from bs_ref.hf import UnlearningTrainer

    cfg = make_config(name, batch_size)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    steps_per_epoch = len(FORGET) // (batch_size * PartialState().num_processes)
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        warmup_steps=round(cfg.warmup * steps_per_epoch),
        lr_scheduler_type="linear",
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)  # the loop's
    trainer = UnlearningTrainer(
        model,
        args,
        method=cfg.method,
        forget_dataset=FORGET,
        retain_dataset=RETAIN,
        processing_class=tokenizer,
        alpha=cfg.alpha,
        retain_loss=cfg.retain_loss,
        optimizers=(optimizer, None),
    )
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator()
    rank, out = accelerator.process_index, Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    for name in scenarios():
        recorder = Recorder()
        model = run(name, args.model, args.batch_size, str(out / f"{name}.jsonl"), recorder)
        (out / f"{name}.rank{rank}.json").write_text(
            json.dumps({"rank": rank, "world": accelerator.num_processes, **recorder.as_dict()})
        )
        if accelerator.is_main_process:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"{name}.pt")
        models[name] = model
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    weights = run_trainer("npo", args.model, args.batch_size, str(out / "trainer"))
    if accelerator.is_main_process:
        torch.save(weights, out / "trainer_npo.pt")
    per_split = evaluate_sharded(models["npo"], tokenizer, EVAL_SPLITS, max_new_tokens=16, batch_size=2)
    if accelerator.is_main_process:
        (out / "eval.json").write_text(json.dumps(per_split))
    accelerator.wait_for_everyone()
    # Tear the process group down before the interpreter exits: left to interpreter shutdown, a rank sometimes
    # aborted there ("terminate called without an active exception", SIGABRT) after all its work was written.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
