# Features for predictor_variants.py, on the CPU: labels and hidden states of teacher-forced traces
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))  # the repository root
import time, torch
from dynts import importance_labels
from lab import task, train
from lab.checkpoint import load_checkpoint
from model import get_encoding
torch.set_num_threads(2)
ck, n_train, n_valid, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model, pred0, meta = load_checkpoint(ck)
enc = get_encoding()
def feats(split, n, seed):
    res = []
    for p in task.problems(split, n, seed=seed, **meta["task"]):
        tokens, P, E, L = train.encode_batch([p], enc, "cpu")
        with torch.no_grad():
            labels, hidden = importance_labels(model, tokens[0], int(E[0]), int(L[0]))
        res.append(dict(family=p.family, answer=p.answer, tokens=tokens[0, :int(L[0])].clone(), P=int(P[0]), E=int(E[0]),
                        labels=labels[:int(L[0])].clone(), hidden=hidden[:int(L[0])].half()))
    return res
t = time.time()
va = feats("valid", n_valid, 0)
print(f"valid {time.time()-t:.0f}s", flush=True)
tr = feats("train", n_train, 777)
print(f"train {time.time()-t:.0f}s", flush=True)
torch.save(dict(tr=tr, va=va, budgets=meta["decoding"]["budgets"]), out)
