// The declarations must name exactly what the modules export: every runtime export of
// www/janus.js is declared in www/janus.d.ts and every declared value exists (run by
// `./build.sh types` after tsc). janus-flow.js defines a custom element, so it is not imported
// here; its one export is compared by name.
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';

const www = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../www');
const declared = (file) => {
  const src = fs.readFileSync(path.join(www, file), 'utf8');
  return [...src.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]).sort();
};
const runtime = Object.keys(await import(path.join(www, 'janus.js'))).sort();
assert.deepEqual(declared('janus.d.ts'), runtime, 'www/janus.d.ts declares other values than www/janus.js exports');
const element = [...fs.readFileSync(path.join(www, 'janus-flow.js'), 'utf8').matchAll(/^export \{ ([\w, ]+) \};?$/gm)].flatMap((m) => m[1].split(/,\s*/)).sort();
assert.deepEqual(declared('janus-flow.d.ts'), element, 'www/janus-flow.d.ts declares other values than www/janus-flow.js exports');
console.log(`types: ${runtime.length} exports of janus.js and ${element.length} of janus-flow.js declared`);
