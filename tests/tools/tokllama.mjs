// tokllama.mjs — llama.cpp's tokenizer for the parity test, through the npm
// package node-llama-cpp (prebuilt llama.cpp) that deploy/install-refs.sh
// installs.
//
// usage: node tokllama.mjs REFS_DIR vocab.gguf < in.jsonl
// Standard input holds one JSON string per line; for each, one line of ids
// is printed: llama.cpp's tokenize with special-token parsing on and no
// BOS/EOS (as `fedlora-node tokenize --no-add-special --parse-special`).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [refs, modelPath] = process.argv.slice(2);
if (!refs || !modelPath) {
	process.stderr.write("usage: node tokllama.mjs REFS_DIR vocab.gguf < in.jsonl\n");
	process.exit(2);
}
const entry = path.join(path.resolve(refs), "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama } = await import(pathToFileURL(entry).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: "disabled" });
const model = await llama.loadModel({ modelPath, vocabOnly: true });
const out = [];
for (const l of fs.readFileSync(0, "utf8").split("\n")) {
	if (l === "") continue;
	out.push(model.tokenize(JSON.parse(l), true).join(" "));
}
process.stdout.write(out.join("\n") + "\n");
await model.dispose();
await llama.dispose();
