#!/usr/bin/env bash
# quickstart.sh — a real federation on this machine in one command.
#
# Installs missing dependencies (deploy/install-deps.sh), builds fedlora in
# Release, makes a federation CA and certificates (deploy/certs.sh), makes a
# small base model (fedlora-node init-model, then a short pretraining with
# `fedlora-node train --full` on generic maintenance logs; cached for the
# next run), generates one private, non-IID data shard per node (synthetic
# predictive-maintenance logs of four sites whose machines behave
# differently: fedlora-node gen-data), then runs one coordinator and four
# nodes on 127.0.0.1 over mutual TLS for a handful of rounds and prints,
# per round: participants, bytes uploaded (and what f32 would have cost),
# bytes downloaded, every node's held-out loss and the round time.
#
# Exit status 0 only if the federated held-out loss went down.
#
# Run from a source tree (deploy/quickstart.sh) it installs dependencies and
# builds; run from an installed tree (PREFIX/share/fedlora/scripts/
# quickstart.sh after `cmake --install`) it uses PREFIX/bin's binaries (or
# FEDLORA_QS_BIN, or the ones on PATH) and builds nothing.
#
# Environment (all optional):
#   FEDLORA_QS_BUILD   build directory      (default: <repo>/build-quickstart)
#   FEDLORA_QS_DIR     run directory        (default: $FEDLORA_QS_BUILD/quickstart;
#                                            installed: ./fedlora-quickstart)
#   FEDLORA_QS_ROUNDS  federated rounds     (default: 6)
#   FEDLORA_QS_PRETRAIN_STEPS  pretraining steps of the base model (default 250)
#   FEDLORA_QS_BIN     directory of fedlora-node and fedlora-coordinator
#                      (installed mode; default PREFIX/bin, then PATH)
#   FEDLORA_QS_SKIP_DEPS=1 / FEDLORA_QS_SKIP_BUILD=1  reuse what is there
# Everything stays on 127.0.0.1; the run directory keeps the logs, the
# coordinator's state (journal.jsonl, versions) and every node's state_dir
# (metrics.jsonl) for a look afterwards.
set -euo pipefail

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
here=$(cd "$scripts/.." && pwd)
rounds=${FEDLORA_QS_ROUNDS:-6}
nodes=4
sites=(harbor foundry mill plant)
t_start=$(date +%s)

# The base model: a small Llama with the byte vocabulary.
dim=128 layers=4 heads=4 ffn=384 ctx=128 mseed=7 pre_steps=${FEDLORA_QS_PRETRAIN_STEPS:-250}

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s (%ds)\n' "$*" "$(($(date +%s) - t_start))"; }
die() {
  printf 'quickstart: %s\n' "$*" >&2
  exit 1
}

[[ $rounds =~ ^[1-9][0-9]?$ ]] || die "FEDLORA_QS_ROUNDS must be 1..99"
[[ $pre_steps =~ ^[1-9][0-9]{0,4}$ ]] || die "FEDLORA_QS_PRETRAIN_STEPS must be 1..99999"

# Source tree (deploy/ next to CMakeLists.txt) or installed tree
# (PREFIX/share/fedlora/scripts, binaries in PREFIX/bin).
if [[ -f $here/CMakeLists.txt && -f $here/deploy/certs.sh ]]; then
  installed=0
  tools=$here/deploy
  build=${FEDLORA_QS_BUILD:-$here/build-quickstart}
  work=${FEDLORA_QS_DIR:-$build/quickstart}
  bindir=$build
else
  installed=1
  tools=$scripts
  bindir=${FEDLORA_QS_BIN:-$(cd "$scripts/../../.." && pwd)/bin}
  if [[ ! -x $bindir/fedlora-node ]] && command -v fedlora-node >/dev/null; then
    bindir=$(dirname "$(command -v fedlora-node)")
  fi
  work=${FEDLORA_QS_DIR:-$PWD/fedlora-quickstart}
fi
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- deps, build
if ((installed)); then
  step "installed tree: binaries in $bindir, run directory $work"
elif [[ ${FEDLORA_QS_SKIP_DEPS:-0} != 1 ]]; then
  step "dependencies"
  "$here/deploy/install-deps.sh"
fi
if ((!installed)) && [[ ${FEDLORA_QS_SKIP_BUILD:-0} != 1 ]]; then
  step "building (Release) in $build"
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFEDLORA_TESTS=OFF \
    -DFEDLORA_BENCH=OFF >"$build.cmake.log" 2>&1 || {
    cat "$build.cmake.log" >&2
    die "cmake failed"
  }
  cmake --build "$build" -j "$(nproc)" >"$build.make.log" 2>&1 || {
    tail -n 40 "$build.make.log" >&2
    die "build failed (full log: $build.make.log)"
  }
fi
node_bin=$bindir/fedlora-node
coord_bin=$bindir/fedlora-coordinator
[[ -x $node_bin && -x $coord_bin ]] || die "binaries missing in $bindir"

mkdir -p "$work"
# a previous run's processes and state go; certificates and the model stay
rm -rf "$work/coord-state" "$work"/node-0? "$work"/*.log "$work"/*.conf "$work/endpoint"

# ---------------------------------------------------------------- certificates
step "certificates (deploy/certs.sh)"
if [[ ! -f $work/pki/ca.crt ]]; then
  bash "$tools/certs.sh" init "$work/pki" >/dev/null
  bash "$tools/certs.sh" coordinator "$work/pki" --ip 127.0.0.1 --dns localhost >/dev/null
  bash "$tools/certs.sh" node "$work/pki" --count $nodes >/dev/null
  say "federation CA, a coordinator certificate and $nodes node certificates in $work/pki"
else
  say "reusing $work/pki"
fi

# ---------------------------------------------------------------- data
step "private data: one site per node (non-IID), plus generic logs for pretraining"
for i in $(seq 1 $nodes); do
  "$node_bin" gen-data --site "${sites[$((i - 1))]}" --seed "$i" --lines 3000 \
    --eval-lines 300 --out "$work/data/node-0$i" >/dev/null
  say "node-0$i: ${sites[$((i - 1))]}  ($(wc -l <"$work/data/node-0$i/train.txt") training lines, e.g. \"$(sed -n 7p "$work/data/node-0$i/train.txt")\")"
done
"$node_bin" gen-data --site depot --seed 99 --lines 6000 --eval-lines 300 \
  --out "$work/data/pretrain" >/dev/null

# ---------------------------------------------------------------- base model
step "base model"
have_train=0
if "$node_bin" train --help >/dev/null 2>&1; then have_train=1; fi
mkdir -p "$work/cache"
base=$work/cache/base-d$dim-l$layers-f$ffn-s$mseed-p$((have_train * pre_steps)).gguf
if [[ -f $base ]]; then
  say "reusing the cached base model $base"
else
  "$node_bin" init-model --out "$work/cache/init.gguf" --dim $dim --layers $layers \
    --heads $heads --ffn $ffn --ctx $ctx --seed $mseed >/dev/null
  if ((have_train)); then
    say "pretraining it for $pre_steps steps on generic maintenance logs (fedlora-node train --full;"
    say "about a minute on 2 cores; the log stays in $work/cache/pretrain.log)"
    rm -rf "$work/cache/pretrain"
    # progress: every 5th of the run (train prints plain lines when not on a terminal)
    "$node_bin" train --full --model "$work/cache/init.gguf" --data "$work/data/pretrain/train.txt" \
      --out "$work/cache/pretrain" --steps $pre_steps --ctx $ctx --batch 8 --lr 3e-3 \
      --log-every $(((pre_steps + 4) / 5)) 2>&1 | tee "$work/cache/pretrain.log" |
      awk '/^step /{e = ""; for (i = 1; i < NF; i++) if ($i == "elapsed") e = $(i + 1)
        printf "  pretraining: step %s, loss %s nats/token, %s s\n", $2, $4, e; fflush()}' || true
    [[ ${PIPESTATUS[0]} == 0 ]] || {
      tail -n 20 "$work/cache/pretrain.log" >&2
      die "pretraining failed"
    }
    [[ -f $work/cache/pretrain/model.gguf ]] ||
      die "pretraining wrote no $work/cache/pretrain/model.gguf"
    mv "$work/cache/pretrain/model.gguf" "$base"
  else
    say "NOTE: this build has no 'fedlora-node train' yet: the base model stays randomly"
    say "      initialised and the nodes use the synth trainer (a stand-in learning problem)."
    mv "$work/cache/init.gguf" "$base"
  fi
fi
fp=$("$node_bin" fingerprint --model "$base")
say "base model $base, fingerprint ${fp:0:16}..."
trainer=lora
((have_train)) || trainer=synth

# ---------------------------------------------------------------- configuration
cat >"$work/coordinator.conf" <<EOF
[server]
listen = tcp://127.0.0.1:*
endpoint_file = $work/endpoint
cert = $work/pki/coordinator.crt
key = $work/pki/coordinator.key
ca = $work/pki/ca.crt
heartbeat_ms = 1000
[federation]
# the base model by its fingerprint (fedlora-node fingerprint) and shapes
base_sha256 = $fp
seed = 1
[adapter]
layers = $layers
dims = attn_q=${dim}x${dim},attn_v=${dim}x${dim}
n_head = $heads
n_head_kv = $heads
[lora]
rank = 16
alpha = 32
targets = attn_q,attn_v
init_seed = 1
[rounds]
min_nodes = $nodes
min_updates = 2
deadline_ms = 120000
start_delay_ms = 300
max_rounds = $rounds
[train]
local_steps = 20
lr = 0.003
batch_size = 8
ctx = 64
uplink_format = q4
uplink_block = 32
error_feedback = true
[aggregation]
strategy = fedavg
downlink_format = q8
[state]
dir = $work/coord-state
keep_versions = 100
[log]
level = info
EOF

step "starting the coordinator and $nodes nodes on 127.0.0.1 (mutual TLS, trainer: $trainer)"
"$coord_bin" serve --config "$work/coordinator.conf" >"$work/coordinator.log" 2>&1 &
coord_pid=$!
pids+=("$coord_pid")
for _ in $(seq 1 100); do
  [[ -s $work/endpoint ]] && break
  kill -0 "$coord_pid" 2>/dev/null || {
    tail -n 20 "$work/coordinator.log" >&2
    die "the coordinator did not start"
  }
  sleep 0.1
done
endpoint=$(cat "$work/endpoint")
say "coordinator on $endpoint"
for i in $(seq 1 $nodes); do
  cat >"$work/node-0$i.conf" <<EOF
[node]
state_dir = $work/node-0$i
trainer = $trainer
seed = $i
[coordinator]
endpoint = $endpoint
[tls]
cert = $work/pki/nodes/node-0$i.crt
key = $work/pki/nodes/node-0$i.key
ca = $work/pki/ca.crt
[model]
path = $base
threads = 1
[data]
train = $work/data/node-0$i/train.txt
eval = $work/data/node-0$i/eval.txt
eval_max_tokens = 8192
[lora]
rank = 16
alpha = 32
targets = attn_q,attn_v
init_seed = 1
EOF
  OMP_NUM_THREADS=1 "$node_bin" run --config "$work/node-0$i.conf" >"$work/node-0$i.log" 2>&1 &
  pids+=("$!")
done

# ---------------------------------------------------------------- the run
step "federating: $rounds rounds"
deadline=$(($(date +%s) + 30 * rounds + 60))
done_rounds=0
while kill -0 "$coord_pid" 2>/dev/null; do
  n=$(grep -c '"type":"round_end"' "$work/coord-state/journal.jsonl" 2>/dev/null || true)
  if ((n > done_rounds)); then
    done_rounds=$n
    say "round $n of $rounds done ($(($(date +%s) - t_start))s)"
  fi
  if (($(date +%s) > deadline)); then
    for l in "$work"/*.log; do
      echo "== $l" >&2
      tail -n 15 "$l" >&2
    done
    die "the federation did not finish in time"
  fi
  sleep 0.5
done
wait "$coord_pid" || die "the coordinator failed (see $work/coordinator.log)"
cleanup
pids=()

# ---------------------------------------------------------------- the table
step "results"
# every node's metrics.jsonl, one "round" line per round it took part in
cat "$work"/node-0?/metrics.jsonl >"$work/all-metrics.jsonl"
awk -v nodes=$nodes -v rounds="$rounds" -f "$tools/rounds-table.awk" \
  "$work/coord-state/journal.jsonl" "$work/all-metrics.jsonl" && verdict=0 || verdict=$?

# The final version's loss: the nodes evaluate each version they start a
# round from, so the last commit is scored here, the same way (fedlora-node
# eval, windows of the nodes' ctx without overlap, the nodes' token cap), on
# every node's held-out file, next to the base it started from.
if "$coord_bin" export --state-dir "$work/coord-state" --version latest --out "$work/final-peft" \
  --base "$base" >"$work/final-export.log" 2>&1; then
  sb=0 sf=0 ok=1
  for i in $(seq 1 $nodes); do
    ev=(--model "$base" --data "$work/data/node-0$i/eval.txt" --ctx 64 --stride 64 --max-tokens 8193)
    b=$("$node_bin" eval "${ev[@]}" 2>/dev/null | sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p')
    f=$("$node_bin" eval "${ev[@]}" --adapter "$work/final-peft" 2>/dev/null | sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p')
    [[ -n $b && -n $f ]] || ok=0
    sb=$(awk -v a="$sb" -v b="${b:-0}" 'BEGIN{print a + b}')
    sf=$(awk -v a="$sf" -v b="${f:-0}" 'BEGIN{print a + b}')
  done
  if ((ok)); then
    awk -v b="$sb" -v f="$sf" -v n=$nodes 'BEGIN{printf "final version: mean held-out loss %.4f nats/token (the base: %.4f), by\n  fedlora-node eval --ctx 64 --stride 64 on each node'"'"'s held-out file\n", f / n, b / n}'
  else
    say "final version: fedlora-node eval failed (see $work/final-export.log)"
  fi
else
  say "final version: could not export it (see $work/final-export.log)"
fi
say ""
say "logs, coordinator state and node states: $work ($(($(date +%s) - t_start))s in all)"
say "charts of this run (loss, bytes, round times; needs gnuplot):"
say "  bash $tools/plot.sh $work/charts $work/coord-state/journal.jsonl $work/node-0?/metrics.jsonl"
say "the coordinator's view (versions, nodes, rounds):"
say "  $coord_bin status --state-dir $work/coord-state"
exit $verdict
