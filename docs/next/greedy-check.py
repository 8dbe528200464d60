"""Does a model trained on the paper regime's traces write them back when it decodes greedily?

A short version of the task (10 checks per step, a review of 3-9 sentences, positions to 2048),
trained for a few minutes; its validation line says how many problems of each family Full
solves. The first training of the paper regime drew the review's length at random, and every
model then reviewed to the end of its positions (0 of 100 validation problems solved).
usage: python docs/next/greedy-check.py OUT.pt [STEPS] [SEED]
"""
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lab import train  # noqa: E402

short = dict(train.TASK, n_filler=(10, 10), n_review=(3, 9))
train.TASK, train.SHORT_TASK = short, dict(short, n_filler=(2, 8), n_review=(2, 6))
train.CONFIGS = {name: replace(config, block_size=2048) for name, config in train.CONFIGS.items()}
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
train.main(out=sys.argv[1], force=True, steps=steps, seed=seed, valid_problems=140, predictor_traces=200,
           predictor_steps=1000, eval_traces=50)
