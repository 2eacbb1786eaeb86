// llamacpp_ppl.mjs — llama.cpp's perplexity over given token ids, with the
// strided windows of `fedlora-node eval` (docs/ENGINE.md): windows of up to
// CTX tokens start every STRIDE tokens, and each target token is scored
// once, by the first window that predicts it. llama.cpp comes from the npm
// package node-llama-cpp that deploy/install-refs.sh installs; the ids are
// fedlora's (`fedlora-node tokenize`), so only the models are compared.
//
// usage: node llamacpp_ppl.mjs REFS_DIR model.gguf ids.txt CTX STRIDE [lora.gguf SCALE]
// Prints "nll/token X perplexity Y over N scored tokens" (X to 6 decimals).
// The next-token distribution is llama.cpp's plain softmax (temperature 1,
// no top-k/top-p/min-p filter), F32 KV cache, no flash attention.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [refs, modelPath, idsPath, ctxS, strideS, loraPath, loraScale] = process.argv.slice(2);
if (!refs || !modelPath || !idsPath || !ctxS || !strideS) {
	process.stderr.write("usage: node llamacpp_ppl.mjs REFS_DIR model.gguf ids.txt CTX STRIDE [lora.gguf SCALE]\n");
	process.exit(2);
}
const ctx = Number(ctxS), stride = Number(strideS);
const ids = fs.readFileSync(idsPath, "utf8").trim().split(/\s+/).map(Number);
if (ids.length < 2 || !(ctx > 0) || !(stride > 0 && stride <= ctx)) {
	process.stderr.write("llamacpp_ppl: need >= 2 ids and 0 < STRIDE <= CTX\n");
	process.exit(2);
}
const entry = path.join(path.resolve(refs), "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama } = await import(pathToFileURL(entry).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({
	contextSize: ctx, batchSize: ctx, threads: 2, flashAttention: false,
	experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
	...(loraPath ? { lora: { adapters: [{ filePath: loraPath, scale: Number(loraScale ?? 1) }] } } : {}),
});
const seq = context.getSequence();
const opts = { temperature: 1, topK: 0, topP: 1, minP: 0 };
let sum = 0, count = 0, begin = 0, scored = 0;
for (;;) {
	const T = Math.min(ids.length - 1 - begin, ctx);
	const input = [];
	const want = [];
	for (let j = 0; j < T; j++) {
		const tgt = begin + j + 1 > scored ? ids[begin + j + 1] : -1;
		want.push(tgt);
		input.push(tgt >= 0 ? [ids[begin + j], { generateNext: { probabilities: true, options: opts } }] : ids[begin + j]);
	}
	await seq.clearHistory();
	const res = await seq.controlledEvaluate(input);
	for (let j = 0; j < T; j++) {
		if (want[j] < 0) continue;
		const p = res[j]?.next?.probabilities?.get(want[j]) ?? 0;
		sum += -Math.log(p);
		count++;
	}
	scored = begin + T;
	if (begin + T >= ids.length - 1) break;
	begin += stride;
}
const nll = sum / count;
process.stdout.write(`nll/token ${nll.toFixed(6)} perplexity ${Math.exp(nll).toFixed(4)} over ${count} scored tokens\n`);
await context.dispose();
await model.dispose();
await llama.dispose();
