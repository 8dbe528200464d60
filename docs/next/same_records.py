"""Do two eval runs of one policy record the same thing on every problem? (A re-run under the
fixed batch rule against a run from before it: the same slots kept should give the same tokens,
if the GPU's kernels are deterministic.) Compares correct, items, peak_kv and mean_kv per problem.
usage: python docs/next/same_records.py OLD.json NEW.json"""

import json
import sys

if len(sys.argv) != 3:
    sys.exit(__doc__.splitlines()[-1])
try:
    old, new = (json.load(open(f))["records"] for f in sys.argv[1:3])
except (OSError, ValueError, KeyError) as e:  # no such file, not JSON, no records
    sys.exit(f"same_records.py: error: {type(e).__name__}: {e}")
keys = ("correct", "items", "peak_kv", "mean_kv")
differ = [i for i, (a, b) in enumerate(zip(old, new)) if any(a[k] != b[k] for k in keys)]
print(f"{len(old)} and {len(new)} records; {len(differ)} problems differ"
      + (f", the first: {differ[:10]}" if differ else ""))
sys.exit(1 if differ or len(old) != len(new) else 0)
