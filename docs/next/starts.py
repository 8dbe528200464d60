"""Where each walk of a trace starts, against the prompt. Reads the text `python generate.py
--policy P --problem N` prints (one problem's trace, eviction marks inline) and prints, per file,
the start nodes the prompt's review line gives A, B and C, how many of the trace's restatements
("check 12: C starts at ql, ...") name another node, and the node each walk ("C: ql>fc>hf") starts at.
usage: python docs/next/starts.py TRACE.txt [...]"""
import os
import re
import sys

if len(sys.argv) < 2:
    sys.exit(__doc__.splitlines()[-1])
for path in sys.argv[1:]:
    text = re.sub(r"\[evict[^\]]*\]", "", open(path).read())  # the marks cut words in two
    truth = dict(zip("ABC", re.search(r"review \d+: (\w+) (\w+) (\w+)\.", text).groups()))
    thinking = text.split("<think>", 1)[1].split("</think>")[0]
    said = re.findall(r"([ABC]) starts at (\w+)", thinking)
    wrong = [f"{letter} at {node}" for letter, node in said if truth[letter] != node]
    walks = re.findall(r"\n([ABC]): (\w+)>", "\n" + thinking)
    print(f"{os.path.basename(path)}: starts {' '.join(f'{k}={v}' for k, v in truth.items())}; "
          f"restatements naming another node: {len(wrong)} of {len(said)} ({', '.join(wrong[:5])}); walks start at "
          + ", ".join(f"{k} {v}" + ("" if truth[k] == v else " (wrong)") for k, v in walks))
