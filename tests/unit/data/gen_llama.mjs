// gen_llama.mjs — makes llama-random.inp/.out: random strings tokenized by an
// independent LLaMA SentencePiece implementation, the npm package
// llama-tokenizer-js 1.2.2 (its own copy of the 32000-token vocabulary),
// without BOS, with the preceding space. Dev-time tool:
//   mkdir /tmp/g && cd /tmp/g && npm install llama-tokenizer-js@1.2.2
//   cp gen_llama.mjs /tmp/g/ && node /tmp/g/gen_llama.mjs <repo>/tests/unit/data/llama-random
// Strings holding U+2581 (the escaped space) are left out.
import llamaTokenizer from 'llama-tokenizer-js';
import fs from 'fs';
let s = 777n;
function rnd(n) { s = (s * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n); return Number((s >> 33n) % BigInt(n)); }
const pools = [
  [0x20, 0x7e], [0x20, 0x7e], [0x20, 0x7e], [0xa0, 0x17f], [0x300, 0x36f], [0x370, 0x3ff],
  [0x400, 0x4ff], [0x590, 0x5ff], [0x600, 0x6ff], [0x900, 0x97f], [0xe00, 0xe7f],
  [0x1780, 0x17ff], [0x2000, 0x206f], [0x3000, 0x30ff], [0x4e00, 0x4fff], [0xac00, 0xacff],
  [0x1f300, 0x1f6ff], [0x10000, 0x1007f],
];
const words = [" the", " Hello", " world", "ing", "  ", "   ", "\n", "\n\n", "\t", " 123", "3.14", "!!", " ...", "'s"];
const lines = [], outs = [];
for (let i = 0; i < 300; i++) {
  let t = "";
  const len = 1 + rnd(40);
  for (let k = 0; k < len; k++) {
    if (rnd(3) == 0) { t += words[rnd(words.length)]; continue; }
    const p = pools[rnd(pools.length)];
    let cp = p[0] + rnd(p[1] - p[0] + 1);
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x41;
    t += String.fromCodePoint(cp);
  }
  if (t.includes("__ggml_vocab_test__") || t.includes("\u2581")) continue;
  lines.push(t);
  outs.push(llamaTokenizer.encode(t, false, true).map(x => " " + x).join(""));
}
fs.writeFileSync(process.argv[2] + ".inp", lines.map(l => l + "\n__ggml_vocab_test__\n").join(""));
fs.writeFileSync(process.argv[2] + ".out", outs.map(o => o + "\n").join(""));
console.log(lines.length, "vectors");
