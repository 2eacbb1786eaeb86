#!/usr/bin/env bash
# tests/bench/quality/run.sh — the federated-learning quality experiment.
#
# Everything with the project's own binaries, on 127.0.0.1, over mutual TLS:
#   1. base model: `fedlora-node init-model` (byte vocabulary) then
#      `fedlora-node train --full` on warpeace.txt (last 5 % held out);
#      cached in $CACHE, so reruns skip it.
#   2. task: TASK_DATA (tinyshakespeare.txt) split into $NODES shards with
#      `fedlora-node partition --mode PART_MODE --key PART_KEY` (by-key
#      speaker: by speaking role, 10 % of every shard held out; non-IID,
#      shards differ in size and style). Prose without speakers: PART_KEY=
#      document (whole documents per shard, each shard's tail held out; set
#      the document boundaries with PART_ARGS="--doc-start RE" or
#      "--doc-size N"). SHARD_DIR uses shards made elsewhere instead
#      (node-000/{train,eval}.txt ...).
#   3. runs from the same base, the same LoRA spec and the same total number
#      of local training tokens (ROUNDS x PER_ROUND x LOCAL_STEPS x BATCH x CTX):
#        central   one LoRA on the pooled training data of all shards
#        local     every node alone (LOCAL_STEPS x ROUNDS x PER_ROUND / NODES
#                  steps each), scored on its own held-out data
#        f32 q8 q4ef q4 q2ef ffa_q4ef trim_q4ef fedadam_q4ef
#                  `fedlora-coordinator serve` + NODES `fedlora-node run`
#                  (trainer lora, 1 thread each), PER_ROUND nodes sampled a round
#        secagg_q4 q4ef under secure aggregation (aggregation.secure = true,
#                  docs/PRIVACY.md): nodes clip to SA_CLIP, quantize onto the
#                  common 4-bit grid with error feedback, upload masked
#        sync_uneven / async_uneven  q4ef on an uneven fleet (not in the
#                  default list): every node i with i % 10 in {1,4,7} (30 %)
#                  trains 5x slower (train.slowdown = 5), every node with
#                  i % 10 in {2,9} (20 %) is offline half the time (the process
#                  is stopped and restarted: UNEVEN_ON_S on, UNEVEN_OFF_S off,
#                  phase-shifted per node); rounds.min_nodes = PER_ROUND,
#                  min_updates = PER_ROUND / 2. sync: ROUNDS rounds of PER_ROUND
#                  nodes; async: aggregation.mode = async, buffer_size
#                  PER_ROUND / 2, max_concurrent PER_ROUND, 2 x ROUNDS versions,
#                  staleness (1+s)^-1/2: the same number of aggregated updates.
#                  Each committed version is scored afterwards on the held-out
#                  splits of the first UNEVEN_EVAL_NODES nodes ->
#                  RUN@LR@SEED.timecurve ("seconds version loss"); uneven.md
#                  gives the time each run needs to reach the sync run's final
#                  loss (same seed), IMG gets quality-uneven-loss-vs-time.png
#        q4ef_grid4 q4ef_grid8  q4ef with the global adapter on the downlink
#                  grid (aggregation.downlink_mode = grid, downlink_format q4
#                  or q8; docs/COORDINATOR.md); the other federated runs use
#                  the delta mode with q8 steps
#        dp_ffa_q4ef  ffa_q4ef with central differential privacy
#                  (docs/PRIVACY.md): Poisson sampling q = PER_ROUND / NODES,
#                  clip DP_CLIP, noise multiplier DP_Z, delta DP_DELTA; not in
#                  the default list; DP_MODE=distributed: the same with
#                  discrete Gaussian noise added on the nodes under secure
#                  aggregation (secure_clip = DP_CLIP)
#        dp_q4ef   dp_ffa_q4ef with plain LoRA (A and B trained and sent)
#        rank4_q4ef mixed_q4ef  per-node rank (docs/TRAINING.md, "Per-node
#                  rank"): the rank-RANK federation with every node training
#                  4 rank slots (node.max_rank = 4), or nodes i = 1, 2, 3 mod 3
#                  training 4, 8 and all RANK slots; q4ef otherwise (q4ef is
#                  the all-RANK run to compare with); not in the default list
#   4. (the base model is scored once per OUT: an OUT/base.evals with
#      NODES lines is reused) every run's final adapter is scored on every node's held-out split
#      (`fedlora-node eval --adapter`), next to the base model on the same data.
#   5. every run is repeated for every learning rate in LRS and every seed in
#      SEEDS (training seeds, adapter init, node sampling; the shards stay);
#      a run is reported at its best learning rate (lowest mean over seeds;
#      chosen on the same held-out splits, for every run alike, the
#      baselines included), as mean +- standard deviation over seeds, with
#      per-node wins against f32 (same seed), and a difference from f32
#      smaller than the spread is marked as such.
#
# Writes into $OUT: table.md (the results table and the learning-rate
# sweep), <run>@<lr>@<seed>.{res,evals,curve}, charts (PNG, gnuplot) into
# $IMG when set.
#
# Usage: tests/bench/quality/run.sh [RUN ...]    (default: every run)
# Environment (defaults in brackets):
#   FEDLORA_BUILD [<repo>/build]   FEDLORA_SHARED [<repo>/../shared] (data in its data/)
#   CACHE [<build>/quality-cache]  OUT [<build>/quality-out]   IMG [unset]
#   NODES [20] PER_ROUND [10] ROUNDS [10] LOCAL_STEPS [8] BATCH [8] CTX [64]
#   LR [0.003] RANK [16] ALPHA [32] TARGETS [attn_q,attn_v] EVAL_TOKENS [4096]
#   DIM [256] LAYERS [6] HEADS [8] FFN [768] MCTX [128] PRE_STEPS [6000]
#   (the base: 5.25M parameters, 6000 x 8 x 128 tokens, about 30 min on 2 cores)
#   PRE_DATA [warpeace.txt] TASK_DATA [tinyshakespeare.txt] (both in FEDLORA_SHARED/data,
#   or absolute paths)  TASK_NAME [TASK_DATA without .txt] (named in the table)
#   PART_MODE [by-key] PART_KEY [speaker] PART_ARGS [] SHARD_DIR [unset]
#   LRS [$LR] (e.g. "0.001 0.003 0.01")  SEEDS [1] (e.g. "1 2 3")
#   DP_Z [1.0] DP_CLIP [0.05] DP_DELTA [1e-3] DP_MODE [central] (dp_* only)
#   SPLIT [1]: partition into NODES/SPLIT shards, then split every shard
#   into SPLIT nodes (records dealt round-robin), e.g. NODES=200 SPLIT=10:
#   20 groups of roles, each split into 10 nodes
#   SA_CLIP [10] SA_RANGE [4] (secagg_q4 only)
#   UNEVEN_ON_S [60] UNEVEN_OFF_S [60] UNEVEN_EVAL_NODES [8] (*_uneven only)
#   UNEVEN_SEEDS [$SEEDS]: seeds uneven.md and the chart cover (run one seed
#   per call, sync then async, and name them all in the last call)
#   TABLE_ONLY [unset]: 1 = run nothing, write table.md from the result files
#   already in $OUT (e.g. seeds run in parallel into separate OUTs, then
#   their files copied into one)
# word splitting of $(stats ...) and $b into fields is intended; the scripts
# passed to `bash -c` are single-quoted on purpose (they expand in the child)
# shellcheck disable=SC2046,SC2086,SC2016
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
# shellcheck source=tests/lib.sh
. "$here/tests/lib.sh"
build=${FEDLORA_BUILD:-$here/build}
shared=${FEDLORA_SHARED:-$here/../shared}/data
CACHE=${CACHE:-$build/quality-cache}
OUT=${OUT:-$build/quality-out}
IMG=${IMG:-}
NODES=${NODES:-20} PER_ROUND=${PER_ROUND:-10} ROUNDS=${ROUNDS:-10}
LOCAL_STEPS=${LOCAL_STEPS:-8} BATCH=${BATCH:-8} CTX=${CTX:-64} LR=${LR:-0.003}
RANK=${RANK:-16} ALPHA=${ALPHA:-32} TARGETS=${TARGETS:-attn_q,attn_v}
EVAL_TOKENS=${EVAL_TOKENS:-4096}
DIM=${DIM:-256} LAYERS=${LAYERS:-6} HEADS=${HEADS:-8} FFN=${FFN:-768} MCTX=${MCTX:-128}
PRE_STEPS=${PRE_STEPS:-6000} PRE_DATA=${PRE_DATA:-warpeace.txt}
TASK_DATA=${TASK_DATA:-tinyshakespeare.txt}
TASK_NAME=${TASK_NAME:-$(basename "$TASK_DATA" .txt)}
PART_MODE=${PART_MODE:-by-key} PART_KEY=${PART_KEY:-speaker} PART_ARGS=${PART_ARGS:-}
SHARD_DIR=${SHARD_DIR:-} SPLIT=${SPLIT:-1}
LRS=${LRS:-$LR} SEEDS=${SEEDS:-1}
DP_Z=${DP_Z:-1.0} DP_CLIP=${DP_CLIP:-0.05} DP_DELTA=${DP_DELTA:-1e-3} DP_MODE=${DP_MODE:-central}
SA_CLIP=${SA_CLIP:-10} SA_RANGE=${SA_RANGE:-4}
UNEVEN_ON_S=${UNEVEN_ON_S:-60} UNEVEN_OFF_S=${UNEVEN_OFF_S:-60} UNEVEN_EVAL_NODES=${UNEVEN_EVAL_NODES:-8}
UNEVEN_SEEDS=${UNEVEN_SEEDS:-$SEEDS}
node_bin=$build/fedlora-node
coord_bin=$build/fedlora-coordinator
all_runs="central local f32 q4ef q8 q4 q2ef ffa_q4ef trim_q4ef fedadam_q4ef secagg_q4"
runs=${*:-$all_runs}

die() {
  printf 'quality: %s\n' "$*" >&2
  exit 1
}
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
[[ -x $node_bin && -x $coord_bin ]] || die "build fedlora-node and fedlora-coordinator in $build first"
# a data file: absolute, or in FEDLORA_SHARED/data
data_path() { if [[ $1 == /* ]]; then echo "$1"; else echo "$shared/$1"; fi; }
pre_path=$(data_path "$PRE_DATA") task_path=$(data_path "$TASK_DATA")
[[ -f $pre_path ]] || die "pretraining data $pre_path missing"
[[ -n $SHARD_DIR || -f $task_path ]] || die "task data $task_path missing"
for x in $LRS; do [[ $x =~ ^[0-9.eE+-]+$ ]] || die "LRS: '$x' is not a number"; done
for x in $SEEDS; do [[ $x =~ ^[1-9][0-9]*$ ]] || die "SEEDS: '$x' is not a positive integer"; done
[[ $SPLIT =~ ^[1-9][0-9]*$ ]] && ((NODES % SPLIT == 0)) || die "SPLIT: '$SPLIT' must divide NODES ($NODES)"

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$CACHE" "$OUT"

# ------------------------------------------------------------------ base model
base=$CACHE/base-d$DIM-l$LAYERS-h$HEADS-f$FFN-c$MCTX-p$PRE_STEPS-$(basename "$PRE_DATA" .txt).gguf
if [[ ! -f $base ]]; then
  say "pretraining the base model ($PRE_STEPS steps on $PRE_DATA)"
  split_lines "$pre_path" "$CACHE/pre-train.txt" "$CACHE/pre-eval.txt"
  "$node_bin" init-model --out "$CACHE/init.gguf" --dim "$DIM" --layers "$LAYERS" \
    --heads "$HEADS" --ffn "$FFN" --ctx "$MCTX" --seed 7 >/dev/null
  rm -rf "$CACHE/pre"
  "$node_bin" train --full --model "$CACHE/init.gguf" --data "$CACHE/pre-train.txt" \
    --eval-data "$CACHE/pre-eval.txt" --eval-tokens 16384 --out "$CACHE/pre" \
    --steps "$PRE_STEPS" --ctx "$MCTX" --batch 8 --lr 3e-3 --seed 1 --log-every 50 \
    >"$CACHE/pretrain.log" 2>&1 || die "pretraining failed, see $CACHE/pretrain.log"
  mv "$CACHE/pre/model.gguf" "$base"
fi
if [[ ! -f $CACHE/base-eval.txt ]]; then
  "$node_bin" eval --model "$base" --data "$CACHE/pre-eval.txt" --ctx "$MCTX" \
    --max-tokens 65536 --batch 8 >"$CACHE/base-eval.txt"
fi
base_pre_loss=$(awk '/^result/ {print $3}' "$CACHE/base-eval.txt")
say "base model $base: held-out loss on $PRE_DATA $base_pre_loss"

# ------------------------------------------------------------------ shards
if [[ -n $SHARD_DIR ]]; then
  shards=$SHARD_DIR
  [[ -f $shards/node-$(printf %03d $((NODES - 1)))/train.txt ]] ||
    die "SHARD_DIR $shards has no node-$(printf %03d $((NODES - 1)))/train.txt for NODES=$NODES"
else
  ptag=$(printf '%s' "$TASK_NAME-$PART_MODE-$PART_KEY-$PART_ARGS" | tr -c 'A-Za-z0-9._-' _)
  pn=$((NODES / SPLIT))
  shards=$CACHE/shards-$pn-$ptag
  if [[ ! -f $shards/partition.json ]]; then
    kargs=()
    [[ $PART_MODE == iid ]] || kargs=(--key "$PART_KEY")
    "$node_bin" partition --input "$task_path" --out "$shards" --nodes "$pn" \
      --mode "$PART_MODE" "${kargs[@]}" $PART_ARGS --holdout 0.1 --seed 1 \
      >"$CACHE/partition-$pn-$ptag.log" || die "partition failed ($CACHE/partition-$pn-$ptag.log)"
  fi
  if ((SPLIT > 1)); then
    # every shard split further into SPLIT nodes, its records (paragraphs)
    # dealt round-robin; a held-out split with fewer than SPLIT records is
    # dealt into that many groups, shared by the nodes it does not cover
    split=$shards-split$SPLIT
    if [[ ! -f $split/done ]]; then
      rm -rf "$split"
      for b in $(seq 0 $((pn - 1))); do
        for f in train eval; do
          awk -v RS= -v k="$SPLIT" -v b="$b" -v f="$f" -v o="$split" '
            { p[NR - 1] = $0 } END {
              g = (NR < k) ? NR : k
              if (g == 0) exit 1
              for (j = 0; j < k; j++) {
                d = sprintf("%s/node-%03d", o, b * k + j); system("mkdir -p " d)
                for (i = j % g; i < NR; i += g) printf "%s\n\n", p[i] > (d "/" f ".txt")
              }
            }' "$shards/node-$(printf %03d "$b")/$f.txt" || die "split: shard $b has no $f records"
        done
      done
      touch "$split/done"
    fi
    shards=$split
  fi
fi
shard() { printf '%s/node-%03d' "$shards" "$(($1 - 1))"; }
nid() { printf 'node-%0*d' "$(((NODES > 99) ? ${#NODES} : 2))" "$1"; }
pool=$shards.pool.txt
[[ -n $SHARD_DIR ]] && pool=$OUT/pool.txt
[[ -f $pool && -z $SHARD_DIR ]] || for i in $(seq 1 "$NODES"); do cat "$(shard "$i")/train.txt"; done >"$pool"

# ------------------------------------------------------------------ PKI
pki=$CACHE/pki-$NODES
if [[ ! -f $pki/ca.crt ]]; then
  bash "$here/deploy/certs.sh" init "$pki" >/dev/null
  bash "$here/deploy/certs.sh" coordinator "$pki" --ip 127.0.0.1 --dns localhost >/dev/null
  bash "$here/deploy/certs.sh" node "$pki" --count "$NODES" >/dev/null
fi

# ------------------------------------------------------------------ scoring
# score RUN ADAPTER|-: held-out loss of every node's split -> $OUT/RUN.evals
# (one line per node: "i loss"); ADAPTER may hold %d for per-node adapters.
score() {
  local name=$1 ad=$2 i
  for i in $(seq 1 "$NODES"); do echo "$i"; done |
    xargs -P 2 -I{} bash -c '
      i=$1; ad=$2; a=(); if [[ $ad != - ]]; then a=(--adapter "$(printf "$ad" "$i")"); fi
      l=$("$3" eval --model "$4" --data "$5/$(printf node-%03d $((i - 1)))/eval.txt" --ctx "$6" \
          --max-tokens "$7" --batch 8 --threads 1 "${a[@]}" 2>/dev/null | awk "/^result/ {print \$3}")
      echo "$i $l"' _ {} "$ad" "$node_bin" "$base" "$shards" "$CTX" "$EVAL_TOKENS" |
    sort -n >"$OUT/$name.evals"
  [[ $(awk 'NF == 2' "$OUT/$name.evals" | wc -l) == "$NODES" ]] || die "$name: scoring failed"
}
stats() { awk '{s += $2; if ($2 > w) w = $2} END {printf "%.4f %.4f", s / NR, w}' "$1"; }

if [[ -z ${TABLE_ONLY:-} ]] && [[ ! -f $OUT/base.evals || $(awk 'NF == 2' "$OUT/base.evals" | wc -l) != "$NODES" ]]; then
  say "scoring the base model on every node's held-out split"
  score base -
fi

# the federation's base fingerprint and adapter shapes (as deploy/quickstart.sh)
fp=$("$node_bin" fingerprint --model "$base")
dims=""
for t in ${TARGETS//,/ }; do
  case $t in
  attn_q | attn_k | attn_v | attn_output) s="${DIM}x$DIM" ;;
  ffn_gate | ffn_up) s="${FFN}x$DIM" ;;
  ffn_down) s="${DIM}x$FFN" ;;
  *) die "unknown target $t" ;;
  esac
  dims+="${dims:+,}$t=$s"
done

tokens_total=$((ROUNDS * PER_ROUND * LOCAL_STEPS * BATCH * CTX))
steps_central=$((ROUNDS * PER_ROUND * LOCAL_STEPS))
steps_local=$(((steps_central + NODES - 1) / NODES))

# result line: name mean worst up down up_f32 up_per_node_round down_per_node_round secs
res() { echo "$*" >"$OUT/$1.res"; }

lora_train() { # data out steps
  OMP_NUM_THREADS=1 "$node_bin" train --model "$base" --data "$1" --out "$2" --steps "$3" \
    --batch "$BATCH" --ctx "$CTX" --lr "$LR" --schedule constant --warmup 0 --clip 1 \
    --rank "$RANK" --alpha "$ALPHA" --targets "$TARGETS" --seed "$SEED" --threads 1 --quiet \
    >"$2.log" 2>&1
}

# The run functions write $OUT/$tag.{res,evals,curve}: tag = RUN@LR@SEED.
run_central() {
  local t0=$SECONDS d=$OUT/work/$tag
  rm -rf "$d" && mkdir -p "$OUT/work"
  say "$tag: LoRA on the pooled data, $steps_central steps"
  lora_train "$pool" "$d" "$steps_central" || die "central training failed ($d.log)"
  score "$tag" "$d"
  res "$tag" $(stats "$OUT/$tag.evals") 0 0 0 0 0 $((SECONDS - t0))
}

run_local() {
  local t0=$SECONDS d=$OUT/work/$tag i
  rm -rf "$d" && mkdir -p "$d"
  say "$tag: every node alone, $steps_local steps each"
  for i in $(seq 1 "$NODES"); do echo "$i"; done |
    xargs -P 2 -I{} bash -c "$(declare -f lora_train); base=$base BATCH=$BATCH CTX=$CTX LR=$LR \
      RANK=$RANK ALPHA=$ALPHA TARGETS=$TARGETS SEED=$SEED node_bin=$node_bin; \
      lora_train $shards/\$(printf node-%03d \$(({} - 1)))/train.txt $d/n{} $steps_local" ||
    die "local training failed (logs in $d)"
  score "$tag" "$d/n%d"
  res "$tag" $(stats "$OUT/$tag.evals") 0 0 0 0 0 $((SECONDS - t0))
}

# time_curve DIR: every committed version of the run in DIR scored on the
# held-out splits of nodes 1..UNEVEN_EVAL_NODES; $OUT/$tag.timecurve gets
# "seconds-since-start version mean-loss" (v0 at 0 s)
time_curve() {
  local d=$1 t v l
  awk 'function num(k,   m) { if (match($0, "\"" k "\":[0-9.]+")) { m = substr($0, RSTART, RLENGTH); sub(/^"[^"]*":/, "", m); return m + 0 } return -1 }
    /"type":"start"/ && t0 == "" { t0 = num("ts") }
    /"type":"round_end"/ && /"committed":true/ { print (num("ts") - t0) / 1000, num("version") }' \
    "$d/coord-state/journal.jsonl" >"$d/commits.txt"
  {
    echo "0 0"
    cat "$d/commits.txt"
  } | while read -r t v; do
    "$coord_bin" export --state-dir "$d/coord-state" --version "$v" --out "$d/v$v" >/dev/null 2>&1 ||
      die "$tag: export of version $v failed"
    l=$(for i in $(seq 1 "$UNEVEN_EVAL_NODES"); do echo "$i"; done |
      xargs -P 2 -I{} bash -c '"$1" eval --model "$2" --data "$3/$(printf node-%03d $(($4 - 1)))/eval.txt" \
        --ctx "$5" --max-tokens "$6" --batch 8 --threads 1 --adapter "$7" 2>/dev/null | awk "/^result/ {print \$3}"' \
        _ "$node_bin" "$base" "$shards" {} "$CTX" "$EVAL_TOKENS" "$d/v$v" |
      awk '{s += $1; n++} END {if (n) printf "%.5f", s / n}')
    [[ -n $l ]] || die "$tag: scoring version $v failed"
    echo "$t $v $l"
    rm -rf "$d/v$v"
  done >"$OUT/$tag.timecurve"
}

# run_fed NAME UPLINK EF FFA STRATEGY
run_fed() {
  local name=$1 fmt=$2 ef=$3 ffa=$4 strat=$5 t0=$SECONDS
  local d=$OUT/work/$tag i blk=32 extra="" dfmt=q8 dmode=delta
  [[ $name == *_grid4 ]] && dfmt=q4 dmode=grid
  [[ $name == *_grid8 ]] && dfmt=q8 dmode=grid
  [[ $fmt == f32 || $fmt == f16 ]] && blk=0
  [[ $strat == fedadam ]] && extra=$'server_lr = 0.01\nbeta1 = 0.9\nbeta2 = 0.99\ntau = 1e-3'
  [[ $strat == trimmed_mean ]] && extra="trim = 0.2"
  if [[ $name == dp_* ]]; then
    extra=$'weighting = uniform'
    [[ $DP_MODE == distributed ]] && extra+=$'\nsecure = true\n'"secure_clip = $DP_CLIP"
    extra+=$'\n[privacy]\n'"mode = $DP_MODE"
    extra+=$'\n'"noise_multiplier = $DP_Z"$'\n'"clip = $DP_CLIP"$'\n'"delta = $DP_DELTA"
    extra+=$'\n'"target_epsilon = 1000"$'\n'"population = $NODES"
  fi
  if [[ $name == secagg_* ]]; then
    extra=$'secure = true'$'\n'"secure_clip = $SA_CLIP"$'\n'"secure_range = $SA_RANGE"
  fi
  # per-node rank: the slots node i trains (0 = all)
  node_rank() { case $name in rank4_*) echo 4 ;; mixed_*) echo $((($1 % 3 == 1) ? 4 : ($1 % 3 == 2) ? 8 : 0)) ;; *) echo 0 ;; esac; }
  local minn=$NODES minu=$((PER_ROUND - 2 > 0 ? PER_ROUND - 2 : 1)) maxr=$ROUNDS
  if [[ $name == *_uneven ]]; then
    minn=$PER_ROUND minu=$((PER_ROUND / 2 > 0 ? PER_ROUND / 2 : 1))
  fi
  if [[ $name == async_uneven ]]; then
    maxr=$((2 * ROUNDS))
    extra=$'mode = async\nstaleness = polynomial\nstaleness_exponent = 0.5\nmax_staleness = 20'
    extra+=$'\n'"buffer_size = $minu"$'\n'"max_concurrent = $PER_ROUND"
  fi
  rm -rf "$d" && mkdir -p "$d"
  say "$tag: $ROUNDS rounds, $NODES nodes, $PER_ROUND a round, uplink $fmt ef=$ef ffa=$ffa, $strat"
  cat >"$d/coordinator.conf" <<EOF
[server]
listen = tcp://127.0.0.1:*
endpoint_file = $d/endpoint
cert = $pki/coordinator.crt
key = $pki/coordinator.key
ca = $pki/ca.crt
heartbeat_ms = 2000
idle_timeout_ms = 120000
[federation]
base_sha256 = $fp
seed = $SEED
[adapter]
layers = $LAYERS
dims = $dims
n_head = $HEADS
n_head_kv = $HEADS
[lora]
rank = $RANK
alpha = $ALPHA
targets = $TARGETS
ffa = $ffa
init_seed = $SEED
[rounds]
min_nodes = $minn
nodes_per_round = $PER_ROUND
min_updates = $minu
deadline_ms = 900000
start_delay_ms = 300
max_rounds = $maxr
[train]
local_steps = $LOCAL_STEPS
lr = $LR
batch_size = $BATCH
ctx = $CTX
max_grad_norm = 1.0
uplink_format = $fmt
uplink_block = $blk
error_feedback = $ef
[aggregation]
strategy = $strat
downlink_format = $dfmt
downlink_mode = $dmode
$extra
[state]
dir = $d/coord-state
keep_versions = 1000
[log]
level = info
EOF
  "$coord_bin" serve --config "$d/coordinator.conf" >"$d/coordinator.log" 2>&1 &
  local cpid=$!
  pids+=("$cpid")
  for _ in $(seq 1 100); do
    [[ -s $d/endpoint ]] && break
    sleep 0.1
  done
  [[ -s $d/endpoint ]] || die "$name: coordinator did not start ($d/coordinator.log)"
  for i in $(seq 1 "$NODES"); do
    cat >"$d/n$i.conf" <<EOF
[node]
state_dir = $d/n$i
trainer = lora
seed = $((i + 1000 * (SEED - 1)))
max_rank = $(node_rank "$i")
[coordinator]
endpoint = $(cat "$d/endpoint")
[tls]
cert = $pki/nodes/$(nid "$i").crt
key = $pki/nodes/$(nid "$i").key
ca = $pki/ca.crt
[model]
path = $base
threads = 1
[data]
train = $(shard "$i")/train.txt
eval = $(shard "$i")/eval.txt
eval_max_tokens = $EVAL_TOKENS
[lora]
rank = $RANK
alpha = $ALPHA
targets = $TARGETS
ffa = $ffa
init_seed = $SEED
EOF
    if [[ $name == *_uneven ]] && ((i % 10 == 1 || i % 10 == 4 || i % 10 == 7)); then
      printf '[train]\nslowdown = 5\n' >>"$d/n$i.conf"
    fi
    if [[ $name == *_uneven ]] && ((i % 10 == 2 || i % 10 == 9)); then
      # offline half the time: on for UNEVEN_ON_S, stopped for UNEVEN_OFF_S,
      # the phase shifted per node (the one with i % 10 == 9 starts offline)
      (
        np=""
        trap '[[ -n $np ]] && kill -TERM $np 2>/dev/null; wait 2>/dev/null; exit 0' TERM
        if ((i % 10 == 9)); then sleep "$UNEVEN_OFF_S" & wait $!; fi
        while :; do
          OMP_NUM_THREADS=1 "$node_bin" run --config "$d/n$i.conf" >>"$d/n$i.log" 2>&1 &
          np=$!
          sleep "$UNEVEN_ON_S" & wait $!
          kill -0 "$np" 2>/dev/null || exit 0 # the federation finished
          echo "[uneven] offline for ${UNEVEN_OFF_S}s" >>"$d/n$i.log"
          kill -TERM "$np" 2>/dev/null
          wait "$np" 2>/dev/null
          np=""
          sleep "$UNEVEN_OFF_S" & wait $!
        done
      ) &
      pids+=("$!")
      continue
    fi
    OMP_NUM_THREADS=1 "$node_bin" run --config "$d/n$i.conf" >"$d/n$i.log" 2>&1 &
    pids+=("$!")
  done
  # the coordinator exits after ROUNDS rounds (and its nodes with it, told
  # the federation finished); stop early if the nodes died before that
  local short=0
  while kill -0 "$cpid" 2>/dev/null; do
    local alive=0 p
    for p in "${pids[@]:1}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    if ((alive >= PER_ROUND)) || grep -qs "federation finished" "$d/coordinator.log"; then
      short=0
    else
      # a few seconds of grace: a finishing coordinator may still be writing
      short=$((short + 1))
      ((short < 5)) || die "$name: only $alive nodes left ($(grep -h error "$d"/n*.log | tail -n 1))"
    fi
    sleep 1
  done
  wait "$cpid" || die "$name: coordinator failed ($d/coordinator.log)"
  local secs=$((SECONDS - t0))
  cleanup
  if [[ $name == *_uneven ]]; then time_curve "$d"; fi
  "$coord_bin" export --state-dir "$d/coord-state" --version latest --out "$d/final" \
    >"$d/export.log" 2>&1 || die "$name: export failed ($d/export.log)"
  score "$tag" "$d/final"
  # per-round curve: mean held-out loss (of the version each round starts
  # from) over the round's sampled nodes; last line: all nodes, final version
  cat "$d"/n*/metrics.jsonl >"$d/metrics.all"
  awk '/"type":"round"/ && /"eval_loss":[0-9]/ {
      match($0, /"round":[0-9]+/); r = substr($0, RSTART + 8, RLENGTH - 8) + 0
      match($0, /"eval_loss":[0-9.eE+-]+/); l = substr($0, RSTART + 12, RLENGTH - 12) + 0
      s[r] += l; c[r]++; if (r > m) m = r }
    END { for (r = 1; r <= m; r++) if (c[r]) printf "%d %.5f\n", r, s[r] / c[r] }' \
    "$d/metrics.all" >"$OUT/$tag.curve"
  stats "$OUT/$tag.evals" | cut -d' ' -f1 >"$OUT/$tag.final"
  # the nodes' own evaluation of the final version (DownFinal, each node on
  # its held-out split): "mean count" over the nodes that reported one
  awk '/"type":"final"/ && /"eval_loss":[0-9]/ {
      match($0, /"eval_loss":[0-9.eE+-]+/); s += substr($0, RSTART + 12, RLENGTH - 12) + 0; n++ }
    END { if (n) printf "%.5f %d\n", s / n, n; else print "- 0" }' "$d/metrics.all" >"$OUT/$tag.own"
  local b
  b=$(awk 'function num(k,   m) { if (match($0, "\"" k "\":[0-9]+")) { m = substr($0, RSTART, RLENGTH); sub(/^"[^"]*":/, "", m); return m + 0 } return 0 }
    /"type":"round"/ { up += num("bytes_up"); f += num("bytes_up_fp32"); dn += num("bytes_down"); n++ }
    END { printf "%d %d %d %d %d", up, dn, f, n ? up / n : 0, n ? dn / n : 0 }' "$d/metrics.all")
  res "$tag" $(stats "$OUT/$tag.evals") $b "$secs"
}

for r in $runs; do
  case $r in
  central | local | f32 | q8 | q4ef | q4 | q2ef | ffa_q4ef | trim_q4ef | fedadam_q4ef | dp_ffa_q4ef | dp_q4ef | secagg_q4) ;;
  rank4_q4ef | mixed_q4ef | sync_uneven | async_uneven | q4ef_grid4 | q4ef_grid8) ;;
  *) die "unknown run '$r' (runs: $all_runs dp_ffa_q4ef dp_q4ef rank4_q4ef mixed_q4ef sync_uneven async_uneven q4ef_grid4 q4ef_grid8)" ;;
  esac
done
[[ -n ${TABLE_ONLY:-} ]] && runs=""
for r in $runs; do
  [[ -z ${TABLE_ONLY:-} ]] || break
  for LR in $LRS; do
    for SEED in $SEEDS; do
      tag=$r@$LR@$SEED
      case $r in
      central) run_central ;;
      local) run_local ;;
      f32) run_fed f32 f32 false false fedavg ;;
      q8) run_fed q8 q8 false false fedavg ;;
      q4ef) run_fed q4ef q4 true false fedavg ;;
      q4) run_fed q4 q4 false false fedavg ;;
      q2ef) run_fed q2ef q2 true false fedavg ;;
      ffa_q4ef) run_fed ffa_q4ef q4 true true fedavg ;;
      trim_q4ef) run_fed trim_q4ef q4 true false trimmed_mean ;;
      fedadam_q4ef) run_fed fedadam_q4ef q4 true false fedadam ;;
      dp_ffa_q4ef) run_fed dp_ffa_q4ef q4 true true fedavg ;;
      dp_q4ef) run_fed dp_q4ef q4 true false fedavg ;;
      secagg_q4) run_fed secagg_q4 q4 true false fedavg ;;
      rank4_q4ef) run_fed rank4_q4ef q4 true false fedavg ;;
      mixed_q4ef) run_fed mixed_q4ef q4 true false fedavg ;;
      sync_uneven) run_fed sync_uneven q4 true false fedavg ;;
      async_uneven) run_fed async_uneven q4 true false fedavg ;;
      q4ef_grid4 | q4ef_grid8) run_fed "$r" q4 true false fedavg ;;
      esac
      say "$tag: $(cat "$OUT/$tag.res")"
    done
  done
done

# ------------------------------------------------------------------ table
# per run and lr: the mean over seeds of the mean held-out loss; the best lr
# (lowest) is the one reported
nseeds=$(wc -w <<<"$SEEDS")
seed1=${SEEDS%% *}
lr_mean() { # RUN LR -> mean over seeds of the run's mean held-out loss
  local x
  for x in $SEEDS; do awk '{print $2}' "$OUT/$1@$2@$x.res"; done | awk '{s += $1} END {printf "%.5f", s / NR}'
}
declare -A best
for r in $all_runs dp_ffa_q4ef dp_q4ef rank4_q4ef mixed_q4ef q4ef_grid4 q4ef_grid8; do
  [[ -f $OUT/$r@${LRS%% *}@$seed1.res ]] || continue
  bl="" bmean=""
  for lr in $LRS; do
    m=$(lr_mean "$r" "$lr")
    if [[ -z $bmean ]] || awk -v a="$m" -v b="$bmean" 'BEGIN { exit !(a < b) }'; then bl=$lr bmean=$m; fi
  done
  best[$r]=$bl
done
# seeds_of RUN -> "mean worst" per seed, one line each, at the run's best lr
seeds_of() { local x; for x in $SEEDS; do awk '{print $2, $3}' "$OUT/$1@${best[$1]}@$x.res"; done; }
base_stats=$(stats "$OUT/base.evals")
bm=$(echo "$base_stats" | cut -d' ' -f1)
{
  echo "Task: $TASK_NAME ($(basename "$task_path"), $PART_MODE${PART_KEY:+ by $PART_KEY}${PART_ARGS:+ $PART_ARGS}${SHARD_DIR:+, shards from $SHARD_DIR}), $NODES nodes."
  echo "Base model: $base_pre_loss nats/byte held-out on $PRE_DATA; on the $NODES $TASK_NAME held-out"
  echo "splits: mean $(echo "$base_stats" | cut -d' ' -f1), worst $(echo "$base_stats" | cut -d' ' -f2)."
  echo "Each run: $tokens_total local training tokens ($ROUNDS rounds x $PER_ROUND nodes x $LOCAL_STEPS steps x $BATCH x $CTX),"
  echo "at the best of the learning rates {$LRS} for that run (lowest mean over seeds, chosen on these"
  echo "held-out splits for every run alike), $nseeds seed(s) {$SEEDS}: mean +- standard deviation over seeds."
  echo "wins vs f32: nodes x seeds where the run's held-out loss is below f32's (same seed, f32 at its best lr)."
  echo "up+down vs f32: both directions against f32 both ways (a download counted as large as an f32 upload)."
  echo
  echo "| run | lr | $TASK_NAME mean held-out | worst node | vs base (mean) | vs f32 (mean) | wins vs f32 | bytes up total | bytes down total | up per node-round | down per node-round | up vs f32 | up+down vs f32 | nodes' own eval of the final version | wall s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  f32s=""
  if [[ -n ${best[f32]:-} ]]; then
    f32s=$(seeds_of f32 | awk '{s += $1; q += $1 * $1; n++} END {printf "%.6f %.6f", s / n, (n > 1) ? sqrt((q - s * s / n) / (n - 1)) : 0}')
  fi
  for r in $all_runs dp_ffa_q4ef dp_q4ef rank4_q4ef mixed_q4ef q4ef_grid4 q4ef_grid8; do
    [[ -n ${best[$r]:-} ]] || continue
    lr=${best[$r]}
    st=$(seeds_of "$r" | awk '{s += $1; q += $1 * $1; w += $2; n++} END {printf "%.6f %.6f %.6f", s / n, (n > 1) ? sqrt((q - s * s / n) / (n - 1)) : 0, w / n}')
    read -r _ _ _ up dn upf upn dnn secs <"$OUT/$r@$lr@$seed1.res"
    own=$(for x in $SEEDS; do cat "$OUT/$r@$lr@$x.own" 2>/dev/null || echo "- 0"; done |
      awk '$1 != "-" {s += $1; c += $2; n++} END {if (n) printf "%.4f (%d nodes)", s / n, c / n; else print "-"}')
    wins="-"
    if [[ -n ${best[f32]:-} && $r != f32 ]]; then
      wins=$(for x in $SEEDS; do paste -d' ' "$OUT/$r@$lr@$x.evals" "$OUT/f32@${best[f32]}@$x.evals"; done |
        awk '{w += ($2 < $4); n++} END {printf "%d/%d", w, n}')
    fi
    awk -v r="$r" -v lr="$lr" -v st="$st" -v f="$f32s" -v bm="$bm" -v ns="$nseeds" -v wins="$wins" \
      -v up="$up" -v dn="$dn" -v upf="$upf" -v upn="$upn" -v dnn="$dnn" -v own="$own" -v secs="$secs" 'BEGIN {
      split(st, a, " "); m = a[1]; sd = a[2]; w = a[3]
      ms = (ns > 1) ? sprintf("%.4f +- %.4f", m, sd) : sprintf("%.4f", m)
      d = "-"
      if (f != "" && r != "f32") {
        split(f, b, " "); dd = m - b[1]; spread = sqrt(sd * sd + b[2] * b[2])
        d = sprintf("%+.4f", dd)
        if (ns > 1 && (dd < 0 ? -dd : dd) <= spread) d = d " (within the spread)"
        if (ns == 1) d = d " (1 seed)"
      }
      if (r == "f32") d = "0"
      if (up == 0) printf "| %s | %s | %s | %.4f | %+.4f | %s | %s | - | - | - | - | - | - | - | %d |\n", r, lr, ms, w, m - bm, d, wins, secs
      else printf "| %s | %s | %s | %.4f | %+.4f | %s | %s | %d | %d | %d | %d | %.1f%% | %.1f%% | %s | %d |\n", r, lr, ms, w, m - bm, d, wins, up, dn, upn, dnn, 100 * up / upf, 100 * (up + dn) / (2 * upf), own, secs
    }'
  done
  echo
  echo "Learning-rate sweep (mean held-out over seeds; * = reported):"
  echo
  printf '| run |'
  for lr in $LRS; do printf ' lr %s |' "$lr"; done
  echo
  printf '|---|'
  for lr in $LRS; do printf -- '---|'; done
  echo
  for r in $all_runs dp_ffa_q4ef dp_q4ef rank4_q4ef mixed_q4ef q4ef_grid4 q4ef_grid8; do
    [[ -n ${best[$r]:-} ]] || continue
    printf '| %s |' "$r"
    for lr in $LRS; do
      mark=""
      [[ $lr == "${best[$r]}" ]] && mark="*"
      printf ' %s%s |' "$(lr_mean "$r" "$lr")" "$mark"
    done
    echo
  done
} >"$OUT/table.md"
cat "$OUT/table.md"

# ------------------------------------------------------------------ charts
# per-round curves (mean over the round's sampled nodes, mean over seeds, at
# each run's best lr); the all-node score of the final version is a separate
# point set, not a point of the curve
if [[ -n $IMG ]] && command -v gnuplot >/dev/null; then
  mkdir -p "$IMG"
  plots="" k=0
  for r in f32 q8 q4ef q4 q2ef ffa_q4ef trim_q4ef fedadam_q4ef secagg_q4; do
    [[ -n ${best[$r]:-} ]] || continue
    k=$((k + 1))
    for x in $SEEDS; do cat "$OUT/$r@${best[$r]}@$x.curve"; done |
      awk '{s[$1] += $2; c[$1]++; if ($1 > m) m = $1} END {for (i = 1; i <= m; i++) if (c[i]) printf "%d %.5f\n", i, s[i] / c[i]}' >"$OUT/$r.meancurve"
    fin=$(for x in $SEEDS; do cat "$OUT/$r@${best[$r]}@$x.final"; done | awk '{s += $1} END {printf "%.5f", s / NR}')
    echo "$((ROUNDS + 1)) $fin" >"$OUT/$r.meanfinal"
    lw=1.5
    [[ $r == f32 ]] && lw=3
    plots+="${plots:+, }'$OUT/$r.meancurve' using 1:2 with linespoints lw $lw dt $k pt $k lc $k title '$r'"
    plots+=", '$OUT/$r.meanfinal' using 1:2 with points pt $k ps 2 lc $k notitle"
  done
  lo=NaN ce=NaN
  [[ -n ${best[local]:-} ]] && lo=$(lr_mean local "${best[local]}")
  [[ -n ${best[central]:-} ]] && ce=$(lr_mean central "${best[central]}")
  if [[ -n $plots ]]; then
    gnuplot <<EOF
set terminal pngcairo size 860,560 font ",10" noenhanced
set output '$IMG/quality-loss-per-round.png'
set title "$TASK_NAME: held-out loss per round (lines: mean over the round's sampled nodes, $nseeds seed(s);\nbig points at round $((ROUNDS + 1)): the final version on all $NODES nodes)\nf32/q8/q4/q2: uplink format; ef: error feedback; ffa: FFA-LoRA (A frozen); trim: trimmed mean; fedadam: FedAdam"
set xlabel 'round'
set ylabel 'held-out loss (nats/byte)'
set key below maxrows 3
set grid
set xrange [0.5:$((ROUNDS + 1)).5]
plot $plots, $bm with lines dt 2 lc rgb 'black' title 'base', \
  $lo with lines dt 3 lc rgb 'gray40' title 'local-only', \
  $ce with lines dt 4 lc rgb 'dark-green' title 'central'
EOF
    say "chart: $IMG/quality-loss-per-round.png"
  fi
fi

# ------------------------------------------------------------------ uneven fleets
# time to reach the target (the sync_uneven run's final loss, same lr and
# seed): the first committed version at or below it, per seed
lr=${LRS%% *}
if [[ -f $OUT/sync_uneven@$lr@${UNEVEN_SEEDS%% *}.timecurve && -f $OUT/async_uneven@$lr@${UNEVEN_SEEDS%% *}.timecurve ]]; then
  {
    echo "Uneven fleet ($NODES nodes: 30 % 5x slower, 20 % offline half the time, ${UNEVEN_ON_S} s on / ${UNEVEN_OFF_S} s off),"
    echo "lr $lr, held-out loss of each committed version on the first $UNEVEN_EVAL_NODES nodes' splits."
    echo "Target: the sync run's final loss (same seed)."
    echo
    echo "| seed | target | sync: s to target | async: s to target | ratio sync/async | sync versions | async versions | sync end s | async end s | async final loss |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for x in $UNEVEN_SEEDS; do
      s=$OUT/sync_uneven@$lr@$x.timecurve a=$OUT/async_uneven@$lr@$x.timecurve
      [[ -f $s && -f $a ]] || continue
      tgt=$(tail -n 1 "$s" | awk '{print $3}')
      ts=$(awk -v g="$tgt" '$3 <= g && f == "" {f = $1} END {print f}' "$s")
      ta=$(awk -v g="$tgt" '$3 <= g && f == "" {f = $1} END {print (f == "" ? "never" : f)}' "$a")
      awk -v x="$x" -v g="$tgt" -v ts="$ts" -v ta="$ta" -v ns="$(($(wc -l <"$s") - 1))" \
        -v na="$(($(wc -l <"$a") - 1))" -v es="$(tail -n 1 "$s" | cut -d' ' -f1)" \
        -v ea="$(tail -n 1 "$a" | cut -d' ' -f1)" -v fa="$(tail -n 1 "$a" | cut -d' ' -f3)" 'BEGIN {
        r = (ta == "never") ? "-" : sprintf("%.2f", ts / ta)
        printf "| %s | %.4f | %.0f | %s | %s | %d | %d | %.0f | %.0f | %.4f |\n", x, g, ts,
          (ta == "never") ? "not reached" : sprintf("%.0f", ta), r, ns, na, es, ea, fa }'
    done
  } >"$OUT/uneven.md"
  cat "$OUT/uneven.md"
  if [[ -n $IMG ]] && command -v gnuplot >/dev/null; then
    mkdir -p "$IMG"
    plots="" k=0
    for x in $UNEVEN_SEEDS; do
      for r in sync_uneven async_uneven; do
        [[ -f $OUT/$r@$lr@$x.timecurve ]] || continue
        k=$((k + 1))
        c=1
        [[ $r == async_uneven ]] && c=2
        plots+="${plots:+, }'$OUT/$r@$lr@$x.timecurve' using 1:3 with linespoints lw 1.5 dt $k pt $k lc $c title '$r seed $x'"
      done
    done
    gnuplot <<EOF
set terminal pngcairo size 860,560 font ",10" noenhanced
set output '$IMG/quality-uneven-loss-vs-time.png'
set title "$TASK_NAME, uneven fleet: held-out loss of each committed version vs wall time\n($NODES nodes: 30 % 5x slower, 20 % offline half the time; sync rounds of $PER_ROUND vs async FedBuff K=$((PER_ROUND / 2)))"
set xlabel 'seconds since the coordinator started'
set ylabel 'held-out loss (nats/byte), first $UNEVEN_EVAL_NODES nodes'
set key top right
set grid
plot $plots
EOF
    say "chart: $IMG/quality-uneven-loss-vs-time.png"
  fi
fi
