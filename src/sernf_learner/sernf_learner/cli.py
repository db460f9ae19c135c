"""``sernf-train``: run SERNF training stages from a YAML config (no ROS needed).

Examples::

    sernf-train offline --config config/point_offline.yaml --out runs/point
    sernf-train online_rl --config config/point_online.yaml --out runs/point_online \\
        --init-policy runs/point/policy_offline_rl
    sernf-train offline --config config/point_offline.yaml --out runs/point --resume
    sernf-train il --config config/point_offline.yaml --out runs/point_il --nproc 2

Data-parallel training (stages il, critic_warmup, offline_rl): ``--nproc N`` starts N
processes with ``torchrun --standalone`` on this machine (gloo on CPUs, NCCL with
``trainer.device=cuda``: one GPU per process). Across machines, run torchrun yourself on each::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        -m sernf_learner.cli il --config ... --out ...

Batch sizes in the config are the *combined* batch (split evenly over the processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

import yaml

from sernf_learner.configs import load_config

_STAGE_HELP = """\
stages (paper Alg. 3):
  il             Stage I   imitation learning: NLL of demo chunks, successful episodes only
  critic_warmup  Stage II  critic TD warm-up (HL-Gauss CE) with the frozen IL policy; actor untouched
  offline_rl     Stage III actor-critic on all offline data: max min-Q - lambda * NLL(data)
  online_rl      Stage IV  collect with best-of-N in the simulated env, update on mixed batches
                           (rho = 0.5 offline), imitation term on offline samples only
  distill        DAgger distillation of a teacher (scripted point expert or a policy checkpoint)
                 into the student, with observation noise
schedules:
  offline        il -> critic_warmup -> offline_rl
  full           il -> critic_warmup -> offline_rl -> online_rl

Outputs in --out: policy_<stage>/ (deployable Policy checkpoints), checkpoints/ (resumable
trainer state), metrics.jsonl, tb/ (TensorBoard), summary.json.
"""


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)  # plain YAML scalars / lists only


def _parse_schedule(text: str) -> str:
    from sernf_learner.trainer import parse_schedule  # validates; the trainer parses it again

    try:
        parse_schedule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sernf-train",
        description="Train a SERNF policy (flow actor + chunk critic) with the paper's stages.",
        epilog=_STAGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", type=_parse_schedule,
                        help="a stage, a schedule, or stages joined by commas, e.g. offline_rl,online_rl")
    parser.add_argument("--config", required=True, help="YAML run config (e.g. config/point_offline.yaml)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, exported policies)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in --out (starts fresh if there is none)")
    parser.add_argument("--init-policy", default=None,
                        help="start from this Policy checkpoint directory instead of a fresh model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                        metavar="KEY=VALUE", help="override a config value, e.g. --set il.steps=100 (repeatable)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel processes on this machine (starts torchrun; stages il, "
                             "critic_warmup, offline_rl; batch sizes are split evenly)")
    return parser


def _torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """This command line again, without ``--nproc``, under ``torchrun --standalone``."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "sernf_learner.cli", *rest]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.nproc < 1:
        print(f"sernf-train: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, dict(args.overrides))
    except (OSError, ValueError) as exc:
        print(f"sernf-train: {exc}", file=sys.stderr)
        return 2
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return subprocess.run(_torchrun_command(argv, args.nproc), check=False).returncode
    from sernf_learner import distributed  # torch import only once the arguments are fine
    from sernf_learner.trainer import Trainer

    try:
        distributed.init_from_env(config.trainer.device)
        trainer = Trainer(config, args.out, args.stage, resume=args.resume, init_policy=args.init_policy)
    except ValueError as exc:
        print(f"sernf-train: {exc}", file=sys.stderr)
        distributed.shutdown()
        return 2
    try:
        summary = trainer.run()
    finally:
        distributed.shutdown()
    if trainer.rank == 0:
        print(json.dumps({"out": str(trainer.out), "results": summary.get("results", {}),
                          "wall_time_s": summary.get("wall_time_s")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
