# Predictor settings on validation traces (the proxy behind README's predictor steps): ranking and survival of the answer's values under DynTS
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))  # the repository root
import time, math, torch, torch.nn.functional as F, dynts, collections
from lab import train
from model import get_encoding
torch.set_num_threads(2)
d = torch.load(sys.argv[1], weights_only=True)
tr, va, budget = d["tr"], d["va"], d["budgets"][1]
enc = get_encoding()
X = torch.cat([t["hidden"][t["P"]:t["E"] + 1].float() for t in tr])
Y = torch.cat([t["labels"][t["P"]:t["E"] + 1] for t in tr]) * 1e4
print("train tokens", len(X), "budget", budget, flush=True)

def fit(steps=1500, lr=1e-3, batch=4096, loss="log", seed=0, n_traces=None):
    torch.manual_seed(seed)
    Xs, Ys = X, Y
    if n_traces:
        n = sum(t["E"] + 1 - t["P"] for t in tr[:n_traces]); Xs, Ys = X[:n], Y[:n]
    pred = dynts.ImportancePredictor(X.shape[1])
    opt = torch.optim.AdamW(pred.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(Xs), (batch,), generator=g)
        p, y = pred(Xs[idx]), Ys[idx]
        if loss == "log":
            l = F.mse_loss(torch.log1p(p), torch.log1p(y))
        elif loss == "mse":
            l = F.mse_loss(p, y)
        for grp in opt.param_groups:
            grp["lr"] = train.lr_at(step, steps, lr, warmup=min(50, steps // 10 + 1))
        opt.zero_grad(); l.backward(); opt.step()
    return pred.eval()

def survival(scores_fn):
    fam = collections.defaultdict(list)
    for t in va:
        E, P, toks = t["E"], t["P"], t["tokens"]
        T = E + 1
        scores = scores_fn(t)  # (T,) score per position, prompt protected by caller
        pol = train.ScriptedScores(budget, round(0.4 * budget), 0.3, scores)
        death = train.eviction_deaths(pol, toks[:T], None)
        alive = death >= T
        ok = []
        for item in t["answer"].split():
            v = enc.encode(item[2:4])
            hit = any(alive[i] and alive[i + 1] for i in range(P, E - 1) if toks[i] == v[0] and toks[i + 1] == v[1])
            ok.append(hit)
        fam[t["family"]].append(all(ok))
    allv = [x for v in fam.values() for x in v]
    return round(100 * sum(allv) / len(allv), 1), {k: round(100 * sum(v) / len(v)) for k, v in fam.items()}

def pred_scores(pred):
    def f(t):
        with torch.no_grad():
            s = pred(t["hidden"][:t["E"] + 1].float()).float()
        s[:t["P"]] = math.inf
        return s
    return f

def label_scores(t):
    s = t["labels"][:t["E"] + 1].clone().float(); s[:t["P"]] = math.inf; return s

def rho(pred):
    r = []
    for t in va:
        with torch.no_grad():
            s = pred(t["hidden"][t["P"]:t["E"] + 1].float())
        r.append(train.spearman(s, t["labels"][t["P"]:t["E"] + 1]))
    return round(sum(r) / len(r), 3)

print("labels (oracle-ish)", survival(label_scores), flush=True)
for name, kw in [("base", {}), ("6000 steps", dict(steps=6000)), ("seed 1", dict(seed=1))]:
    t0 = time.time()
    p = fit(**kw)
    print(f"{name:12s} rho {rho(p)} survive {survival(pred_scores(p))} ({time.time() - t0:.0f}s)", flush=True)
