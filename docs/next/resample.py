"""Re-choose a checkpoint's decoding settings on validation problems with sampling at
train.TEMPERATURE (checkpoints trained before the temperature was stored decoded greedily).
usage: python docs/next/resample.py IN.pt OUT.pt [N_VALID]"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lab import train  # noqa: E402
from lab.checkpoint import load_checkpoint  # noqa: E402

ck = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model, predictor, _ = load_checkpoint(sys.argv[1])
model, predictor = model.to(device).eval(), predictor.to(device)
ck["decoding"] = train.budgets_on_validation(model, predictor, int(sys.argv[3]) if len(sys.argv) > 3 else 100, device)
torch.save(ck, sys.argv[2])
