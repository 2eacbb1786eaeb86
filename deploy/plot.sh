#!/usr/bin/env bash
# plot.sh — charts of a federation run from its records.
#
# Usage: deploy/plot.sh OUTDIR FILE...
#   FILE: the coordinator's journal.jsonl and/or nodes' metrics.jsonl (any
#   number, e.g. run/node-*/metrics.jsonl); the kind is recognised by content.
# Writes CSV tables and PNG charts (gnuplot) into OUTDIR:
#   rounds.csv      round, committed, participants, bytes_in, bytes_out,
#                   eval_loss (sample-weighted, from the coordinator), round_ms
#   nodes.csv       round, node, eval_loss, train_loss, bytes_up, bytes_up_fp32,
#                   bytes_down, round_ms
#   loss.png        global held-out loss per round and every node's held-out loss
#   bytes.png       bytes up / down per round and the f32 equivalent of the uploads
#   round_time.png  round durations
# Exit status 0 when every chart was drawn from at least one data point.
set -euo pipefail
prog=plot.sh
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
out=$1
shift
command -v gnuplot >/dev/null || { echo "$prog: gnuplot is required (apt-get install gnuplot-nox)" >&2; exit 1; }
mkdir -p "$out"
for f in "$@"; do [ -r "$f" ] || { echo "$prog: cannot read $f" >&2; exit 2; }; done

# Flat JSON fields by regular expression: our records keep these keys unique.
awk -v rounds="$out/rounds.csv" -v nodes="$out/nodes.csv" '
function num(key,   m) {
	if (match($0, "\"" key "\":-?[0-9.eE+]+")) {
		m = substr($0, RSTART, RLENGTH); sub(/^"[^"]*":/, "", m); return m
	}
	return "NaN"
}
function str(key,   m) {
	if (match($0, "\"" key "\":\"[^\"]*\"")) {
		m = substr($0, RSTART, RLENGTH); sub(/^"[^"]*":"/, "", m); sub(/"$/, "", m); return m
	}
	return ""
}
BEGIN {
	print "round,committed,participants,bytes_in,bytes_out,eval_loss,round_ms" > rounds
	print "round,node,eval_loss,train_loss,bytes_up,bytes_up_fp32,bytes_down,round_ms" > nodes
}
/"type":"round_end"/ {
	c = ($0 ~ /"committed":true/) ? 1 : 0
	p = 0
	if (match($0, /"participants":\[[^]]*\]/)) { s = substr($0, RSTART, RLENGTH); p = gsub(/"[^",]*"/, "", s) - 1 }
	printf "%s,%d,%d,%s,%s,%s,%s\n", num("round"), c, p, num("bytes_in"), num("bytes_out"),
		num("eval_loss"), num("round_ms") >> rounds
	next
}
/"type":"round"/ && /"node":/ {
	printf "%s,%s,%s,%s,%s,%s,%s,%s\n", num("round"), str("node"), num("eval_loss"),
		num("train_loss"), num("bytes_up"), num("bytes_up_fp32"), num("bytes_down"),
		num("round_ms") >> nodes
}
' "$@"

nr=$(($(wc -l <"$out/rounds.csv") - 1))
nn=$(($(wc -l <"$out/nodes.csv") - 1))
[ "$nr" -gt 0 ] || [ "$nn" -gt 0 ] || { echo "$prog: no round records in the given files" >&2; exit 1; }

# Per-round sums over nodes (bytes) for the bytes chart.
awk -F, 'NR > 1 { up[$1] += $5; f32[$1] += $6; down[$1] += $7; seen[$1] = 1 }
END { for (r in seen) printf "%s %s %s %s\n", r, up[r], f32[r], down[r] }' \
	"$out/nodes.csv" | sort -n >"$out/.bytes.dat"
# One data file per node for the loss chart.
awk -F, -v dir="$out" 'NR > 1 && $3 != "NaN" { print $1, $3 > (dir "/.node-" $2 ".dat") }' "$out/nodes.csv"
awk -F, 'NR > 1 && $6 != "NaN" { print $1, $6 }' "$out/rounds.csv" >"$out/.globalloss.dat"
awk -F, 'NR > 1 && $7 != "NaN" { print $1, $7 / 1000 }' "$out/rounds.csv" >"$out/.time.dat"
if [ ! -s "$out/.time.dat" ]; then # no journal: node-side round times
	awk -F, 'NR > 1 && $8 != "NaN" { t[$1] = ($8 > t[$1] ? $8 : t[$1]) } END { for (r in t) print r, t[r] / 1000 }' \
		"$out/nodes.csv" | sort -n >"$out/.time.dat"
fi

gp() { gnuplot -e "set terminal pngcairo size 900,500 noenhanced font ',10'" -e "$1" 2>&1 ||
	gnuplot -e "set terminal png size 900,500 noenhanced" -e "$1"; }

loss_cmd="set output '$out/loss.png'; set title 'held-out loss per round'; set xlabel 'round';
set ylabel 'mean NLL per token'; set key outside right; set grid;"
plots=()
[ -s "$out/.globalloss.dat" ] && plots+=("'$out/.globalloss.dat' using 1:2 with linespoints lw 3 title 'global (coordinator)'")
for f in "$out"/.node-*.dat; do
	[ -s "$f" ] || continue
	name=${f##*/.node-}
	name=${name%.dat}
	sort -n "$f" -o "$f"
	plots+=("'$f' using 1:2 with linespoints title '$name'")
done
if [ ${#plots[@]} -gt 0 ]; then
	gp "$loss_cmd plot $(IFS=,; echo "${plots[*]}")" >/dev/null
fi
if [ -s "$out/.bytes.dat" ]; then
	gp "set output '$out/bytes.png'; set title 'bytes per round (all nodes)'; set xlabel 'round';
set ylabel 'bytes'; set yrange [0:*]; set grid; set key outside right; set style data linespoints;
plot '$out/.bytes.dat' using 1:2 title 'uploaded', '' using 1:3 title 'upload if f32', '' using 1:4 title 'downloaded'" >/dev/null
fi
if [ -s "$out/.time.dat" ]; then
	gp "set output '$out/round_time.png'; set title 'round duration'; set xlabel 'round';
set ylabel 'seconds'; set yrange [0:*]; set autoscale xfix; set offsets 0.5, 0.5, 0, 0;
set xtics 1; set grid;
set boxwidth 0.8; set style fill solid 0.5;
plot '$out/.time.dat' using 1:2 with boxes notitle" >/dev/null
fi
rm -f "$out"/.*.dat "$out"/.node-*.dat
ok=0
for png in loss bytes round_time; do
	if [ -s "$out/$png.png" ]; then echo "$out/$png.png"; else echo "$prog: $png.png not drawn (no data)" >&2; ok=1; fi
done
exit $ok
