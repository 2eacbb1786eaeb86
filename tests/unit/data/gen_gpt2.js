// gen_gpt2.js — makes gpt2-random.inp/.out: random strings tokenized by an
// independent GPT-2 implementation, the npm package gpt-3-encoder 1.1.4
// (JavaScript regex with V8's Unicode tables). Dev-time tool:
//   mkdir /tmp/g && cd /tmp/g && npm install gpt-3-encoder@1.1.4
//   NODE_PATH=/tmp/g/node_modules node gen_gpt2.js tests/unit/data/gpt2-random
// Same file format as ../shared/data/vocab/*.inp/.out. U+0085 and U+FEFF are
// left out: JavaScript's \s differs from Unicode White_Space there.
const { encode } = require('gpt-3-encoder');
const fs = require('fs');
let s = 12345n;
function rnd(n) { s = (s * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n); return Number((s >> 33n) % BigInt(n)); }
const pools = [
  [0x20, 0x7e], [0x20, 0x7e], [0x20, 0x7e], [0xa0, 0x17f], [0x300, 0x36f], [0x370, 0x3ff],
  [0x400, 0x4ff], [0x590, 0x5ff], [0x600, 0x6ff], [0x900, 0x97f], [0xe00, 0xe7f],
  [0x1780, 0x17ff], [0x2000, 0x206f], [0x2070, 0x209f], [0x2150, 0x218f], [0x2460, 0x24ff],
  [0x3000, 0x30ff], [0x4e00, 0x4fff], [0xac00, 0xacff], [0xff00, 0xffef],
  [0x1d400, 0x1d4ff], [0x1f300, 0x1f6ff], [0x10000, 0x1007f], [0x1e900, 0x1e95f],
];
const words = [" the", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", " I'm", "don't", "  ", "   ", "\n", "\n\n", " \n", "\t", " 123", "4567", "3.14", "!!", " ...", " 's", "''", "a'b"];
const lines = [];
const outs = [];
for (let i = 0; i < 400; i++) {
  let t = "";
  const len = 1 + rnd(40);
  for (let k = 0; k < len; k++) {
    if (rnd(4) == 0) { t += words[rnd(words.length)]; continue; }
    const p = pools[rnd(pools.length)];
    let cp = p[0] + rnd(p[1] - p[0] + 1);
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp == 0x85 || cp == 0xfeff) cp = 0x41;
    t += String.fromCodePoint(cp);
  }
  if (t.includes("__ggml_vocab_test__")) continue;
  lines.push(t);
  outs.push(encode(t).map(x => " " + x).join(""));
}
fs.writeFileSync(process.argv[2] + ".inp", lines.map(l => l + "\n__ggml_vocab_test__\n").join(""));
fs.writeFileSync(process.argv[2] + ".out", outs.map(o => o + "\n").join(""));
console.log(lines.length, "vectors");
