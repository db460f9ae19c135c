"""Control-plane fault campaign: learner kills, bad observations, foreign checkpoints,
injected rewards and episode events, over real DDS in isolated domains; prints a table.

    python bench/fault_campaign.py                 # 20 learner kills, 2 rounds of bad observations
    python bench/fault_campaign.py --kills 5 --repeats 1

What each trial kind checks is in tests/fault_campaign.py (the same code runs, shorter, in
tests/test_fault_campaign.py). Prints one line per trial as it goes, then the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the campaign and the harnesses it drives

import fault_campaign as fc  # noqa: E402 - after the path set-up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=20, help="learner SIGKILLs (default 20)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the five bad observations (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill timing")
    parser.add_argument("--lenient", action="store_true",
                        help="hold latency limit 1 s instead of 200 ms + one tick (loaded machines)")
    parser.add_argument("--skip-kills", action="store_true", help="only the policy-trust scene")
    args = parser.parse_args(argv)
    trials: list[fc.Trial] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sernf-fault-campaign-") as tmp:
        os.environ.update(fc.isolated_env())
        print(f"policy trust scene (ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']})", flush=True)
        trials += fc.policy_trust_campaign(Path(tmp) / "trust", repeats=args.repeats,
                                           strict_latency=not args.lenient)
        if not args.skip_kills:
            os.environ.update(fc.isolated_env())
            print(f"learner kill scene: {args.kills} kills (ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']})", flush=True)
            trials += fc.learner_kill_campaign(Path(tmp) / "kills", kills=args.kills, seed=args.seed)
    print()
    for t in trials:
        if not t.passed:
            print(f"FAILED {t.kind}: {t.detail}")
    print(fc.table(trials))
    print(f"\n{time.monotonic() - t0:.0f} s wall")
    return 0 if all(t.passed for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
