// tokref.cjs — the reference side of the tokenizer parity test: tokenizes
// with @lenml/tokenizers (a JavaScript port of Hugging Face's tokenizers, as
// installed by deploy/install-refs.sh).
//
// usage: node tokref.cjs REFS_DIR tokenizer.json tokenizer_config.json|- < in.jsonl
// Standard input holds one JSON string per line; for each, one line of ids
// (no BOS/EOS; added tokens written in the text are matched, as HF does) is
// printed. With "-" for the config an empty one is used.
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

const [refs, tjPath, cfgPath] = process.argv.slice(2);
if (!refs || !tjPath || !cfgPath) {
	process.stderr.write("usage: node tokref.cjs REFS_DIR tokenizer.json config.json|- < in.jsonl\n");
	process.exit(2);
}
const req = createRequire(path.join(path.resolve(refs), "package.json"));
const { TokenizerLoader } = req("@lenml/tokenizers");
const tokenizerJSON = JSON.parse(fs.readFileSync(tjPath, "utf8"));
const tokenizerConfig = cfgPath === "-" ? {} : JSON.parse(fs.readFileSync(cfgPath, "utf8"));
const tk = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
// The Digits pre-tokenizer is defined by Hugging Face's Rust tokenizers as a
// split on char::is_numeric (Unicode categories Nd, Nl, No: \p{N}), as
// llama.cpp's "smollm" regex \p{N} also has it; the JavaScript port matches
// \d, ASCII digits only, and so keeps "³" or "１" with the text around it.
// Its pattern is set to the Rust definition here.
const fixDigits = (pt) => {
	if (!pt) return;
	if (pt.config && pt.config.type === "Digits")
		pt.pattern = new RegExp(pt.config.individual_digits ? "[^\\p{N}]+|\\p{N}" : "[^\\p{N}]+|\\p{N}+", "gu");
	for (const sub of pt.pre_tokenizers || pt.tokenizers || []) fixDigits(sub);
};
fixDigits(tk.pre_tokenizer);
const lines = fs.readFileSync(0, "utf8").split("\n");
const out = [];
for (const l of lines) {
	if (l === "") continue;
	out.push(tk.encode(JSON.parse(l), { add_special_tokens: false }).join(" "));
}
process.stdout.write(out.join("\n") + "\n");
