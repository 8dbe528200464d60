"""Where each walk of a trace starts, against the prompt. Reads the text `python generate.py
--policy P --problem N` prints (one problem's trace, eviction marks inline) and prints, per file,
the start nodes the prompt's review line gives A, B and C, how many of the trace's restatements
("check 12: C starts at ql, ...") name another node, and the node each walk ("C: ql>fc>hf") starts at.
why_wrong.py counts the same two things with WALK and RESTATED.
usage: python docs/next/starts.py TRACE.txt [...]"""
import os
import re
import sys

WALK = re.compile(r"(?m)(?:^|<think>)([ABC]): (\w+)>")  # a walk's line, "C: ql>fc>hf": its letter and start
RESTATED = re.compile(r"([ABC]) starts at (\w+)")  # a restatement, "check 12: C starts at ql": letter, start


def main(paths):
    for path in paths:
        if not os.path.isfile(path):
            sys.exit(f"starts.py: {path}: no such file")
        text = re.sub(r"\[evict[^\]]*\]", "", open(path).read())  # the marks cut words in two
        review = re.search(r"review \d+: (\w+) (\w+) (\w+)\.", text)
        if review is None or "<think>" not in text:
            sys.exit(f"starts.py: {path} holds no prompt with a review line and <think>: "
                     "give it what `python generate.py --problem N` prints")
        truth = dict(zip("ABC", review.groups()))
        thinking = text.split("<think>", 1)[1].split("</think>")[0]
        said = RESTATED.findall(thinking)
        wrong = [f"{letter} at {node}" for letter, node in said if truth[letter] != node]
        walks = WALK.findall(thinking)
        print(f"{os.path.basename(path)}: starts {' '.join(f'{k}={v}' for k, v in truth.items())}; "
              f"restatements naming another node: {len(wrong)} of {len(said)} ({', '.join(wrong[:5])}); walks start at "
              + ", ".join(f"{k} {v}" + ("" if truth[k] == v else " (wrong)") for k, v in walks))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.splitlines()[-1])
    main(sys.argv[1:])
